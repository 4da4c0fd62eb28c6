"""Property-based fuzzing of what a user or an attacker hands autopeft: study files, data files and
export folders. For every input: success, or one line on stderr with exit code 2 (a one-line
``AutopeftError`` in the API); never a traceback, never a write outside the study's and the output's
folders, never a password in any output.

Each target runs ``AUTOPEFT_FUZZ_EXAMPLES`` examples (default 300), derandomized so that CI is
repeatable; set the variable higher to search longer.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import _toml, write_study
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autopeft import AutopeftError, load_model
from autopeft.cli.command import main
from autopeft.config import load_config
from autopeft.errors import DataError
from autopeft.outputs.export import PROVENANCE_FILE

EXAMPLES = int(os.environ.get("AUTOPEFT_FUZZ_EXAMPLES", "300"))
SECRET = "s3cret-pw"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

_hostile_text = st.sampled_from(
    [
        "/",
        "..",
        "../../etc/passwd",
        "/tmp/evil",
        "a/b",
        "C:\\evil",
        "~root",
        "\u0000",
        "a\nb",
        "\t",
        "",
        " ",
        "x" * 300,
        "ünïcödé",
        "名前",
        "$(touch /tmp/pwned)",
        "'; DROP TABLE trials; --",
        "%2e%2e%2f",
        ".hidden",
    ]
)
_storage = st.sampled_from(
    [
        f"postgresql://autopeft:{SECRET}@127.0.0.1:1/db",
        f"postgresql://:{SECRET}@127.0.0.1:1/db",
        f"postgresql://autopeft@127.0.0.1:1/db?password={SECRET}",
        f"mysql://u:{SECRET}@127.0.0.1:1/db",
        "sqlite:///nowhere/x.db",
        "sqlite://",
        "not a url",
        "redis://localhost:1",
        "sqlite:///:memory:",
    ]
)
_scalar = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), _hostile_text, st.text(max_size=20)
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=3)
    ),
    max_leaves=5,
)
_FIELDS = {
    "study": [
        "name",
        "storage",
        "n_trials",
        "sampler",
        "pruner",
        "seed",
        "objectives",
        "keep_weights",
        "artifacts",
        "heartbeat_seconds",
    ],
    "model": ["name", "revision", "trust_remote_code", "overrides"],
    "task": ["type", "metric"],
    "data": ["train", "validation", "test", "text", "label", "labels", "max_length", "max_train_examples"],
    "budget": ["max_trainable"],
    "train": ["epochs", "batch_size", "learning_rate", "warmup_ratio", "weight_decay", "precision", "device"],
    "search": ["methods", "warm_start"],
}
_mutation = st.one_of(
    st.tuples(
        st.sampled_from(sorted(_FIELDS)), st.sampled_from(sorted({k for v in _FIELDS.values() for k in v})), _value
    ),
    st.tuples(st.just("study"), st.just("storage"), _storage),
    st.tuples(st.just("study"), st.sampled_from(["name", "artifacts"]), _hostile_text),
    st.tuples(st.just("data"), st.sampled_from(["train", "validation", "test"]), _hostile_text),
    st.tuples(st.just("model"), st.just("name"), _hostile_text),
)


# What tempfile names look like: other processes on the machine (pip, a browser) create them in /tmp
# while the tests run. autopeft itself stages exports and kept weights inside their own folders.
_OTHERS_TEMP = re.compile(r"^/tmp/(tmp[a-z0-9_]{8}|pymp-\w+)$")


def _snapshot(*folders: Path) -> set[str]:
    """Every path in ``folders`` (recursively for the first) and the top level of / and /tmp."""
    found = {str(p) for p in folders[0].rglob("*")}
    for top in (Path("/"), Path(tempfile.gettempdir()), *folders[1:]):
        found |= {str(p) for p in top.iterdir()}
    return {p for p in found if not _OTHERS_TEMP.match(p)}


def _new(before: set[str], after: set[str]) -> set[str]:
    """What appeared (or went) between two snapshots, for short assertion messages."""
    return after ^ before


def _assert_clean_exit(code: int, out: str, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in out + err and SECRET not in out + err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("autopeft: error: "), err


# -- study files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_base(trained_study, tmp_path_factory) -> Path:
    """A finished study (its database and data files) that each example's study file names, so
    that valid files reach the study itself; the read commands (training would be too slow) are
    what each example runs."""
    import shutil
    import sqlite3

    path, _, _ = trained_study
    folder = tmp_path_factory.mktemp("fuzz-study")
    for name in ("train.parquet", "validation.parquet"):
        shutil.copy(path.parent / name, folder / name)
    with sqlite3.connect(path.parent / "trained.db") as source, sqlite3.connect(folder / "trained.db") as copy:
        source.backup(copy)  # the study as committed, WAL included, in one file
    return folder


@FUZZ
@given(mutations=st.lists(_mutation, min_size=0, max_size=4), command=st.sampled_from(["trials", "best", "pareto"]))
def test_study_files(study_base: Path, capsys, mutations, command) -> None:
    import shutil

    folder = Path(tempfile.mkdtemp(dir=study_base))
    for name in ("trained.db", "train.parquet", "validation.parquet"):
        shutil.copy(study_base / name, folder / name)
    tables: dict = {
        "study": {"name": "trained", "n_trials": 3, "objectives": ["accuracy", "trainable_params"]},
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "overrides": {"num_hidden_layers": 2}},
        "data": {"train": "train.parquet", "validation": "validation.parquet"},
        "budget": {"max_trainable": "0.5%"},
        "search": {"methods": ["lora"]},
    }
    for section, key, value in mutations:
        tables.setdefault(section, {})[key] = value
    path = folder / "study.toml"
    try:
        path.write_text(_toml(tables), encoding="utf-8")
    except (UnicodeEncodeError, ValueError):
        return  # not a file anyone could write
    before = _snapshot(folder, study_base.parent)
    capsys.readouterr()
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    event(f"exit {code}: {err.split(':')[2].strip() if code else 'ok'}")
    _assert_clean_exit(code, out, err)
    # Read commands write nothing, anywhere; SQLite itself may open a WAL database's -wal and -shm files.
    changed = _new(before, _snapshot(folder, study_base.parent))
    assert all(p.startswith(str(folder / "trained.db-")) for p in changed), changed


# -- data files -------------------------------------------------------------------------------------

_cell = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    _hostile_text,
)
_column = st.sampled_from(["text", "label", "Text", "labels", "", "label ", "extra"])
_table = st.dictionaries(_column, st.lists(_cell, min_size=0, max_size=6), min_size=0, max_size=4)


@pytest.fixture(scope="module")
def data_world(tmp_path_factory):
    """The task, tokenizer and a study file whose splits each example replaces."""
    from conftest import _plugin_manager

    from autopeft.registry import resolve_study
    from autopeft.training.models import load_tokenizer, resolve_model_name

    folder = tmp_path_factory.mktemp("fuzz-data")
    path = write_study(folder, data={"max_length": 16})
    resolved = resolve_study(load_config(path), _plugin_manager())
    config, task = resolved.config, resolved.task
    source, offline = resolve_model_name(_plugin_manager(), config.model.name)
    return folder, config, task, load_tokenizer(config.model, source, offline)


def _write_table(columns: dict, path: Path) -> bool:
    """Write ``columns`` (padded to one length) in ``path``'s format; False where pandas cannot."""
    rows = max((len(v) for v in columns.values()), default=0)
    frame = pd.DataFrame({k: (v + [None] * rows)[:rows] for k, v in columns.items()})
    try:
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        elif path.suffix == ".parquet":
            frame.to_parquet(path)
        elif path.suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_json(path, orient="records")
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError, ImportError, Exception):  # noqa: B014
        return False
    return True


