"""``autopeft init``: a first study file from a model and a data file, instead of the whole reference.

It reads the train split, finds the text column (the string column with the longest values) and
the label column (one named like a label, else the column with few distinct values), reads the
classes, counts the model on the meta device (no weights downloaded into memory), proposes a budget
of 0.5% of its weights, and writes a commented study file that ``autopeft plan`` accepts. With a
terminal attached, it asks before taking each guess; otherwise flags decide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopeft.errors import AutopeftError, ConfigError

__all__ = ["Detected", "detect_columns", "count_model", "study_text", "write_study_file"]

_LABEL_NAMES = ("label", "labels", "target", "class", "category", "y", "sentiment")
_MAX_CLASSES = 50


@dataclass(frozen=True)
class Detected:
    """What ``init`` found in the train split."""

    text: str | list[str]  # a column; ["prompt", "completion"] for instruction pairs
    label: str | None  # None: no label column, a language-modelling or instruction study
    classes: list[Any]
    columns: list[str]
    rows: int
    #: Instruction data (a ``messages`` column of chat turns, or ``prompt`` and ``completion``
    #: columns, TRL's formats): the ``instruction`` task, not a classifier or a plain language model.
    instruction: bool = False


def _table(path: str) -> Any:
    """The train split as a pyarrow table: a local file, or ``hub/name[:split]`` through ``datasets``."""
    from autopeft.config import DATA_SUFFIXES
    from autopeft.training.data_files import read_local

    if path.endswith(DATA_SUFFIXES):
        if not Path(path).is_file():
            raise ConfigError(
                "--train", f"file not found: {path}", "give the path of a csv, json, jsonl or parquet file"
            )
        return read_local(Path(path))
    import datasets

    name, _, split = path.partition(":")
    return datasets.load_dataset(name, split=split or "train").with_format("arrow")[:]


def detect_columns(path: str, text: str | None = None, label: str | None = None) -> Detected:
    """The text and label columns of the data at ``path`` (``text``/``label`` when given) and the classes.

    Raises:
        ConfigError: a named column is missing, or no column holds text.
    """
    import pyarrow as pa

    table = _table(path)
    columns = list(table.column_names)
    for given, flag in ((text, "--text"), (label, "--label")):
        if given is not None and given not in columns:
            raise ConfigError(flag, f"no column {given!r} (columns: {', '.join(columns)})", "name one of them")
    if text is None and label is None and (found := _instruction_columns(table, columns)) is not None:
        return Detected(text=found, label=None, classes=[], columns=columns, rows=table.num_rows, instruction=True)
    strings = [
        c
        for c in columns
        if pa.types.is_string(table.schema.field(c).type) or pa.types.is_large_string(table.schema.field(c).type)
    ]

    def mean_length(column: str) -> float:
        values = [v for v in table.column(column).to_pylist()[:1000] if v]
        return sum(map(len, values)) / max(1, len(values))

    if text is None:
        if not strings:
            raise ConfigError("--train", f"no text column among {', '.join(columns)}", "name it with --text")
        text = max(strings, key=mean_length)
    if label is None:
        candidates = [c for c in columns if c != text and _few_values(table, c)]
        named = [c for c in candidates if c.lower() in _LABEL_NAMES]
        label = (named or candidates or [None])[0]
    classes = sorted({v for v in table.column(label).to_pylist() if v is not None}, key=str) if label else []
    return Detected(text=text, label=label, classes=classes, columns=columns, rows=table.num_rows)


def _instruction_columns(table: Any, columns: list[str]) -> str | list[str] | None:
    """``"messages"`` where that column holds chat turns, ``["prompt", "completion"]`` where both
    columns are there; None for other data."""
    if "messages" in columns:
        first = next((v for v in table.column("messages").to_pylist()[:100] if v), None)
        if isinstance(first, list) and first and isinstance(first[0], dict) and "role" in first[0]:
            return "messages"
    if "prompt" in columns and "completion" in columns:
        return ["prompt", "completion"]
    return None


def _few_values(table: Any, column: str) -> bool:
    """Whether ``column`` looks like a class label: at least two, at most 50 distinct scalar values."""
    values = table.column(column).to_pylist()
    if not values or isinstance(values[0], (list, dict, float)):
        return False
    distinct = len(set(values))
    return 2 <= distinct <= min(_MAX_CLASSES, max(2, len(values) // 2))


def count_model(name: str, classes: int) -> int:
    """Parameters of model ``name`` with a new classification head of ``classes`` (0: a language
    model), counted on the meta device: the configuration is read, no weight is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from autopeft.registry import get_plugin_manager
    from autopeft.training.models import resolve_model_name

    source, offline = resolve_model_name(get_plugin_manager(), name)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "--model", f"cannot read {name!r}'s configuration ({exc})", "check the name or path"
        ) from None
    with torch.device("meta"):
        if classes:
            config.num_labels = classes
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _from(out: Path, path: str) -> str:
    """A data path given from the working folder, as the study file at ``out`` reads it (relative to
    itself); a hub name as it is."""
    from autopeft.config import DATA_SUFFIXES

    if not path.endswith(DATA_SUFFIXES):
        return path
    return os.path.relpath(Path(path).resolve(), out.resolve().parent)


