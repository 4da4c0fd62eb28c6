"""Tokenized splits and their batches.

Batches are padded dynamically to their longest example, since padding to ``max_length`` wastes
most of the compute on short texts like review snippets. Loading and tokenizing the splits is
:mod:`autopeft.training.token_cache`'s job.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch

__all__ = [
    "Split",
    "TaskData",
    "IGNORE_INDEX",
    "MIN_VALIDATION_EXAMPLES",
    "SMALL_VALIDATION_EXAMPLES",
    "batches",
    "bucketed_order",
    "padded",
]

#: Label of a position the loss and the metric skip (padding, a word's later sub-tokens).
IGNORE_INDEX = -100
#: A validation split with fewer examples is warned about: a metric on it is mostly noise (one
#: example scores accuracy 0 or 1), and the search would pick its best trial by chance.
MIN_VALIDATION_EXAMPLES = 30
#: Below this many validation examples, each trial's line shows its metric's standard error
#: (:meth:`autopeft.tasks.Task.standard_error`), so that close trials are not read as different.
SMALL_VALIDATION_EXAMPLES = 1000


@dataclass
class Split:
    """One tokenized split: per-example token features, and per example one label or one per token.

    A task that scores generated text (``instruction``) also keeps, per example, the reference
    ``answers`` and the ``prompt_lengths``: how many leading ``input_ids`` form the prompt a model
    answers. Its labels cannot say where the prompt ends: with the prompt in the loss, every
    position is labelled. ``notes`` are not cached with the split: the loader moves them to
    :attr:`TaskData.notes`, which are.
    """

    features: list[dict[str, list[int]]]
    labels: list[int] | list[list[int]]
    answers: list[str] | None = None
    prompt_lengths: list[int] | None = None
    #: What encoding found that the user should hear (rows dropped as too long), one line each.
    notes: list[str] = field(default_factory=list, compare=False)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """The tokenized splits and the label names, index = class id ([] for a task without classes).

    ``notes`` are the warnings loading found (rows dropped, a class train never shows, a tiny
    validation split): one line each, said once when a worker loads the data, cached with it.
    """

    train: Split
    validation: Split
    test: Split | None
    label_names: list[Any]
    pad_token_id: int
    notes: list[str] = field(default_factory=list)


def bucketed_order(split: Split, batch_size: int, generator: random.Random, window: int = 50) -> list[int]:
    """A random order in which each run of ``batch_size`` examples has similar lengths.

    The examples are shuffled, sorted by length within windows of ``window`` batches, cut into
    batches, and the batches shuffled: far less padding than a plain shuffle, still a new order every
    epoch. Every window but the last holds whole batches, so the batch count is the plain one.
    The one short batch, if any, comes last.
    """
    order = list(range(len(split)))
    generator.shuffle(order)
    span = batch_size * window
    chunks: list[list[int]] = []
    for start in range(0, len(order), span):
        part = sorted(order[start : start + span], key=lambda i: len(split.features[i]["input_ids"]))
        chunks += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    last = chunks.pop() if chunks and len(chunks[-1]) < batch_size else []
    generator.shuffle(chunks)  # the short batch stays last: in the middle it would shift every later batch
    return [i for chunk in [*chunks, last] for i in chunk]


def batches(
    split: Split,
    batch_size: int,
    pad_token_id: int,
    generator: random.Random | None = None,
    order: list[int] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches: in ``order`` if given, else shuffled by ``generator``, else in order."""
    if order is None:
        order = list(range(len(split)))
        if generator is not None:
            generator.shuffle(order)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        yield padded([split.features[i] for i in chosen], [split.labels[i] for i in chosen], pad_token_id)


def padded(features: list[dict[str, list[int]]], labels: list[Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of ``features`` padded on the right to the longest, with its attention mask, and
    ``labels`` (one per token: padded positions labelled :data:`IGNORE_INDEX`)."""
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        pad = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([f[key] + [pad] * (longest - len(f[key])) for f in features])
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
    if labels and isinstance(labels[0], list):  # one per token: padded positions are ignored
        labels = [[*x, *[IGNORE_INDEX] * (longest - len(x))] for x in cast(list[list[int]], labels)]
    batch["labels"] = torch.tensor(labels)
    return batch
