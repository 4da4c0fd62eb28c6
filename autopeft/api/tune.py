"""``autopeft.tune``: the search from Python, with in-memory data, a loaded model, your own trainer.

Underneath is the same :class:`~autopeft.config.StudyConfig` a study file makes, built from the
arguments and checked by the same rules, so the errors read the same; the study lives in ``folder``
(its SQLite file, the kept weights, the token cache, and the in-memory data as parquet), and
:meth:`TuneResult.to_toml` writes the study file that lets ``autopeft run``, ``report`` or ``export``
carry on with it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autopeft.api.inputs import data_source, model_name
from autopeft.api.result import TuneResult
from autopeft.config import SECTIONS, DataSection, config_from_dict
from autopeft.errors import ConfigError
from autopeft.progress import NotebookProgress, Progress

__all__ = ["tune"]


def _section_of(key: str) -> str:
    """The section a flat keyword belongs to: the first in the study file's order that has it
    (``epochs`` is [train]'s, ``max_train_examples`` [data]'s)."""
    for name, cls in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)} and key not in ("options",):
            return name
    known = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)} - {"options"})
    raise ConfigError(key, "is no study setting", f"use one of {', '.join(known)}, or settings={{section: {{...}}}}")


def _sections(settings: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's sections from ``settings`` (by section) and the flat keywords (each to its section)."""
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, table in settings.items():
        if name not in raw or not isinstance(table, Mapping):
            raise ConfigError(f"settings[{name!r}]", "is no section table", f"use one of {', '.join(raw)} with a dict")
        raw[name].update(table)
    for key, value in flat.items():
        raw[_section_of(key)][key] = value
    return raw


def _in_jupyter() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _fit_name(fit: Callable[..., Any] | str | None) -> str | None:
    """``fit`` as the study file's "module:function" when it can be imported back, else None."""
    if fit is None or isinstance(fit, str):
        return fit
    module, qualname = getattr(fit, "__module__", None), getattr(fit, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def tune(
    model: Any,
    train: Any,
    validation: Any,
    test: Any = None,
    *,
    task: str = "sequence-classification",
    metric: str | None = None,
    budget: str | int = "0.5%",
    methods: list[str] | None = None,
    trainings: float | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    tokenizer: Any = None,
    fit: Callable[..., Any] | str | None = None,
    folder: str | Path | None = None,
    name: str = "tune",
    workers: int = 1,
    quiet: bool = False,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **study_settings: Any,
) -> TuneResult:
    """Search the best adapter for ``model`` on ``train`` under ``budget``, scored on ``validation``.

    Args:
        model: a hub id, a local path, or a loaded transformers model that already carries the task's
            head (then pass ``tokenizer`` too).
        train: a ``datasets.Dataset`` (one split of a ``DatasetDict``), a pandas DataFrame, or the
            path of a csv, json, jsonl or parquet file.
        validation: the same, scored to choose.
        test: the same, scored for the recommendation only (optional).
        task: the task plugin, e.g. ``"sequence-classification"``, ``"instruction"``.
        metric: the metric that chooses (default: the task's first).
        budget: the most trainable parameters: a share ("0.5%") or a count ("150k", 150000).
        methods: the methods searched (default: the study file's default).
        trainings: the search's budget in full trainings of the default (the race); or ``n_trials``.
        storage: an Optuna storage URL; default: an SQLite file in ``folder``. The same storage and
            ``name`` again resume the study.
        fit: your own training function (docs: Your own training loop), or "module:function".
        folder: where the study keeps its files (default: ``./<name>``).
        workers: worker processes (each loads its own model): the study is written as a study file
            first, its in-memory data as parquet, so that each can read it.
        quiet: no progress; in Jupyter, progress is one widget line, never a flood of lines.
        settings: sections of the study file by name, e.g. ``{"final": {"seeds": 3}}``.
        study_settings: any study-file key, placed in its section (``epochs=1``, ``max_length=64``,
            ``max_train_examples=500``, ``text="review"``, ``label="sentiment"``).

    Returns:
        The result so far: on an interrupt (Ctrl-C, a kernel interrupt) the running trial is marked
        and queued again, and the result says so in ``interrupted`` instead of raising.

    Raises:
        ConfigError, DataError, ModelError, BudgetError: one line naming the argument and the fix.
    """
    from autopeft.registry import get_plugin_manager, registered_tasks, resolve_study

    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError("name", f"{name!r} is no study name", "use letters, digits, '-', '_' or '.'")
    folder = Path(folder if folder is not None else name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    raw = _sections(settings or {}, study_settings)
    base, loaded = model_name(model, tokenizer)
    raw["study"] = {"name": name, **raw["study"], **({"storage": storage} if storage else {})}
    raw["model"] = {"name": base, **raw["model"]}
    raw["task"] = {"type": task, **raw["task"], **({"metric": metric} if metric else {})}
    raw["budget"] = {"max_trainable": budget, **raw["budget"]}
    fit_name = _fit_name(fit)
    if fit_name is not None:
        raw["train"]["fit"] = fit_name
    raw["search"] |= {"methods": methods} if methods is not None else {}
    raw["search"] |= {"trainings": trainings} if trainings is not None else {}
    raw["study"] |= {"n_trials": n_trials} if n_trials is not None else {}
    pm = get_plugin_manager()
    tasks = registered_tasks(pm)
    if task not in tasks:
        raise ConfigError("task", f"unknown task {task!r}", f"use one of {sorted(tasks)}")
    # The task's columns (an unknown key is config_from_dict's to name; the splits are the arguments).
    known = {f.name for f in dataclasses.fields(DataSection)} - {"train", "validation", "test"}
    columns = tasks[task].task.columns(
        DataSection(train="", validation="", **{k: v for k, v in raw["data"].items() if k in known})
    )
    splits = {"train": train, "validation": validation, "test": test}
    for split, value in splits.items():
        if split != "test" and value is None:
            raise ConfigError(split, "is required", f"pass {split}= a Dataset, a DataFrame or a file path")
        raw["data"][split] = data_source(value, split, folder, columns)
    if raw["data"]["test"] is None:
        del raw["data"]["test"]
    raw = {section: table for section, table in raw.items() if table}
    config = config_from_dict(raw, folder / f"{name}.toml")
    resolved = resolve_study(config, pm)
    if callable(fit):
        resolved = dataclasses.replace(resolved, fit=fit)
    resolved = dataclasses.replace(resolved, loaded=loaded)
    result = TuneResult(resolved, raw, fit_callable=fit if callable(fit) else None)
    if workers > 1:
        return result.run_workers(workers, quiet)
    progress = Progress(quiet=True) if quiet else NotebookProgress() if _in_jupyter() else Progress()
    return result.run(progress)
