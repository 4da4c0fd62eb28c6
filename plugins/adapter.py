"""Bottleneck adapters, implemented here because peft has none: serial (Houlsby) and parallel (He et al.).

A bottleneck is ``up(gelu(down(x)))`` with ``up`` initialised to zero, so a freshly adapted model
computes exactly what the base model did. Where it attaches, per sub-layer (attention, MLP) of
every chosen block, found from shapes by :meth:`autopeft.Block.sublayer`:

* **serial** (Houlsby et al., 2019): after the sub-layer's exit linear, on its output:
  ``h = exit(x); h + bottleneck(h)``, before the residual connection and normalisation.
* **parallel** (He et al., 2022): beside the whole sub-layer, from the hidden states that enter it
  to the output of its exit linear: ``exit(x) + bottleneck(hidden)``.

The exit linear (and, for parallel, the entry linear) is replaced by a wrapper that keeps the
original module as ``.base``, so every pretrained parameter keeps its name with ``.base`` inserted.

Saved format (``trained.safetensors``, safetensors only): every trainable tensor under its
parameter name in the adapted model, e.g. ``bert.encoder.layer.5.output.dense.adapter.down.weight``
(bottleneck) and ``classifier.weight`` (head); the file's metadata holds ``method = "adapter"`` and
``config``, the JSON configuration (sizes per block, placement, sub-layers) needed to rebuild the
wrappers before loading.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import torch
from torch import nn

from autopeft import ModelContext, PeftMethod, hookimpl
from autopeft.budget import suggest_sizes
from autopeft.errors import ConfigError

PLACEMENTS = ("serial", "parallel")
SUBLAYERS = ("attention+mlp", "mlp", "attention")


class Bottleneck(nn.Module):
    """``up(gelu(down(x)))``; ``up`` starts at zero so the adapted model starts as the base model."""

    def __init__(self, d_in: int, size: int, d_out: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, size)
        self.up = nn.Linear(size, d_out)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


class _Slot:
    """The hidden states that entered a sub-layer, handed from its entry to its exit wrapper."""

    value: torch.Tensor | None = None


class _Entry(nn.Module):
    """Wraps a sub-layer's entry linear and remembers its input for the parallel bottleneck."""

    def __init__(self, base: nn.Module, slot: _Slot) -> None:
        super().__init__()
        self.base, self._slot = base, slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._slot.value = x
        return self.base(x)


class _Exit(nn.Module):
    """Wraps a sub-layer's exit linear: serial adds the bottleneck of its output, parallel of the slot."""

    def __init__(self, base: nn.Module, adapter: Bottleneck, slot: _Slot | None) -> None:
        super().__init__()
        self.base, self.adapter, self._slot = base, adapter, slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self._slot is None:
            return h + self.adapter(h)
        hidden, self._slot.value = self._slot.value, None
        return h + self.adapter(hidden)


class Adapter(PeftMethod):
    """Bottleneck adapters, serial (Houlsby) or parallel (He et al.), with a size per block."""

    name = "adapter"
    defaults = {"size": [8, 16, 32, 64], "placement": list(PLACEMENTS), "sublayers": list(SUBLAYERS[:2])}
    default_learning_rate = 1e-3
    learning_rates = (1e-4, 1e-2)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        for key, allowed in (("placement", PLACEMENTS), ("sublayers", SUBLAYERS)):
            bad = [v for v in merged[key] if v not in allowed]
            if bad:
                raise ConfigError(f"search.adapter.{key}", f"unknown value {bad[0]!r}", f"use some of {list(allowed)}")
        if not all(s > 0 for s in merged["size"]):
            raise ConfigError("search.adapter.size", f"must be positive, got {merged['size']}", "e.g. size = [16, 32]")
        return merged

    def _sites(self, ctx: ModelContext, index: int, config: dict[str, Any]) -> list[tuple[str, str, int, int]]:
        """(entry, exit, d_in, d_out) of each sub-layer the configuration adapts in one block."""
        block, sites = ctx.blocks[index], []
        for sublayer in config["sublayers"].split("+"):
            found = block.sublayer(sublayer)
            if found is None:
                continue
            entry, exit_ = found
            d_out = block.linears[exit_][1]
            d_in = block.linears[entry][0] if config["placement"] == "parallel" else d_out
            sites.append((entry, exit_, d_in, d_out))
        return sites

    def _block_cost(self, ctx: ModelContext, index: int, size: int, config: dict[str, Any]) -> int:
        if size == 0:
            return 0
        return sum(d_in * size + size + size * d_out + d_out for _, _, d_in, d_out in self._sites(ctx, index, config))

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        config = {
            "placement": trial.suggest_categorical("adapter.placement", options["placement"]),
            "sublayers": trial.suggest_categorical("adapter.sublayers", options["sublayers"]),
        }
        config["sizes"] = suggest_sizes(
            trial,
            "adapter.size",
            options["size"],
            lambda i, s: self._block_cost(ctx, i, s, config),
            len(ctx.blocks),
            ctx.head_params,
            budget,
        )
        return config

    def _extreme(self, ctx: ModelContext, options: dict[str, Any], pick: Any) -> dict[str, Any]:
        top, size = len(ctx.blocks) - 1, pick(options["size"])
        configs = [{"placement": p, "sublayers": s} for p in options["placement"] for s in options["sublayers"]]
        config = pick(configs, key=lambda c: self._block_cost(ctx, top, size, c))
        return {**config, "sizes": [0] * top + [size] if pick is min else [size] * (top + 1)}

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, min)

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, max)

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(self._block_cost(ctx, i, s, config) for i, s in enumerate(config["sizes"]))

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        for index, size in enumerate(config["sizes"]):
            if size == 0:
                continue
            prefix = ctx.blocks[index].path
            for entry, exit_, d_in, d_out in self._sites(ctx, index, config):
                slot = None
                if config["placement"] == "parallel":
                    slot = _Slot()
                    model.set_submodule(f"{prefix}.{entry}", _Entry(model.get_submodule(f"{prefix}.{entry}"), slot))
                base = model.get_submodule(f"{prefix}.{exit_}")
                weight = next(base.parameters())
                adapter = Bottleneck(d_in, size, d_out).to(device=weight.device, dtype=weight.dtype)
                model.set_submodule(f"{prefix}.{exit_}", _Exit(base, adapter, slot))
        self.unfreeze_head(model, ctx)
        model.autopeft_adapter_config = dict(config)  # type: ignore[assignment]  # for the saved file's metadata
        return model

    def _metadata(self, model: nn.Module) -> dict[str, str]:
        config = getattr(model, "autopeft_adapter_config", None)
        return {"config": json.dumps(config)} if config else {}

    def describe(self, config: dict[str, Any]) -> str:
        return f"{config['placement']} {config['sublayers']} size={'/'.join(map(str, config['sizes']))}"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Adapter())
