"""LoRA through peft: which blocks, which module groups, rank and alpha."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from autopeft import ModelContext, PeftMethod, hookimpl
from autopeft.blocks import GROUPS
from autopeft.budget import suggest_start_block
from autopeft.errors import ConfigError, PluginError

ADAPTER_FILE = "adapter_model.safetensors"


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


class Lora(PeftMethod):
    """Low-rank adapters on the chosen linears of the top blocks, through peft."""

    name = "lora"
    defaults = {
        "r": [2, 4, 8, 16],
        "alpha": [1, 2],  # lora_alpha = alpha * r
        "targets": ["query+value", "query+key+value+attn_output", "all"],
        "dropout": 0.0,
    }
    # Searches train for few steps, where LoRA wants a higher rate than in long fine-tuning runs.
    default_learning_rate = 3e-3

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        if not all(r > 0 for r in merged["r"]):
            raise ConfigError("search.lora.r", f"ranks must be positive, got {merged['r']}", "e.g. r = [4, 8, 16]")
        if not all(a > 0 for a in merged["alpha"]):
            raise ConfigError(
                "search.lora.alpha", f"multipliers must be positive, got {merged['alpha']}", "e.g. alpha = [1, 2]"
            )
        if not 0 <= merged["dropout"] < 1:
            raise ConfigError(
                "search.lora.dropout", f"must be in [0, 1), got {merged['dropout']}", "e.g. dropout = 0.05"
            )
        for targets in merged["targets"]:
            groups = [] if targets == "all" else targets.split("+")
            bad = [g for g in groups if g not in GROUPS]
            if bad:
                raise ConfigError(
                    "search.lora.targets",
                    f"unknown module group {bad[0]!r}",
                    f"use 'all' or groups joined by '+' from {', '.join(GROUPS)}",
                )
        return merged

    def _block_cost(self, ctx: ModelContext, index: int, r: int, targets: str) -> int:
        block = ctx.blocks[index]
        return sum(r * sum(block.linears[p]) for p in target_paths(ctx, index, targets))

    def suggest(self, trial: optuna.Trial, ctx: ModelContext, options: dict[str, Any], budget: int) -> dict[str, Any]:
        r = trial.suggest_categorical("lora.r", options["r"])
        alpha = trial.suggest_categorical("lora.alpha", options["alpha"])
        targets = trial.suggest_categorical("lora.targets", options["targets"])
        costs = [self._block_cost(ctx, i, r, targets) for i in range(len(ctx.blocks))]
        from_block = suggest_start_block(trial, "lora.from_block", costs, ctx.head_params, budget)
        return {"r": r, "alpha": alpha * r, "targets": targets, "from_block": from_block, "dropout": options["dropout"]}

    def warm_start(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any] | None:
        # The configuration people type by hand: r=8, alpha=16, query and value, every block.
        r = min(options["r"], key=lambda x: abs(x - 8))
        alpha = min(options["alpha"], key=lambda x: abs(x * r - 16))
        targets = "query+value" if "query+value" in options["targets"] else options["targets"][0]
        return {"lora.r": r, "lora.alpha": alpha, "lora.targets": targets, "lora.from_block": 0}

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        r = min(options["r"])
        targets = min(options["targets"], key=lambda t: self._block_cost(ctx, len(ctx.blocks) - 1, r, t))
        return {
            "r": r,
            "alpha": r,
            "targets": targets,
            "from_block": len(ctx.blocks) - 1,
            "dropout": options["dropout"],
        }

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        blocks = range(config["from_block"], len(ctx.blocks))
        return ctx.head_params + sum(self._block_cost(ctx, i, config["r"], config["targets"]) for i in blocks)

    def lora_config(self, ctx: ModelContext, config: dict[str, Any]) -> LoraConfig:
        """The peft configuration for ``config``, targeting modules by their full paths."""
        paths = [
            f"{ctx.blocks[i].path}.{rel}"
            for i in range(config["from_block"], len(ctx.blocks))
            for rel in target_paths(ctx, i, config["targets"])
        ]
        return LoraConfig(
            r=config["r"],
            lora_alpha=config["alpha"],
            lora_dropout=config["dropout"],
            target_modules=paths,
            modules_to_save=list(ctx.head),
            bias="none",
        )

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        return get_peft_model(model, self.lora_config(ctx, config))

    def save(self, model: nn.Module, directory: Path) -> None:
        # A standard peft adapter folder: adapter_config.json + adapter_model.safetensors.
        if not isinstance(model, PeftModel):
            raise PluginError("lora.save expects the PeftModel that lora.apply returned")
        model.save_pretrained(str(directory), safe_serialization=True)

    def load(self, model: nn.Module, directory: Path) -> nn.Module:
        result: Any = set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))
        if result.unexpected_keys:
            raise PluginError(f"adapter in {directory} has keys this model lacks: {result.unexpected_keys[:3]}")
        return model


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Lora())
