"""Re-training the Pareto configurations with new seeds, as configuration-search papers do before reporting.

One search trial is one seed: on small validation sets a lucky seed can put a configuration on the
front. ``autopeft confirm`` trains every front configuration again with ``seeds`` new seeds and
records the mean and spread in the study's user attributes (``confirm:<trial number>``), so the
front can be read with error bars. Re-running it resumes: seeds already trained are kept.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autopeft.errors import AutopeftError
from autopeft.progress import Progress
from autopeft.results import best_trial, is_feasible, pareto_front

__all__ = ["confirm_front", "confirm_seeds", "CONFIRM_PREFIX"]

CONFIRM_PREFIX = "confirm:"


def confirm_seeds(study_seed: int, trial_number: int, n: int) -> list[int]:
    """Seeds for re-training a trial: distinct from every search trial's seed (study seed + trial number)."""
    return [study_seed + 1_000_003 * (k + 1) + trial_number for k in range(n)]


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _chosen(study: optuna.Study, which: str | int, budget: int | None) -> list[FrozenTrial]:
    """The trials ``which`` names, judged by the study file's ``budget``.

    Raises:
        AutopeftError: there is no feasible complete trial, or trial ``which`` is not one.
    """
    if which in ("pareto", "best"):
        chosen = pareto_front(study, budget=budget) if which == "pareto" else [best_trial(study, budget=budget)]
        if not chosen or chosen[0] is None:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial to confirm; run it first")
        return [t for t in chosen if t is not None]
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
    """Re-train each Pareto configuration of a finished study with ``seeds`` new seeds; ``which``:
    ``"pareto"`` (every front trial), ``"best"`` (the best trial alone) or a trial number.

    Returns:
        The study and one record per front trial: ``trial``, ``seeds``, ``values`` and their
        ``mean``/``std`` (and ``test_values``/``test_mean``/``test_std`` when there is a test split).
    """
    from autopeft.study import file_budget, open_study, resolve
    from autopeft.workbench import Workbench

    if seeds < 1:
        raise AutopeftError("--seeds must be a positive integer")
    resolved = resolve(study_file)
    config = resolved.config
    study = open_study(config, storage, create=False, directions=resolved.directions)
    front = _chosen(study, which, file_budget(config, study))
    progress = Progress(quiet=quiet)
    bench = Workbench(resolved, progress)
    records = []
    for position, trial in enumerate(front, 1):
        key = f"{CONFIRM_PREFIX}{trial.number}"
        record: dict[str, Any] = dict(study.user_attrs.get(key) or {"trial": trial.number, "seeds": [], "values": []})
        method, method_config = bench.method_of(trial, to="confirm this front")
        for seed in confirm_seeds(config.study.seed, trial.number, seeds):
            if seed in record["seeds"]:
                continue
            progress.line(f"confirm {position}/{len(front)}: trial {trial.number}, seed {seed}")
            result = bench.fit(
                method,
                method_config,
                learning_rate=trial.user_attrs["learning_rate"],
                seed=seed,
                label=trial.number,
                test=True,
            )
            record["seeds"].append(seed)
            record["values"].append(result.metric)
            if result.test_metric is not None:
                record.setdefault("test_values", []).append(result.test_metric)
            record.update(_summary(record["values"]))
            if record.get("test_values"):
                test_summary = _summary(record["test_values"])
                record.update(test_mean=test_summary["mean"], test_std=test_summary["std"])
            study.set_user_attr(key, record)  # after every seed: an interrupted confirm keeps what it did
        records.append(record)
    return study, records