def _toml(value: Any) -> str:
    return json.dumps(value)


def study_text(
    *,
    name: str,
    model: str,
    train: str,
    validation: str,
    test: str | None,
    detected: Detected,
    total_params: int,
    budget: str,
) -> str:
    """The study file, commented: what was detected and why, what to change first."""
    classify = detected.label is not None
    lines = [
        f"# Written by `autopeft init` from {train} ({detected.rows:,} rows; columns {', '.join(detected.columns)}).",
        f"# {model}: {total_params:,} parameters. Check it with `autopeft plan {name}.toml`, then",
        f"# `autopeft run {name}.toml`. Every field: the README's study-file reference.",
        "",
        "[study]",
        f"name = {_toml(name)}",
        "n_trials = 20",
        'sampler = "tpe"',
        "seed = 0",
        "",
        "[model]",
        f"name = {_toml(model)}",
        "",
        "[task]",
    ]
    if detected.instruction:
        lines += [
            "# chat or prompt/completion data: a causal LM trained on the answers (docs: Instruction tuning)",
            'type = "instruction"',
            'metric = "loss"          # of the answers\' tokens; "exact_match", "contains", "rouge_l" generate',
        ]
    elif classify:
        shown = ", ".join(map(str, detected.classes[:10])) + (", ..." if len(detected.classes) > 10 else "")
        lines += [
            f"# {len(detected.classes)} classes in {detected.label!r}: {shown}",
            'type = "sequence-classification"',
            f"metric = {_toml('accuracy' if len(detected.classes) == 2 else 'macro_f1')}",
        ]
    else:
        lines += ["# no label column: a language model of the text, scored by perplexity", 'type = "causal-lm"']
    lines += [
        "",
        "[data]",
        f"train = {_toml(train)}",
        f"validation = {_toml(validation)}",
        *([f"test = {_toml(test)}"] if test else ['# test = "..."           # scored for each new best trial']),
        f"text = {_toml(detected.text)}          "
        + (
            "# TRL's format: the turns, or the prompt and its completion"
            if detected.instruction
            else "# the column with the longest texts"
        ),
        *([f"label = {_toml(detected.label)}"] if classify else []),
        "max_length = 128",
        "# max_train_examples = 2000   # a seeded subsample makes each trial faster",
        "",
        "[budget]",
        f'max_trainable = {_toml(budget)}   # of {total_params:,} parameters; a count ("150k") works too',
        "",
        "[train]",
        "epochs = 1",
        "batch_size = 16",
        "# learning_rate: left out, each method searches its own range",
        "",
        "[search]",
        'methods = ["lora", "ia3", "bitfit", "unfreeze"]',
        "",
        "[final]                      # `autopeft refit`: the best trials again with new seeds",
        "seeds = 3",
        "",
    ]
    return "\n".join(lines)


def write_study_file(
    out: Path,
    *,
    model: str,
    train: str,
    validation: str,
    test: str | None = None,
    text: str | None = None,
    label: str | None = None,
    budget: str = "0.5%",
    ask: Callable[[str, str], str] | None = None,
) -> Path:
    """Detect, count, propose and write ``out``; ``ask(question, default)`` confirms each guess
    (interactive use), None takes them as they are.

    Raises:
        AutopeftError: ``out`` exists (a study file is never overwritten).
    """
    if out.exists():
        raise AutopeftError(f"init: {out} exists; choose another --out, or remove it first")
    detected = detect_columns(train, text, label)
    if ask is not None:
        chosen_text = ask(f"text column ({', '.join(detected.columns)})", detected.text)
        chosen_label = ask("label column (empty: none, a language model)", detected.label or "")
        detected = detect_columns(train, chosen_text, chosen_label or None)
    total = count_model(model, len(detected.classes))
    if ask is not None:
        budget = ask(f"budget (a share of the {total:,} parameters, or a count)", budget)
    name = out.stem
    out.write_text(
        study_text(
            name=name,
            model=model,
            train=_from(out, train),
            validation=_from(out, validation),
            test=_from(out, test) if test else None,
            detected=detected,
            total_params=total,
            budget=budget,
        ),
        encoding="utf-8",
    )
    return out
