"""(IA)³ through peft: learned vectors that rescale keys, values and the MLP's input to its down projection."""

from __future__ import annotations

from typing import Any

import optuna
from peft import IA3Config

from autopeft import ModelContext, hookimpl
from autopeft.budget import suggest_sizes
from autopeft.peft_backed import PeftBackedMethod


def ia3_paths(ctx: ModelContext, index: int, feedforward: bool) -> tuple[list[str], list[str]]:
    """(attention, feedforward) relative paths IA3 scales in one block.

    Keys and values (or the fused qkv projection) are scaled at their output; the MLP's exit
    linear at its input, as in Liu et al. (2022).
    """
    block = ctx.blocks[index]
    attention = (block.groups.get("key", []) + block.groups.get("value", [])) or block.groups.get("qkv", [])
    mlp = block.sublayer("mlp")
    return attention, [mlp[1]] if feedforward and mlp else []


class IA3(PeftBackedMethod):
    """(IA)³ (Liu et al., 2022) on chosen blocks, through peft: the fewest parameters of any adapter."""

    name = "ia3"
    defaults = {"feedforward": [True, False]}
    default_learning_rate = 3e-3
    # IA3 trains scaling vectors that start at one: a few thousand parameters that want large steps.
    learning_rates = (1e-3, 5e-2)
    trains_quantized = True  # peft's adapters sit beside bitsandbytes' packed layers (QLoRA)

    def _block_cost(self, ctx: ModelContext, index: int, on: int, feedforward: bool) -> int:
        attention, ff = ia3_paths(ctx, index, feedforward)
        linears = ctx.blocks[index].linears
        return on * (sum(linears[p][1] for p in attention) + sum(linears[p][0] for p in ff))

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        ff = bool(trial.suggest_categorical("ia3.feedforward", options["feedforward"]))
        on = suggest_sizes(
            trial,
            "ia3.block",
            [1],
            lambda i, x: self._block_cost(ctx, i, x, ff),
            len(ctx.blocks),
            ctx.head_params,
            budget,
        )
        return {"blocks": on, "feedforward": ff}

    def warm_start(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any] | None:
        # peft's defaults: every block, keys, values and the feed-forward output.
        return {
            "ia3.feedforward": max(options["feedforward"]),
            **{f"ia3.block[{i}]": 1 for i in range(len(ctx.blocks))},
        }

    def describe(self, config: dict[str, Any]) -> str:
        where = "keys, values and MLP output" if config["feedforward"] else "keys and values"
        return f"{where} of {self.block_list(config['blocks'])}"

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"blocks": [0] * (len(ctx.blocks) - 1) + [1], "feedforward": min(options["feedforward"])}

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"blocks": [1] * len(ctx.blocks), "feedforward": max(options["feedforward"])}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        ff = config["feedforward"]
        return ctx.head_params + sum(self._block_cost(ctx, i, on, ff) for i, on in enumerate(config["blocks"]))

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> IA3Config:
        attention, feedforward = [], []
        for i, on in enumerate(config["blocks"]):
            if on:
                a, f = ia3_paths(ctx, i, config["feedforward"])
                attention += [f"{ctx.blocks[i].path}.{p}" for p in a]
                feedforward += [f"{ctx.blocks[i].path}.{p}" for p in f]
        return IA3Config(
            target_modules=attention + feedforward,
            feedforward_modules=feedforward,
            modules_to_save=list(ctx.head),
        )


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(IA3())
