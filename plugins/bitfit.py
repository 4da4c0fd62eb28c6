"""BitFit: train only the bias terms (of chosen blocks) and the task head."""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

from autopeft import Block, ModelContext, PeftMethod, hookimpl
from autopeft.budget import suggest_sizes


def bias_params(block: Block) -> list[str]:
    """Relative names of every bias in ``block`` (linear and normalisation biases alike)."""
    return [n for n in block.params if n.rpartition(".")[2] == "bias"]


class BitFit(PeftMethod):
    """Bias-only fine-tuning (Ben Zaken et al., 2022) of chosen blocks."""

    name = "bitfit"
    defaults = {}
    # Biases are O(1) vectors: the BitFit paper's rates (1e-4..1e-3 over many epochs) are too slow for
    # a search's short trainings.
    default_learning_rate = 1e-2
    learning_rates = (1e-3, 5e-2)

    def _costs(self, ctx: ModelContext) -> list[int]:
        return [sum(b.params[n] for n in bias_params(b)) for b in ctx.blocks]

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        costs = self._costs(ctx)
        on = suggest_sizes(
            trial, "bitfit.block", [1], lambda i, x: x * costs[i], len(ctx.blocks), ctx.head_params, budget
        )
        return {"blocks": on}

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"blocks": [0] * (len(ctx.blocks) - 1) + [1]}

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"blocks": [1] * len(ctx.blocks)}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(c * on for c, on in zip(self._costs(ctx), config["blocks"]))

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        return self.unfreeze_block_params(model, ctx, [i for i, on in enumerate(config["blocks"]) if on], bias_params)

    def describe(self, config: dict[str, Any]) -> str:
        return f"biases of {self.block_list(config['blocks'])}"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(BitFit())