@FUZZ
@given(
    train=_table,
    validation=_table,
    suffix=st.sampled_from([".csv", ".parquet", ".jsonl", ".json"]),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_data_files(data_world, train, validation, suffix, raw) -> None:
    from dataclasses import replace

    from autopeft.training.data_files import check_columns
    from autopeft.training.token_cache import load_task_data

    folder, config, task, tokenizer = data_world
    example = Path(tempfile.mkdtemp(dir=folder))
    files = {}
    for split, columns in (("train", train), ("validation", validation)):
        path = example / f"{split}{suffix}"
        if split == "train" and raw is not None:
            path.write_bytes(raw)  # not a table at all: a truncated or foreign file
        elif not _write_table(columns, path):
            return
        files[split] = str(path)
    config = replace(config, data=replace(config.data, train=files["train"], validation=files["validation"]))
    before = _snapshot(example, folder)
    try:
        check_columns(config, task.columns(config.data))
        data = load_task_data(config, tokenizer, task)
    except DataError as exc:
        event("one-line DataError")
        assert "\n" not in str(exc) and str(exc).startswith("data."), str(exc)
    else:
        event("loaded")
        assert len(data.train) > 0 and len(data.validation) > 0 and len(data.label_names) >= 2
    assert not _new(before, _snapshot(example, folder))


# -- export folders ---------------------------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "README.md",
            PROVENANCE_FILE,
            "pareto.json",
            "trained.safetensors",
            "notes.txt",
            "trial-0",
            "trial-1",
            "../outside.txt",
            "/tmp/abs.txt",
            "sub/x",
            "..",
        ]
    ),
    _hostile_text,
)


