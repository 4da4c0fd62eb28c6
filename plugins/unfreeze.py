"""Partial fine-tuning: make the top blocks (or one part of each) trainable, nothing added."""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

from autopeft import Block, ModelContext, PeftMethod, hookimpl
from autopeft.budget import lowest_start_block, suggest_start_block
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
    """Train the original weights of the top blocks: all of them, or one part."""

    name = "unfreeze"
    defaults = {"parts": list(PARTS)}
    default_learning_rate = 1e-4

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        bad = [p for p in merged["parts"] if p not in PARTS]
        if bad:
            raise ConfigError("search.unfreeze.parts", f"unknown part {bad[0]!r}", f"use some of {list(PARTS)}")
        return merged

    def _costs(self, ctx: ModelContext, part: str) -> list[int]:
        return [sum(b.params[n] for n in part_params(b, part)) for b in ctx.blocks]

    def _start(self, ctx: ModelContext, part: str, budget: int) -> int | None:
        return lowest_start_block(self._costs(ctx, part), ctx.head_params, budget)

    def suggest(self, trial: optuna.Trial, ctx: ModelContext, options: dict[str, Any], budget: int) -> dict[str, Any]:
        # Parts that cannot fit even in one block are never offered (the choice list is fixed per
        # study, since the budget and model are).
        fitting = [p for p in options["parts"] if self._start(ctx, p, budget) is not None] or options["parts"]
        part = trial.suggest_categorical("unfreeze.part", fitting)
        from_block = suggest_start_block(trial, "unfreeze.from_block", self._costs(ctx, part), ctx.head_params, budget)
        return {"part": part, "from_block": from_block}

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        part = min(options["parts"], key=lambda p: self._costs(ctx, p)[-1])
        return {"part": part, "from_block": len(ctx.blocks) - 1}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(self._costs(ctx, config["part"])[config["from_block"] :])

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        return self.unfreeze_block_params(model, ctx, config["from_block"], lambda b: part_params(b, config["part"]))


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Unfreeze())
