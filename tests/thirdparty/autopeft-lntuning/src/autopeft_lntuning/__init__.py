"""LN-tuning (Qi et al., 2022) as a third-party autopeft method: only normalisation layers train.

This is the whole plugin: a PeftMethod subclass and one hookimpl, found through the ``autopeft``
entry-point group declared in pyproject.toml. Its count relies on the base class's meta-device
count, so it needs no arithmetic of its own.
"""

from __future__ import annotations

from typing import Any

from autopeft import PeftMethod, hookimpl


class LNTuning(PeftMethod):
    """Train the normalisation layers of the top blocks."""

    name = "lntuning"
    defaults: dict[str, Any] = {}

    def suggest(self, trial, ctx, options, budget):  # type: ignore[no-untyped-def]
        return {"from_block": trial.suggest_int("lntuning.from_block", 0, len(ctx.blocks) - 1)}

    def smallest(self, ctx, options):  # type: ignore[no-untyped-def]
        return {"from_block": len(ctx.blocks) - 1}

    def largest(self, ctx, options):  # type: ignore[no-untyped-def]
        return {"from_block": 0}

    def apply(self, model, ctx, config):  # type: ignore[no-untyped-def]
        blocks = range(config["from_block"], len(ctx.blocks))
        return self.unfreeze_block_params(model, ctx, blocks, lambda b: b.params_of(b.norms))


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(LNTuning())
