"""The workbench: everything a worker loads once, and the one operation on it, ``fit``.

Loading the base model, tokenizing the data and discovering the blocks take seconds to minutes;
a trial takes the rest. A :class:`Workbench` does the loading once per process and then trains any
configuration of any enabled method, at any fidelity, on the base model itself, which stays resident
on its device and is given back unchanged after every trial (:mod:`autopeft.training.resident`). The search
(:mod:`autopeft.search.objective`), ``plan``, ``confirm``, ``export`` and the benchmarks all train through
:meth:`Workbench.fit`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import itertools
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autopeft._version import __version__
from autopeft.blocks import build_context
from autopeft.budget import format_count, parse_budget
from autopeft.data import SMALL_VALIDATION_EXAMPLES, batches
from autopeft.errors import AutopeftError, BudgetError, ConfigError, FitError, ModelError, PluginError, first_line
from autopeft.methods import PeftMethod, checked_count, plugin_call, trainable_numel
from autopeft.precision import autocast_for
from autopeft.progress import Progress
from autopeft.registry import MethodInfo, ResolvedStudy, registered_methods
from autopeft.tasks import EvalSettings, GenerationSettings, LossTally, validation_loss
from autopeft.training.memory import require_memory
from autopeft.training.models import (
    is_quantized,
    load_study_base,
    load_tokenizer,
    resolve_model_name,
    with_base_precision,
    with_padding,
    within_model_limit,
)
from autopeft.training.prefix_cache import PrefixCache
from autopeft.training.resident import BaseChanged, BaseLender
from autopeft.training.token_cache import load_cached_task_data
from autopeft.training.train import FULL, Fidelity, TrainResult, train
from autopeft.training.user_fit import as_dataset, call_user_fit

__all__ = [
    "Workbench",
    "UNBOUNDED",
    "library_versions",
    "pick_device",
    "enabled_methods",
    "peak_rss_mb",
    "quantized_misfits",
]

#: A budget no configuration reaches: what a method samples when nothing constrains it.
UNBOUNDED = 2**62
#: Keys of a ``[search.<method>]`` table that the study reads (StudyConfig), not the method.
_STUDY_KEYS = ("warm_start", "learning_rate")


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
    """The device ``[train] device`` asks for: for ``auto``, CUDA when present, else Apple's MPS, else
    the CPU. Asking for ``cuda`` or ``mps`` on a machine without one falls back to the CPU and says so
    through ``say``."""
    if wanted == "cpu":
        return torch.device("cpu")
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    for kind in ("cuda", "mps"):
        if has[kind] and wanted in ("auto", kind):
            return torch.device(kind)
    if wanted != "auto":
        say(f"autopeft: train.device = {wanted!r} but no such device is visible here; training on the CPU")
    return torch.device("cpu")


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB. On Linux, ``VmHWM`` of ``/proc/self/status``: the
    ``ru_maxrss`` there survives ``exec``, so a worker started by a larger process would report its
    parent's peak. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on other Unixes); 0 where there is
    neither (Windows)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    try:
        import resource  # Unix only: imported where it is used
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def quantized_misfits(methods: dict[str, PeftMethod], kind: str) -> dict[str, str]:
    """Why each of ``methods`` cannot train on a base quantized as ``kind`` (those that do not declare
    :attr:`~autopeft.methods.PeftMethod.trains_quantized`)."""
    return {
        name: f"it cannot train on a quantized ({kind}) base: it trains or wraps base weights bitsandbytes stores "
        "packed"
        for name, method in methods.items()
        if not method.trains_quantized
    }


def enabled_methods(resolved: ResolvedStudy) -> dict[str, MethodInfo]:
    """The study's methods, in its order. Raises PluginError naming the installed ones."""
    installed = registered_methods(resolved.pm)
    unknown = [m for m in resolved.config.search.methods if m not in installed]
    if unknown:
        raise PluginError(
            f"search.methods: unknown method {unknown[0]!r}; installed methods: "
            f"{', '.join(sorted(installed))} (see `autopeft plugins`)"
        )
    return {m: installed[m] for m in resolved.config.search.methods}


def _needs_own_loop(method: PeftMethod) -> bool:
    """Whether ``method`` trains only in autopeft's loop: it steps each update (AdaLoRA's rank budget)
    or brings its own optimizer, which a user's training function would not call."""
    return type(method).on_step is not PeftMethod.on_step or type(method).optimizer is not PeftMethod.optimizer


