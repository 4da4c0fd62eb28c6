"""Pruning for studies with two objectives, where Optuna's pruners cannot be used.

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

import optuna

from autopeft.results import feasible_trials, metric_sign

__all__ = ["SizeAwareMedianPruner"]


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