@pytest.fixture(scope="module")
def export_world(trained_study, tmp_path_factory):
    path, study, _ = trained_study
    folder = tmp_path_factory.mktemp("fuzz-export")
    outside = folder / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("must survive")
    reference = folder / "reference"
    assert main(["export", str(path), "--best", str(reference), "--quiet"]) == 0
    return path, folder, outside, reference


@FUZZ
@given(
    recorded=st.lists(_names, max_size=5),
    folders=st.lists(_names, max_size=3),
    present=st.lists(_names, max_size=5),
    present_dirs=st.lists(_names, max_size=2),
    link=st.one_of(st.none(), st.sampled_from(["linked", "trial-0", "trial-1", "trial-2", "trial-3"])),
    which=st.sampled_from(["--best", "--pareto"]),
)
def test_export_into_existing_folders(
    export_world, capsys, recorded, folders, present, present_dirs, link, which
) -> None:
    """Whatever an earlier export's records say, an export never removes or writes a file outside
    its folder, and never removes a file no export of it wrote."""
    path, folder, outside, _ = export_world
    out = Path(tempfile.mkdtemp(dir=folder))
    mine = {}
    for name in [*present, *(f"{d}/kept.txt" for d in present_dirs)]:  # the user's files, some in folders
        target = out / name
        if not name or "\x00" in name or not str(target.resolve()).startswith(str(out.resolve()) + os.sep):
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_text(f"user file {name}")
                mine[target] = target.read_bytes()
        except OSError:
            continue
    if link is not None and not (out / link).exists():  # a link out of the folder, claimed by the records
        (out / link).symlink_to(outside)
        recorded, folders = [*recorded, link], [*folders, link]
    for record, content in (
        (PROVENANCE_FILE, {"weights": {"files": recorded}}),
        ("pareto.json", [{"folder": f} for f in folders]),
    ):
        if not (out / record).is_dir():  # the user's folder of that name, as `present_dirs` may make
            (out / record).write_text(json.dumps(content))
    before_outside = _snapshot(outside, folder)
    capsys.readouterr()
    code = main(["export", str(path), which, str(out), "--quiet"])
    output, err = capsys.readouterr()
    event(f"exit {code}")
    _assert_clean_exit(code, output, err)
    assert (outside / "precious.txt").read_text() == "must survive"
    assert not {p for p in _new(before_outside, _snapshot(outside, folder)) if not p.startswith(str(out))}
    ours = set(recorded) | {f for f in folders} | {PROVENANCE_FILE, "pareto.json"}
    for target, content in mine.items():
        if target.relative_to(out).parts[0] not in ours:  # not claimed by the records: the user's, kept
            assert target.read_bytes() == content, target


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["method", "config", "labels", "model", "study", "weights", "extra"]), _json_values),
        max_size=3,
    ),
    config_edit=st.one_of(
        st.none(), st.tuples(st.sampled_from(["sizes", "placement", "sublayers", "x"]), _json_values)
    ),
    weights=st.sampled_from(["keep", "truncate", "garbage", "pickle", "remove"]),
    nest=st.booleans(),
)
def test_load_model_on_malformed_exports(export_world, edits, config_edit, weights, nest) -> None:
    import shutil

    _, folder, _, reference = export_world
    out = Path(tempfile.mkdtemp(dir=folder))
    shutil.copytree(reference, out, dirs_exist_ok=True)
    record = json.loads((out / PROVENANCE_FILE).read_text())
    for key, value in edits:
        record[key] = value
    if config_edit is not None and isinstance(record.get("config"), dict):
        record["config"][config_edit[0]] = config_edit[1]
    text = json.dumps(record)
    if nest:
        text = "[" * 5000 + text + "]" * 5000
    (out / PROVENANCE_FILE).write_text(text)
    weight_files = [p for p in out.iterdir() if p.suffix == ".safetensors"]
    for p in weight_files:
        if weights == "truncate":
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
        elif weights == "garbage":
            p.write_bytes(os.urandom(256))
        elif weights == "remove":
            p.unlink()
    if weights == "pickle":
        (out / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    before = _snapshot(out, folder)
    try:
        model = load_model(out)
    except AutopeftError as exc:
        event("one-line AutopeftError")
        assert "\n" not in str(exc), str(exc)
    else:
        event("loaded")
        assert not model.training
    assert not _new(before, _snapshot(out, folder))


# -- issue 27: duplicated and oddly encoded columns; values at and beyond the model's limits ----------

_header_name = st.sampled_from(["text", "label", "Text", "label ", "tëxt", "\ufefftext", "名前", "extra", ""])
_csv_cell = st.sampled_from(["good", "bad", "0", "1", "", " ", "ünïcödé", '"q,uoted"', "NaN", "1.5", "\u0000"])


@FUZZ
@given(
    header=st.lists(_header_name, min_size=1, max_size=5),
    rows=st.lists(st.lists(_csv_cell, min_size=0, max_size=6), min_size=0, max_size=6),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]),
    form=st.sampled_from(["csv", "jsonl", "parquet"]),
)
def test_duplicated_and_oddly_encoded_columns(data_world, header, rows, encoding, form) -> None:
    """A header naming a column twice (``label,label``), in any encoding and form: one line, never the
    ``KeyError: Field "label" exists 2 times in schema`` of pyarrow."""
    from dataclasses import replace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from autopeft.training.data_files import check_columns
    from autopeft.training.token_cache import load_task_data

    folder, config, task, tokenizer = data_world
    example = Path(tempfile.mkdtemp(dir=folder))
    train = example / f"train.{form}"
    cells = [(row + [""] * len(header))[: len(header)] for row in rows]
    if form == "csv":
        lines = [",".join(header), *(",".join(row) for row in cells)]
        train.write_bytes("\n".join(lines).encode(encoding, errors="replace"))
    elif form == "jsonl":  # JSON objects keep duplicated keys as written
        train.write_bytes(
            "\n".join(
                "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in zip(header, row)) + "}" for row in cells
            ).encode(encoding, errors="replace")
        )
    else:  # Parquet allows two columns of one name
        columns = [pa.array([row[i] for row in cells], type=pa.string()) for i in range(len(header))]
        pq.write_table(pa.Table.from_arrays(columns, names=header), train)
    config = replace(config, data=replace(config.data, train=str(train)))
    before = _snapshot(example, folder)
    try:
        check_columns(config, task.columns(config.data))
        data = load_task_data(config, tokenizer, task)
    except DataError as exc:
        event("one-line DataError")
        assert "\n" not in str(exc) and str(exc).startswith("data."), str(exc)
        if header.count("label") > 1 and "text" in header and encoding in ("utf-8", "utf-8-sig") and rows:
            assert "appears" in str(exc) or "cannot load" in str(exc), str(exc)  # named, not a later symptom
    else:
        event("loaded")
        assert header.count("text") == 1 or header.count("\ufefftext") == 1
        assert len(data.train) > 0 and len(data.label_names) >= 2
    assert not _new(before, _snapshot(example, folder))


