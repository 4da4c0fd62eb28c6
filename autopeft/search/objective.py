"""One trial, from ask to tell: sample, count, (maybe) fit, record.

The model, data and methods are the :class:`~autopeft.training.workbench.Workbench`'s; the mapping from
parameters to configurations is the :class:`~autopeft.search.search_space.SearchSpace`'s. What is left
here is Optuna's side of a trial: its attributes, its constraint, reports to the pruner, and how
a failure is recorded.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import traceback
from collections.abc import Callable

import optuna
import torch
from torch import nn

from autopeft.blocks import trainable_per_block
from autopeft.budget import format_count
from autopeft.errors import AutopeftError, fatal_in_trial, first_line
from autopeft.methods import PeftMethod, checked_count
from autopeft.progress import Progress
from autopeft.search.coordination import Surplus, check_not_surplus
from autopeft.search.pruning import TrialReporter, own_pruner, trial_fidelity
from autopeft.search.race_test import tests_after_decision
from autopeft.search.racing import RacePlan, RaceTurn, race_training
from autopeft.search.search_space import SearchSpace
from autopeft.storage.artifacts import SAVED_NOTHING, keep_if_wanted
from autopeft.storage.backends import storage_failure
from autopeft.storage.optuna_adapter import set_user_attrs
from autopeft.storage.results import beats_best
from autopeft.training.train import FULL, NonFiniteLoss, TrainResult, planned_steps

__all__ = ["Objective"]


class Objective:
    """The callable Optuna optimizes; one instance per worker process. Faults inside a trial end that
    trial, recorded, and never the study: a NaN or infinite loss prunes it (``pruned_reason``); any
    other exception, out-of-memory included, fails it with ``error``, ``error_plugin`` and
    ``traceback``. Ctrl-C (not an ``Exception``) still stops the study, the trial marked ``interrupted``."""

    def __init__(self, space: SearchSpace, progress: Progress | None = None, target: int | None = None) -> None:
        self.space, self.bench, self.config = space, space.bench, space.bench.config
        self.progress = progress or Progress(quiet=True)
        self.target = target  # trials the study should finish: one started beyond it is surplus (None: no check)
        self.pruner = own_pruner(self.config)  # two objectives: autopeft's; one: the study's Optuna pruner
        self.fidelity = trial_fidelity(self.config, planned_steps(self.bench.data.train, self.config.train))
        self.fatal: AutopeftError | None = None  # a study file's problem that every later trial would hit too
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # which machine and process ran a trial
        self.current: int | None = None  # the trial this worker runs or last ran, for the Ctrl-C handler
        self.race: RacePlan | None = None  # the race this worker runs (None: a plain search) ...
        self.turn: RaceTurn | None = None  # ... and the training its next trial takes (a retry keeps its own)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current = trial.number
        try:
            if self.target is not None:
                check_not_surplus(trial, self.target)
            return self._trial(trial)
        except (KeyboardInterrupt, Surplus) as exc:
            trial.set_user_attr("error", str(exc) if isinstance(exc, Surplus) else "interrupted (Ctrl-C or SIGTERM)")
            raise
        except NonFiniteLoss as exc:
            trial.set_user_attr("pruned_reason", str(exc))
            self.progress.line(f"[trial {trial.number}] pruned: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            self.fatal = self.fatal or fatal_in_trial(exc, self.config.study.name)
            self._record_failure(trial, exc)
            raise

    def _record_failure(self, trial: optuna.Trial, exc: Exception) -> None:
        """Record why a trial failed, and in which plugin; unless the storage itself failed."""
        if storage_failure(exc) is not None:
            return  # nothing can be written; the driver says so in one line
        name = trial.params.get("method")
        first = first_line(exc, 300, default="(no message)")
        out_of_memory = isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
        error = f"out of memory: {first}" if out_of_memory else f"{type(exc).__name__}: {first}"
        trial.set_user_attr("error", error)
        trial.set_user_attr("error_plugin", self.bench.plugins.get(name, "autopeft") if name else "autopeft")
        trial.set_user_attr("traceback", traceback.format_exc()[-8000:])
        self.progress.line(f"[trial {trial.number}] failed in {name or 'autopeft'}: {error}")

    def _values(self, metric: float, n: int) -> float | tuple[float, float]:
        return (metric, float(n)) if self.config.multi_objective else metric

    def _trial(self, trial: optuna.Trial) -> float | tuple[float, float]:
        bench = self.bench
        trial.set_user_attr("worker", self.worker)  # first: no worker takes it for an orphan (fail_orphaned_trials)
        if self.race is not None:  # a race trial trains what the race needs (autopeft.search.racing)
            name, learning_rate, config, seed, fidelity, tag = race_training(trial, self.race, self.turn, self.space)
            tested = fidelity is FULL and not tests_after_decision(self.race, self.config)  # else the choice, once
        else:
            (name, learning_rate, config), fidelity, tag = self.space.suggest(trial), self.fidelity, ""
            seed = self.config.study.seed + trial.number
        method = bench.enabled[name]
        n = checked_count(method, bench.ctx, config)
        about = {"method": name, "config": json.dumps(config, sort_keys=True), "trainable_params": n}
        about |= {"trainable_share": n / bench.ctx.total_params, "budget": bench.budget, "seed": seed}
        about |= {"learning_rate": learning_rate, "versions": bench.versions, "device": str(bench.device)}
        set_user_attrs(trial, about)
        trial.set_constraint("trainable_params", float(n - bench.budget))
        what = f"{name} {method.describe(config)} lr={learning_rate:.2e}"
        label = f"[trial {trial.number}] {tag}{what} {format_count(n)} params"
        if n > bench.budget:  # never trained: told to Optuna as infeasible through the constraint
            trial.set_user_attr("infeasible", True)
            self.progress.line(f"{label}: over budget ({format_count(bench.budget)}), not trained")
            return self._values(bench.task.worst(self.config.task.metric), n)
        self.progress.line(label)
        report = TrialReporter(trial, n, self.config.task.metric, self.pruner, self.progress.line, bench.baseline_value)
        result = bench.fit(
            method,
            config,
            learning_rate=learning_rate,
            seed=seed,
            fidelity=fidelity,
            on_report=report if self.race is None else None,  # a race compares whole rungs
            on_loss=report.loss,
            test=tested if self.race else lambda value: beats_best(trial.study, value, n),
            on_trained=self._keeper(trial, method, n, candidate=self.race is not None and fidelity is FULL),
            label=trial.number,
            score_loss=self.race is not None and fidelity is not FULL,
        )
        if result.stopped_at is not None:
            trial.set_user_attr("steps_saved", result.total_steps - result.stopped_at)
            raise optuna.TrialPruned()
        set_user_attrs(trial, result.measurements() | report.curve())
        return self._values(result.metric, n)

    def _keeper(self, trial: optuna.Trial, method: PeftMethod, n: int, candidate: bool) -> Callable[..., None]:
        """What happens to a trained model before it is freed: its size per block is recorded, and its
        weights are kept when ``[study] keep_weights`` says so, or when it is a ``candidate`` answer."""

        def keep(model: nn.Module, result: TrainResult) -> None:
            trial.set_user_attr("block_params", trainable_per_block(model, self.bench.ctx))
            save = functools.partial(method.save, model)
            why = keep_if_wanted(self.config, trial, result.metric, n, self.bench.budget, save, candidate)
            if why is not None:  # a full disk's trial is retrained at export; one whose plugin saves nothing is not
                then = "fix the plugin's save()" if why == SAVED_NOTHING else "`autopeft export` retrains it"
                self.progress.line(f"[trial {trial.number}] weights not kept: {why}; {then}")

        return keep
