"""One trial, from ask to tell: choose a method, count, (maybe) train, record.

The expensive things happen once per worker in :class:`Objective`'s constructor: loading the base
model, tokenizing the data, discovering the blocks. Each trial then starts from a deep copy of the
pristine base model, because peft's ``get_peft_model`` changes a model in place.
"""

from __future__ import annotations

import copy
import gc
import json
import platform
import random
import resource
import time
from typing import Any

import optuna
import pluggy
import torch

from autopeft import __version__
from autopeft.blocks import build_context
from autopeft.budget import format_count, parse_budget
from autopeft.config import StudyConfig
from autopeft.data import load_task_data
from autopeft.errors import BudgetError, ConfigError, PluginError
from autopeft.methods import PeftMethod, trainable_numel
from autopeft.models import load_model, load_tokenizer, resolve_model_name
from autopeft.plugins import MethodInfo, registered_methods
from autopeft.progress import Progress
from autopeft.study import best_trial
from autopeft.train import evaluate, train

__all__ = ["Objective", "WORST", "library_versions", "pick_device"]

#: The value an infeasible trial reports: the worst the metric can be, so it never looks good.
WORST = {"accuracy": 0.0, "f1": 0.0, "mcc": -1.0}


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


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    """The callable Optuna optimizes; one instance per worker process."""

    def __init__(
        self,
        config: StudyConfig,
        pm: pluggy.PluginManager,
        progress: Progress | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.config, self.device = config, device or pick_device()
        self.progress = progress or Progress(quiet=True)
        methods = enabled_methods(config, pm)
        self.options = {
            name: info.method.check_options(config.search.options.get(name, {})) for name, info in methods.items()
        }

        self.model_source, offline = resolve_model_name(pm, config.model.name)
        tokenizer = load_tokenizer(config, self.model_source, offline)
        self.data = load_task_data(config, tokenizer)
        torch.manual_seed(config.study.seed)  # the new task head is drawn while loading: same seed, same head
        self.base = load_model(config, self.model_source, offline, len(self.data.label_names), tokenizer.pad_token_id)
        self.ctx = build_context(self.base)
        try:
            self.budget = parse_budget(config.budget.max_trainable, self.ctx.total_params)
        except ValueError as exc:
            raise ConfigError("budget.max_trainable", str(exc), 'use e.g. "0.5%" or "150k"') from None

        smallest = {
            n: i.method.count_trainable(self.ctx, i.method.smallest(self.ctx, self.options[n]))
            for n, i in methods.items()
        }
        self.methods = {n: i.method for n, i in methods.items() if smallest[n] <= self.budget}
        if not self.methods:
            cheapest = min(smallest, key=smallest.__getitem__)
            raise BudgetError(
                f"budget.max_trainable: {format_count(self.budget)} parameters fit no configuration; the "
                f"smallest is {cheapest} with {format_count(smallest[cheapest])}: raise the budget to at least "
                f"{smallest[cheapest]} or enable a smaller method"
            )
        for name in set(methods) - set(self.methods):
            self.progress.line(
                f"autopeft: method {name!r} skipped: its smallest configuration "
                f"({format_count(smallest[name])}) exceeds the budget ({format_count(self.budget)})"
            )
        self.versions = library_versions()

    def warm_start_params(self) -> list[dict[str, Any]]:
        """Optuna parameters of each enabled method's known-good configuration, to enqueue first."""
        lr = self.config.train.learning_rate
        found = []
        for name, method in self.methods.items():
            params = method.warm_start(self.ctx, self.options[name])
            if params is None:
                continue
            found.append({"method": name, **params})
            if isinstance(lr, list):
                found[-1][f"{name}.learning_rate"] = min(max(method.default_learning_rate, lr[0]), lr[1])
        return found

    def _learning_rate(self, trial: optuna.Trial, method: str) -> float:
        # Per method: the right rate for LoRA is orders of magnitude above full fine-tuning's.
        lr = self.config.train.learning_rate
        return (
            float(lr)
            if not isinstance(lr, list)
            else trial.suggest_float(f"{method}.learning_rate", lr[0], lr[1], log=True)
        )

    def __call__(self, trial: optuna.Trial) -> float:
        metric = self.config.task.metric
        name = trial.suggest_categorical("method", list(self.methods))
        method = self.methods[name]
        learning_rate = self._learning_rate(trial, name)
        config = method.suggest(trial, self.ctx, self.options[name], self.budget)
        n = method.count_trainable(self.ctx, config)
        seed = self.config.study.seed + trial.number
        for key, value in {
            "method": name,
            "config": json.dumps(config, sort_keys=True),
            "trainable_params": n,
            "trainable_share": n / self.ctx.total_params,
            "budget": self.budget,
            "seed": seed,
            "learning_rate": learning_rate,
            "versions": self.versions,
            "device": str(self.device),
        }.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("trainable_params", float(n - self.budget))
        label = (
            f"[trial {trial.number}] {name} {method.describe(config)} lr={learning_rate:.2e} {format_count(n)} params"
        )
        if n > self.budget:  # never trained: told to Optuna as infeasible through the constraint
            trial.set_user_attr("infeasible", True)
            self.progress.line(f"{label}: over budget ({format_count(self.budget)}), not trained")
            return WORST[metric]
        self.progress.line(label)
        return self._train(trial, method, config, n, learning_rate, seed)

    def _train(
        self, trial: optuna.Trial, method: PeftMethod, config: dict[str, Any], n: int, learning_rate: float, seed: int
    ) -> float:
        started = time.perf_counter()
        random.seed(seed)
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        model = method.apply(copy.deepcopy(self.base).requires_grad_(False), self.ctx, config).to(self.device)
        actual = trainable_numel(model)
        if actual != n:
            raise PluginError(
                f"method {method.name!r} counted {n} trainable parameters but apply() made {actual} "
                "trainable; fix its count_trainable"
            )
        trial.set_user_attr("setup_seconds", time.perf_counter() - started)
        training_started = time.perf_counter()

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            self.progress.close_bar()
            self.progress.line(f"[trial {trial.number}] step {step}: {self.config.task.metric} {value:.4f}")
            if trial.should_prune():
                trial.set_user_attr("pruned_at_step", step)
                trial.set_user_attr("seconds_before_pruning", time.perf_counter() - training_started)
                self.progress.line(f"[trial {trial.number}] pruned at step {step} ({value:.4f})")
                raise optuna.TrialPruned()

        try:
            result = train(
                model,
                self.data.train,
                self.data.validation,
                self.data.pad_token_id,
                self.config.train,
                learning_rate,
                self.config.task.metric,
                self.device,
                seed,
                report,
                lambda step, total, loss: self.progress.step(trial.number, step, total, loss),
            )
            trial.set_user_attr("train_seconds", result.train_seconds)
            trial.set_user_attr("eval_seconds", result.eval_seconds)
            trial.set_user_attr("train_tokens", result.train_tokens)
            trial.set_user_attr("tokens_per_second", result.train_tokens / max(result.train_seconds, 1e-9))
            if self.data.test is not None and self._is_new_best(trial, result.metric):
                trial.set_user_attr(
                    "test_metric",
                    evaluate(
                        model,
                        self.data.test,
                        self.data.pad_token_id,
                        self.config.train.eval_batch_size,
                        self.config.task.metric,
                        self.device,
                    ),
                )
            self.progress.line(
                f"[trial {trial.number}] {self.config.task.metric} {result.metric:.4f} "
                f"(train {result.train_seconds:.1f}s, eval {result.eval_seconds:.1f}s)"
            )
            return result.metric
        finally:
            trial.set_user_attr("peak_memory_mb", self._peak_memory_mb())
            del model
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _is_new_best(self, trial: optuna.Trial, value: float) -> bool:
        best = best_trial(trial.study)
        return best is None or best.value is None or value > best.value

    def _peak_memory_mb(self) -> float:
        """Peak CUDA memory of this trial; on CPU, the process's peak resident memory so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
