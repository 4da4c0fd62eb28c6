"""Reading a study's data files into tables: local files with pyarrow, hub datasets with HF ``datasets``.

Local files (CSV, JSON, JSON Lines, Parquet) are read straight into memory: nothing is written
anywhere (HF ``datasets`` would build an Arrow cache in the user's home for every file), and a
study's columns can be checked in milliseconds, before torch, the plugins and the model load. This
module imports none of them.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from autopeft.config import DATA_SUFFIXES, StudyConfig, folder_kind
from autopeft.errors import DataError, first_line

__all__ = ["load_split", "read_local", "check_columns", "missing_columns"]


def read_local(path: Path) -> Any:
    """A local data file as a pyarrow Table, read once per process while the file is unchanged: the
    column checks before the model loads and the loading itself share it."""
    stat = path.stat()
    return _read_file(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_file(path_name: str, size: int, mtime_ns: int) -> Any:
    """A ``.json`` file holds an array of records or one record per line (JSON Lines), as HF
    ``datasets`` accepts. ``size`` and ``mtime_ns`` only key the cache."""
    import pyarrow as pa

    path = Path(path_name)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if path.suffix == ".csv":
        import pyarrow.csv as pa_csv

        return pa_csv.read_csv(path)
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("a .json file must hold an array of records (objects) or one record per line")
        return pa.Table.from_pylist(records)
    import pyarrow.json as pa_json

    return pa_json.read_json(path)


def load_split(config: StudyConfig, key: str) -> Any:
    """One split as a table with ``column_names``, ``num_rows`` and ``select``."""
    value = getattr(config.data, key)
    source = config.data_path(value)
    local = source.endswith(DATA_SUFFIXES)
    try:
        if local:
            table = read_local(Path(source))
        else:
            import datasets

            hub = config.dataset_source()
            if hub is None and (folder := _local_folder(config, source)) is not None:
                raise DataError(
                    f"data.{key}: {value!r} is {folder}, not a data file; name a file ending in "
                    f"{', '.join(DATA_SUFFIXES)}, or set data.dataset to a datasets folder and data.{key} to its split"
                )
            if hub is not None:  # [data] dataset: the value is a split of it, maybe a slice ("train[:90%]")
                found = datasets.load_dataset(hub, config.data.subset, split=value, revision=config.data.revision)
            else:
                name, _, split = source.partition(":")
                found = datasets.load_dataset(name, split=split or key)
            table = found.with_format("arrow")[:]
        table.column_names  # noqa: B018 - decoded here, so that a header that is not UTF-8 fails here
    except DataError:
        raise
    except Exception as exc:  # pyarrow and datasets raise many types for unreadable or unreachable sources
        if local and Path(source).is_file() and _has_no_rows(Path(source)):
            raise DataError(f"data.{key}: {value!r} has no rows; point it at a file with examples") from None
        if local and (twice := _KEY_TWICE.search(str(exc))) is not None:  # a JSON record naming a key twice
            raise DataError(
                f"data.{key}: column {twice.group(1)!r} appears twice in record {int(twice.group(2)) + 1} of "
                f"{value!r}; rename or remove the extra one, so that each column name is unique"
            ) from None
        fix = (
            "check that it is a UTF-8 CSV, JSON, JSON Lines or Parquet file as its suffix says"
            if local and Path(source).is_file()
            else "check the path, or the hub name and your connection"
        )
        raise DataError(f"data.{key}: cannot load {value!r} ({type(exc).__name__}: {first_line(exc)}); {fix}") from None
    if table.num_rows == 0:
        raise DataError(f"data.{key}: {value!r} has no rows; point it at a file with examples")
    return table


def _local_folder(config: StudyConfig, source: str) -> str | None:
    """What ``source`` (no data-file suffix) is where it names a folder beside the study file, which is
    never a hub dataset's name (:func:`autopeft.config.folder_kind`); None otherwise."""
    name = source.partition(":")[0]
    return folder_kind(config.path.parent / name) if name else None


#: pyarrow's words for a JSON record with a key twice: "Column(/label) was specified twice in row 0".
_KEY_TWICE = re.compile(r"Column\(/(.*?)\) was specified twice in row (\d+)")


def _has_no_rows(path: Path) -> bool:
    """Whether a local data file holds no examples (a header alone, ``[]``, nothing), which readers
    report as an obscure parse error."""
    content = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    header = 1 if path.suffix == ".csv" else 0
    return len(content) <= header or "".join(content).strip() == "[]"


def check_columns(config: StudyConfig, needed: list[str]) -> None:
    """Fail now, before the model loads, when a local split lacks one of the ``needed`` columns.

    Raises:
        DataError: as :func:`autopeft.data.load_task_data` would, seconds later.
    """
    for key in ("train", "validation", "test"):
        value = getattr(config.data, key)
        if value is not None and config.data_path(value).endswith(DATA_SUFFIXES):
            missing_columns(load_split(config, key), needed, key)


def missing_columns(table: Any, needed: list[str], key: str) -> None:
    """Raise a one-line DataError when a ``needed`` column is missing from the split, or named twice
    in it (a CSV header ``text,label,label``): which of the two to read cannot be guessed."""
    names = list(table.column_names)
    for column in needed:
        if column not in names:
            raise DataError(
                f"data.{key}: column {column!r} not found (columns: {', '.join(names)}); "
                f"set data.text / data.label to existing columns"
            )
        if (count := names.count(column)) > 1:
            raise DataError(
                f"data.{key}: column {column!r} appears {count} times (columns: {', '.join(names)}); "
                "rename or remove the extra ones, so that each column name is unique"
            )