_lengths = st.sampled_from([8, 9, 16, 511, 512, 513, 4096, 10**9, 2**63 - 1])
_batches = st.sampled_from([1, 16, 10**6, 2**31, 2**62])


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 10))
@given(max_length=_lengths, batch=_batches, eval_batch=_batches, checkpointing=st.booleans())
def test_values_at_and_beyond_the_model_limits(data_world, max_length, batch, eval_batch, checkpointing) -> None:
    """Whatever ``data.max_length`` and the batch sizes: the length is cut to the model's own limit,
    no tokenized example is longer than it, and the memory estimate is a number to compare (huge
    values are refused by the comparison, never by an overflow or a crash)."""
    from dataclasses import replace

    from autopeft.training.memory import step_memory_bytes
    from autopeft.training.models import model_config, model_length_limit, resolve_model_name
    from autopeft.training.token_cache import load_task_data

    folder, config, task, tokenizer = data_world
    source, offline = resolve_model_name(_plugin_manager_for_limits(), config.model.name)
    stated = model_config(config.model, source, offline)
    limit, where = model_length_limit(tokenizer, stated)
    assert limit == 512 and where.endswith("max_position_embeddings")  # MiniLM's, from its own config
    capped = replace(config, data=replace(config.data, max_length=min(max_length, limit)))
    data = load_task_data(capped, tokenizer, task)
    longest = max(len(f["input_ids"]) for f in data.train.features)
    assert longest <= min(max_length, limit)
    for training, size in ((True, batch), (False, eval_batch)):
        need = step_memory_bytes(
            min(size, len(data.train)),
            longest,
            stated.hidden_size,
            stated.num_hidden_layers,
            stated.num_attention_heads,
            2,
            trainable=10**6,
            checkpointing=checkpointing,
            training=training,
        )
        assert isinstance(need, int) and need > 0
    assert step_memory_bytes(batch, max_length, 384, 2, 12, 2) >= step_memory_bytes(1, 8, 384, 2, 12, 2)


