"""Pruning: what a fit reports to, and the pruner for studies with two objectives.

:func:`reporter` is the ``on_report`` of a trial's fit: one-objective studies go to the study's
Optuna pruner; Optuna's pruners cannot judge two-objective trials, so those go to
:class:`SizeAwareMedianPruner`.

Optuna refuses ``trial.report`` in multi-objective studies. A running trial is hopeless for the
Pareto front of metric against size when the finished trials that are *no larger* than it did
better at the same step: each of them is likely to dominate it at the end. So the rule is the
median rule restricted to those trials: prune when, among at least ``min_peers`` finished trials
with at most as many trainable parameters, the running trial's metric is below the median of
theirs at the same step. The smallest configurations have no smaller peers and always finish, so
the cheap end of the front is never cut.

Intermediate values are kept in each trial's ``intermediate`` user attribute (step -> metric).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import optuna

from autopeft.results import feasible_trials, metric_sign

__all__ = ["SizeAwareMedianPruner", "reporter"]


def reporter(
    trial: optuna.Trial, n: int, metric: str, pruner: SizeAwareMedianPruner | None, say: Callable[[str], None]
) -> Callable[[int, float], bool]:
    """The ``on_report`` of ``trial``'s fit (``n`` trainable parameters): True stops the fit.

    ``pruner``: the size-aware pruner of a two-objective study (None: one objective, Optuna's own
    pruner decides). A stop is recorded in ``pruned_at_step`` and ``seconds_before_pruning``.
    """
    started = time.perf_counter()
    intermediate: dict[str, float] = {}
    two_objectives = len(trial.study.directions) > 1

    def report(step: int, value: float) -> bool:
        say(f"[trial {trial.number}] step {step}: {metric} {value:.4f}")
        if two_objectives:  # Optuna refuses trial.report here: keep the values for our pruner
            intermediate[str(step)] = value
            trial.set_user_attr("intermediate", intermediate)
            prune = pruner is not None and pruner.should_prune(trial.study, n, step, value)
        else:
            trial.report(value, step)
            prune = trial.should_prune()
        if prune:
            trial.set_user_attr("pruned_at_step", step)
            trial.set_user_attr("seconds_before_pruning", time.perf_counter() - started)
            say(f"[trial {trial.number}] pruned at step {step} ({value:.4f})")
        return prune

    return report


class SizeAwareMedianPruner:
    """The median rule among finished trials no larger than the running one."""

    def __init__(self, min_peers: int = 3) -> None:
        self.min_peers = min_peers

    def should_prune(self, study: optuna.Study, trainable_params: int, step: int, value: float) -> bool:
        peers = [
            t.user_attrs["intermediate"][str(step)]
            for t in feasible_trials(study)
            if t.user_attrs["trainable_params"] <= trainable_params
            and str(step) in t.user_attrs.get("intermediate", {})
        ]
        sign = metric_sign(study)
        return len(peers) >= self.min_peers and sign * value < sign * statistics.median(peers)
