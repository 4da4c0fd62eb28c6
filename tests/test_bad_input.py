"""Bad input against a study that already has trials: one line naming the problem and the fix,
exit code 2, and no existing trial changed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import write_study

from autopeft import run_study
from autopeft.cli.command import main
from autopeft.storage.backends import open_storage


def _snapshot(url: str, name: str) -> tuple[list[tuple], dict]:
    study = optuna.load_study(study_name=name, storage=open_storage(url, 30))
    trials = [
        (t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs, t.datetime_complete)
        for t in study.get_trials()
    ]
    return trials, study.user_attrs


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory, minilm_available) -> Path:
    """A study folder whose study has one finished trial."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_study(
        folder,
        study={"name": "kept", "n_trials": 1},
        search={"methods": ["bitfit"]},
        data={"max_train_examples": 16, "max_eval_examples": 32},
    )
    run_study(path, quiet=True)
    return folder


def _rewrite(folder: Path, **sections: dict) -> None:
    base = {
        "study": {"name": "kept", "n_trials": 1},
        "search": {"methods": ["bitfit"]},
        "data": {"max_train_examples": 16, "max_eval_examples": 32},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    write_study(folder, **base)


def _unseen_string_label(folder: Path) -> None:
    _rewrite(folder, data={"label": "category"})  # (writes the data files afresh)
    frame = pd.read_parquet(folder / "validation.parquet")
    frame["category"] = "plot"  # the train split's categories are fresh and rotten
    frame.to_parquet(folder / "validation.parquet")


def _empty_validation(folder: Path) -> None:
    _rewrite(folder)
    pd.read_parquet(folder / "validation.parquet").head(0).to_parquet(folder / "validation.parquet")


def _column_named_twice(folder: Path) -> None:
    _rewrite(folder, data={"train": "train.csv"})
    (folder / "train.csv").write_text("text,label,label\ngood,1,1\nbad,0,0\n")


def _folder_as_data_file(folder: Path) -> None:
    _rewrite(folder, data={"train": "rows.csv"})
    (folder / "rows.csv").mkdir()


def _missing_text_refused(folder: Path) -> None:
    _rewrite(folder, data={"on_missing": "error"})
    frame = pd.read_parquet(folder / "train.parquet")
    frame.loc[[5, 9], "text"] = None
    frame.to_parquet(folder / "train.parquet")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong column": (
        lambda f: _rewrite(f, data={"text": "review"}),
        "data.train: column 'review' not found (columns: text, label, category, movie_name",
    ),
    "unseen string label": (
        _unseen_string_label,
        "data.validation: label 'plot' is not among the train labels ['fresh', 'rotten']",
    ),
    "empty split": (_empty_validation, "data.validation: 'validation.parquet' has no rows"),
    "unknown method": (
        lambda f: _rewrite(f, search={"methods": ["bitfit", "lorra"]}),
        "search.methods: unknown method 'lorra'; installed methods: adalora, adapter, bitfit, eva, ia3, lora",
    ),
    "budget nothing fits": (
        lambda f: _rewrite(f, budget={"max_trainable": 10}),
        "budget.max_trainable: 10 parameters fit no configuration; the smallest is bitfit",
    ),
    "mistyped field": (lambda f: _rewrite(f, train={"epochs": "two"}), "train.epochs"),
    "column named twice": (_column_named_twice, "data.train: column 'label' appears 2 times (columns: text, label"),
    "labels listed twice": (
        lambda f: _rewrite(f, data={"labels": [0, 0]}),
        "data.labels: [0, 0] lists the label 0 twice; list each label once",
    ),
    "folder as data file": (_folder_as_data_file, "rows.csv is an empty folder, not a data file; fix the path"),
    "missing text refused": (
        _missing_text_refused,
        "data.train: 2 of 120 rows of 'train.parquet' have an empty or missing value (text: 2), the first at data "
        'row 6; fill in or remove those rows, or set data.on_missing = "drop"',
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_changes_no_trial(case: str, finished_folder: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "study"
    shutil.copytree(finished_folder, folder)
    url = f"sqlite:///{folder / 'kept.db'}"
    before = _snapshot(url, "kept")
    spoil, expected = CASES[case]
    spoil(folder)
    assert main(["run", str(folder / "study.toml"), "--n-trials", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert _snapshot(url, "kept") == before


def test_broken_plugin_changes_no_trial(finished_folder: Path, tmp_path: Path) -> None:
    from test_plugins import _broken_plugin, _cli

    folder = tmp_path / "study"
    shutil.copytree(finished_folder, folder)
    url = f"sqlite:///{folder / 'kept.db'}"
    before = _snapshot(url, "kept")
    body = "from autopeft import hookimpl\n@hookimpl\ndef register_methods(register, extra):\n    pass\n"
    result = _cli(["run", str(folder / "study.toml"), "--n-trials", "3"], _broken_plugin(tmp_path, body))
    assert result.returncode == 2 and "does not match the hook spec" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _snapshot(url, "kept") == before


def test_wrong_password_is_one_masked_line_and_changes_no_trial(
    finished_folder: Path, postgres_url: str, tmp_path: Path, capsys
) -> None:
    import uuid

    name = f"kept-{uuid.uuid4().hex[:8]}"
    optuna.copy_study(
        from_study_name="kept",
        from_storage=f"sqlite:///{finished_folder / 'kept.db'}",
        to_storage=open_storage(postgres_url, 30),
        to_study_name=name,
    )
    before = _snapshot(postgres_url, name)
    folder = tmp_path / "study"
    shutil.copytree(finished_folder, folder)
    _rewrite(folder, study={"name": name})
    wrong = postgres_url.replace(":autopeft-ci@", ":not-the-password@")
    for command in (["run", "--n-trials", "3"], ["worker"], ["trials"]):
        assert main([command[0], str(folder / "study.toml"), "--storage", wrong, *command[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "password authentication failed" in err[0], err
        assert "not-the-password" not in err[0] and "autopeft:***@" in err[0]
    assert _snapshot(postgres_url, name) == before
