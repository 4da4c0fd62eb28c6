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
from autopeft.config import StudyConfig
from autopeft.data import SMALL_VALIDATION_EXAMPLES, batches
from autopeft.errors import AutopeftError, BudgetError, ConfigError, ModelError, PluginError, first_line
from autopeft.methods import PeftMethod, checked_count, plugin_call, trainable_numel
from autopeft.precision import autocast_for, uses_bf16
from autopeft.progress import Progress
from autopeft.registry import MethodInfo, ResolvedStudy, registered_methods
from autopeft.tasks import EvalSettings
from autopeft.training.models import is_quantized, load_study_base, load_tokenizer, resolve_model_name
from autopeft.training.prefix_cache import PrefixCache
from autopeft.training.resident import BaseChanged, BaseLender
from autopeft.training.token_cache import load_cached_task_data
from autopeft.training.train import FULL, Fidelity, TrainResult, train

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

        self.model_source, self._offline = resolve_model_name(resolved.pm, config.model.name)
        tokenizer = load_tokenizer(config.model, self.model_source, self._offline)
        self._pad_token_id = tokenizer.pad_token_id
        self.config = config = self._within_model_limit(tokenizer)
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
        )

        self.smallest = {n: self._count(n, "smallest") for n in self.enabled}
        #: The enabled methods whose smallest configuration fits the budget, and that train something here.
        self.methods = {n: m for n, m in self.enabled.items() if self.smallest[n] <= self.budget}
        #: Why each enabled method that is not searched was left out.
        self.skipped = {
            name: f"its smallest configuration ({format_count(self.smallest[name])}) exceeds the budget "
            f"({format_count(self.budget)})"
            for name in self.enabled
            if name not in self.methods
        }
        for name in [n for n in self.methods if self.smallest[n] == 0 and self._count(n, "largest") == 0]:
            del self.methods[name]  # e.g. BitFit in a language model without biases: it would train nothing
            self.skipped[name] = "it has nothing to train in this model"
        if config.model.quantization:
            for name, why in quantized_misfits(self.methods, config.model.quantization).items():
                del self.methods[name]
                self.skipped[name] = why
        found = self.task.baseline(self.data.train, self.data.validation, config.task.metric)
        #: What a model that learned nothing scores: {"name": "majority class", "value": 0.58}, or None.
        self.baseline: dict[str, Any] | None = {"name": found[0], "value": found[1]} if found else None
        self.versions = library_versions()
        self._require_memory()

    def _load_base(self) -> None:
        """Load the base model onto the device, where it stays for every trial, with what depends on
        it: the blocks (``ctx``), the lender that gives it back after each trial, the prefix cache."""
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
        self.prefix = PrefixCache(self.base, self.ctx) if config.train.prefix_cache else None
        if self.prefix is not None:
            self.prefix.remember_base(self._probe())

    def _within_model_limit(self, tokenizer: Any) -> StudyConfig:
        """The study config with ``data.max_length`` cut to the longest input the model takes
        (:func:`model_length_limit`), saying so once: longer inputs fail in the position embeddings,
        or grow memory without bound."""
        config = self.config
        found = model_length_limit(tokenizer, _model_config(config.model, self.model_source, self._offline))
        if found is None or config.data.max_length <= found[0]:
            return config
        limit, where = found
        self.progress.line(
            f"autopeft: data.max_length = {config.data.max_length} is more than the {limit} tokens the model "
            f"takes ({where}); training with {limit}: set data.max_length = {limit} or less to silence this"
        )
        return dataclasses.replace(config, data=dataclasses.replace(config.data, max_length=limit))

    def _require_memory(self) -> None:
        """Refuse, before the first trial, a batch that cannot fit the memory left on the device
        once the base is loaded (:func:`step_memory_bytes` against :func:`available_memory`).

        Raises:
            ConfigError: naming the setting to lower (``train.batch_size`` or
                ``train.eval_batch_size``, and ``data.max_length``).
        """
        found = available_memory(self.device)
        if found is None:
            return
        free, what = found
        settings, data = self.config.train, self.data
        model_config = getattr(self.base, "config", None)
        heads = next(
            (
                v
                for name in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
                if isinstance(v := getattr(model_config, name, None), int) and v > 0
            ),
            max(self.ctx.embedding_dim // 64, 1),
        )
        width, layers = max(self.ctx.embedding_dim, 1), max(len(self.ctx.blocks), 1)
        if self.task.new_head:
            outputs = max(len(data.label_names), 1)
        else:  # a language model's logits span its vocabulary
            embed = getattr(self.base, "get_input_embeddings", None)
            embeddings = embed() if callable(embed) else None
            outputs = int(getattr(embeddings, "num_embeddings", 0) or getattr(model_config, "vocab_size", 1) or 1)
        half = settings.precision in ("bf16", "fp16") or uses_bf16(self.device, settings.precision)
        largest = [self._count(n, "largest") for n in self.methods]
        trainable = min(self.budget, max(largest, default=0))
        copied = 0
        if any(m.modifies_base for m in self.methods.values()):  # such a method trains a copy of the base
            copied = sum(p.numel() * p.element_size() for p in self.base.parameters())
        longest = max(len(f["input_ids"]) for f in data.train.features)
        need = step_memory_bytes(
            min(settings.batch_size, len(data.train)),
            longest,
            width,
            layers,
            heads,
            outputs,
            2 if half else 4,
            trainable,
            settings.gradient_checkpointing,
            copied_base_bytes=copied,
        )
        shape = f"{min(settings.batch_size, len(data.train))} × {longest} tokens × {layers} blocks of width {width}"
        if need > free:
            raise ConfigError(
                "train.batch_size",
                f"a training step needs about {_gib(need)} ({shape}, a coarse estimate), more than the "
                f"{_gib(free)} of {what} left",
                f"lower train.batch_size ({settings.batch_size}) or data.max_length ({self.config.data.max_length})"
                + ("" if settings.gradient_checkpointing else ", or set train.gradient_checkpointing = true"),
            )
        scored = [s for s in (data.validation, data.test) if s is not None]
        batch = min(settings.eval_batch_size, max(len(s) for s in scored))
        longest = max(len(f["input_ids"]) for s in scored for f in s.features)
        need = step_memory_bytes(batch, longest, width, layers, heads, outputs, 2 if half else 4, training=False)
        if need > free:
            raise ConfigError(
                "train.eval_batch_size",
                f"an evaluation batch needs about {_gib(need)} ({batch} × {longest} tokens, a coarse estimate), "
                f"more than the {_gib(free)} of {what} left",
                f"lower train.eval_batch_size ({settings.eval_batch_size}) or data.max_length "
                f"({self.config.data.max_length})",
            )

    @property
    def baseline_value(self) -> float | None:
        """The baseline's metric alone, or None where the task has none."""
        return None if self.baseline is None else float(self.baseline["value"])

    def _count(self, name: str, which: str) -> int:
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
            with self.prefix.attached(model, cached) if self.prefix and cached else contextlib.nullcontext():
                result = train(
                    model,
                    self.task,
                    self.data,
                    self.config.train,
                    self.evaluation,
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

    def _peak_memory_mb(self) -> float:
        """Peak CUDA memory of this fit; on MPS, what the driver holds now; on a CPU, the process's
        peak resident memory so far (:func:`peak_rss_mb`)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.device.type == "mps":
            return float(torch.mps.driver_allocated_memory()) / 2**20
        return peak_rss_mb()


#: Where a model's config states the longest input it takes, by family (BERT and Llama, GPT-2, ...).
_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
#: ``model_max_length`` of a tokenizer that states no limit is a sentinel (``int(1e30)``).
_NO_LIMIT = 10**12


def model_length_limit(tokenizer: Any, model_config: Any) -> tuple[int, str] | None:
    """(the longest input the model takes, where that is stated), or None where neither its
    tokenizer nor its config says: the smaller of the tokenizer's ``model_max_length`` and the
    config's position count (``max_position_embeddings``, ``n_positions``...), whichever are real."""
    found: list[tuple[int, str]] = []
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < _NO_LIMIT:
        found.append((stated, "the tokenizer's model_max_length"))
    for name in _LENGTH_FIELDS:
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT:
            found.append((value, f"the model config's {name}"))
            break
    return min(found) if found else None


def _model_config(model: Any, source: str, offline: bool) -> Any:
    """The base model's config with ``[model] overrides`` applied (a JSON file read, no weights), or
    None where ``transformers`` cannot read one: the limits then come from the tokenizer alone."""
    from transformers import AutoConfig

    from autopeft.training.models import _common

    try:
        return AutoConfig.from_pretrained(source, **_common(model, offline), **model.overrides)
    except Exception:  # a plugin's own format, a bad override: the base's loading reports those
        return None


def step_memory_bytes(
    batch: int,
    length: int,
    width: int,
    layers: int,
    heads: int,
    outputs: int,
    element_bytes: int = 4,
    trainable: int = 0,
    checkpointing: bool = False,
    training: bool = True,
    copied_base_bytes: int = 0,
) -> int:
    """A coarse estimate of a step's peak memory beyond the loaded base, in bytes.

    Training keeps each block's activations for the backward pass: ``34·b·s·h + 5·a·b·s²`` bytes a
    block at 2 bytes an element (Korthikanti et al., 2022, "Reducing activation recomputation in large
    transformer models"), for ``b`` examples of ``s`` tokens, width ``h`` and ``a`` attention heads;
    with gradient checkpointing only each block's input is kept, plus one block's activations. The
    logits (``outputs`` per token: the vocabulary of a language model) are held in fp32 with their
    softmax and gradient, and every trainable parameter costs 16 bytes (fp32 weight, gradient and
    Adam's two moments); a method that rewrites base weights trains a copy of the base
    (``copied_base_bytes``). Evaluation (``training=False``) keeps one block's activations at a time.
    """
    per_block = (34 * batch * length * width + 5 * heads * batch * length**2) * element_bytes // 2
    logits = 3 * batch * length * outputs * 4
    if not training:
        return per_block + logits
    if checkpointing:
        kept = layers * batch * length * width * element_bytes + per_block
    else:
        kept = layers * per_block
    return kept + logits + 16 * trainable + copied_base_bytes


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes a step can still use on ``device``, what they are), or None where that cannot be read:
    CUDA's free memory plus what PyTorch holds unused; on a CPU, ``MemAvailable`` of
    ``/proc/meminfo`` (``os.sysconf`` elsewhere), or a container's cgroup limit less its use when
    that is smaller."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a mocked or vanished device: no estimate, never a crash
            free, _ = torch.cuda.mem_get_info(device)
            spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + spare), "free GPU memory"
        return None
    if device.type == "mps":
        with contextlib.suppress(Exception):  # older PyTorch lacks these
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()), "MPS memory"
        return None
    found = [v for v in (_ram_available(), _cgroup_available()) if v is not None]
    return (min(found), "available RAM") if found else None


def _ram_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration, IndexError):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024
    import os

    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_available() -> int | None:
    """A cgroup's memory limit less what it uses (its reclaimable page cache counted as free): what
    the kernel lets this container grow by before it kills a process (exit 137)."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        root = Path("/sys/fs/cgroup")
        with contextlib.suppress(OSError, ValueError):
            limit_text = (root / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:  # no limit
                return None
            used = int((root / usage_file).read_text())
            stats = dict(line.split() for line in (root / stat_file).read_text().splitlines() if line.count(" ") == 1)
            return max(int(limit_text) - used + int(stats.get(cache_key, 0)), 0)
    return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
