"""Re-training the winners with new seeds, as configuration-search papers do before reporting.

One search trial is one seed: on small validation sets a lucky seed can put a configuration on the
front, and the maximum of many single-seed scores overstates what the winner does. ``autopeft
confirm`` trains every front configuration again with new seeds at the search's fidelity and records
the mean and spread in the study's user attributes (``confirm:<trial number>``), so the front can be
read with error bars. ``autopeft refit`` does the same at the study's ``[final]`` fidelity (longer,
on more data), keeps the weights of every seed, and its means choose the winner (``refit:<trial
number>``). Re-running either resumes: seeds already trained are kept.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from autopeft.errors import AutopeftError
from autopeft.progress import Progress
from autopeft.storage.results import (
    CONFIRM_PREFIX,
    REFIT_PREFIX,
    best_trial,
    best_trials,
    confirm_record,
    is_feasible,
    pareto_front,
    refit_record,
)

__all__ = ["confirm_front", "refit", "confirm_seeds", "CONFIRM_PREFIX", "REFIT_PREFIX"]


def confirm_seeds(study_seed: int, trial_number: int, n: int) -> list[int]:
    """Seeds for re-training a trial: distinct from every search trial's seed (study seed + trial number)."""
    return [study_seed + 1_000_003 * (k + 1) + trial_number for k in range(n)]


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _chosen(study: optuna.Study, which: str | int, budget: int | None, top: int = 1) -> list[FrozenTrial]:
    """The trials ``which`` names (``"top"``: the ``top`` best), judged by the study file's ``budget``.

    Raises:
        AutopeftError: there is no feasible complete trial, or trial ``which`` is not one.
    """
    if which in ("top", "pareto", "best"):
        chosen = {
            "top": lambda: best_trials(study, top, budget=budget),
            "pareto": lambda: pareto_front(study, budget=budget),
            "best": lambda: [t for t in [best_trial(study, budget=budget)] if t is not None],
        }[str(which)]()
        if not chosen:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial to confirm; run it first")
        return chosen
    trials = study.get_trials(deepcopy=False)
    if not isinstance(which, int) or not 0 <= which < len(trials) or not is_feasible(trials[which], budget):
        raise AutopeftError(
            f"confirm: study {study.study_name!r} has no complete feasible trial {which}; see `autopeft trials`"
        )
    return [trials[which]]


def confirm_front(
    study_file: str | Path,
    seeds: int = 3,
    storage: str | None = None,
    quiet: bool = False,
    which: str | int = "pareto",
) -> tuple[optuna.Study, list[dict[str, Any]]]:
    """Re-train each Pareto configuration of a finished study with ``seeds`` new seeds, at the search's
    fidelity; ``which``: ``"pareto"`` (every front trial), ``"best"`` (the best trial alone) or a
    trial number.

    Returns:
        The study and one record per front trial: ``trial``, ``seeds``, ``values`` and their
        ``mean``/``std`` (and ``test_values``/``test_mean``/``test_std`` when there is a test split).
    """
    return _retrain(study_file, seeds, storage, quiet, which, final=False)


def refit(
    study_file: str | Path,
    seeds: int | None = None,
    storage: str | None = None,
    quiet: bool = False,
    which: str | int = "auto",
) -> tuple[optuna.Study, list[dict[str, Any]]]:
    """Train the winners again at the study's ``[final]`` fidelity with new seeds, keeping their weights.

    ``which``: ``"auto"`` (the ``[final] top`` best trials of a one-objective study, the front of a
    two-objective one), ``"best"``, ``"pareto"`` or a trial number. ``seeds``: default ``[final]
    seeds``. Each record (``refit:<trial>`` in the study's user attributes) also holds the fidelity
    and, per seed, the artifacts of its weights; :func:`autopeft.storage.results.winner` then chooses the
    best refit mean, and ``export``/``report`` use the refit weights and figures.
    """
    return _retrain(study_file, seeds, storage, quiet, which, final=True)


def _retrain(
    study_file: str | Path, seeds: int | None, storage: str | None, quiet: bool, which: str | int, final: bool
) -> tuple[optuna.Study, list[dict[str, Any]]]:
    from autopeft.search.study import file_budget, open_study, resolve
    from autopeft.storage.artifacts import keep_weights
    from autopeft.training.workbench import Workbench

    resolved = resolve(study_file)
    config = resolved.config
    seeds = config.final.seeds if seeds is None else seeds
    if seeds < 1:
        raise AutopeftError("--seeds must be a positive integer")
    study = open_study(config, storage, create=False, directions=resolved.directions)
    if which == "auto":
        which = "pareto" if config.multi_objective else "top"
    chosen = _chosen(study, which, file_budget(config, study), config.final.top)
    progress = Progress(quiet=quiet)
    trained = config.at_final_fidelity() if final else config
    bench = Workbench(resolved.with_config(trained), progress)
    prefix, verb = (REFIT_PREFIX, "refit") if final else (CONFIRM_PREFIX, "confirm")
    fidelity = {"epochs": trained.train.epochs, "max_train_examples": trained.data.max_train_examples}
    records = []
    for position, trial in enumerate(chosen, 1):
        key = f"{prefix}{trial.number}"
        found = (refit_record if final else confirm_record)(study, trial)  # a bad record: warned of, begun again
        record: dict[str, Any] = dict(found or {"trial": trial.number, "seeds": [], "values": []})
        if final and record.get("fidelity", fidelity) != fidelity:  # another [final]: start again
            record = {"trial": trial.number, "seeds": [], "values": []}
        method, method_config = bench.method_of(trial, to=f"{verb} it")
        for seed in confirm_seeds(config.study.seed, trial.number, seeds):
            if seed in record["seeds"]:
                continue
            progress.line(f"{verb} {position}/{len(chosen)}: trial {trial.number}, seed {seed}")
            kept: list[list[str]] = []

            def keep(model: nn.Module, _: Any, method: Any = method, kept: list[list[str]] = kept) -> None:
                kept.extend(list(pair) for pair in keep_weights(config, study, lambda f: method.save(model, f)))

            result = bench.fit(
                method,
                method_config,
                learning_rate=trial.user_attrs["learning_rate"],
                seed=seed,
                label=trial.number,
                test=True,
                on_trained=keep if final else None,
            )
            record["seeds"].append(seed)
            record["values"].append(result.metric)
            if final:
                record["fidelity"] = fidelity
                record.setdefault("weights", {})[str(seed)] = kept
            if result.test_metric is not None:
                record.setdefault("test_values", []).append(result.test_metric)
            record.update(_summary(record["values"]))
            if record.get("test_values"):
                test_summary = _summary(record["test_values"])
                record.update(test_mean=test_summary["mean"], test_std=test_summary["std"])
            study.set_user_attr(key, record)  # after every seed: an interrupted run keeps what it did
        records.append(record)
    return study, records
