"""One trial, from ask to tell: choose a method, count, (maybe) train, record.

The expensive things happen once per worker in :class:`Objective`'s constructor: loading the base
model, tokenizing the data, discovering the blocks. Each trial then starts from a deep copy of the
pristine base model, because peft's ``get_peft_model`` changes a model in place.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import random
import resource
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import pluggy
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autopeft import __version__
from autopeft.artifacts import keep_weights, on_front
from autopeft.blocks import build_context, trainable_per_block
from autopeft.budget import format_count, parse_budget
from autopeft.config import StudyConfig
from autopeft.data import batches
from autopeft.errors import AutopeftError, BudgetError, ConfigError, ModelError, PluginError, first_line
from autopeft.methods import PeftMethod, checked_count, plugin_call, trainable_numel
from autopeft.models import load_base_model, load_tokenizer, resolve_model_name
from autopeft.plugins import MethodInfo, registered_methods, resolve_task
from autopeft.prefix_cache import PrefixCache
from autopeft.progress import Progress
from autopeft.pruning import SizeAwareMedianPruner
from autopeft.results import FINISHED, best_trial
from autopeft.storage import set_user_attrs, storage_failure
from autopeft.token_cache import load_cached_task_data
from autopeft.train import NonFiniteLoss, TrainResult, autocast_for, planned_steps, train
from autopeft.warm_start import map_to_blocks

__all__ = ["Objective", "Surplus", "UNBOUNDED", "library_versions", "pick_device"]

#: A budget no configuration reaches: what a method samples when nothing constrains it.
UNBOUNDED = 2**62


class Surplus(Exception):
    """A trial started when other workers' trials already complete the study; it is not run."""


