"""Loading the study's splits with HF ``datasets``, mapping labels, tokenizing once, and batching.

Tokenization happens once per worker process; every trial reuses the token ids. Batches are padded
dynamically to their longest example, since padding to ``max_length`` wastes most of the compute
on short texts like review snippets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autopeft.config import DATA_SUFFIXES, StudyConfig
from autopeft.errors import DataError, first_line

__all__ = ["Split", "TaskData", "load_task_data", "batches", "bucketed_order"]


@dataclass
class Split:
    """One tokenized split: per-example token features and integer labels."""

    features: list[dict[str, list[int]]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """The tokenized splits and the label names, index = class id."""

    train: Split
    validation: Split
    test: Split | None
    label_names: list[Any]
    pad_token_id: int


_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # datasets' loaders


def _load_split(config: StudyConfig, key: str) -> Any:
    import datasets

    value = getattr(config.data, key)
    source = config.data_path(value)
    try:
        if source.endswith(DATA_SUFFIXES):
            builder = _BUILDERS[Path(source).suffix]
            return datasets.load_dataset(builder, data_files=source, split="train")
        name, _, split = source.partition(":")
        return datasets.load_dataset(name, split=split or key)
    except Exception as exc:  # datasets raises many types for unreadable or unreachable sources
        if source.endswith(DATA_SUFFIXES) and Path(source).is_file() and _has_no_rows(Path(source)):
            raise DataError(f"data.{key}: {value!r} has no rows; point it at a file with examples") from None
        raise DataError(
            f"data.{key}: cannot load {value!r} ({type(exc).__name__}: {first_line(exc)}); "
            "check the path, or the hub name and your connection"
        ) from None


def _has_no_rows(path: Path) -> bool:
    """Whether a local data file holds no examples: datasets reports that as an obscure load error
    (``StopIteration``, "corresponds to no data", an Arrow batch-size error)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return bool(pq.read_metadata(path).num_rows == 0)
        except Exception:
            return False
    content = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    header = 1 if path.suffix == ".csv" else 0
    return len(content) <= header or "".join(content).strip() == "[]"


def _columns(config: StudyConfig) -> list[str]:
    text = config.data.text
    return [text] if isinstance(text, str) else list(text)


def _rows(config: StudyConfig, key: str, limit: int | None, seed: int) -> tuple[list[list[str]], list[Any]]:
    table = _load_split(config, key)
    needed = [*_columns(config), config.data.label]
    for column in needed:
        if column not in table.column_names:
            raise DataError(
                f"data.{key}: column {column!r} not found (columns: {', '.join(table.column_names)}); "
                f"set data.text / data.label to existing columns"
            )
    columns = table.select_columns(needed)[:]  # one slice to Python lists: per-row indexing is ~100x slower
    texts = [columns[c] for c in _columns(config)]
    labels = columns[config.data.label]
    keep = [
        i
        for i in range(len(labels))
        if labels[i] is not None and all(isinstance(t[i], str) and t[i].strip() for t in texts)
    ]
    if limit is not None and len(keep) > limit:
        keep = sorted(random.Random(seed).sample(keep, limit))
    if not keep:
        raise DataError(
            f"data.{key}: the split has no usable rows (empty texts or labels); point it at a non-empty file"
        )
    return [[t[i] for t in texts] for i in keep], [labels[i] for i in keep]


def load_task_data(config: StudyConfig, tokenizer: Any) -> TaskData:
    """Load, check, label-map and tokenize every split of the study.

    Raises:
        DataError: a split cannot be loaded, lacks a column, is empty, or has a label that the
            train split (or ``data.labels``) does not have.
    """
    d, seed = config.data, config.study.seed
    raw = {
        "train": _rows(config, "train", d.max_train_examples, seed),
        "validation": _rows(config, "validation", d.max_eval_examples, seed),
    }
    if d.test is not None:
        raw["test"] = _rows(config, "test", d.max_eval_examples, seed)
    names = list(d.labels) if d.labels is not None else sorted(set(raw["train"][1]), key=str)
    if len(names) < 2:
        raise DataError(f"data.label: the train split has only the label {names!r}; a classifier needs at least two")
    index = {name: i for i, name in enumerate(names)}
    splits: dict[str, Split] = {}
    for key, (texts, labels) in raw.items():
        unknown = sorted({str(x) for x in labels if x not in index})
        if unknown:
            raise DataError(
                f"data.{key}: label {unknown[0]!r} is not among the train labels {names}; "
                "fix the data or list every label in data.labels"
            )
        columns = list(zip(*texts))
        encoded = tokenizer(*columns, truncation=True, max_length=d.max_length)
        keys = [k for k in encoded.keys() if k != "attention_mask"]
        features = [{k: encoded[k][i] for k in keys} for i in range(len(labels))]
        splits[key] = Split(features, [index[x] for x in labels])
    return TaskData(splits["train"], splits["validation"], splits.get("test"), names, tokenizer.pad_token_id)


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
        batch["labels"] = torch.tensor([split.labels[i] for i in chosen])
        yield batch
