"""The base class every PEFT method plugin implements.

Lifecycle of one trial, as the driver calls it::

    options = method.check_options(table)        # once per study: the [search.<name>] table
    config  = method.suggest(trial, ctx, options, budget)  # JSON-able, params named "<name>.*"
    n       = method.count_trainable(ctx, config) # exact, before any weight is touched
    model   = method.apply(model, ctx, config)    # on a pristine copy with every weight frozen
    opt     = method.optimizer(model, config, lr, weight_decay)  # optional: None means AdamW
    ...train..., calling method.on_step(model, step, total) after every update (optional)
    method.save(model, directory); method.load(fresh_applied_model, directory)

``count_trainable`` must equal the number of parameters with ``requires_grad`` after ``apply``,
task head included; :mod:`autopeft.testing` checks that, and every other promise here, for any
method.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import optuna
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autopeft.blocks import Block, ModelContext
from autopeft.errors import AutopeftError, ConfigError, PluginError, first_line

__all__ = ["PeftMethod", "trainable_numel", "checked_count", "plugin_call", "WEIGHTS_FILE"]

WEIGHTS_FILE = "trained.safetensors"


def trainable_numel(model: nn.Module) -> int:
    """Number of parameters that will receive gradients (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


_T = TypeVar("_T")


def plugin_call(method: PeftMethod, hook: str, call: Callable[[], _T]) -> _T:
    """``call()``, a call into ``method``'s plugin code outside a trial (counting the smallest
    configuration, planning); an exception there is a broken plugin, said in one line.

    Raises:
        PluginError: naming the method, the hook and the error.
    """
    try:
        return call()
    except AutopeftError:
        raise
    except Exception as exc:
        raise PluginError(
            f"method {method.name!r} failed in {hook} ({type(exc).__name__}: {first_line(exc)}); fix the plugin, "
            "or remove the method from search.methods"
        ) from None


def checked_count(method: PeftMethod, ctx: ModelContext, config: dict[str, Any]) -> int:
    """``method.count_trainable(ctx, config)``, refused unless it is a count: the budget promise rests on it.

    Raises:
        PluginError: it raised, or returned something other than an int >= 0.
    """
    n = plugin_call(method, "count_trainable", lambda: method.count_trainable(ctx, config))
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise PluginError(
            f"method {method.name!r}: count_trainable returned {n!r}, not a number of parameters; it must "
            "return an int >= 0"
        )
    return n


def _same_kind(value: Any, reference: Any) -> bool:
    """Whether a study-file value has the type of its default (an int passes for a float)."""
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(reference, bool)
    if isinstance(reference, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(reference))


class PeftMethod(ABC):
    """A parameter-efficient fine-tuning method the search can choose.

    Subclasses set :attr:`name` and :attr:`defaults` and implement :meth:`suggest`,
    :meth:`smallest`, :meth:`largest` and :meth:`apply`. The default :meth:`count_trainable` applies the method to a
    weightless meta-device copy of the model, which is exact for any method; built-ins override it
    with closed-form counts that take microseconds.
    """

    #: Unique method name, used in study files (``methods = ["lora"]``) and trial attributes.
    name: ClassVar[str]
    #: Default search options; the study's ``[search.<name>]`` table may override these keys only.
    defaults: ClassVar[dict[str, Any]] = {}
    #: A learning rate that usually works, used by :meth:`warm_start` trials (clipped to the study's range).
    default_learning_rate: ClassVar[float] = 1e-3
    #: The log-uniform range the search samples when the study file names none. Declared per method
    #: because the right rates differ by orders of magnitude: LoRA's B starts at zero and wants ~1e-3,
    #: BitFit's biases and IA3's scales ~1e-2, whole unfrozen blocks ~1e-5 as full fine-tuning does.
    learning_rates: ClassVar[tuple[float, float]] = (1e-4, 1e-2)
    #: Whether :meth:`apply` or :meth:`initialize` rewrites frozen base weights (PiSSA-style
    #: initialisations do). Trials apply methods to the resident base model and restore only the
    #: tensors they train (:mod:`autopeft.training.resident`); a method that rewrites others gets a copy of the
    #: base of its own instead, at the cost of the model's size in memory per trial.
    modifies_base: ClassVar[bool] = False
    #: Whether it trains on a quantized base (``[model] quantization``, bitsandbytes): peft's LoRA
    #: family adds adapters beside the packed weights and does; a method that trains base weights
    #: (unfreezing, BitFit) or wraps layers in modules of their dtype cannot, and is left out.
    trains_quantized: ClassVar[bool] = False

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Merge the study's ``[search.<name>]`` table over :attr:`defaults`, rejecting unknown keys."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"search.{self.name}.{unknown[0]}",
                "unknown option",
                f"use one of: {allowed}",
            )
        merged = {**self.defaults, **options}
        for key, value in merged.items():
            default = self.defaults[key]
            field, example = f"search.{self.name}.{key}", f"e.g. {key} = {json.dumps(default)}"
            if isinstance(default, list):
                if not isinstance(value, list) or not value:
                    raise ConfigError(field, "must be a non-empty list", example)
                if default and not all(_same_kind(v, default[0]) for v in value):
                    raise ConfigError(
                        field, f"every item must be of type {type(default[0]).__name__}, got {value!r}", example
                    )
            elif not _same_kind(value, default):
                raise ConfigError(field, f"must be of type {type(default).__name__}, got {value!r}", example)
        return merged

    @abstractmethod
    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        """Sample a configuration from ``trial``; parameter names must start with ``"<name>."``.

        ``budget`` is the most trainable parameters allowed (head included): shape the sample so
        that configurations over it are rare (:func:`autopeft.budget.suggest_sizes` does this for
        per-block sizes), and keep every parameter's choices the same in every trial so the sampler
        can model the space jointly. Name per-block parameters ``"<name>.<what>[<block index>]"``:
        ``--from`` maps them onto another model's blocks by relative depth. The driver still counts
        every configuration and never trains one over budget.
        """

    @abstractmethod
    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        """The configuration with the fewest trainable parameters that ``suggest`` can return."""

    @abstractmethod
    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        """The configuration with the most trainable parameters that ``suggest`` can return when the
        budget does not bind; ``autopeft plan`` shows it next to :meth:`smallest`."""

    @abstractmethod
    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        """Make ``model`` (every weight frozen on entry) train what ``config`` says; return it.

        The task head (``ctx.head``) must be trainable in the result.
        """

    def warm_start(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any] | None:
        """Optuna parameters of a known-good configuration to try first, or None.

        Keys are the names :meth:`suggest` samples (``"lora.r"``...). The driver enqueues it before
        the first trial of a new study, so the search starts from what a user would type by hand.
        """
        return None

    def learning_rate_scale(self, config: dict[str, Any]) -> float:
        """Factor applied to the sampled rate for ``config``, 1 by default.

        For configurations whose update size grows with a sampled size, where the literature gives the
        rule (rsLoRA's α/√r scaling makes a rank-r update √r times larger than LoRA's α/r): the
        search then samples one rate that means the same across sizes, instead of spending trials
        rediscovering the rule.
        """
        return 1.0

    def optimizer(
        self, model: nn.Module, config: dict[str, Any], learning_rate: float, weight_decay: float
    ) -> torch.optim.Optimizer | None:
        """The optimizer that trains ``model`` (what :meth:`apply` returned), or None for AdamW.

        For methods that are an optimizer as much as an architecture: LoRA+ (a higher learning rate
        for LoRA's B matrices), LoRA-FA (A frozen, B's update projected); peft builds both. Every
        parameter group warms up to and decays from the learning rate it is created with, so
        group-wise rates keep their ratios through the schedule. Optimize only parameters that
        require grad: the trainable count is the budget.
        """
        return None

    def initialize(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Called once after :meth:`apply`, with the model on its device and a few training batches.

        For data-driven initialisations: EVA sets LoRA's A from the singular vectors of each layer's
        inputs on these batches. The trainable count is checked again afterwards, so an
        initialisation that changes ranks must keep :meth:`count_trainable` exact. Leave it alone
        otherwise: the driver skips it, and the data pass, when a method does not override it.
        """
        return None

    def trained_count(self, model: nn.Module) -> int | None:
        """Parameters that carry the update once training is done, or None when that is everything
        trained. For methods that shrink as they train (AdaLoRA prunes ranks to its ``target_r``):
        the budget is the count they train with, and this one is recorded beside it."""
        return None

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimizer update (``step`` counts from 1), before gradients are cleared.

        For methods that change during training, e.g. AdaLoRA's ``update_and_allocate``. Leave it
        alone otherwise: the training loop skips it when a method does not override it.
        """
        return None

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        """Exact number of parameters ``apply`` will make trainable, without materialising weights."""
        if ctx.skeleton is None:
            raise PluginError(f"method {self.name!r} needs count_trainable(): the model has no meta-device factory")
        with torch.device("meta"):
            skeleton = ctx.skeleton().requires_grad_(False)
            return trainable_numel(self.apply(skeleton, ctx, config))

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained result of ``model`` to ``directory`` (safetensors only)."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"method": self.name, **self._metadata(model)})

    def _metadata(self, model: nn.Module) -> dict[str, str]:
        """Extra strings for the saved file's metadata, e.g. what rebuilding the method needs."""
        return {}

    def load(self, model: nn.Module, directory: Path) -> nn.Module:
        """Load what :meth:`save` wrote into ``model``, which ``apply`` built from the same config."""
        tensors = load_file(str(directory / WEIGHTS_FILE))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))[:3]
            raise PluginError(f"saved weights in {directory} do not match method {self.name!r}: missing {missing}")
        model.load_state_dict(tensors, strict=False)
        return model

    @staticmethod
    def unfreeze_head(model: nn.Module, ctx: ModelContext) -> None:
        """Make the task head trainable: every method trains it, and the budget counts it."""
        for head in ctx.head:
            model.get_submodule(head).requires_grad_(True)

    @classmethod
    def unfreeze_block_params(
        cls, model: nn.Module, ctx: ModelContext, blocks: Iterable[int], names_of: Callable[[Block], list[str]]
    ) -> nn.Module:
        """Make ``names_of(block)`` trainable in the given blocks (indices), and the head.

        The shared ``apply`` of methods that train a subset of the original weights.
        """
        for block in (ctx.blocks[i] for i in blocks):
            for name in names_of(block):
                model.get_parameter(f"{block.path}.{name}").requires_grad_(True)
        cls.unfreeze_head(model, ctx)
        return model

    def describe(self, config: dict[str, Any]) -> str:
        """A one-line summary of ``config`` for progress output, in words where the method says."""
        return json.dumps(config, separators=(",", ":"))

    @staticmethod
    def block_list(on: list[int]) -> str:
        """``[1, 0, 1]`` -> ``'blocks 0,2'``: the chosen blocks of a per-block on/off list, for :meth:`describe`."""
        chosen = [str(i) for i, x in enumerate(on) if x]
        return f"block{'s' if len(chosen) != 1 else ''} {','.join(chosen)}" if chosen else "no block"
