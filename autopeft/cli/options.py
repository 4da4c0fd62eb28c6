"""What the ``autopeft`` subcommands share: how a subcommand is declared, the options that mean the same
in every command, and opening the study a command names.

An option spelled once here means the same everywhere: ``--storage`` (defaulting to
``$AUTOPEFT_STORAGE``, which keeps a password off the command line), ``--quiet``, ``--format`` and
``-o/--output`` for the file a command writes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from autopeft.storage.backends import STORAGE_ENV
from autopeft.storage.results import Standard, recorded_test_metric

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from autopeft.config import StudyConfig

__all__ = [
    "Command",
    "add_format",
    "add_output",
    "add_quiet",
    "add_storage",
    "add_study",
    "load_study",
    "open_study_of",
    "print_best",
    "spread",
]


class Command(NamedTuple):
    """One subcommand: its name, its one-line help, the function declaring its arguments, and the one running it."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_study(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="path of the study file (TOML)")


def add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=os.environ.get(STORAGE_ENV) or None,
        help="storage URL instead of [study] storage, e.g. postgresql://user@host/db; default: $AUTOPEFT_STORAGE "
        "if set, which keeps a password off the command line (visible to every user through ps)",
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def add_format(parser: argparse.ArgumentParser, *formats: str) -> None:
    parser.add_argument("--format", choices=formats, default=formats[0])


def add_output(parser: argparse.ArgumentParser, metavar: str, text: str, *aliases: str, **kwargs: Any) -> None:
    """``-o/--output``, the file a command writes (old spellings in ``aliases`` still accepted)."""
    parser.add_argument("-o", "--output", *aliases, dest="output", metavar=metavar, help=text, **kwargs)


def open_study_of(args: argparse.Namespace, read_only: bool = True) -> tuple[StudyConfig, str, optuna.Study]:
    """(study file, storage URL, study) of a command's ``study`` and ``--storage`` arguments; an SQLite
    study is opened read-only unless ``read_only`` is False."""
    from autopeft.config import load_config
    from autopeft.search.study import open_study

    config = load_config(args.study)
    url = args.storage or config.storage
    return config, url, open_study(config, url, create=False, read_only=read_only)


def load_study(args: argparse.Namespace) -> tuple[str, optuna.Study, Standard]:
    """(storage URL, study, the standard its trials are judged by: the study file's budget as it is now)."""
    from autopeft.search.study import file_budget

    config, url, study = open_study_of(args)
    return url, study, Standard.of(study, file_budget(config, study))


def spread(record: dict[str, Any]) -> str:
    """``0.7512 ± 0.0061 over 3 seeds; test 0.7790 ± 0.0048`` of a confirm or refit record."""
    test = f"; test {record['test_mean']:.4f} ± {record['test_std']:.4f}" if "test_mean" in record else ""
    return f"{record['mean']:.4f} ± {record['std']:.4f} over {len(record['seeds'])} seeds{test}"


def print_best(
    best: FrozenTrial,
    metric: str,
    standard: Standard,
    refit: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """``best``'s line (its test metric where it has one, or its race scored it: ``attrs``, the
    study's user attributes), then its refit and its configuration."""
    mine, test = best.user_attrs, recorded_test_metric(best, attrs)
    assert best.values is not None
    print(
        f"best trial {best.number}: {metric} {best.values[0]:.4f}"
        + (f" ± {se:.4f} (standard error)" if isinstance(se := mine.get("metric_se"), float) else "")
        + (f" (test {test:.4f})" if test is not None else "")
        + (f"; {standard.describe_baseline()} without learning" if standard.baseline is not None else "")
    )
    if refit is not None:
        print(f"  refit: {spread(refit)}; chosen by the refit mean on validation")
    print(
        f"  method {mine.get('method')}  trainable {mine.get('trainable_params')} "
        f"({100 * mine.get('trainable_share', 0):.3f}%)  learning rate {mine.get('learning_rate', 0):.2e}"
    )
    print(f"  config {mine.get('config')}")
    if standard.at_baseline(best):
        print(f"  warning: {standard.why_at_baseline(best)}: it learned nothing from the inputs")
