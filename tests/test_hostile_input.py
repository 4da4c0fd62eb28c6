"""Hostile and mistaken input, each a one-line error with exit code 2 (never a traceback), nothing
written outside the study's folder, and no study database left behind by a file that fails validation."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import write_study
from optuna.trial import TrialState

from autopeft import PeftMethod, hookimpl
from autopeft.cli.command import main
from autopeft.errors import PluginError
from autopeft.registry import get_plugin_manager, registered_methods
from autopeft_plugins.bitfit import BitFit


def _assert_fails_in_one_line(capsys, args: list[str], expected: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    return err[0]


@pytest.mark.parametrize(
    "name", ["/", "../escape", "/tmp/absolute", "a/b", ".hidden", "a\nb", "a\u0000b", "", "x" * 200]
)
def test_a_study_name_is_never_a_path(tmp_path, capsys, name) -> None:
    path = write_study(tmp_path, study={"name": name})
    # Where the old code wrote for these names: <name>.db, .cache/ and .artifacts/ joined onto the folder.
    targets = [Path(f"{stem}{suffix}") for stem in ("/", "/tmp/absolute") for suffix in (".db", ".cache", ".artifacts")]
    existing = {t: t.stat().st_mtime_ns for t in targets if t.exists()}  # a machine the old code ran on
    outside = {p for p in tmp_path.parent.iterdir()}
    _assert_fails_in_one_line(capsys, ["run", str(path)], "study.name: must be a plain name")
    assert {t: t.stat().st_mtime_ns for t in targets if t.exists()} == existing  # nothing written there
    assert {p for p in tmp_path.parent.iterdir()} == outside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml", "train.parquet", "validation.parquet"]


def test_the_study_path_being_a_folder_is_one_line(tmp_path, capsys) -> None:
    _assert_fails_in_one_line(capsys, ["run", str(tmp_path)], "is a folder, not a study file")
    _assert_fails_in_one_line(capsys, ["trials", "bad\0path.toml"], "cannot read the study file")


def test_deeply_nested_toml_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "study.toml"
    path.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    _assert_fails_in_one_line(capsys, ["plan", str(path)], "nests tables or arrays too deeply")


@pytest.mark.parametrize(
    "sections,field",
    [
        ({"study": {"heartbeat_seconds": 10**15}}, "study.heartbeat_seconds"),
        ({"budget": {"max_trainable": "150%"}}, "budget.max_trainable: a share of the model is at most 100%"),
        ({"train": {"learning_rate": float("inf")}}, "train.learning_rate"),
        ({"train": {"learning_rate": [1e-4, float("inf")]}}, "train.learning_rate"),
        ({"train": {"weight_decay": float("inf")}}, "train.weight_decay"),
        ({"train": {"max_grad_norm": float("nan")}}, "train.max_grad_norm"),
        ({"model": {"revision": 3}}, "model.revision"),
        ({"data": {"train": "tr\u0000ain.parquet"}}, "data.train"),
    ],
)
def test_values_that_must_be_refused_are(tmp_path, capsys, sections, field) -> None:
    path = write_study(tmp_path, **sections)
    _assert_fails_in_one_line(capsys, ["run", str(path)], field)
    assert not (tmp_path / "tiny.db").exists()


def test_overrides_that_leave_no_blocks_are_one_line(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, model={"overrides": {"num_hidden_layers": 0}})
    _assert_fails_in_one_line(capsys, ["run", str(path)], "found no transformer blocks")
    assert not (tmp_path / "tiny.db").exists()


@pytest.mark.parametrize(
    "spoil,expected",
    [
        ({"data": {"text": "review"}}, "data.train: column 'review' not found"),
        ({"search": {"methods": ["lorra"]}}, "unknown method 'lorra'"),
        ({"model": {"name": "no-such-org/no-such-model"}}, "model.name: cannot load 'no-such-org/no-such-model' ("),
    ],
)
def test_a_study_file_that_fails_validation_leaves_no_study_behind(tmp_path, capsys, spoil, expected) -> None:
    path = write_study(tmp_path, **spoil)
    line = _assert_fails_in_one_line(capsys, ["run", str(path)], expected)
    assert " from 'no-such-org" not in line  # "cannot load X", not "cannot load X from X"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml", "train.parquet", "validation.parquet"]


# -- broken plugins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook,broken,expected",
    [
        ("count_trainable", lambda self, ctx, config: "12", "method 'bitfit': count_trainable returned '12', not a"),
        ("count_trainable", lambda self, ctx, config: 1.5, "method 'bitfit': count_trainable returned 1.5"),
        ("count_trainable", lambda self, ctx, config: 1 / 0, "'bitfit' failed in count_trainable (ZeroDivisionError"),
        ("smallest", lambda self, ctx, options: {}["blocks"], "method 'bitfit' failed in smallest (KeyError"),
    ],
)
def test_a_plugin_that_counts_wrong_is_one_line(tmp_path, capsys, monkeypatch, hook, broken, expected) -> None:
    monkeypatch.setattr(BitFit, hook, broken)
    path = write_study(tmp_path, search={"methods": ["bitfit"]})
    _assert_fails_in_one_line(capsys, ["run", str(path)], expected)
    assert not (tmp_path / "tiny.db").exists()


class _Incomplete(PeftMethod):  # no suggest, smallest, largest or apply
    name = "incomplete"


def _plugin_module(monkeypatch) -> None:
    module = types.ModuleType("autopeft_incomplete")

    @hookimpl
    def register_methods(register):
        register(_Incomplete())  # TypeError: an abstract class

    module.register_methods = register_methods  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autopeft_incomplete", module)
    import autopeft.registry as plugins

    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", (*plugins.BUILTIN_PLUGINS, "autopeft_incomplete"))


def test_a_plugin_class_missing_hooks_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    _plugin_module(monkeypatch)
    with pytest.raises(PluginError, match="plugin 'autopeft_incomplete' from autopeft failed in register_methods"):
        registered_methods(get_plugin_manager(autoload=False))
    _assert_fails_in_one_line(capsys, ["plugins"], "Can't instantiate abstract class _Incomplete")
    _assert_fails_in_one_line(capsys, ["run", str(write_study(tmp_path))], "failed in register_methods")


# -- resuming ---------------------------------------------------------------------------------------


def test_a_study_resumed_under_a_lower_budget_runs_and_never_presents_a_trial_over_it(
    tmp_path, capsys, minilm_available
) -> None:
    common = {
        "data": {"max_train_examples": 16, "max_eval_examples": 16},
        "search": {"methods": ["lora", "unfreeze", "bitfit"]},
    }
    path = write_study(tmp_path, study={"name": "budget", "n_trials": 4, "sampler": "random", "seed": 1}, **common)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    # 3,000 parameters: only layer-norm tuning of a block or two (with the head) still fits
    write_study(
        tmp_path,
        study={"name": "budget", "n_trials": 8, "sampler": "random", "seed": 1},
        budget={"max_trainable": 3000},
        **common,
    )
    assert main(["run", str(path), "--quiet"]) == 0
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path / 'budget.db'}")
    new = [t for t in study.trials if t.number >= 4]
    assert len([t for t in new if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    assert not [t for t in new if t.state == TrialState.FAIL]  # no "dynamic value space" failures
    assert study.user_attrs["budget"] == 3000
    capsys.readouterr()

    assert main(["best", str(path), "--format", "json"]) == 0
    import json

    best = json.loads(capsys.readouterr().out)
    assert best["user_attrs"]["trainable_params"] <= 3000
    assert main(["trials", str(path), "--format", "csv"]) == 0
    rows = capsys.readouterr().out
    assert "> the current budget 3,000" in rows  # the earlier, bigger trials are marked
    out = tmp_path / "best"
    assert main(["export", str(path), "--best", str(out), "--quiet"]) == 0
    assert json.loads((out / "provenance.json").read_text())["trial"]["trainable_params"] <= 3000
    capsys.readouterr()


def test_a_changed_method_list_is_one_line_before_any_trial(tmp_path, capsys, minilm_available) -> None:
    common = {"data": {"max_train_examples": 16, "max_eval_examples": 16}}
    path = write_study(
        tmp_path, study={"name": "m", "n_trials": 1}, search={"methods": ["bitfit", "unfreeze"]}, **common
    )
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    write_study(tmp_path, study={"name": "m", "n_trials": 2}, search={"methods": ["bitfit"]}, **common)
    _assert_fails_in_one_line(capsys, ["run", str(path), "--quiet"], "no longer enables 'unfreeze'")


def test_a_corrupted_token_cache_is_rebuilt(tmp_path, minilm_available) -> None:
    path = write_study(
        tmp_path,
        study={"name": "cached", "n_trials": 1},
        search={"methods": ["bitfit"]},
        data={"max_train_examples": 16, "max_eval_examples": 16, "cache_tokens": True},
    )
    assert main(["run", str(path), "--quiet"]) == 0
    [cache] = (tmp_path / "cached.cache").glob("tokens-*.npz")
    cache.write_bytes(cache.read_bytes()[:64] + b"\x00garbage")  # a torn write, a bad sector
    assert main(["run", str(path), "--quiet", "--n-trials", "2"]) == 0
    with np.load(cache, allow_pickle=False) as arrays:  # rewritten, readable again
        assert "train/labels" in arrays.files


def test_a_changed_choice_list_stops_at_the_first_trial_with_one_line(tmp_path, capsys, minilm_available) -> None:
    common = {"data": {"max_train_examples": 16, "max_eval_examples": 16}}
    lora = {"methods": ["lora"], "warm_start": False}
    path = write_study(tmp_path, study={"name": "c", "n_trials": 1}, search={**lora, "lora": {"r": [4, 8]}}, **common)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    write_study(tmp_path, study={"name": "c", "n_trials": 3}, search={**lora, "lora": {"r": [2, 4]}}, **common)
    _assert_fails_in_one_line(
        capsys, ["run", str(path), "--quiet"], "the study file changed the choices of a parameter"
    )
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path / 'c.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]  # not five failures in a row


# -- issue 27: folders as data files, columns and labels named twice, limits and memory ---------------


@pytest.mark.parametrize(
    "value,content,expected",
    [
        ("train.csv", [], "data.train: {folder}/train.csv is an empty folder, not a data file; fix the path"),
        ("rows.parquet", ["part-0.parquet"], "data.train: {folder}/rows.parquet is a folder, not a data file"),
        ("emptydir", [], "data.train: 'emptydir' is an empty folder, not a data file; name a file ending in .csv"),
    ],
    ids=["empty-folder-named-csv", "folder-named-parquet", "empty-folder-without-suffix"],
)
def test_a_folder_given_as_a_data_file_is_called_a_folder(tmp_path, capsys, value, content, expected) -> None:
    (tmp_path / value).mkdir()
    for name in content:
        (tmp_path / value / name).write_bytes(b"")
    path = write_study(tmp_path, data={"train": value})
    line = _assert_fails_in_one_line(capsys, ["run", str(path)], expected.format(folder=tmp_path))
    assert "not found" not in line and "Hub" not in line  # the cause, not a missing file or the network
    assert not (tmp_path / "tiny.db").exists()


def test_labels_listed_twice_name_the_duplicate(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, data={"labels": [0, 0]})
    line = _assert_fails_in_one_line(
        capsys, ["plan", str(path)], "data.labels: [0, 0] lists the label 0 twice; list each label once"
    )
    assert "not among the train labels" not in line


def test_a_csv_with_a_column_named_twice_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "train.csv").write_text("text,label,label\ngood,1,1\nbad,0,0\n")
    path = write_study(tmp_path, data={"train": "train.csv"})
    _assert_fails_in_one_line(capsys, ["run", str(path)], "data.train: column 'label' appears 2 times")
    assert not (tmp_path / "tiny.db").exists()


def test_the_model_limit_is_read_from_whichever_of_its_tokenizer_and_config_states_one() -> None:
    from autopeft.training.models import model_length_limit

    def tokenizer(limit):
        return types.SimpleNamespace(model_max_length=limit)

    def config(**fields):
        return types.SimpleNamespace(**fields)

    unlimited = int(1e30)  # what transformers sets where a tokenizer states no limit
    assert model_length_limit(tokenizer(512), config(max_position_embeddings=512))[0] == 512  # BERT
    assert model_length_limit(tokenizer(512), config(max_position_embeddings=514)) == (
        512,
        "the tokenizer's model_max_length",
    )  # RoBERTa: two positions are reserved
    assert model_length_limit(tokenizer(unlimited), config(n_positions=1024)) == (
        1024,
        "the model config's n_positions",
    )  # GPT-2
    assert model_length_limit(tokenizer(unlimited), config(max_position_embeddings=8192, n_positions=4)) == (
        8192,
        "the model config's max_position_embeddings",
    )
    assert model_length_limit(tokenizer(512), config(d_model=512)) == (512, "the tokenizer's model_max_length")
    assert model_length_limit(tokenizer(unlimited), None) is None  # nothing stated: nothing capped


def test_the_memory_estimate_grows_with_batch_and_length_and_checkpointing_lowers_it() -> None:
    from autopeft.training.memory import available_memory, step_memory_bytes

    shape = {"width": 384, "layers": 6, "heads": 12, "outputs": 2}
    base = step_memory_bytes(16, 128, **shape)
    assert step_memory_bytes(32, 128, **shape) > base and step_memory_bytes(16, 256, **shape) > base
    assert step_memory_bytes(16, 128, **shape, checkpointing=True) < base
    assert step_memory_bytes(16, 128, **shape, training=False) < base
    assert step_memory_bytes(16, 128, **shape, trainable=1000) == base + 16_000  # weight, gradient, Adam's two
    # The case: 10**9 tokens a batch is refused by any machine, not attempted.
    assert step_memory_bytes(16, 10**9, **shape) > 2**60
    free, what = available_memory(torch.device("cpu"))
    assert free > 0 and what == "available RAM"


def test_a_step_that_cannot_fit_in_memory_is_refused_before_the_first_trial(
    tmp_path, capsys, monkeypatch, minilm_available
) -> None:
    import autopeft.training.memory as memory

    path = write_study(tmp_path, search={"methods": ["bitfit"]})
    monkeypatch.setattr(memory, "available_memory", lambda device: (2**20, "available RAM"))
    line = _assert_fails_in_one_line(capsys, ["run", str(path)], "train.batch_size: a training step needs about")
    assert "more than the 0.0 GiB of available RAM left" in line
    assert line.endswith(
        "lower train.batch_size (16) or data.max_length (32), or set train.gradient_checkpointing = true"
    )
    if (tmp_path / "tiny.db").exists():  # refused before any trial: none recorded, none lost
        assert not optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials

    real = memory.step_memory_bytes
    monkeypatch.setattr(memory, "available_memory", lambda device: (2**30, "free GPU memory"))
    monkeypatch.setattr(
        memory, "step_memory_bytes", lambda *a, training=True, **k: 1 if training else real(*a, **k) + 2**31
    )
    _assert_fails_in_one_line(
        capsys,
        ["run", str(path)],
        "train.eval_batch_size: an evaluation batch needs about",
    )


def test_a_small_study_says_each_warning_once_and_shows_the_standard_error(tmp_path, capsys, minilm_available) -> None:
    import pandas as pd

    path = write_study(
        tmp_path,
        study={"n_trials": 1},
        data={"max_length": 10**9, "labels": [0, 1, 2]},
        search={"methods": ["bitfit"]},
    )
    frame = pd.read_parquet(tmp_path / "train.parquet")
    frame.loc[[1, 2], "text"] = None
    frame.to_parquet(tmp_path / "train.parquet")
    pd.read_parquet(tmp_path / "validation.parquet").head(5).to_parquet(tmp_path / "validation.parquet")
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^best trial 0: accuracy 0\.\d{4} ± 0\.\d{4} \(standard error\)", out, re.MULTILINE), out
    err = err.splitlines()
    expected = [
        "autopeft: data.max_length = 1000000000 is more than the 512 tokens the model takes (the model config's "
        "max_position_embeddings); training with 512: set data.max_length = 512 or less to silence this",
        "autopeft: data.train: dropped 2 of 120 rows of 'train.parquet' with an empty or missing value (text: 2); "
        'set data.on_missing = "error" to refuse such a file',
        "autopeft: data.train: the class 2 of the labels [0, 1, 2] never occurs in the train split, so the model "
        "cannot learn it; add train examples or remove it from data.labels",
        "autopeft: data.validation: only 5 examples, fewer than the minimum of 30: its metric is mostly noise and "
        "the best trial wins by chance; add validation examples (each trial's line shows its standard error)",
    ]
    for line in expected:
        assert err.count(line) == 1, err  # each said once
    [scored] = [line for line in err if line.startswith("[trial 0] accuracy ")]
    assert " ± 0." in scored and "(standard error)" in scored, scored
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert 0 < study.trials[0].user_attrs["metric_se"] < 0.5
