"""Partial fine-tuning: make chosen blocks (or one part of each) trainable, nothing added."""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

from autopeft import Block, ModelContext, PeftMethod, hookimpl
from autopeft.budget import suggest_sizes
from autopeft.errors import ConfigError

PARTS = ("all", "attention", "mlp", "norm")


def part_params(block: Block, part: str) -> list[str]:
    """Relative names of the parameters of ``part`` in ``block``."""
    if part == "all":
        return list(block.params)
    if part == "norm":
        return block.params_of(block.norms)
    groups = ["mlp"] if part == "mlp" else ["query", "key", "value", "qkv", "attn_output"]
    return block.params_of([p for g in groups for p in block.groups.get(g, [])])


class Unfreeze(PeftMethod):
    """Train the original weights of chosen blocks: all of them, or one part."""

    name = "unfreeze"
    defaults = {"parts": list(PARTS)}
    default_learning_rate = 1e-4
    learning_rates = (1e-5, 1e-3)

    def learning_rate_scale(self, config: dict[str, Any]) -> float:
        # Layer-norm gains and biases are O(1) scalars, trained at BitFit's rates (LN-tuning), not at the
        # full fine-tuning rates that whole weight matrices want.
        return 10.0 if config["part"] == "norm" else 1.0

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        bad = [p for p in merged["parts"] if p not in PARTS]
        if bad:
            raise ConfigError("search.unfreeze.parts", f"unknown part {bad[0]!r}", f"use some of {list(PARTS)}")
        return merged

    def _costs(self, ctx: ModelContext, part: str) -> list[int]:
        return [sum(b.params[n] for n in part_params(b, part)) for b in ctx.blocks]

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        # The choices stay the same whatever the budget (Optuna cannot change them within a study, and a
        # study may be resumed under another budget); a part that cannot fit even in the top block is
        # replaced by the first that does, which the trial's config records.
        part = trial.suggest_categorical("unfreeze.part", options["parts"])
        if not self._fits(ctx, part, budget):
            part = next((p for p in options["parts"] if self._fits(ctx, p, budget)), part)
        costs = self._costs(ctx, part)
        on = suggest_sizes(
            trial, "unfreeze.block", [1], lambda i, x: x * costs[i], len(ctx.blocks), ctx.head_params, budget
        )
        return {"part": part, "blocks": on}

    def _fits(self, ctx: ModelContext, part: str, budget: int) -> bool:
        return self._costs(ctx, part)[-1] + ctx.head_params <= budget

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        part = min(options["parts"], key=lambda p: self._costs(ctx, p)[-1])
        return {"part": part, "blocks": [0] * (len(ctx.blocks) - 1) + [1]}

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        part = max(options["parts"], key=lambda p: sum(self._costs(ctx, p)))
        return {"part": part, "blocks": [1] * len(ctx.blocks)}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(c * on for c, on in zip(self._costs(ctx, config["part"]), config["blocks"]))

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        chosen = [i for i, on in enumerate(config["blocks"]) if on]
        return self.unfreeze_block_params(model, ctx, chosen, lambda b: part_params(b, config["part"]))

    def describe(self, config: dict[str, Any]) -> str:
        return f"{config['part']} of {self.block_list(config['blocks'])}"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Unfreeze())
