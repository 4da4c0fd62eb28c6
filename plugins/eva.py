"""EVA-initialised LoRA through peft: LoRA whose A matrices start from the data, not from noise.

EVA (Paischer et al., 2024, "One Initialization to Rule them All") runs a few training batches
through the model and sets each adapted layer's A to the top right-singular vectors of that layer's
inputs, so the first steps already move along the directions the data uses. It is one of the one-shot
alternatives a user would try instead of a search; here it is searched like LoRA (a rank per block,
module groups, alpha), with peft's ``init_lora_weights="eva"`` and ``initialize_lora_eva_weights``.

``rho = 1``: every layer keeps the rank it was given, so the budget count is exact before the data is
seen. (EVA's ``rho > 1`` moves rank between layers after the data pass; layers of different shapes
would then change the count after the budget was checked.)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from peft import EvaConfig, LoraConfig
from peft.tuners.lora.eva import initialize_lora_eva_weights
from torch import nn

from autopeft import ModelContext, hookimpl
from autopeft.errors import ConfigError
from autopeft_plugins.lora import Lora


class EvaLora(Lora):
    """LoRA (or rsLoRA) initialised by EVA from the singular vectors of each layer's inputs."""

    name = "eva"
    defaults = {**Lora.defaults, "variants": ["lora", "rslora"]}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        if "dora" in merged["variants"]:
            raise ConfigError("search.eva.variants", "peft's EVA initialises LoRA and rsLoRA, not DoRA", "use lora")
        return merged

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> LoraConfig:
        lora = super().peft_config(ctx, config)
        return dataclasses.replace(lora, init_lora_weights="eva", eva_config=EvaConfig(rho=1.0))

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        with warnings.catch_warnings():  # peft's advice to build the adapters on the meta device: memory, not results
            warnings.filterwarnings("ignore", message="lora with eva initialization used with low_cpu_mem_usage")
            return super().apply(model, ctx, config)

    def initialize(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        # A classifier's labels are one per sequence: EVA's label mask is per token, so leave them out.
        # A language model's labels are per token, and padding (-100) is masked as EVA expects.
        inputs = [
            batch
            if batch["labels"].shape == batch["input_ids"].shape
            else {k: v for k, v in batch.items() if k != "labels"}
            for batch in batches
        ]
        with torch.no_grad():
            initialize_lora_eva_weights(model, inputs, show_progress_bar=False, gather_distributed_inputs=False)

    def describe(self, config: dict[str, Any]) -> str:
        return "eva-init " + super().describe(config)


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(EvaLora())
