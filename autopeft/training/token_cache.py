"""The study's splits read (:mod:`autopeft.training.data_files`), tokenized by the task, and cached on disk,
so a study tokenizes its data once, not once per worker or trial.

A cache file is named by a fingerprint of everything that decides the token ids: the tokenizer
itself (its full serialized form for fast tokenizers), the ``[data]`` section, the study seed (it
draws the subsamples), and each local data file's size and modification time. Any change gives a
new name, so a stale file is never read; a hub dataset is named by its id and split, as ``datasets``
caches it. Files are NumPy ``.npz`` archives read with ``allow_pickle=False``: loading one runs no
code. Writes go to a temporary name first, then are renamed: workers that start together may all
write the same file, and none reads a half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from autopeft.config import DATA_SUFFIXES, StudyConfig
from autopeft.data import MIN_VALIDATION_EXAMPLES, Split, TaskData
from autopeft.errors import DataError, first_line
from autopeft.tasks import Task
from autopeft.training.data_files import load_split, missing_columns

__all__ = ["load_task_data", "load_cached_task_data", "token_cache_path"]

_FORMAT = 4  # bump when the file layout changes


def _rows(
    config: StudyConfig, key: str, needed: list[str], limit: int | None, seed: int, notes: list[str]
) -> dict[str, list[Any]]:
    """Column -> values of one split, rows with an empty needed value dropped (said in ``notes``, or
    refused with ``data.on_missing = "error"``), ``limit`` sampled."""
    table = load_split(config, key)
    missing_columns(table, needed, key)
    try:
        columns = table.select(needed).to_pydict()  # whole columns to Python lists: per-row access is ~100x slower
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # cells pyarrow read but Python cannot hold
        raise DataError(f"data.{key}: cannot read the {', '.join(needed)} columns ({first_line(exc)})") from None
    usable = {c: [_usable(v) for v in columns[c]] for c in needed}
    keep = [i for i in range(table.num_rows) if all(usable[c][i] for c in needed)]
    if dropped := table.num_rows - len(keep):
        _say_dropped(config, key, table.num_rows, dropped, usable, keep, notes)
    if limit is not None and len(keep) > limit:
        keep = sorted(random.Random(seed).sample(keep, limit))
    if not keep:
        raise DataError(
            f"data.{key}: the split has no usable rows (empty texts or labels); point it at a non-empty file"
        )
    return {c: [columns[c][i] for i in keep] for c in needed}


def _say_dropped(
    config: StudyConfig,
    key: str,
    total: int,
    dropped: int,
    usable: dict[str, list[bool]],
    keep: list[int],
    notes: list[str],
) -> None:
    """Note how many rows of split ``key`` lack a value, per column; with ``data.on_missing = "error"``
    (or when no row is left) refuse the split instead."""
    value = getattr(config.data, key)
    per_column = ", ".join(f"{c}: {n}" for c, flags in usable.items() if (n := flags.count(False)))
    if config.data.on_missing == "error":
        first = next(i for i in range(total) if not all(flags[i] for flags in usable.values()))
        raise DataError(
            f"data.{key}: {dropped} of {total} rows of {value!r} have an empty or missing value ({per_column}), "
            f'the first at data row {first + 1}; fill in or remove those rows, or set data.on_missing = "drop"'
        )
    if keep:
        notes.append(
            f"autopeft: data.{key}: dropped {dropped} of {total} rows of {value!r} with an empty or missing value "
            f'({per_column}); set data.on_missing = "error" to refuse such a file'
        )


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
    notes: list[str] = []
    raw = {
        "train": _rows(config, "train", needed, d.max_train_examples, seed, notes),
        "validation": _rows(config, "validation", needed, d.max_eval_examples, seed, notes),
    }
    if d.test is not None:
        raw["test"] = _rows(config, "test", needed, d.max_eval_examples, seed, notes)
    names = task.label_names(raw["train"], d)
    splits = {key: _encode(task, rows, tokenizer, config, names, key) for key, rows in raw.items()}
    notes += [note for split in splits.values() for note in split.notes]
    for key, split in splits.items():
        if not len(split):
            raise DataError(f"data.{key}: no example left after tokenizing; check data.text and data.max_length")
    notes += _absent_classes(splits["train"], names)
    if (n := len(splits["validation"])) < MIN_VALIDATION_EXAMPLES:
        notes.append(
            f"autopeft: data.validation: only {n} example{'s' if n != 1 else ''}, fewer than the minimum of "
            f"{MIN_VALIDATION_EXAMPLES}: its metric is mostly noise and the best trial wins by chance; "
            "add validation examples (each trial's line shows its standard error)"
        )
    return TaskData(splits["train"], splits["validation"], splits.get("test"), names, tokenizer.pad_token_id, notes)


def _absent_classes(train: Split, names: list[Any]) -> list[str]:
    """A note naming the classes (ids into ``names``) that no train label is: a model never shown
    one cannot learn to predict it, and ``data.labels`` may list a class the data lacks."""
    if not names:
        return []
    labels = train.labels
    flat = [x for row in labels for x in row] if labels and isinstance(labels[0], list) else labels
    present = set(cast(list[int], flat))
    absent = [name for i, name in enumerate(names) if i not in present]
    if not absent:
        return []
    which = ", ".join(repr(name) for name in absent)
    return [
        f"autopeft: data.train: the class{'es' if len(absent) > 1 else ''} {which} of the labels {names} never "
        f"occur{'' if len(absent) > 1 else 's'} in the train split, so the model cannot learn "
        f"{'them' if len(absent) > 1 else 'it'}; add train examples or remove {'them' if len(absent) > 1 else 'it'} "
        "from data.labels"
    ]


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


def _tokenizer_identity(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set by each call, not part of the tokenizer: a first call changes them
        state.pop("padding", None)
        serialized = json.dumps(state, sort_keys=True)
    else:
        serialized = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    template = getattr(tokenizer, "chat_template", None)  # the instruction task formats with it
    return f"{type(tokenizer).__name__}|{tokenizer.pad_token_id}|{serialized}|{template}"


def _source_identity(config: StudyConfig, value: str) -> str:
    source = config.data_path(value)
    if source.endswith(DATA_SUFFIXES) and Path(source).is_file():
        stat = Path(source).stat()
        return f"{source}|{stat.st_size}|{stat.st_mtime_ns}"
    return source


def token_cache_path(config: StudyConfig, tokenizer: Any) -> Path:
    """Where this study's tokenized data is (or will be) cached: ``<name>.cache/`` beside the study file."""
    d = config.data
    sources = {
        key: _source_identity(config, value) for key in ("train", "validation", "test") if (value := getattr(d, key))
    }
    identity = json.dumps(
        [_FORMAT, config.task.type, dataclasses.asdict(d), sources, config.study.seed, _tokenizer_identity(tokenizer)],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return config.path.parent / f"{config.study.name}.cache" / f"tokens-{digest}.npz"


#: What a split's archive holds beside its token features.
_NOT_FEATURES = ("labels", "lengths", "per_token", "answers", "prompt_lengths")


def _pack(data: TaskData) -> dict[str, np.ndarray]:
    arrays = {
        "label_names": np.array(json.dumps(data.label_names)),
        "pad_token_id": np.array(data.pad_token_id),
        "notes": np.array(json.dumps(data.notes)),
    }
    for name, split in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if split is None:
            continue
        if split.labels and isinstance(split.labels[0], list):  # one label per token: stored like token ids
            arrays[f"{name}/labels"] = np.array([x for row in split.labels for x in row], dtype=np.int64)  # type: ignore[union-attr]
            arrays[f"{name}/per_token"] = np.array(True)
        else:
            arrays[f"{name}/labels"] = np.array(split.labels, dtype=np.int64)
        if split.answers is not None and split.prompt_lengths is not None:
            arrays[f"{name}/answers"] = np.array(json.dumps(split.answers))
            arrays[f"{name}/prompt_lengths"] = np.array(split.prompt_lengths, dtype=np.int64)
        lengths = [len(f["input_ids"]) for f in split.features]
        arrays[f"{name}/lengths"] = np.array(lengths, dtype=np.int64)
        for key in split.features[0]:
            arrays[f"{name}/{key}"] = np.array([t for f in split.features for t in f[key]], dtype=np.int64)
    return arrays


def _unpack(arrays: Any) -> TaskData:
    splits: dict[str, Split] = {}
    for name in ("train", "validation", "test"):
        if f"{name}/labels" not in arrays:
            continue
        ends = np.cumsum(arrays[f"{name}/lengths"]).tolist()
        starts = [0, *ends[:-1]]
        keys = [k.split("/", 1)[1] for k in arrays.files if k.startswith(f"{name}/") and k.count("/") == 1]
        columns = {k: arrays[f"{name}/{k}"].tolist() for k in keys if k not in _NOT_FEATURES}
        features = [{k: v[s:e] for k, v in columns.items()} for s, e in zip(starts, ends)]
        labels = arrays[f"{name}/labels"].tolist()
        if f"{name}/per_token" in arrays:
            labels = [labels[s:e] for s, e in zip(starts, ends)]
        generated = f"{name}/answers" in arrays  # a task that scores generated answers
        splits[name] = Split(
            features,
            labels,
            json.loads(str(arrays[f"{name}/answers"])) if generated else None,
            arrays[f"{name}/prompt_lengths"].tolist() if generated else None,
        )
    return TaskData(
        splits["train"],
        splits["validation"],
        splits.get("test"),
        json.loads(str(arrays["label_names"])),
        int(arrays["pad_token_id"]),
        json.loads(str(arrays["notes"])),
    )


def load_cached_task_data(config: StudyConfig, tokenizer: Any, task: Task, write: bool = True) -> tuple[TaskData, bool]:
    """(the study's tokenized data, whether it came from the cache); tokenized and cached on a miss.

    ``[data] cache_tokens = false`` tokenizes every time and writes nothing; so does ``write=False``
    (``autopeft plan``) on a miss. A cache file that cannot be read (truncated, corrupted, not an
    archive) is a miss: the data is tokenized again and the file rewritten.
    """
    if not config.data.cache_tokens:
        return load_task_data(config, tokenizer, task), False
    path = token_cache_path(config, tokenizer)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return _unpack(arrays), True
        except Exception:  # BadZipFile, EOFError, a missing array...: whatever it holds, it is not our cache
            pass
    data = load_task_data(config, tokenizer, task)
    if not write:
        return data, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, **_pack(data))  # type: ignore[arg-type]  # numpy stubs mistype **arrays
        os.replace(handle.name, path)
    except (OSError, TypeError):  # a read-only folder, labels JSON cannot hold: no cache, never a failed study
        pass
    return data, False
