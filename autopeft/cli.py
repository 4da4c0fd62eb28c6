"""The ``autopeft`` command. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from autopeft.errors import AutopeftError
from autopeft.progress import quiet_libraries

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from autopeft.study import best_trial, run_study

    study = run_study(args.study, n_trials=args.n_trials, storage=args.storage, quiet=args.quiet)
    best = best_trial(study)
    if best is not None:
        _print_best(best, study.user_attrs.get("metric", "value"))
    return 0


def _print_best(best: FrozenTrial, metric: str) -> None:
    attrs = best.user_attrs
    print(
        f"best trial {best.number}: {metric} {best.value:.4f}"
        + (f" (test {attrs['test_metric']:.4f})" if "test_metric" in attrs else "")
    )
    print(
        f"  method {attrs.get('method')}  trainable {attrs.get('trainable_params')} "
        f"({100 * attrs.get('trainable_share', 0):.3f}%)  learning rate {attrs.get('learning_rate', 0):.2e}"
    )
    print(f"  config {attrs.get('config')}")


def _load(args: argparse.Namespace) -> optuna.Study:
    from autopeft.config import load_config
    from autopeft.study import open_study

    return open_study(load_config(args.study), args.storage, create=False)


def _cmd_best(args: argparse.Namespace) -> int:
    from autopeft.study import best_trial

    study = _load(args)
    best = best_trial(study)
    if best is None:
        raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run `autopeft run` first")
    if args.format == "json":
        print(
            json.dumps(
                {"number": best.number, "value": best.value, "params": best.params, "user_attrs": best.user_attrs},
                indent=2,
            )
        )
    else:
        _print_best(best, study.user_attrs.get("metric", "value"))
    return 0


def _cmd_trials(args: argparse.Namespace) -> int:
    study = _load(args)
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        state = "infeasible" if a.get("infeasible") else t.state.name.lower()
        rows.append(
            {
                "number": t.number,
                "state": state,
                "value": t.value,
                "method": a.get("method"),
                "trainable_params": a.get("trainable_params"),
                "learning_rate": a.get("learning_rate"),
                "train_seconds": a.get("train_seconds"),
                "config": a.get("config"),
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'#':>4} {'state':<10} {'value':>8} {'method':<10} {'trainable':>10} {'lr':>9} {'train s':>8}  config")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        lr = "" if r["learning_rate"] is None else f"{r['learning_rate']:.2e}"
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        print(
            f"{r['number']:>4} {r['state']:<10} {value:>8} {r['method'] or '':<10} "
            f"{r['trainable_params'] or '':>10} {lr:>9} {secs:>8}  {r['config'] or ''}"
        )
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from autopeft.plugins import get_plugin_manager, registered_methods

    methods = registered_methods(get_plugin_manager())
    rows = [
        {
            "method": n,
            "plugin": i.plugin,
            "distribution": i.distribution,
            "version": i.version,
            "description": (type(i.method).__doc__ or "").strip().splitlines()[0] if type(i.method).__doc__ else "",
        }
        for n, i in sorted(methods.items())
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['method']:<12} {r['distribution']} {r['version']:<8} {r['description']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopeft", description="Search PEFT configurations under a parameter budget."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume the search a study file describes")
    run.add_argument("study", help="path of the study file (TOML)")
    run.add_argument("--n-trials", type=int, help="finish this many trials instead of [study] n_trials")
    run.add_argument("--storage", help="storage URL instead of [study] storage")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=_cmd_run)

    for name, func, text in (("best", _cmd_best, "show the best trial"), ("trials", _cmd_trials, "list every trial")):
        p = sub.add_parser(name, help=text)
        p.add_argument("study")
        p.add_argument("--storage", help="storage URL instead of [study] storage")
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(func=func)

    plugins = sub.add_parser("plugins", help="list installed methods and the distribution providing each")
    plugins.add_argument("--format", choices=("table", "json"), default="table")
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autopeft`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "run" and args.n_trials is not None and args.n_trials < 1:
        print("autopeft: error: --n-trials must be a positive integer", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        return int(args.func(args))
    except AutopeftError as exc:
        from autopeft.study import mask_url

        print(f"autopeft: error: {mask_url(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autopeft: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