def _plugin_manager_for_limits():
    from conftest import _plugin_manager

    return _plugin_manager()


# -- records in the study database: confirm and refit records with keys missing or of the wrong type --

_RECORD_KEYS = ["trial", "seeds", "values", "mean", "std", "test_values", "test_mean", "test_std"]
_RECORD_KEYS += ["fidelity", "weights"]


@pytest.fixture(scope="module")
def record_world(trained_study, study_base: Path) -> tuple[Path, int]:
    """The finished study's copy with its kept weights beside it, and the number of its winner: the
    trial whose records each example tampers with, so best, pareto, report and export all read them."""
    import shutil

    from autopeft.storage.results import winner

    path, study, _ = trained_study
    shutil.copytree(path.parent / "trained.artifacts", study_base / "trained.artifacts", dirs_exist_ok=True)
    return study_base, winner(study).number


@settings(FUZZ, max_examples=max(20, EXAMPLES // 5))  # each example runs a whole command
@given(
    prefix=st.sampled_from(["refit:", "confirm:"]),
    dropped=st.lists(st.sampled_from(_RECORD_KEYS), max_size=3, unique=True),
    replaced=st.lists(st.tuples(st.sampled_from(_RECORD_KEYS), _json_values), max_size=2),
    whole=st.one_of(st.none(), _json_values),
    command=st.sampled_from(["best", "best-json", "pareto", "pareto-json", "report", "export"]),
)
def test_tampered_study_records(record_world, capsys, prefix, dropped, replaced, whole, command) -> None:
    """A confirm or refit record an old version or another hand wrote: success, with at most one
    warning line naming the record, or one error line; never a traceback, never a write elsewhere."""
    import shutil
    import sqlite3

    import optuna

    from autopeft.storage import results

    base, number = record_world
    folder = Path(tempfile.mkdtemp(dir=base))
    for name in ("train.parquet", "validation.parquet"):
        shutil.copy(base / name, folder / name)
    with sqlite3.connect(base / "trained.db") as source, sqlite3.connect(folder / "trained.db") as copy:
        source.backup(copy)
    good = {
        "trial": number,
        "seeds": [11, 12],
        "values": [0.61, 0.63],
        "mean": 0.62,
        "std": 0.014,
        "test_values": [0.6, 0.62],
        "test_mean": 0.61,
        "test_std": 0.014,
        "fidelity": {"epochs": 1, "max_train_examples": None},
        "weights": {"11": [], "12": []},
    }
    record = {k: v for k, v in good.items() if k not in dropped} | dict(replaced)
    study = optuna.load_study(study_name="trained", storage=f"sqlite:///{folder / 'trained.db'}")
    study.set_user_attr(f"{prefix}{number}", record if whole is None else whole)
    tables: dict = {
        "study": {
            "name": "trained",
            "n_trials": 4,
            "objectives": ["accuracy", "trainable_params"],
            "artifacts": str(base / "trained.artifacts"),
        },
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "overrides": {"num_hidden_layers": 2}},
        "data": {"train": "train.parquet", "validation": "validation.parquet", "test": "validation.parquet"},
        "budget": {"max_trainable": "0.5%"},
        "search": {"methods": ["lora", "ia3", "adapter"]},
    }
    path = folder / "study.toml"
    path.write_text(_toml(tables), encoding="utf-8")
    args = {
        "best": ["best", str(path)],
        "best-json": ["best", str(path), "--format", "json"],
        "pareto": ["pareto", str(path)],
        "pareto-json": ["pareto", str(path), "--format", "json"],
        "report": ["report", str(path), "-o", str(folder / "report.html")],
        "export": ["export", str(path), "--best", str(folder / "out"), "--quiet"],
    }[command]
    results._said.clear()  # a warning is said once per command, as once per process
    before = _snapshot(folder, base.parent)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    problem = results.record_problem(record if whole is None else whole, refit=prefix == "refit:")
    event(f"exit {code}: {'warned' if 'warning' in err else 'clean'}")
    assert code in (0, 2), (code, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("autopeft: error: "), err
    else:
        assert len(lines) <= 1 and all(line.startswith("autopeft: warning: ") for line in lines), err
        assert not lines or f"({prefix}{number}: {problem})" in lines[0], (lines, problem)
    written = {str(folder / "report.html"), str(folder / "out")}
    changed = {p for p in _new(before, _snapshot(folder, base.parent)) if not p.startswith(str(folder / "out") + "/")}
    assert all(p in written or p.startswith(str(folder / "trained.db-")) for p in changed), changed


# -- storage URLs with reserved characters in their credentials, and studies created at once -------

_URL_LETTERS = "QXZJKVW"  # no hex digits, and no run of them in any message autopeft prints
_credential = st.text(alphabet=_URL_LETTERS + "@:/?#%_", min_size=0, max_size=12)


def _password_pieces(password: str) -> set[str]:
    """Every run of four or more characters of ``password`` (with two of its letters, so that
    pieces such as ``:///`` that every URL holds are left out), as typed and percent-encoded."""
    from urllib.parse import quote

    pieces = set()
    for form in {password, quote(password, safe="")}:
        for i in range(len(form)):
            for j in range(i + 4, len(form) + 1):
                if sum(c in _URL_LETTERS for c in form[i:j]) >= 2:
                    pieces.add(form[i:j])
    return pieces


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 20))
@given(
    user=st.text(alphabet="uvw@/?#%_", min_size=1, max_size=8),  # not the password's letters: it is not secret
    password=_credential,
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg", "mysql"]),
    command=st.sampled_from(["trials", "report", "run", "worker"]),
    given_as=st.sampled_from(["--storage", "environment", "study file"]),
)
def test_storage_urls_with_reserved_characters_in_the_credentials(
    tmp_path_factory, monkeypatch, capsys, user, password, scheme, command, given_as
) -> None:
    from autopeft.storage.backends import STORAGE_ENV

    folder = tmp_path_factory.mktemp("url")
    url = f"{scheme}://{user}:{password}@127.0.0.1:1/nowhere"
    path = write_study(folder, study={"storage": url} if given_as == "study file" else {})
    with monkeypatch.context() as env:
        env.delenv(STORAGE_ENV, raising=False)
        if given_as == "environment":
            env.setenv(STORAGE_ENV, url)
        args = [command, str(path), *(["--storage", url] if given_as == "--storage" else [])]
        args += {"report": ["-o", str(folder / "r.html")], "run": ["--quiet"], "worker": ["--quiet"]}.get(command, [])
        capsys.readouterr()
        code = main(args)
    out, err = capsys.readouterr()
    refused = "percent-encode" in err
    event("refused" if refused else "reached the driver")
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    [line] = err.strip().splitlines()
    assert line.startswith("autopeft: error: study.storage: "), line
    leaked = sorted(p for p in _password_pieces(password) if p in out + err)
    assert not leaked, (line, leaked)
    assert not (folder / "tiny.db").exists()


