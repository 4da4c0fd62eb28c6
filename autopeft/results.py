"""Reading results out of a study: finished trials, the best trial, and the Pareto front.

Every trial records its metric as its first objective value and its exact size in the
``trainable_params`` user attribute, so single- and multi-objective studies are read the same way:
the front of metric against trainable parameters exists for both.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "FINISHED",
    "PENDING",
    "finished_trials",
    "feasible_trials",
    "is_feasible",
    "best_trial",
    "pareto_front",
    "metric_sign",
    "outcome",
    "reason",
    "retry_of",
    "trial_row",
    "format_rows",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: complete (infeasible included) or pruned."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether a trial completed and was trained within the budget."""
    return (
        trial.state == TrialState.COMPLETE
        and all(v <= 0 for v in trial.constraints.values())
        and "trainable_params" in trial.user_attrs
    )


def feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials that were trained within the budget."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t)]


def metric_sign(study: optuna.Study) -> int:
    """1 when the study's metric goes up (accuracy), -1 when it goes down (perplexity): multiply a
    metric by it and larger is better, for every comparison here."""
    return -1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else 1


def _goodness(trial: FrozenTrial, sign: int) -> float:
    assert trial.values is not None
    return sign * float(trial.values[0])


def _feasible(study: optuna.Study, trials: list[FrozenTrial] | None) -> list[FrozenTrial]:
    return [t for t in trials if is_feasible(t)] if trials is not None else feasible_trials(study)


def best_trial(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The feasible trial with the best metric (fewer trainable parameters break ties), or None.

    ``trials``: the study's trials when the caller has just read them (each read is a query).
    """
    feasible = _feasible(study, trials)
    if not feasible:
        return None
    sign = metric_sign(study)
    return max(feasible, key=lambda t: (_goodness(t, sign), -t.user_attrs["trainable_params"], -t.number))


def pareto_front(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Feasible trials no other feasible trial beats on both metric and size, smallest first.

    Of trials with the same metric and size, the first is kept. ``trials``: as for :func:`best_trial`.
    """
    feasible = _feasible(study, trials)
    front: list[FrozenTrial] = []
    sign = metric_sign(study)
    for t in sorted(feasible, key=lambda t: (t.user_attrs["trainable_params"], -_goodness(t, sign), t.number)):
        if not front or _goodness(t, sign) > _goodness(front[-1], sign):
            front.append(t)
    return front


def outcome(trial: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``fail``, ``running``, ``waiting``, or ``infeasible`` (over budget, not trained)."""
    return "infeasible" if trial.user_attrs.get("infeasible") else trial.state.name.lower()


def reason(trial: FrozenTrial) -> str | None:
    """Why a trial did not complete within the budget, in words; None when it did."""
    a, state = trial.user_attrs, outcome(trial)
    if state == "complete":
        return None
    if state == "pruned":
        if "pruned_reason" in a:
            return f"pruned: {a['pruned_reason']}"
        step = a.get("pruned_at_step")
        return f"pruned at step {step}, saving {a.get('steps_saved', '?')} steps" if step is not None else "pruned"
    if state == "infeasible":
        return f"{a.get('trainable_params', 0):,} trainable parameters > budget {a.get('budget', 0):,}; not trained"
    if state == "fail":
        if "error_plugin" in a:
            return f"{a['error']} (in {a['error_plugin']})"
        if "error" in a:  # interrupted, or surplus: not a plugin's fault
            return str(a["error"])
        return "no reason recorded: its worker was lost in mid-trial (killed, or its machine went away)"
    return "still running or waiting"


def trial_row(trial: FrozenTrial, metric: str) -> dict[str, Any]:
    """One trial as a flat record for tables, JSON and CSV."""
    a = trial.user_attrs
    return {
        "number": trial.number,
        "state": outcome(trial),
        metric: trial.values[0] if trial.values else None,
        "test": a.get("test_metric"),
        "method": a.get("method"),
        "trainable_params": a.get("trainable_params"),
        "trainable_share": a.get("trainable_share"),
        "learning_rate": a.get("learning_rate"),
        "train_seconds": a.get("train_seconds"),
        "config": a.get("config"),
        "reason": reason(trial),
        "retry_of": retry_of(trial),
    }


def retry_of(trial: FrozenTrial) -> int | None:
    """The failed trial (killed or interrupted) this one runs again, or None."""
    history = trial.system_attrs.get("retry_history") or [None]
    return history[-1]


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as ``json``, ``csv`` or an aligned text ``table``."""
    if fmt == "json":  # strict JSON: an over-budget trial's infinite perplexity becomes null
        finite = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
        return json.dumps(finite, indent=2, allow_nan=False)
    if not rows:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r.values()] for r in rows]
    header = [k.replace("_", " ") for k in rows[0]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return str(value)
