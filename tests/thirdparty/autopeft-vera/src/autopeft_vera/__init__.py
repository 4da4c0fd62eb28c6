"""VeRA (Kopiczko et al., 2024) as a third-party autopeft method, through peft's ``VeraConfig``.

Every adapted linear shares one pair of frozen random projections; each trains only two scaling
vectors (``lambda_b``, one entry per output feature, and ``lambda_d``, one per rank). So a rank of
256 costs 256 + out_features parameters a layer, and VeRA fits budgets LoRA cannot. The search
chooses the rank, the module groups, and the lowest adapted block.
"""

from __future__ import annotations

from typing import Any

from peft import PeftConfig, VeraConfig

from autopeft import ModelContext, hookimpl
from autopeft.peft_backed import PeftBackedMethod


def _paths(ctx: ModelContext, first_block: int, targets: str) -> list[tuple[str, int]]:
    """(full module path, output features) of every linear VeRA adapts."""
    found = []
    for block in ctx.blocks[first_block:]:
        names = (
            list(block.linears)
            if targets == "all"
            else [p for g in ("query", "value") for p in block.groups.get(g, [])]
        )
        found += [(f"{block.path}.{p}", block.linears[p][1]) for p in names]
    return found


class Vera(PeftBackedMethod):
    """VeRA on the chosen linears of the top blocks."""

    name = "vera"
    defaults: dict[str, Any] = {"r": [64, 128, 256], "targets": ["query+value", "all"]}
    default_learning_rate = 1e-2

    def suggest(self, trial, ctx, options, budget):  # type: ignore[no-untyped-def]
        return {
            "r": trial.suggest_categorical("vera.r", options["r"]),
            "targets": trial.suggest_categorical("vera.targets", options["targets"]),
            "first_block": trial.suggest_int("vera.first_block", 0, len(ctx.blocks) - 1),
        }

    def smallest(self, ctx, options):  # type: ignore[no-untyped-def]
        targets = min(options["targets"], key=lambda t: len(_paths(ctx, 0, t)))
        return {"r": min(options["r"]), "targets": targets, "first_block": len(ctx.blocks) - 1}

    def largest(self, ctx, options):  # type: ignore[no-untyped-def]
        targets = max(options["targets"], key=lambda t: len(_paths(ctx, 0, t)))
        return {"r": max(options["r"]), "targets": targets, "first_block": 0}

    def warm_start(self, ctx, options):  # type: ignore[no-untyped-def]
        return {"vera.r": max(options["r"]), "vera.targets": options["targets"][0], "vera.first_block": 0}

    def count_trainable(self, ctx, config):  # type: ignore[no-untyped-def]
        # lambda_b has one entry per output feature, lambda_d one per rank; the projections are frozen buffers.
        return (
            sum(out + config["r"] for _, out in _paths(ctx, config["first_block"], config["targets"])) + ctx.head_params
        )

    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> PeftConfig:
        return VeraConfig(
            r=config["r"],
            target_modules=[path for path, _ in _paths(ctx, config["first_block"], config["targets"])],
            modules_to_save=list(ctx.head) or None,
            save_projection=True,  # the export loads anywhere, without re-drawing the projections
        )


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(Vera())