def _trained_in_fp32(model: nn.Module) -> nn.Module:
    """Every trained parameter of ``model`` in fp32, whatever the base is stored in (a bf16 head copy,
    bf16 biases BitFit trains): updates smaller than bf16's resolution would otherwise round away.
    The resident base's own tensors get their dtype back from :class:`~autopeft.training.resident.BaseLender`."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


class Workbench:
    """A study's model, data and methods, loaded once per worker; :meth:`fit` trains one configuration.

    Args:
        resolved: the study file with its task and plugins (:func:`autopeft.registry.resolve_study`).
        write_cache: keep the tokenized data in the study's token cache (``autopeft plan``, which
            trains nothing, passes False: it reads a cache that is there, and writes none).
    """

    def __init__(
        self,
        resolved: ResolvedStudy,
        progress: Progress | None = None,
        device: torch.device | None = None,
        write_cache: bool = True,
    ) -> None:
        self.config = config = resolved.config
        self.task = resolved.task
        self.progress = progress or Progress(quiet=True)
        self.device = device or pick_device(config.train.device, self.progress.line)
        infos = enabled_methods(resolved)
        self.enabled = {name: info.method for name, info in infos.items()}
        #: Where each method comes from, for failure records: "lora from autopeft 0.1.0".
        self.plugins = {name: f"{info.plugin} from {info.distribution} {info.version}" for name, info in infos.items()}
        self.options = {  # warm_start and learning_rate are the study's, not the method's
            name: method.check_options(
                {k: v for k, v in config.search.options.get(name, {}).items() if k not in _STUDY_KEYS}
            )
            for name, method in self.enabled.items()
        }

        #: The user's own training function (``autopeft.tune(..., fit=...)``), or None: autopeft's loop.
        self.user_fit = resolved.fit
        self._fit_data: tuple[Any, Any] | None = None  # the splits as datasets, for the user's fit
        self._loaded = resolved.loaded  # a model and tokenizer handed over from Python, trained on in place
        if self._loaded is not None:
            self.model_source, self._offline = config.model.name, True
            self.tokenizer = tokenizer = with_padding(self._loaded[1])
        else:
            self.model_source, self._offline = resolve_model_name(resolved.pm, config.model.name)
            self.tokenizer = tokenizer = load_tokenizer(config.model, self.model_source, self._offline)
        self._pad_token_id = tokenizer.pad_token_id
        self.config = config = within_model_limit(config, tokenizer, self.model_source, self._offline, self.progress)
        self.data, _ = load_cached_task_data(config, tokenizer, self.task, write=write_cache)
        for note in self.data.notes:  # rows dropped, a class train lacks, a tiny validation split
            self.progress.line(note)
        self._load_base()
        config = self.config  # with the base's precision
        try:
            self.budget = parse_budget(config.budget.max_trainable, self.ctx.total_params)
        except ValueError as exc:
            raise ConfigError("budget.max_trainable", str(exc), 'use e.g. "0.5%" or "150k"') from None
        self.evaluation = EvalSettings(
            self.data.pad_token_id,
            config.train.eval_batch_size,
            self.device,
            config.train.precision,
            tuple(str(name) for name in self.data.label_names),
            tokenizer=tokenizer,
            generation=GenerationSettings(config.task.max_new_tokens, self._stop_token_ids()),
        )

        self.smallest = {n: self.count(n, "smallest") for n in self.enabled}
        #: The enabled methods whose smallest configuration fits the budget, and that train something here.
        self.methods = {n: m for n, m in self.enabled.items() if self.smallest[n] <= self.budget}
        #: Why each enabled method that is not searched was left out.
        self.skipped = {
            name: f"its smallest configuration ({format_count(self.smallest[name])}) exceeds the budget "
            f"({format_count(self.budget)})"
            for name in self.enabled
            if name not in self.methods
        }
        for name in [n for n in self.methods if self.smallest[n] == 0 and self.count(n, "largest") == 0]:
            del self.methods[name]  # e.g. BitFit in a language model without biases: it would train nothing
            self.skipped[name] = "it has nothing to train in this model"
        if self.user_fit is not None:  # the user's loop calls no per-step hook and builds its own optimizer
            for name in [n for n, m in self.methods.items() if _needs_own_loop(m)]:
                del self.methods[name]
                self.skipped[name] = "it needs autopeft's own loop (a per-step hook or its own optimizer), not fit"
        if config.model.quantization:
            for name, why in quantized_misfits(self.methods, config.model.quantization).items():
                del self.methods[name]
                self.skipped[name] = why
        #: What a model that learned nothing scores: {"name": "majority class", "value": 0.58, "loss": 0.68}
        #: ("loss": the task's loss of the best such predictor, where the task gives one), or None.
        #: With the base model's own score too (Task.model_baseline), the weaker of the two is the
        #: one a trial must beat, and the other is listed under "also".
        self.baseline = self._baselines()
        self.versions = library_versions()
        require_memory(self)

    def _stop_token_ids(self) -> tuple[int, ...]:
        """The tokens that end a generated answer: the tokenizer's end of sequence, and the base's
        own (``generation_config``: a chat model ends its turn with a token of its own)."""
        found = {self.tokenizer.eos_token_id}
        generation = getattr(self.base, "generation_config", None)
        ends = getattr(generation, "eos_token_id", None)
        found |= set(ends) if isinstance(ends, list) else {ends}
        return tuple(sorted(t for t in found if isinstance(t, int)))

    def _baselines(self) -> dict[str, Any] | None:
        """The study's baseline record (see :attr:`baseline`): the task's no-learning predictor and the
        untuned base model, scored on the validation split."""
        metric = self.config.task.metric
        found = [self.task.baseline(self.data.train, self.data.validation, metric)]
        found.append(self.task.model_baseline(self.base, self.data.validation, metric, self.evaluation))
        named = [{"name": name, "value": float(value)} for name, value in (f for f in found if f is not None)]
        if not named:
            return None
        sign = 1 if self.config.task.direction != "minimize" else -1
        named.sort(key=lambda b: sign * b["value"])  # the weaker first: a trial that beats neither is marked
        record: dict[str, Any] = {**named[0], **({"also": named[1:]} if len(named) > 1 else {})}
        loss = self.task.baseline_loss(self.data.train, self.data.validation)
        if loss is not None:
            record["loss"] = loss
        return record

    def _load_base(self) -> None:
        """Load the base model onto the device, where it stays for every trial, with what depends on
        it: the blocks (``ctx``), the lender that gives it back after each trial, the prefix cache."""
        if self._loaded is not None:
            self.base, self.config = self._loaded_base()
        else:
            self.base, self.config = load_study_base(
                self.config,
                self.model_source,
                self._offline,
                self.task,
                self.data.label_names,
                self._pad_token_id,
                self.device,
            )
        config = self.config
        self._placed = is_quantized(self.base) or config.model.device_map is not None
        try:
            self.ctx = build_context(self.base, new_head=self.task.new_head)
        except ValueError as exc:  # no repeated blocks: nothing any method could adapt
            raise ModelError(
                f"model.name: found no transformer blocks in {config.model.name!r}"
                + (f" with overrides {config.model.overrides}" if config.model.overrides else "")
                + f" ({first_line(exc)}); check model.overrides (e.g. num_hidden_layers >= 1)"
            ) from None
        self.lender = BaseLender(self.base)
        # A generated token is no cached example: a task that generates runs without the prefix cache.
        cached = config.train.prefix_cache and not self.task.generates and self.user_fit is None
        self.prefix = PrefixCache(self.base, self.ctx) if cached else None
        if self.prefix is not None:
            self.prefix.remember_base(self._probe())

    def _loaded_base(self) -> tuple[nn.Module, Any]:
        """The model handed over from Python as the resident base: checked for the task's head, frozen,
        on the device, its classes named.

        Raises:
            ModelError: it lacks the task's head (a bare model: which class to load instead), or has
                another number of classes.
            FitError: a trial changed its frozen weights, and there is no file to load it again from.
        """
        model, task, names = self._loaded[0], self.task, self.data.label_names  # type: ignore[index]
        if getattr(self, "lender", None) is not None:  # a trial changed it: no file to load it again from
            raise FitError(
                "model",
                f"a trial changed the loaded model's frozen weight {self.lender.changed[0]!r}",
                "load the model again, fix the fit so that it leaves frozen weights alone, and call tune again",
            )
        wanted = task.auto_model.removeprefix("AutoModel")
        if not type(model).__name__.endswith(wanted):
            raise ModelError(
                f"model: a {type(model).__name__} has no {task.name} head; load it with "
                f"transformers.{task.auto_model}.from_pretrained(...)"
                + (f" with num_labels={len(names)}" if names else "")
            )
        config: Any = model.config
        if names and getattr(config, "num_labels", len(names)) != len(names):
            raise ModelError(
                f"model: the loaded model has {config.num_labels} classes and the data {len(names)} ({names}); load it "
                f"with {task.auto_model}.from_pretrained(..., num_labels={len(names)})"
            )
        if names:
            config.id2label = {i: str(label) for i, label in enumerate(names)}
            config.label2id = {str(label): i for i, label in enumerate(names)}
        if config.pad_token_id is None:
            config.pad_token_id = self._pad_token_id
        base = model if is_quantized(model) or getattr(model, "hf_device_map", None) else model.to(self.device)
        return base.requires_grad_(False), with_base_precision(self.config, base)

    @property
    def baseline_value(self) -> float | None:
        """The baseline's metric alone, or None where the task has none."""
        return None if self.baseline is None else float(self.baseline["value"])

    def count(self, name: str, which: str) -> int:
        """The trainable count of method ``name``'s ``"smallest"`` or ``"largest"`` configuration; a
        plugin that fails here is one line."""
        method = self.enabled[name]
        bound = getattr(method, which)
        return checked_count(method, self.ctx, plugin_call(method, which, lambda: bound(self.ctx, self.options[name])))

    def no_fit(self) -> str | None:
        """Why no enabled method fits the budget, as the one-line fix; None when one does."""
        if self.methods:
            return None
        if all(n <= self.budget for n in self.smallest.values()):  # they fit, and have nothing to train
            return (
                f"search.methods: no enabled method has anything to train in {self.config.model.name!r}; "
                "enable another method (e.g. lora)"
            )
        cheapest = min(self.smallest, key=self.smallest.__getitem__)
        return (
            f"budget.max_trainable: {format_count(self.budget)} parameters fit no configuration; the smallest is "
            f"{cheapest} with {format_count(self.smallest[cheapest])}: raise the budget to at least "
            f"{self.smallest[cheapest]} or enable a smaller method"
        )

    def require_a_fit(self) -> None:
        """Say which methods are left out, and why.

        Raises:
            BudgetError: no enabled method fits the budget (the search would have nothing to train).
        """
        if (why := self.no_fit()) is not None:
            raise BudgetError(why)
        for name, why in self.skipped.items():
            self.progress.line(f"autopeft: method {name!r} skipped: {why}")

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

    def fit(
        self,
        method: PeftMethod | str,
        config: dict[str, Any],
        *,
        learning_rate: float,
        seed: int,
        fidelity: Fidelity = FULL,
        on_report: Callable[[int, float], bool] | None = None,
        on_loss: Callable[[int, float], None] | None = None,
        test: Callable[[float], bool] | bool = False,
        on_trained: Callable[[nn.Module, TrainResult], None] | None = None,
        label: int | str = "",
        score_loss: bool = False,
    ) -> TrainResult:
        """Train ``config`` of ``method`` (an instance or an enabled method's name) on the resident
        base model, given back unchanged afterwards, with ``seed``, at ``fidelity``.

        Args:
            on_report: sees ``(step, validation metric)`` at each reporting point before the last;
                True stops the fit there (pruning, successive halving): ``result.stopped_at``.
            on_loss: sees ``(step, training loss)`` after every optimizer step.
            test: whether to score the test split, as a flag or as a function of the validation
                metric (trials score it only when they are the new best, to save the time).
            on_trained: sees the trained model before it is freed (to save its weights).
            score_loss: also score the validation loss (``result.validation_loss``), which a race's
                short rungs rank by; a generation metric is then read from that same pass
                (:func:`~autopeft.tasks.teacher_forced_answers`) instead of generating.
            label: names the fit in progress lines (the trial number).

        Raises:
            PluginError: the method made a different number of parameters trainable than it counted.
            NonFiniteLoss: the loss became NaN or infinite.
        """
        method = self.enabled[method] if isinstance(method, str) else method
        started = time.perf_counter()
        random.seed(seed)
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self._trial_model(method, config) as model:
            if type(method).initialize is not PeftMethod.initialize:
                method.initialize(model, self.first_batches(8))
            n = checked_count(method, self.ctx, config)
            actual = trainable_numel(model)
            if actual != n:
                raise PluginError(
                    f"method {method.name!r} counted {n} trainable parameters but apply() made {actual} "
                    "trainable; fix its count_trainable"
                )
            setup_seconds = time.perf_counter() - started
            started = time.perf_counter()
            cached = self._cache_prefix(model)
            cache_seconds = time.perf_counter() - started
            overrides_step = type(method).on_step is not PeftMethod.on_step
            tally = LossTally(self.task.loss) if score_loss else None  # the last validation pass's loss
            evaluation = self._ranked_by_loss() if score_loss else self.evaluation
            if self.user_fit is not None:
                result = self._user_fit(model, learning_rate, seed, fidelity, on_report)
            else:
                with self.prefix.attached(model, cached) if self.prefix and cached else contextlib.nullcontext():
                    result = train(
                        model,
                        self.task,
                        self.data,
                        self.config.train,
                        dataclasses.replace(evaluation, tally=tally) if tally else evaluation,
                        learning_rate=learning_rate,
                        metric=self.config.task.metric,
                        seed=seed,
                        fidelity=fidelity,
                        optimizer=method.optimizer(model, config, learning_rate, self.config.train.weight_decay),
                        on_report=on_report,
                        on_step=functools.partial(method.on_step, model) if overrides_step else None,
                        progress=self._progress(label, on_loss),
                    )
            result.setup_seconds, result.cached_blocks, result.cache_seconds = setup_seconds, cached, cache_seconds
            result.trained_count = method.trained_count(model)
            if result.stopped_at is None:  # stopped by the caller: not a result to test or keep
                self._score_test(model, result, test)
                if tally is not None:
                    result.validation_loss = tally.mean
                if tally is not None and result.validation_loss is None:  # a task that evaluates its own way
                    started = time.perf_counter()
                    result.validation_loss = validation_loss(self.task, model, self.data.validation, self.evaluation)
                    result.eval_seconds += time.perf_counter() - started
            result.peak_memory_mb = self._peak_memory_mb()
            if result.stopped_at is not None:
                return result
            result.metric_se = self._standard_error(result.metric)
            spread = "" if result.metric_se is None else f" ± {result.metric_se:.4f} (standard error)"
            self.progress.line(
                f"[trial {label}] {self.config.task.metric} {result.metric:.4f}{spread} "
                f"(train {result.train_seconds:.1f}s, eval {result.eval_seconds:.1f}s)"
            )
            if on_trained is not None:
                on_trained(model, result)
            return result

    def _ranked_by_loss(self) -> EvalSettings:
        """The evaluation of a fit ranked by its validation loss: a generating task reads its metric
        from the loss pass's teacher-forced answers instead of generating (on the instruction
        study's first rung, generating took more time than training: benchmarks/README.md)."""
        generation = dataclasses.replace(self.evaluation.generation, teacher_forced=True)
        return dataclasses.replace(self.evaluation, generation=generation)

    def _user_fit(
        self,
        model: nn.Module,
        learning_rate: float,
        seed: int,
        fidelity: Fidelity,
        on_report: Callable[[int, float], bool] | None,
    ) -> TrainResult:
        """One fit by the user's own training function (:mod:`autopeft.training.user_fit`), on the
        splits as datasets (made once)."""
        if self._fit_data is None:
            self._fit_data = (as_dataset(self.data.train), as_dataset(self.data.validation))
        return call_user_fit(
            self.user_fit,
            model,
            self.tokenizer,
            self._fit_data,
            learning_rate=learning_rate,
            max_steps=fidelity.total_steps(self.data.train, self.config.train),
            seed=seed,
            on_report=on_report,
        )

    @contextlib.contextmanager
    def _trial_model(self, method: PeftMethod, config: dict[str, Any]) -> Iterator[nn.Module]:
        """``method`` applied to the resident base for one fit (to a copy of it when the method
        declares ``modifies_base``), everything freed and the base given back afterwards.

        Raises:
            PluginError: the method changed a frozen base weight in place without declaring it; the
                base is loaded again for the next fit.
        """

        def apply(base: nn.Module) -> nn.Module:
            model = method.apply(base, self.ctx, config)
            # What a method adds on another device joins the base, unless transformers placed it (a
            # quantized base cannot move; a device map spans devices).
            return model if self._placed else model.to(self.device)

        try:
            if method.modifies_base:
                yield _trained_in_fp32(apply(copy.deepcopy(self.base).requires_grad_(False)))
            else:
                with self.lender.lend(apply) as model:
                    yield _trained_in_fp32(model)
                    del model
        except BaseChanged as exc:
            if self.user_fit is not None:
                raise PluginError(
                    f"fit changed the frozen base weight {exc.names[0]!r} in place (a precision cast, a merge, an "
                    "optimizer over every parameter?); train only what requires a gradient"
                ) from None
            raise PluginError(
                f"method {method.name!r} changed the frozen base weight {exc.names[0]!r} in place; a method that "
                "rewrites base weights must set modifies_base = True (the base was loaded again)"
            ) from None
        finally:
            if self.lender.changed:
                self._load_base()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _progress(
        self, label: int | str, on_loss: Callable[[int, float], None] | None
    ) -> Callable[[int, int, float], None]:
        """The training loop's per-step callback: the progress bar, and ``on_loss``."""

        def step(done: int, total: int, loss: float) -> None:
            self.progress.step(label, done, total, loss)
            if on_loss is not None:
                on_loss(done, loss)

        return step

    def first_batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        """The first ``count`` training batches in the split's order (the same every time), on the
        device: what data-driven initialisations (:meth:`PeftMethod.initialize`) and the zero-cost
        proxy look at."""
        found = itertools.islice(batches(self.data.train, self.config.train.batch_size, self.data.pad_token_id), count)
        return [{name: t.to(self.device) for name, t in batch.items()} for batch in found]

    def _probe(self) -> dict[str, torch.Tensor]:
        """The first two training examples without labels, on the device: what the prefix cache
        compares a trial's model with the base on."""
        probe = next(batches(self.data.train, 2, self.data.pad_token_id))
        probe.pop("labels")
        return {n: t.to(self.device) for n, t in probe.items()}

    def _cache_prefix(self, model: nn.Module) -> int:
        """Blocks the prefix cache stands in for in this fit (0: none), their states computed now
        for the train and validation examples not cached yet. The test split is scored at most once
        a fit, where caching saves nothing, so it runs through the whole model."""
        if self.prefix is None:
            return 0
        k = self.prefix.usable_blocks(model, self._probe())
        if k:
            splits = [self.data.train, self.data.validation]
            with autocast_for(self.device, self.config.train.precision):  # the precision the prefix would train in
                self.prefix.fill(model, k, splits, self.data.pad_token_id, self.config.train.eval_batch_size)
        return k

    def _standard_error(self, value: float) -> float | None:
        """The validation metric's standard error (:meth:`~autopeft.tasks.Task.standard_error`) when
        the split has fewer than :data:`~autopeft.data.SMALL_VALIDATION_EXAMPLES` examples, else None;
        a task plugin that fails to say is None too, never a failed trial."""
        if len(self.data.validation) >= SMALL_VALIDATION_EXAMPLES:
            return None
        try:
            found = self.task.standard_error(self.data.validation, self.config.task.metric, value)
        except Exception:  # a third-party task's estimate is a courtesy: it never fails a fit
            return None
        return float(found) if isinstance(found, (int, float)) and math.isfinite(found) else None

    def _score_test(self, model: nn.Module, result: TrainResult, test: Callable[[float], bool] | bool) -> None:
        """Set ``result.test_metric`` when ``test`` says so (a flag, or a function of the validation metric)."""
        if self.data.test is None or not (test(result.metric) if callable(test) else test):
            return
        started = time.perf_counter()
        result.test_metric = self.task.evaluate(model, self.data.test, self.config.task.metric, self.evaluation)
        result.test_seconds = time.perf_counter() - started

    def score_saved_on_test(self, method: PeftMethod | str, config: dict[str, Any], directory: Path) -> float:
        """The test split's metric of the weights ``method.save`` wrote to ``directory`` for
        ``config``: what a race scores its recommendation by once it is decided, instead of testing
        every final training (:mod:`autopeft.search.race_test`).

        Raises:
            ValueError: the study has no test split.
        """
        if self.data.test is None:
            raise ValueError("the study has no test split")
        method = self.enabled[method] if isinstance(method, str) else method
        with self._trial_model(method, config) as model:
            method.load(model, directory)
            return self.task.evaluate(model, self.data.test, self.config.task.metric, self.evaluation)

    def _peak_memory_mb(self) -> float:
        """Peak CUDA memory of this fit; on MPS, what the driver holds now; on a CPU, the process's
        peak resident memory so far (:func:`peak_rss_mb`)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.device.type == "mps":
            return float(torch.mps.driver_allocated_memory()) / 2**20
        return peak_rss_mb()
