"""LoRA through peft: a rank per block (0 = left out), module groups, alpha, and the DoRA/rsLoRA variants."""

from __future__ import annotations

from typing import Any

import optuna
from peft import LoraConfig, PeftModel
from torch import nn

from autopeft import ModelContext, hookimpl
from autopeft.blocks import GROUPS
from autopeft.budget import suggest_sizes
from autopeft.errors import ConfigError, PluginError
from autopeft.peft_backed import PeftBackedMethod

VARIANTS = ("lora", "rslora", "dora")


def target_paths(ctx: ModelContext, block_index: int, targets: str) -> list[str]:
    """Relative paths of the linears ``targets`` ("query+value", "all") names in one block.

    A model with fused attention (GPT-2's ``c_attn``) has no separate query/key/value, so those
    names map to its ``qkv`` group.
    """
    block = ctx.blocks[block_index]
    if targets == "all":
        return list(block.linears)
    paths: list[str] = []
    for group in targets.split("+"):
        if group not in block.groups and group in ("query", "key", "value"):
            group = "qkv"
        for path in block.groups.get(group, []):
            if path not in paths:
                paths.append(path)
    return paths


class Lora(PeftBackedMethod):
    """Low-rank adapters with a rank per block on the chosen linears, through peft (LoRA, rsLoRA, DoRA)."""

    name = "lora"
    defaults = {
        "r": [2, 4, 8, 16],  # per-block rank choices; 0 (block left out) is always added
        "alpha": [1, 2],  # lora_alpha = alpha * r
        "targets": ["query+value", "query+key+value+attn_output", "all"],
        "variants": list(VARIANTS),
        "dropout": 0.0,
    }
    # Searches train for few steps, where LoRA wants a higher rate than in long fine-tuning runs.
    default_learning_rate = 3e-3
    learning_rates = (5e-4, 2e-2)
    trains_quantized = True  # peft's adapters sit beside bitsandbytes' packed layers (QLoRA)

    def learning_rate_scale(self, config: dict[str, Any]) -> float:
        # rsLoRA scales the update by alpha/sqrt(r) where LoRA uses alpha/r: sqrt(r) times larger at the
        # same alpha/r. Dividing the rate by sqrt(mean rank) keeps one sampled rate meaning the same.
        if config["variant"] != "rslora":
            return 1.0
        ranks = [r for r in config["ranks"] if r] or [1]
        return float((sum(ranks) / len(ranks)) ** -0.5)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        if not all(r > 0 for r in merged["r"]):
            raise ConfigError(
                f"search.{self.name}.r", f"ranks must be positive, got {merged['r']}", "e.g. r = [4, 8, 16]"
            )
        if not all(a > 0 for a in merged["alpha"]):
            raise ConfigError(
                f"search.{self.name}.alpha",
                f"multipliers must be positive, got {merged['alpha']}",
                "e.g. alpha = [1, 2]",
            )
        if not 0 <= merged["dropout"] < 1:
            raise ConfigError(
                f"search.{self.name}.dropout", f"must be in [0, 1), got {merged['dropout']}", "e.g. dropout = 0.05"
            )
        bad_variants = [v for v in merged["variants"] if v not in VARIANTS]
        if bad_variants:
            raise ConfigError(
                f"search.{self.name}.variants", f"unknown variant {bad_variants[0]!r}", f"use some of {list(VARIANTS)}"
            )
        for targets in merged["targets"]:
            groups = [] if targets == "all" else targets.split("+")
            bad = [g for g in groups if g not in GROUPS]
            if bad:
                raise ConfigError(
                    f"search.{self.name}.targets",
                    f"unknown module group {bad[0]!r}",
                    f"use 'all' or groups joined by '+' from {', '.join(GROUPS)}",
                )
        return merged

    def _block_cost(self, ctx: ModelContext, index: int, r: int, targets: str, variant: str) -> int:
        if r == 0:
            return 0
        block = ctx.blocks[index]
        dora = variant == "dora"  # DoRA adds a magnitude vector per output feature
        return sum(r * sum(block.linears[p]) + dora * block.linears[p][1] for p in target_paths(ctx, index, targets))

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        alpha = trial.suggest_categorical(f"{self.name}.alpha", options["alpha"])
        targets = trial.suggest_categorical(f"{self.name}.targets", options["targets"])
        variant = trial.suggest_categorical(f"{self.name}.variant", options["variants"])
        ranks = suggest_sizes(
            trial,
            f"{self.name}.r",
            options["r"],
            lambda i, r: self._block_cost(ctx, i, r, targets, variant),
            len(ctx.blocks),
            ctx.head_params,
            budget,
        )
        return {"ranks": ranks, "alpha": alpha, "targets": targets, "variant": variant, "dropout": options["dropout"]}

    def warm_start(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any] | None:
        # The configuration people type by hand: r=8, alpha=16, query and value, every block.
        r = min(options["r"], key=lambda x: abs(x - 8))
        alpha = min(options["alpha"], key=lambda x: abs(x * r - 16))
        targets = "query+value" if "query+value" in options["targets"] else options["targets"][0]
        variant = "lora" if "lora" in options["variants"] else options["variants"][0]
        ranks = {f"{self.name}.r[{i}]": r for i in range(len(ctx.blocks))}
        n = self.name
        return {f"{n}.alpha": alpha, f"{n}.targets": targets, f"{n}.variant": variant, **ranks}

    def _extreme(self, ctx: ModelContext, options: dict[str, Any], pick: Any) -> dict[str, Any]:
        top = len(ctx.blocks) - 1
        r = pick(options["r"])
        variant = pick(options["variants"], key=lambda v: v == "dora")
        targets = pick(options["targets"], key=lambda t: self._block_cost(ctx, top, r, t, variant))
        ranks = [0] * top + [r] if pick is min else [r] * len(ctx.blocks)
        return {
            "ranks": ranks,
            "alpha": min(options["alpha"]),
            "targets": targets,
            "variant": variant,
            "dropout": options["dropout"],
        }

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, min)

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, max)

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + sum(
            self._block_cost(ctx, i, r, config["targets"], config["variant"]) for i, r in enumerate(config["ranks"])
        )

    def module_ranks(self, ctx: ModelContext, config: dict[str, Any]) -> dict[str, int]:
        """Full path of every adapted linear -> its rank."""
        return {
            f"{ctx.blocks[i].path}.{rel}": r
            for i, r in enumerate(config["ranks"])
            if r > 0
            for rel in target_paths(ctx, i, config["targets"])
        }

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> LoraConfig:
        """One ``LoraConfig``: the most common rank as ``r``, the others in ``rank_pattern``/``alpha_pattern``."""
        ranks = self.module_ranks(ctx, config)
        values = list(ranks.values())
        base = max(sorted(set(values)), key=values.count)  # ties: the smallest, for a stable config
        other = {path: r for path, r in ranks.items() if r != base}
        return LoraConfig(
            r=base,
            lora_alpha=config["alpha"] * base,
            rank_pattern=other,
            alpha_pattern={path: config["alpha"] * r for path, r in other.items()},
            lora_dropout=config["dropout"],
            use_rslora=config["variant"] == "rslora",
            use_dora=config["variant"] == "dora",
            target_modules=list(ranks),
            modules_to_save=list(ctx.head),
            bias="none",
        )

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        wrapped = super().apply(model, ctx, config)
        assert isinstance(wrapped, PeftModel)
        for path, r in self.module_ranks(ctx, config).items():  # peft would have used `r` for an unmatched key
            layer: Any = wrapped.get_submodule(f"base_model.model.{path}")
            got = layer.r.get("default")
            if got != r:
                raise PluginError(f"{self.name}: {path} got rank {got}, expected {r}; a rank_pattern key did not match")
        return wrapped

    def describe(self, config: dict[str, Any]) -> str:
        ranks = "/".join(str(r) for r in config["ranks"])
        return f"{config['variant']} r={ranks} alpha={config['alpha']}xr {config['targets']}"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Lora())
