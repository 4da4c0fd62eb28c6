"""BitFit: train only the bias terms (of the top blocks) and the task head."""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

from autopeft import Block, ModelContext, PeftMethod, hookimpl
from autopeft.budget import suggest_start_block


def bias_params(block: Block) -> list[str]:
    """Relative names of every bias in ``block`` (linear and normalisation biases alike)."""
    return [n for n in block.params if n.rpartition(".")[2] == "bias"]


class BitFit(PeftMethod):
    """Bias-only fine-tuning (Ben Zaken et al., 2022) of the top blocks."""

    name = "bitfit"
    defaults = {}

    def _costs(self, ctx: ModelContext) -> list[int]:
        return [sum(b.params[n] for n in bias_params(b)) for b in ctx.blocks]

    def suggest(self, trial: optuna.Trial, ctx: ModelContext, options: dict[str, Any], budget: int) -> dict[str, Any]:
        return {
            "from_block": suggest_start_block(trial, "bitfit.from_block", self._costs(ctx), ctx.head_params, budget)
        }

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"from_block": len(ctx.blocks) - 1}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(self._costs(ctx)[config["from_block"] :])

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        return self.unfreeze_block_params(model, ctx, config["from_block"], bias_params)


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(BitFit())
