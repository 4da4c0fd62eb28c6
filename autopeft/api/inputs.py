"""What ``tune`` is handed, made into what a study file holds: data as files, a model as a name.

In-memory data (a ``datasets.Dataset``, a pandas ``DataFrame``) is written as parquet into the
study's folder, named by a fingerprint of its content: an unchanged dataset finds its file (and the
token cache its tokens) again, a changed row makes a new file, tokenized anew. Worker processes and
``autopeft run`` on the written study file read the same files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from autopeft.errors import ConfigError

__all__ = ["data_source", "model_name", "fingerprint"]


def _arrow_table(value: Any, argument: str) -> Any:
    """``value`` as a pyarrow Table, or None when it is a path or a hub name."""
    import pyarrow as pa

    if isinstance(value, (str, Path)):
        return None
    kind = type(value).__name__
    if kind == "DatasetDict" or (
        isinstance(value, dict) and value and all(hasattr(v, "column_names") for v in value.values())
    ):
        raise ConfigError(
            argument,
            f"is a DatasetDict of splits {list(value)}",
            f"pass one split, e.g. {argument}=data[{next(iter(value))!r}]",
        )
    if hasattr(value, "flatten_indices") and hasattr(value, "data"):  # datasets.Dataset: its rows, selections applied
        return value.flatten_indices().data.table
    if hasattr(value, "to_dict") and hasattr(value, "columns") and hasattr(value, "iloc"):  # pandas.DataFrame
        return pa.Table.from_pandas(value, preserve_index=False)
    if isinstance(value, pa.Table):
        return value
    raise ConfigError(
        argument,
        f"is a {kind}",
        "pass a datasets.Dataset, a pandas DataFrame, or the path of a csv, json, jsonl or parquet file",
    )


def fingerprint(table: Any) -> str:
    """A digest of ``table``'s schema and rows (their Arrow stream): the same data, the same digest."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def data_source(value: Any, argument: str, folder: Path, columns: list[str]) -> str | None:
    """The study file's entry for split ``argument`` (train, validation, test): a path as given
    (absolute), a hub name as is, or in-memory data written to ``folder/data/<argument>-<digest>.parquet``
    (once: a file of that name holds the same rows).

    Raises:
        ConfigError: ``value`` is no kind of data; or in-memory data lacks one of ``columns``.
    """
    if value is None:
        return None
    table = _arrow_table(value, argument)
    if table is None:
        path = Path(value)
        return str(path.resolve()) if path.exists() else str(value)  # else a hub name: "owner/name:split"
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(
            argument,
            f"has no column {missing[0]!r} (columns: {', '.join(table.column_names)})",
            f"rename a column to {missing[0]!r}, or name yours with text=... / label=...",
        )
    import pyarrow.parquet as pq

    path = folder / "data" / f"{argument}-{fingerprint(table)}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        pq.write_table(table, partial)
        partial.replace(path)  # a reader never sees half a file
    return str(path)


def model_name(model: Any, tokenizer: Any) -> tuple[str, tuple[Any, Any] | None]:
    """``[model] name`` for ``model``, and the loaded (model, tokenizer) when it is an object.

    Raises:
        ConfigError: a loaded model without its tokenizer, or something that is no model.
    """
    if isinstance(model, (str, Path)):
        return str(model), None
    if not hasattr(model, "config") or not hasattr(model, "forward"):
        raise ConfigError(
            "model", f"is a {type(model).__name__}", "pass a hub id, a local path, or a loaded transformers model"
        )
    if tokenizer is None:
        raise ConfigError(
            "tokenizer",
            f"a loaded {type(model).__name__} needs its tokenizer",
            "pass tokenizer=AutoTokenizer.from_pretrained(...) beside model=",
        )
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or ""
    return str(name) or "loaded-model", (model, tokenizer)
