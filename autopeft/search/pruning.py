"""Pruning: which pruner a study uses, where trials report, and what a fit reports to.

``[study] pruner``: ``median``, ``sha`` (successive halving), ``hyperband`` or ``none``. Trials
report at the study's evaluation points (``median``) or at successive-halving rungs of
``pruner_min_steps · pruner_eta^k`` optimizer steps (``sha``, ``hyperband``; see :func:`rungs`).
One-objective studies use Optuna's pruners (:func:`make_pruner`). Optuna's pruners cannot judge
two-objective trials, so those get autopeft's own (:func:`own_pruner`): the median rule among
smaller trials (:class:`SizeAwareMedianPruner`), or successive halving within size buckets
(:class:`SizeBucketHalvingPruner`). :class:`TrialReporter` is what a trial's fit reports to.

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

import math
import statistics
import time
from collections.abc import Callable
from typing import Protocol

import optuna
from optuna.trial import TrialState

from autopeft.config import StudyConfig
from autopeft.storage.results import feasible_trials, metric_sign
from autopeft.training.train import FULL, Fidelity

__all__ = [
    "SizeAwareMedianPruner",
    "SizeBucketHalvingPruner",
    "make_pruner",
    "own_pruner",
    "TrialReporter",
    "rungs",
    "trial_fidelity",
]


class OwnPruner(Protocol):
    """A pruner of two-objective trials: judges a trial of ``trainable_params`` reporting ``value`` at ``step``."""

    def should_prune(self, study: optuna.Study, trainable_params: int, step: int, value: float) -> bool: ...


def _min_steps(config: StudyConfig, total_steps: int) -> int:
    """The first rung: the study's ``pruner_min_steps``, else ``total_steps / eta²`` but never before
    the loss has had a chance to fall: the end of the warm-up, and :attr:`TrialReporter.MIN_STEPS`."""
    if config.study.pruner_min_steps:
        return config.study.pruner_min_steps
    warmup = max(1, int(config.train.warmup_ratio * total_steps))
    return max(total_steps // config.study.pruner_eta**2, warmup, TrialReporter.MIN_STEPS)


def rungs(total_steps: int, min_steps: int, eta: int) -> tuple[int, ...]:
    """The successive-halving rungs of a run of ``total_steps``: ``min_steps · eta^k`` below it (the
    last step is the trial's result, not a rung). 47 steps, 5, 3: (5, 15, 45)."""
    found, step = [], max(1, min_steps)
    while step < total_steps:
        found.append(step)
        step *= eta
    return tuple(found)


def trial_fidelity(config: StudyConfig, total_steps: int) -> Fidelity:
    """Where a search trial reports: at the rungs for ``sha``/``hyperband``, else at the study's
    evaluation points (``[train] evals_per_epoch``)."""
    if config.study.pruner not in ("sha", "hyperband"):
        return FULL
    return Fidelity(report_at=rungs(total_steps, _min_steps(config, total_steps), config.study.pruner_eta))


def make_pruner(config: StudyConfig, total_steps: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for a one-objective study whose full run is ``total_steps`` optimizer steps.

    Two-objective studies get :class:`optuna.pruners.NopPruner`: Optuna cannot judge their trials,
    and :func:`own_pruner` does.
    """
    study = config.study
    if study.pruner == "none" or config.multi_objective:
        return optuna.pruners.NopPruner()
    if study.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=study.pruner_startup_trials, n_warmup_steps=study.pruner_min_steps
        )
    min_steps = _min_steps(config, total_steps)
    if study.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_steps, reduction_factor=study.pruner_eta, min_early_stopping_rate=0
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=min_steps, max_resource=total_steps, reduction_factor=study.pruner_eta
    )


def own_pruner(config: StudyConfig) -> OwnPruner | None:
    """autopeft's pruner for a two-objective study, or None (one objective, or ``pruner = "none"``)."""
    if not config.multi_objective or config.study.pruner == "none":
        return None
    if config.study.pruner == "median":
        return SizeAwareMedianPruner(min_peers=config.study.pruner_startup_trials)
    return SizeBucketHalvingPruner(eta=config.study.pruner_eta)


class TrialReporter:
    """What a trial's fit reports to: ``on_report`` (this object; True stops the fit) and ``on_loss``
    (:meth:`loss`).

    One objective: the study's Optuna pruner decides; two: ``pruner`` (:func:`own_pruner`), since
    Optuna refuses ``trial.report`` there. Either way, a trial that is still at the ``baseline``
    (a model that learned nothing: the majority class) at its first report after ``MIN_STEPS``
    optimizer steps, while its training loss has not fallen, is stopped as degenerate:
    ``pruned_reason`` says so, and the sampler learns from it (a pruned trial, where a failed one
    would be ignored). Before ``MIN_STEPS`` the loss has had no chance to fall, and nothing is judged.
    A stop is recorded in ``pruned_at_step`` and ``seconds_before_pruning``.
    """

    #: How much the training loss must fall (relative) for a trial at the baseline to go on.
    LOSS_FALL = 0.02
    #: Steps a trial trains before it can be judged degenerate.
    MIN_STEPS = 8

    def __init__(
        self,
        trial: optuna.Trial,
        n: int,
        metric: str,
        pruner: OwnPruner | None,
        say: Callable[[str], None],
        baseline: float | None = None,
    ) -> None:
        self.trial, self.n, self.metric, self.pruner, self.say, self.baseline = trial, n, metric, pruner, say, baseline
        self.started = time.perf_counter()
        self.intermediate: dict[str, float] = {}
        self.losses: list[float] = []
        self.judged = False  # whether the degenerate check has run (once, at the first report it can)

    def curve(self, points: int = 200) -> dict[str, list[list[float]]]:
        """The training loss by step, at most ``points`` of it, as the ``loss_curve`` attribute
        trackers and reports read."""
        every = max(1, -(-len(self.losses) // points))
        return {"loss_curve": [[step + 1, value] for step, value in enumerate(self.losses) if step % every == 0]}

    def loss(self, step: int, value: float) -> None:
        """The training loss of optimizer step ``step``."""
        self.losses.append(value)

    def degenerate(self, value: float) -> str | None:
        """Why a first report of ``value`` shows a trial that learned nothing, or None."""
        if self.baseline is None or self.judged or len(self.losses) < self.MIN_STEPS:
            return None
        self.judged = True
        k = max(1, len(self.losses) // 4)
        first, recent = statistics.fmean(self.losses[:k]), statistics.fmean(self.losses[-k:])
        sign = metric_sign(self.trial.study)
        if sign * value > sign * self.baseline + 1e-9 or recent < first * (1 - self.LOSS_FALL):
            return None
        return (
            f"degenerate: {self.metric} {value:.4f} is the baseline's ({self.baseline:.4f}) and the training loss "
            f"has not fallen ({first:.4f} -> {recent:.4f})"
        )

    def __call__(self, step: int, value: float) -> bool:
        trial = self.trial
        self.say(f"[trial {trial.number}] step {step}: {self.metric} {value:.4f}")
        why = self.degenerate(value)
        self.intermediate[str(step)] = value
        if len(trial.study.directions) > 1:  # Optuna refuses trial.report here: keep the values for our pruner
            trial.set_user_attr("intermediate", self.intermediate)
            prune = (
                why is not None
                or self.pruner is not None
                and self.pruner.should_prune(trial.study, self.n, step, value)
            )
        else:
            trial.report(value, step)
            prune = why is not None or trial.should_prune()
        if prune:
            if why is not None:
                trial.set_user_attr("pruned_reason", why)
            trial.set_user_attr("pruned_at_step", step)
            trial.set_user_attr("seconds_before_pruning", time.perf_counter() - self.started)
            self.say(f"[trial {trial.number}] pruned at step {step} ({why or f'{value:.4f}'})")
        return prune


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


class SizeBucketHalvingPruner:
    """Asynchronous successive halving (ASHA) within size buckets, for two-objective studies.

    A trial reaching a rung is compared with every trial that reported at the same rung and whose
    trainable count is in the same bucket (counts within a factor of ``bucket`` of each other, on a
    log scale): it goes on when it is among the best ``1/eta`` of them, itself included. With fewer
    than ``eta`` trials at the rung it goes on (asynchronous: nobody waits for peers). Small and large
    configurations never compete, so the cheap end of the front is kept.
    """

    def __init__(self, eta: int = 3, bucket: float = 4.0) -> None:
        self.eta, self.bucket = eta, bucket

    def _bucket(self, n: int) -> int:
        return math.floor(math.log(max(n, 1), self.bucket))

    def should_prune(self, study: optuna.Study, trainable_params: int, step: int, value: float) -> bool:
        mine = self._bucket(trainable_params)
        peers = [
            t.user_attrs["intermediate"][str(step)]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if str(step) in t.user_attrs.get("intermediate", {})
            and not t.user_attrs.get("infeasible")
            and self._bucket(t.user_attrs["trainable_params"]) == mine
        ]
        if len(peers) + 1 < self.eta:
            return False
        sign = metric_sign(study)
        better = sum(1 for v in peers if sign * v > sign * value)
        return better >= math.ceil((len(peers) + 1) / self.eta)
