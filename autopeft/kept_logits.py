"""The vocabulary's logits at the few positions a loss reads, instead of at every position.

A causal LM's head multiplies each position's hidden state by a vocabulary-sized matrix, and the loss
then takes a softmax over the vocabulary at each position. An instruction study's loss reads only the
positions before its answer's tokens (a one-word answer: 3 of some 80), so nearly all of that work
is thrown away. On SmolLM2-135M (a 49k vocabulary), computing it only there took a bf16 training
step of the instruction study (8 chats) on 2 CPU cores from 1.56 s to 1.26 s (benchmarks/README.md,
"Shorter training steps on a CPU"). transformers' ``logits_to_keep`` does the same for the models
whose ``forward`` takes it; a hook on the output embeddings does it for any model that computes its
logits there, and it also finds the input's positions behind the virtual tokens prompt tuning
prepends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from autopeft.data import IGNORE_INDEX

__all__ = ["logits_at", "scored_frame"]


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    """The module that turns hidden states into logits (peft's wrappers pass the call on), or None."""
    try:
        head = model.get_output_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, nn.Module) else None


@contextlib.contextmanager
def logits_at(
    model: nn.Module, positions: torch.Tensor, length: int
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Within the block, a forward pass of ``model`` on inputs ``length`` tokens long computes its
    logits only at ``positions`` (a 1-D index tensor, on the model's device). The block yields
    ``kept``: ``kept(model(...).logits)`` are the logits at ``positions``, in that order (virtual
    tokens a method prepends skipped: the positions count the input's own tokens).

    A model whose logits do not come from its output embeddings module computes them all, as
    without the block; ``kept`` then takes the positions from them.
    """
    head = _output_embeddings(model)
    fired: list[bool] = []

    def kept(logits: torch.Tensor) -> torch.Tensor:
        return logits if fired else logits[:, logits.shape[1] - length :][:, positions]

    if head is None:
        yield kept
        return

    def gather(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        fired.append(True)
        hidden = args[0]
        return (hidden[:, positions + (hidden.shape[1] - length)], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield kept
    finally:
        handle.remove()


def scored_frame(labels: torch.Tensor) -> torch.Tensor:
    """The positions a next-token loss reads: each position whose label some row scores, and the one
    before it, whose logits predict that label (a 1-D index tensor, ascending).

    Logits and labels taken at these positions (and any others added) pair up under the loss's shift
    by one exactly as the whole sequence's do: a scored label's predecessor is always kept, and a
    label that follows a gap is scored in no row.
    """
    scored = (labels != IGNORE_INDEX).any(0)
    kept = scored.clone()
    kept[:-1] |= scored[1:]
    return kept.nonzero().squeeze(1)
