"""Loading the study's splits (:mod:`autopeft.data_files`), handing them to the task to tokenize, and batching.

Tokenization happens once per worker process; every trial reuses the token ids. Batches are padded
dynamically to their longest example, since padding to ``max_length`` wastes most of the compute
on short texts like review snippets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch

from autopeft.config import StudyConfig
from autopeft.data_files import load_split, missing_columns
from autopeft.errors import DataError, first_line
from autopeft.tasks import IGNORE_INDEX, Task

__all__ = ["Split", "TaskData", "load_task_data", "batches", "bucketed_order"]


@dataclass
class Split:
    """One tokenized split: per-example token features, and per example one label or one per token."""

    features: list[dict[str, list[int]]]
    labels: list[int] | list[list[int]]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """The tokenized splits and the label names, index = class id ([] for a task without classes)."""

    train: Split
    validation: Split
    test: Split | None
    label_names: list[Any]
    pad_token_id: int


def _rows(config: StudyConfig, key: str, needed: list[str], limit: int | None, seed: int) -> dict[str, list[Any]]:
    """Column -> values of one split, rows with an empty needed value dropped, ``limit`` sampled."""
    table = load_split(config, key)
    missing_columns(table, needed, key)
    try:
        columns = table.select(needed).to_pydict()  # whole columns to Python lists: per-row access is ~100x slower
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # cells pyarrow read but Python cannot hold
        raise DataError(f"data.{key}: cannot read the {', '.join(needed)} columns ({first_line(exc)})") from None
    keep = [i for i in range(table.num_rows) if all(_usable(columns[c][i]) for c in needed)]
    if limit is not None and len(keep) > limit:
        keep = sorted(random.Random(seed).sample(keep, limit))
    if not keep:
        raise DataError(
            f"data.{key}: the split has no usable rows (empty texts or labels); point it at a non-empty file"
        )
    return {c: [columns[c][i] for i in keep] for c in needed}


def _usable(value: Any) -> bool:
    """Whether a cell holds something: a non-blank string, a non-empty list, a number that is not NaN."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):
        return bool(value)
    return value is not None and value == value  # NaN != NaN: a missing number in a CSV


def load_task_data(config: StudyConfig, tokenizer: Any, task: Task) -> TaskData:
    """Load every split of the study and let ``task`` label-map and tokenize it.

    Raises:
        DataError: a split cannot be loaded, lacks a column, is empty, or has a label that the
            train split (or ``data.labels``) does not have.
    """
    d, seed = config.data, config.study.seed
    needed = task.columns(d)
    raw = {
        "train": _rows(config, "train", needed, d.max_train_examples, seed),
        "validation": _rows(config, "validation", needed, d.max_eval_examples, seed),
    }
    if d.test is not None:
        raw["test"] = _rows(config, "test", needed, d.max_eval_examples, seed)
    names = task.label_names(raw["train"], d)
    splits = {key: _encode(task, rows, tokenizer, config, names, key) for key, rows in raw.items()}
    for key, split in splits.items():
        if not len(split):
            raise DataError(f"data.{key}: no example left after tokenizing; check data.text and data.max_length")
    return TaskData(splits["train"], splits["validation"], splits.get("test"), names, tokenizer.pad_token_id)


def _encode(
    task: Task, rows: dict[str, list[Any]], tokenizer: Any, config: StudyConfig, names: list[Any], key: str
) -> Split:
    """``task.encode``, with the errors a tokenizer raises on cells of the wrong type made one line."""
    try:
        return task.encode(rows, tokenizer, config.data, names, key)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"data.{key}: cannot tokenize the {', '.join(rows)} columns for task {task.name!r} "
            f"({type(exc).__name__}: {first_line(exc)}); check data.text and data.label"
        ) from None


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
        longest = max(len(split.features[i]["input_ids"]) for i in chosen)
        batch: dict[str, torch.Tensor] = {}
        for key in split.features[chosen[0]]:
            pad = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor(
                [f + [pad] * (longest - len(f)) for f in (split.features[i][key] for i in chosen)]
            )
        lengths = torch.tensor([len(split.features[i]["input_ids"]) for i in chosen])
        batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        labels = [split.labels[i] for i in chosen]
        if labels and isinstance(labels[0], list):  # one per token: padded positions are ignored
            labels = [[*x, *[IGNORE_INDEX] * (longest - len(x))] for x in cast(list[list[int]], labels)]
        batch["labels"] = torch.tensor(labels)
        yield batch
