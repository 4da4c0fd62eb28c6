"""AdaLoRA through peft: LoRA in SVD form whose ranks are pruned to a target while it trains.

AdaLoRA (Zhang et al., 2023) is the one-shot alternative to searching per-block ranks: every chosen
linear of every block starts at rank ``init_r``, and a sensitivity score decides, during one
training, which singular triplets to keep until the average rank is ``target_r``. It is searched
here like any method (initial rank, module groups, how far to prune, the learning rate) so that a
study compares it with LoRA at the same budget.

**Budget.** The budget counts what trains: every triplet at ``init_r`` (A, B and the singular value,
``r·(in + out + 1)`` per linear), so AdaLoRA is never trained over budget. What is left after
pruning is recorded beside it as ``trained_count``.

**Schedule.** peft needs the total number of steps when the configuration is built, which a method
learns only in :meth:`on_step`: the schedule (no pruning in the first 10% of steps, final ranks
fixed for the last 20%) is set there, on the first step, for the steps that fit really runs.

peft adds AdaLoRA's orthogonality penalty to ``outputs.loss``; autopeft computes the task loss from
the logits, so the penalty is not applied (``orth_reg_weight`` has no effect here).
"""

from __future__ import annotations

from typing import Any

import optuna
from peft import AdaLoraConfig
from torch import nn

from autopeft import ModelContext, hookimpl
from autopeft.errors import ConfigError
from autopeft.methods import trainable_numel
from autopeft.peft_backed import PeftBackedMethod
from autopeft_plugins.lora import target_paths

#: What the schedule is built with before the real step count is known (peft insists on one).
_PLACEHOLDER_STEPS = 1000


class AdaLora(PeftBackedMethod):
    """AdaLoRA on the chosen linears of every block: ranks start at ``init_r`` and are pruned to ``target_r``."""

    name = "adalora"
    defaults = {
        "r": [4, 8, 12, 16],  # init_r choices
        "keep": [0.5, 0.75],  # target_r = keep * init_r (average rank left after pruning)
        "targets": ["query+value", "query+key+value+attn_output", "all"],
    }
    # Higher than LoRA's: AdaLoRA's update is B·diag(E)·A with E starting at zero and A, B drawn at
    # N(0, 0.02) (LoRA's A is Kaiming-uniform, about 2.5 times larger at width 384), so in a short
    # training at LoRA's rate it barely leaves the base model (measured: a constant predictor after
    # 47 steps at 3e-3, benchmarks/README.md).
    default_learning_rate = 1e-2
    learning_rates = (1e-3, 5e-2)
    trains_quantized = True  # peft's adapters sit beside bitsandbytes' packed layers (QLoRA)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_options(options)
        if not all(r > 0 for r in merged["r"]):
            raise ConfigError("search.adalora.r", f"ranks must be positive, got {merged['r']}", "e.g. r = [8, 12]")
        if not all(0 < k <= 1 for k in merged["keep"]):
            raise ConfigError("search.adalora.keep", f"shares must be in (0, 1], got {merged['keep']}", "keep = [0.5]")
        return merged

    def _paths(self, ctx: ModelContext, targets: str) -> list[str]:
        return [f"{b.path}.{p}" for b in ctx.blocks for p in target_paths(ctx, b.index, targets)]

    def _cost(self, ctx: ModelContext, r: int, targets: str) -> int:
        linears = {f"{b.path}.{p}": shape for b in ctx.blocks for p, shape in b.linears.items()}
        return sum(r * (linears[p][0] + linears[p][1] + 1) for p in self._paths(ctx, targets))

    def suggest(
        self, trial: optuna.trial.BaseTrial, ctx: ModelContext, options: dict[str, Any], budget: int
    ) -> dict[str, Any]:
        targets = trial.suggest_categorical("adalora.targets", options["targets"])
        r = trial.suggest_categorical("adalora.r", options["r"])
        keep = trial.suggest_categorical("adalora.keep", options["keep"])
        # Over budget: the largest initial rank that fits (the choices stay the same in every trial).
        fitting = [x for x in options["r"] if self._cost(ctx, x, targets) + ctx.head_params <= budget]
        if self._cost(ctx, r, targets) + ctx.head_params > budget and fitting:
            r = max(fitting)
        return {"init_r": r, "target_r": max(1, round(keep * r)), "targets": targets}

    def warm_start(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any] | None:
        # peft's example: init_r 12 pruned to 8, on query and value.
        targets = "query+value" if "query+value" in options["targets"] else options["targets"][0]
        r = min(options["r"], key=lambda x: abs(x - 12))
        keep = min(options["keep"], key=lambda k: abs(k * r - 8))
        return {"adalora.targets": targets, "adalora.r": r, "adalora.keep": keep}

    def _extreme(self, ctx: ModelContext, options: dict[str, Any], pick: Any) -> dict[str, Any]:
        r = pick(options["r"])
        targets = pick(options["targets"], key=lambda t: self._cost(ctx, r, t))
        return {"init_r": r, "target_r": max(1, round(pick(options["keep"]) * r)), "targets": targets}

    def smallest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, min)

    def largest(self, ctx: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return self._extreme(ctx, options, max)

    def count_trainable(self, ctx: ModelContext, config: dict[str, Any]) -> int:
        return ctx.head_params + self._cost(ctx, config["init_r"], config["targets"])

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> AdaLoraConfig:
        r = config["init_r"]
        return AdaLoraConfig(
            init_r=r,
            target_r=config["target_r"],
            lora_alpha=2 * r,  # scaling alpha / r = 2, as the LoRA default here
            target_modules=self._paths(ctx, config["targets"]),
            modules_to_save=list(ctx.head),
            total_step=_PLACEHOLDER_STEPS,
            tinit=_PLACEHOLDER_STEPS // 10,
            tfinal=_PLACEHOLDER_STEPS // 5,
        )

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        tuner: Any = model.base_model  # type: ignore[union-attr]
        if step == 1:  # the schedule for the steps this fit runs; the rank allocator reads this object
            schedule = tuner.peft_config["default"]
            schedule.total_step, schedule.tinit, schedule.tfinal = total_steps, total_steps // 10, total_steps // 5
            schedule.deltaT = max(1, total_steps // 50)
        tuner.update_and_allocate(step)

    def trained_count(self, model: nn.Module) -> int:
        """Trainable parameters less the pruned triplets (a zero singular value: its A row and B column
        contribute nothing)."""
        pruned = 0
        for module in model.modules():
            values = getattr(module, "lora_E", {}).get("default") if hasattr(module, "lora_E") else None
            if values is None:
                continue
            a, b = module.lora_A["default"], module.lora_B["default"]  # type: ignore[index]
            pruned += int((values == 0).sum()) * (a.shape[1] + b.shape[0] + 1)
        return trainable_numel(model) - pruned

    def describe(self, config: dict[str, Any]) -> str:
        return f"adalora r={config['init_r']}->{config['target_r']} {config['targets']}"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(AdaLora())