def library_versions() -> dict[str, str]:
    """Versions that decide whether a trial can be reproduced."""
    import peft
    import transformers

    return {
        "autopeft": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


def pick_device(wanted: str = "auto", say: Callable[[str], None] = lambda line: None) -> torch.device:
    """The device ``[train] device`` asks for: CUDA when present, else the CPU. Asking for ``cuda``
    on a machine without one falls back to the CPU and says so through ``say``."""
    if wanted == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if wanted == "cuda":
        say("autopeft: train.device = 'cuda' but no GPU is visible here; training on the CPU")
    return torch.device("cpu")


def enabled_methods(config: StudyConfig, pm: pluggy.PluginManager) -> dict[str, MethodInfo]:
    """The study's methods, in its order. Raises PluginError naming the installed ones."""
    installed = registered_methods(pm)
    unknown = [m for m in config.search.methods if m not in installed]
    if unknown:
        raise PluginError(
            f"search.methods: unknown method {unknown[0]!r}; installed methods: "
            f"{', '.join(sorted(installed))} (see `autopeft plugins`)"
        )
    return {m: installed[m] for m in config.search.methods}


class Objective:
    """The callable Optuna optimizes; one instance per worker process.

    Args:
        strict: raise :class:`BudgetError` when no enabled method fits the budget (``autopeft plan``
            passes False to show why instead).
        write_cache: keep the tokenized data in the study's token cache (``autopeft plan``, which
            trains nothing, passes False: it reads a cache that is there, and writes none).
    """

    def __init__(
        self,
        config: StudyConfig,
        pm: pluggy.PluginManager,
        progress: Progress | None = None,
        device: torch.device | None = None,
        strict: bool = True,
        write_cache: bool = True,
    ) -> None:
        config, self.task = resolve_task(config, pm)  # the task's metric and direction filled in
        self.config = config
        self.progress = progress or Progress(quiet=True)
        self.device = device or pick_device(config.train.device, self.progress.line)
        infos = enabled_methods(config, pm)
        self.enabled = {name: info.method for name, info in infos.items()}
        self.plugins = {name: f"{info.plugin} from {info.distribution} {info.version}" for name, info in infos.items()}
        self.options = {
            name: method.check_options(config.search.options.get(name, {})) for name, method in self.enabled.items()
        }

        self.model_source, offline = resolve_model_name(pm, config.model.name)
        tokenizer = load_tokenizer(config.model, self.model_source, offline)
        self.data, _ = load_cached_task_data(config, tokenizer, self.task, write=write_cache)
        torch.manual_seed(config.study.seed)  # the new task head is drawn while loading: same seed, same head
        self.base = load_base_model(
            config.model, self.model_source, offline, self.task, self.data.label_names, tokenizer.pad_token_id
        )
        try:
            self.ctx = build_context(self.base, new_head=self.task.new_head)
        except ValueError as exc:  # no repeated blocks: nothing any method could adapt
            raise ModelError(
                f"model.name: found no transformer blocks in {config.model.name!r}"
                + (f" with overrides {config.model.overrides}" if config.model.overrides else "")
                + f" ({first_line(exc)}); check model.overrides (e.g. num_hidden_layers >= 1)"
            ) from None
        self.prefix = PrefixCache(self.base, self.ctx) if config.train.prefix_cache else None
        try:
            self.budget = parse_budget(config.budget.max_trainable, self.ctx.total_params)
        except ValueError as exc:
            raise ConfigError("budget.max_trainable", str(exc), 'use e.g. "0.5%" or "150k"') from None
        self.total_steps = planned_steps(self.data.train, config.train)
        self.pruner = SizeAwareMedianPruner() if config.multi_objective and config.study.pruner != "none" else None

        self.smallest = {n: self._smallest(n, m) for n, m in self.enabled.items()}
        self.methods = {n: m for n, m in self.enabled.items() if self.smallest[n] <= self.budget}
        if not self.methods and strict:
            cheapest = min(self.smallest, key=self.smallest.__getitem__)
            raise BudgetError(
                f"budget.max_trainable: {format_count(self.budget)} parameters fit no configuration; the "
                f"smallest is {cheapest} with {format_count(self.smallest[cheapest])}: raise the budget to at least "
                f"{self.smallest[cheapest]} or enable a smaller method"
            )
        for name in set(self.enabled) - set(self.methods):
            self.progress.line(
                f"autopeft: method {name!r} skipped: its smallest configuration "
                f"({format_count(self.smallest[name])}) exceeds the budget ({format_count(self.budget)})"
            )
        found = self.task.baseline(self.data.train, self.data.validation, config.task.metric)
        #: What a model that learned nothing scores: {"name": "majority class", "value": 0.58}, or None.
        self.baseline = {"name": found[0], "value": found[1]} if found else None
        #: Choices of the ``method`` parameter: the study's recorded ones when it has trials (set by
        #: prepare_study), else the methods that fit the budget.
        self.method_choices = list(self.methods)
        #: A problem of the study file found inside a trial, which every later trial would hit too:
        #: the driver stops and raises it.
        self.fatal: AutopeftError | None = None
        self.versions = library_versions()
        #: Trials this study should finish (set by the driver): a trial started beyond it is surplus.
        self.target: int | None = None
        #: Which machine and process ran a trial, for teams spreading a study over machines.
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        #: Number of the trial this worker runs or last ran, for the Ctrl-C handler; None before the first.
        self.current: int | None = None

    def _smallest(self, name: str, method: PeftMethod) -> int:
        """The trainable count of ``method``'s smallest configuration; a plugin that fails here is one line."""
        return checked_count(
            method, self.ctx, plugin_call(method, "smallest", lambda: method.smallest(self.ctx, self.options[name]))
        )

    # -- configurations from parameters ---------------------------------------------------------

    def config_of(self, params: dict[str, Any], budget: int | None = None) -> tuple[str, dict[str, Any]]:
        """(method, configuration) that ``params`` (a trial's parameters) stand for.

        Raises:
            ValueError: a parameter is missing or not among this study's choices.
        """
        name = params["method"]
        method = self.enabled[name]
        trial = optuna.trial.FixedTrial(params)
        return name, method.suggest(trial, self.ctx, self.options[name], self.budget if budget is None else budget)

    def method_of(self, trial: FrozenTrial, to: str) -> tuple[PeftMethod, dict[str, Any]]:
        """(method, configuration) a recorded trial trained, to train it again (``confirm``, ``export``).

        Raises:
            AutopeftError: its method is no longer enabled by the study file; ``to`` ends the fix.
        """
        name = trial.user_attrs["method"]
        if name not in self.enabled:
            raise AutopeftError(
                f"trial {trial.number} used method {name!r}, which the study file no longer enables; "
                f"add it back to search.methods to {to}"
            )
        return self.enabled[name], json.loads(trial.user_attrs["config"])

    def _with_learning_rate(self, params: dict[str, Any], method: str) -> dict[str, Any]:
        lr = self.config.train.learning_rate
        key = f"{method}.learning_rate"
        if isinstance(lr, list):
            default = self.methods[method].default_learning_rate
            params[key] = min(max(float(params.get(key, default)), lr[0]), lr[1])
        else:
            params.pop(key, None)
        return params

    def warm_start_params(self) -> list[dict[str, Any]]:
        """Optuna parameters of each enabled method's known-good configuration that fits the budget as is."""
        found = []
        for name, method in self.methods.items():
            params = method.warm_start(self.ctx, self.options[name])
            if params is None:
                continue
            params = self._with_learning_rate({"method": name, **params}, name)
            _, config = self.config_of(params, UNBOUNDED)
            if checked_count(method, self.ctx, config) <= self.budget:
                found.append(params)
            else:
                self.progress.line(f"autopeft: {name}'s default configuration exceeds the budget; not tried first")
        return found

    def adopt(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Another study's trial parameters made valid here (blocks mapped, rate clipped), or None.

        None when its method is not enabled here or a value is not among this study's choices.
        """
        name = params.get("method")
        if name not in self.methods:
            return None
        params = self._with_learning_rate(map_to_blocks(params, len(self.ctx.blocks)), name)
        try:
            self.config_of(params)
        except (ValueError, KeyError):
            return None
        return params

    # -- one trial --------------------------------------------------------------------------------

    def _learning_rate(self, trial: optuna.Trial, method: str) -> float:
        # Per method: the right rate for LoRA is orders of magnitude above full fine-tuning's.
        lr = self.config.train.learning_rate
        return (
            float(lr)
            if not isinstance(lr, list)
            else trial.suggest_float(f"{method}.learning_rate", lr[0], lr[1], log=True)
        )

    def _values(self, metric: float, n: int) -> float | tuple[float, float]:
        return (metric, float(n)) if self.config.multi_objective else metric

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """One trial. Faults inside it end that trial, recorded, and never the study: a NaN or
        infinite loss prunes it (``pruned_reason``); any other exception, out-of-memory included,
        fails it with ``error``, ``error_plugin`` and ``traceback`` attributes, after ``fit`` freed
        the model's memory. Ctrl-C (not an ``Exception``) still stops the study; the trial is
        marked ``interrupted``."""
        self.current = trial.number
        try:
            self._check_not_surplus(trial)
            return self._trial(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except NonFiniteLoss as exc:
            trial.set_user_attr("pruned_reason", str(exc))
            self.progress.line(f"[trial {trial.number}] pruned: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned:
            raise
        except Surplus as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except ValueError as exc:
            if "dynamic value space" in str(exc):  # the study file changed a choice list under the study
                self.fatal = ConfigError(
                    "search",
                    f"the study file changed the choices of a parameter of study {self.config.study.name!r} "
                    f"({first_line(exc)})",
                    "restore the choices, or give the study a new name (Optuna cannot change a study's choices)",
                )
            self._record_failure(trial, exc)
            raise
        except Exception as exc:
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
        trial.set_user_attr("error_plugin", self.plugins.get(name, "autopeft") if name else "autopeft")
        trial.set_user_attr("traceback", traceback.format_exc()[-8000:])
        self.progress.line(f"[trial {trial.number}] failed in {name or 'autopeft'}: {error}")

    def _check_not_surplus(self, trial: optuna.Trial) -> None:
        """Refuse a trial that two workers' simultaneous starts made one too many.

        Workers start a trial only while finished plus running trials are fewer than the target,
        but two can check at the same moment. The one that started later (by start time, then
        number: a queued retry can have a lower number than a new trial) then gives way, recorded
        as failed with ``surplus`` (failed trials do not count), and is never trained.
        """
        if self.target is None:
            return
        others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        me = next(t for t in others if t.number == trial.number)
        mine = (me.datetime_start, me.number)
        ahead = [t for t in others if t.state in FINISHED or t is not me and (t.datetime_start, t.number) < mine]
        if len(ahead) >= self.target:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"not run: other workers had started the study's last {self.target} trials")

    def _trial(self, trial: optuna.Trial) -> float | tuple[float, float]:
        metric = self.config.task.metric
        name = trial.suggest_categorical("method", self.method_choices)
        method = self.enabled[name]  # a recorded choice may no longer fit the budget: infeasible below
        learning_rate = self._learning_rate(trial, name)
        config = method.suggest(trial, self.ctx, self.options[name], self.budget)
        n = checked_count(method, self.ctx, config)
        seed = self.config.study.seed + trial.number
        set_user_attrs(
            trial,
            {
                "method": name,
                "config": json.dumps(config, sort_keys=True),
                "trainable_params": n,
                "trainable_share": n / self.ctx.total_params,
                "budget": self.budget,
                "seed": seed,
                "learning_rate": learning_rate,
                "versions": self.versions,
                "device": str(self.device),
                "worker": self.worker,
            },
        )
        trial.set_constraint("trainable_params", float(n - self.budget))
        label = (
            f"[trial {trial.number}] {name} {method.describe(config)} lr={learning_rate:.2e} {format_count(n)} params"
        )
        if n > self.budget:  # never trained: told to Optuna as infeasible through the constraint
            trial.set_user_attr("infeasible", True)
            self.progress.line(f"{label}: over budget ({format_count(self.budget)}), not trained")
            return self._values(self.task.worst(metric), n)
        self.progress.line(label)
        result, test = self.fit(
            method,
            config,
            learning_rate,
            seed,
            self._reporter(trial, n),
            trial.number,
            self._is_new_best(trial, n),
            self._keeper(trial, method, n),
        )
        set_user_attrs(
            trial,
            {
                "setup_seconds": result.setup_seconds,
                "train_seconds": result.train_seconds,
                "eval_seconds": result.eval_seconds,
                "train_tokens": result.train_tokens,
                "tokens_per_second": result.train_tokens / max(result.train_seconds, 1e-9),
                "peak_memory_mb": result.peak_memory_mb,
                "cached_blocks": result.cached_blocks,
                "cache_seconds": result.cache_seconds,
                "test_seconds": result.test_seconds,
                **({"test_metric": test} if test is not None else {}),
            },
        )
        return self._values(result.metric, n)

    def _keeper(self, trial: optuna.Trial, method: PeftMethod, n: int) -> Callable[[nn.Module, TrainResult], None]:
        """What happens to a trained model before it is freed: its size per block is recorded, and its
        weights are kept as artifacts when ``[study] keep_weights`` says so."""
        policy = self.config.study.keep_weights

        def keep(model: nn.Module, result: TrainResult) -> None:
            trial.set_user_attr("block_params", trainable_per_block(model, self.ctx))
            if policy == "all" or policy == "front" and on_front(trial.study, result.metric, n, self.budget):
                try:
                    keep_weights(self.config, trial, lambda directory: method.save(model, directory))
                except OSError as exc:  # a full or lost disk: the trial's result stands, its weights can be retrained
                    why = f"{exc.strerror or type(exc).__name__} ({exc.filename or self.config.artifacts_dir})"
                    trial.set_user_attr("weights_not_kept", why)
                    self.progress.line(
                        f"[trial {trial.number}] weights not kept: {why}; `autopeft export` retrains the trial"
                    )

        return keep

    def _reporter(self, trial: optuna.Trial, n: int) -> Callable[[int, float], None]:
        """The callback ``train`` reports intermediate metrics to; it raises TrialPruned to stop."""
        started = time.perf_counter()
        intermediate: dict[str, float] = {}

        def report(step: int, value: float) -> None:
            self.progress.close_bar()
            self.progress.line(f"[trial {trial.number}] step {step}: {self.config.task.metric} {value:.4f}")
            if self.config.multi_objective:  # Optuna cannot report here: keep the values for our pruner
                intermediate[str(step)] = value
                trial.set_user_attr("intermediate", intermediate)
                prune = self.pruner is not None and self.pruner.should_prune(trial.study, n, step, value)
            else:
                trial.report(value, step)
                prune = trial.should_prune()
            if prune:
                trial.set_user_attr("pruned_at_step", step)
                trial.set_user_attr("steps_saved", self.total_steps - step)
                trial.set_user_attr("seconds_before_pruning", time.perf_counter() - started)
                self.progress.line(f"[trial {trial.number}] pruned at step {step} ({value:.4f})")
                raise optuna.TrialPruned()

        return report

    def fit(
        self,
        method: PeftMethod,
        config: dict[str, Any],
        learning_rate: float,
        seed: int,
        report: Callable[[int, float], None] | None = None,
        label: int | str = "",
        test: Callable[[float], bool] | bool = False,
        on_trained: Callable[[nn.Module, TrainResult], None] | None = None,
    ) -> tuple[TrainResult, float | None]:
        """Train ``config`` from a pristine copy of the base model: (result, test metric or None).

        ``test`` says whether to score the test split, as a flag or as a function of the validation
        metric (trials score it only when they are the new best, to save the time). ``on_trained``
        sees the trained model before it is freed (to save its weights).
        """
        started = time.perf_counter()
        random.seed(seed)
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        model = method.apply(copy.deepcopy(self.base).requires_grad_(False), self.ctx, config).to(self.device)
        n = checked_count(method, self.ctx, config)
        actual = trainable_numel(model)
        if actual != n:
            raise PluginError(
                f"method {method.name!r} counted {n} trainable parameters but apply() made {actual} "
                "trainable; fix its count_trainable"
            )
        setup_seconds = time.perf_counter() - started
        try:
            started = time.perf_counter()
            cached = self._cache_prefix(model)
            cache_seconds = time.perf_counter() - started
            with self.prefix.attached(model, cached) if self.prefix and cached else contextlib.nullcontext():
                result = train(
                    model,
                    self.task,
                    self.data.train,
                    self.data.validation,
                    self.data.pad_token_id,
                    self.config.train,
                    learning_rate,
                    self.config.task.metric,
                    self.device,
                    seed,
                    report or (lambda step, value: None),
                    lambda step, total, loss: self.progress.step(label, step, total, loss),
                )
            result.setup_seconds, result.cached_blocks, result.cache_seconds = setup_seconds, cached, cache_seconds
            test_value = self._score_test(model, result, test)
            self.progress.line(
                f"[trial {label}] {self.config.task.metric} {result.metric:.4f} "
                f"(train {result.train_seconds:.1f}s, eval {result.eval_seconds:.1f}s)"
            )
            result.peak_memory_mb = self._peak_memory_mb()
            if on_trained is not None:
                on_trained(model, result)
            return result, test_value
        finally:
            del model
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _cache_prefix(self, model: nn.Module) -> int:
        """Blocks the prefix cache stands in for in this trial (0: none), their states computed now
        for the train and validation examples not cached yet. The test split is scored at most once
        a trial, where caching saves nothing, so it runs through the whole model."""
        if self.prefix is None:
            return 0
        probe = next(batches(self.data.train, 2, self.data.pad_token_id))
        probe.pop("labels")
        k = self.prefix.usable_blocks(model, {n: t.to(self.device) for n, t in probe.items()})
        if k:
            splits = [self.data.train, self.data.validation]
            with autocast_for(self.device, self.config.train.precision):  # the precision the prefix would train in
                self.prefix.fill(model, k, splits, self.data.pad_token_id, self.config.train.eval_batch_size)
        return k

    def _score_test(self, model: nn.Module, result: TrainResult, test: Callable[[float], bool] | bool) -> float | None:
        """The test metric when ``test`` says so (as a flag, or as a function of the validation metric)."""
        if self.data.test is None or not (test(result.metric) if callable(test) else test):
            return None
        started = time.perf_counter()
        value = self.task.evaluate(
            model,
            self.data.test,
            self.config.task.metric,
            self.data.pad_token_id,
            self.config.train.eval_batch_size,
            self.device,
            self.config.train.precision,
        )
        result.test_seconds = time.perf_counter() - started
        return value

    def _is_new_best(self, trial: optuna.Trial, n: int) -> Callable[[float], bool]:
        """Whether a validation metric makes this trial the new best (as :func:`best_trial` ranks)."""

        def better(value: float) -> bool:
            best = best_trial(trial.study)
            if best is None or best.values is None:
                return True
            sign = 1 if self.config.task.direction == "maximize" else -1
            return (sign * value, -n) > (sign * best.values[0], -best.user_attrs["trainable_params"])

        return better

    def _peak_memory_mb(self) -> float:
        """Peak CUDA memory of this trial; on CPU, the process's peak resident memory so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
