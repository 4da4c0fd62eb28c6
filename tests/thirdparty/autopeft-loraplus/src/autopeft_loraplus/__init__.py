"""LoRA+ (Hayou et al., 2024) as a third-party autopeft method: LoRA whose B matrices learn faster.

LoRA+ is an optimizer as much as an adapter: the same LoRA weights, but B's learning rate is
``ratio`` times A's. The method brings that optimizer through autopeft's ``optimizer`` hook, built
by peft's ``create_loraplus_optimizer``; autopeft's warmup and decay then keep the ratio at every
step. The search chooses the rank, the ratio, and the lowest adapted block.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftConfig
from peft.optimizers import create_loraplus_optimizer

from autopeft import ModelContext, hookimpl
from autopeft.peft_backed import PeftBackedMethod


def _linears(ctx: ModelContext, first_block: int) -> list[tuple[str, int, int]]:
    """(full module path, in features, out features) of the query and value linears LoRA+ adapts."""
    return [
        (f"{block.path}.{p}", *block.linears[p])
        for block in ctx.blocks[first_block:]
        for group in ("query", "value", "qkv")
        for p in block.groups.get(group, [])
    ]


class LoraPlus(PeftBackedMethod):
    """LoRA on the attention query and value of the top blocks, trained with LoRA+'s optimizer."""

    name = "loraplus"
    defaults: dict[str, Any] = {"r": [4, 8, 16], "ratio": [2.0, 16.0]}
    default_learning_rate = 1e-3

    def suggest(self, trial, ctx, options, budget):  # type: ignore[no-untyped-def]
        return {
            "r": trial.suggest_categorical("loraplus.r", options["r"]),
            "ratio": trial.suggest_float("loraplus.ratio", min(options["ratio"]), max(options["ratio"]), log=True),
            "first_block": trial.suggest_int("loraplus.first_block", 0, len(ctx.blocks) - 1),
        }

    def smallest(self, ctx, options):  # type: ignore[no-untyped-def]
        return {"r": min(options["r"]), "ratio": max(options["ratio"]), "first_block": len(ctx.blocks) - 1}

    def largest(self, ctx, options):  # type: ignore[no-untyped-def]
        return {"r": max(options["r"]), "ratio": max(options["ratio"]), "first_block": 0}

    def warm_start(self, ctx, options):  # type: ignore[no-untyped-def]
        r = min(options["r"], key=lambda x: abs(x - 8))
        return {"loraplus.r": r, "loraplus.ratio": max(options["ratio"]), "loraplus.first_block": 0}

    def count_trainable(self, ctx, config):  # type: ignore[no-untyped-def]
        return sum(config["r"] * (i + o) for _, i, o in _linears(ctx, config["first_block"])) + ctx.head_params

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> PeftConfig:
        return LoraConfig(
            r=config["r"],
            lora_alpha=2 * config["r"],
            target_modules=[path for path, _, _ in _linears(ctx, config["first_block"])],
            modules_to_save=list(ctx.head) or None,
        )

    def optimizer(self, model, config, learning_rate, weight_decay):  # type: ignore[no-untyped-def]
        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=learning_rate, loraplus_lr_ratio=config["ratio"], weight_decay=weight_decay
        )


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(LoraPlus())
