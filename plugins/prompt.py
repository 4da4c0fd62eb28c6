"""Prompt tuning through peft: trained virtual tokens prepended to every input (Lester et al., 2021)."""

from __future__ import annotations

from typing import Any

import optuna
from peft import PromptTuningConfig, PromptTuningInit, TaskType

from autopeft import ModelContext, hookimpl
from autopeft.errors import ConfigError
from autopeft.peft_backed import PeftBackedMethod


class PromptTuning(PeftBackedMethod):
    """Soft prompt tuning through peft: virtual tokens, initialised from random vocabulary embeddings."""

    name = "prompt"
    defaults = {"tokens": [4, 8, 16, 32]}
    # Soft prompts need rates far above LoRA's (Lester et al. used 0.3).
    default_learning_rate = 3e-2
    learning_rates = (3e-3, 3e-1)
    trains_quantized = True  # the soft prompt is its own tensor; the quantized base is only read

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        if not all(t > 0 for t in merged["tokens"]):
            raise ConfigError(
                "search.prompt.tokens", f"must be positive, got {merged['tokens']}", "e.g. tokens = [8, 16]"
            )
        return merged

    def _cost(self, ctx: ModelContext, tokens: int) -> int:
        return ctx.head_params + tokens * ctx.embedding_dim

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        wanted = trial.suggest_categorical("prompt.tokens", sorted(options["tokens"]))
        fitting = [t for t in options["tokens"] if t <= wanted and self._cost(ctx, t) <= budget]
        return {"tokens": max(fitting, default=min(options["tokens"]))}

    def describe(self, config: dict[str, Any]) -> str:
        return f"{config['tokens']} virtual tokens"

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": min(options["tokens"])}

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": max(options["tokens"])}

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return self._cost(ctx, config["tokens"])

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> PromptTuningConfig:
        return PromptTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=config["tokens"],
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            modules_to_save=list(ctx.head),
        )


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(PromptTuning())