_OPEN_AT_ONCE = """
import dataclasses, pathlib, sys, time
from autopeft.config import load_config
from autopeft.search.study import open_study
config, url, name, start = load_config(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
(start.parent / f"ready-{sys.argv[5]}").write_text("")
while not start.exists():
    time.sleep(0.001)
config = dataclasses.replace(config, study=dataclasses.replace(config.study, name=name.replace("N", sys.argv[5])))
open_study(config, url, directions=["maximize"]).set_user_attr("opened_by", sys.argv[5])
"""


@pytest.mark.parametrize("names", ["one study", "a study each"])
def test_studies_created_at_once_on_a_new_sqlite_file(tmp_path, names) -> None:
    """Three processes open a study on an SQLite file that does not exist yet, released within a
    millisecond of each other: one study they all join, or one study each in one file. Every
    process succeeds; none sees a traceback."""
    import optuna
    from test_workers import _start_together

    path = write_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    done = _start_together(tmp_path, 3, _OPEN_AT_ONCE, path, url, "s" if names == "one study" else "sN")
    assert [r.returncode for r in done] == [0, 0, 0], [r.stderr for r in done]
    assert not any("Traceback" in r.stderr for r in done)
    expected = ["s"] if names == "one study" else ["s0", "s1", "s2"]
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(url)) == expected
