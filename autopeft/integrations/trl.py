"""TRL's ``SFTTrainer`` as autopeft's training loop: ``tune(..., fit=sft_fit(SFTConfig(...)))``.

The same as :mod:`autopeft.integrations.transformers`, with TRL's trainer. The examples reach it
tokenized by autopeft's task, with a ``labels`` column (-100 outside the answer for the
``instruction`` task), so TRL neither formats nor re-tokenizes them, and the loss counts what the
study counts. Install with ``pip install 'autopeft[trl]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autopeft.errors import ConfigError
from autopeft.integrations.transformers import fit_with

__all__ = ["sft_fit"]


def sft_fit(args: Any, metric: str = "eval_loss", **trainer_kwargs: Any) -> Callable[..., float]:
    """A ``fit`` for ``autopeft.tune`` that trains each trial with TRL's ``SFTTrainer``.

    Args:
        args: your ``SFTConfig``; autopeft sets ``learning_rate``, ``max_steps`` and ``seed`` per
            trial and turns saving and trackers off. Packing is refused: packed rows would let one
            example's loss read another's tokens.
        metric: the evaluation key that is the trial's value (``"eval_loss"``: the answers' loss).
        trainer_kwargs: anything else ``SFTTrainer`` takes.

    Raises:
        ConfigError: TRL is not installed, or ``args.packing`` is on.
    """
    try:
        from trl import SFTTrainer
    except ImportError:
        raise ConfigError("fit", "sft_fit needs TRL", "pip install 'autopeft[trl]'") from None
    if getattr(args, "packing", False):
        raise ConfigError("fit", "SFTConfig(packing=True) mixes examples in one row", "set packing=False")

    return fit_with(SFTTrainer, args, metric, **trainer_kwargs)
