"""Exports never lose a user's files, never write outside their folder whatever the study database
says, are portable (hub id, task type, a model card), and malformed export folders are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import tokenized, write_study
from optuna.trial import TrialState

from autopeft import AutopeftError, load_model
from autopeft.cli.command import main
from autopeft.outputs.export import PROVENANCE_FILE


def _trial(study, method: str) -> int:
    return next(
        t.number for t in study.trials if t.user_attrs.get("method") == method and t.state == TrialState.COMPLETE
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_export_again_keeps_the_users_files_beside_an_earlier_export(trained_study, tmp_path, capsys) -> None:
    path, study, _ = trained_study
    out = tmp_path / "best"
    assert main(["export", str(path), "--best", str(out), "--quiet"]) == 0
    (out / "notes.md").write_text("my evaluation notes")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    assert main(["export", str(path), "--trial", str(_trial(study, "adapter")), str(out), "--quiet"]) == 0
    assert (out / "notes.md").read_text() == "my evaluation notes"
    assert (out / "eval" / "results.json").read_text() == "{}"
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["method"] == "adapter"  # the earlier export was replaced...
    assert not (out / "adapter_model.safetensors").exists()  # ...its files too, as it recorded them
    assert set(record["weights"]["files"]) | {PROVENANCE_FILE, "notes.md", "eval"} == {p.name for p in out.iterdir()}
    capsys.readouterr()


def test_pareto_export_again_keeps_the_users_files(trained_study, tmp_path, capsys) -> None:
    path, _, _ = trained_study
    out = tmp_path / "front"
    assert main(["export", str(path), "--pareto", str(out), "--quiet"]) == 0
    index = json.loads((out / "pareto.json").read_text())
    first = out / index[0]["folder"]
    (out / "summary.csv").write_text("mine")
    (first / "predictions.txt").write_text("mine too")
    assert main(["export", str(path), "--pareto", str(out), "--quiet"]) == 0
    assert (out / "summary.csv").read_text() == "mine" and (first / "predictions.txt").read_text() == "mine too"
    assert (first / PROVENANCE_FILE).is_file()
    capsys.readouterr()


def test_a_file_the_new_export_would_replace_is_refused(trained_study, tmp_path, capsys) -> None:
    path, study, _ = trained_study
    out = tmp_path / "best"
    assert main(["export", str(path), "--trial", str(_trial(study, "adapter")), str(out), "--quiet"]) == 0
    (out / "adapter_config.json").write_text("a file of the user's that the LoRA export would overwrite")
    before = _tree(out)
    assert main(["export", str(path), "--trial", str(_trial(study, "lora")), str(out), "--quiet"]) == 2
    assert "adapter_config.json exists and is not from an earlier export" in _one_line(capsys)
    assert _tree(out) == before  # nothing removed, nothing half-written


def test_export_onto_a_file_is_a_one_line_error(trained_study, tmp_path, capsys) -> None:
    path, _, _ = trained_study
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    assert main(["export", str(path), "--best", str(target)]) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("name", ["../../escaped.safetensors", "/tmp/autopeft-absolute.safetensors", "sub/dir.bin"])
def test_a_tampered_artifact_file_name_never_writes_outside_the_export(trained_study, tmp_path, capsys, name) -> None:
    path, study, _ = trained_study
    copy = tmp_path / "study"
    shutil.copytree(path.parent, copy)
    with sqlite3.connect(copy / "trained.db") as db:  # what anyone who can write to a shared study can do
        for key, value in db.execute(
            "SELECT key, value_json FROM trial_system_attributes WHERE key LIKE 'artifacts:%'"
        ):
            meta = json.loads(json.loads(value))  # Optuna stores the metadata as a JSON string inside JSON
            meta["filename"] = name
            db.execute(
                "UPDATE trial_system_attributes SET value_json = ? WHERE key = ?", (json.dumps(json.dumps(meta)), key)
            )
    out = tmp_path / "exports" / "best"
    everything_before = {p for p in tmp_path.rglob("*")}
    assert main(["export", str(copy / path.name), "--trial", str(_trial(study, "lora")), str(out)]) == 2
    assert "is not a plain file name" in _one_line(capsys)
    assert not Path("/tmp/autopeft-absolute.safetensors").exists()
    assert {p for p in tmp_path.rglob("*")} - everything_before <= {out.parent, out}
    assert not out.exists() or not any(out.iterdir())


def test_export_is_portable_with_a_model_card(trained_study, tmp_path, capsys) -> None:
    path, study, _ = trained_study
    out = tmp_path / "lora"
    assert main(["export", str(path), "--trial", str(_trial(study, "lora")), str(out), "--quiet"]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert adapter["task_type"] == "SEQ_CLS"
    card = (out / "README.md").read_text()
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert card.startswith('---\nlibrary_name: peft\nbase_model: "sentence-transformers/all-MiniLM-L6-v2"')
    assert f"Trial {record['trial']['number']} of autopeft study `trained`" in card
    assert f"| validation accuracy | {record['trial']['validation_metric']:.4f} |" in card
    assert f"{record['trial']['trainable_params']:,}" in card and f"{record['study']['budget']:,} parameters" in card
    assert json.dumps(record["config"], sort_keys=True) in card
    assert "PeftModel.from_pretrained(base, 'path/to/this/folder')" in card and "num_labels=2" in card
    assert "data" in record and record["data"]["train"] == "train.parquet"
    capsys.readouterr()


def test_load_model_prints_nothing(trained_study, tmp_path) -> None:
    """In a fresh interpreter, as a user's script calls it (the CLI silences libraries for itself)."""
    import subprocess
    import sys

    path, study, _ = trained_study
    out = tmp_path / "lora"
    assert main(["export", str(path), "--trial", str(_trial(study, "lora")), str(out), "--quiet"]) == 0
    script = f"import autopeft; autopeft.load_model({str(out)!r})"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # no "MISSING classifier" report, no FutureWarning


def _exported(trained_study, tmp_path: Path, method: str) -> Path:
    path, study, _ = trained_study
    out = tmp_path / method
    assert main(["export", str(path), "--trial", str(_trial(study, method)), str(out), "--quiet"]) == 0
    return out


def _edit(out: Path, **changes) -> None:
    record = json.loads((out / PROVENANCE_FILE).read_text())
    record.update(changes)
    (out / PROVENANCE_FILE).write_text(json.dumps(record))


def test_load_model_refuses_pickle_weights(trained_study, tmp_path) -> None:
    out = _exported(trained_study, tmp_path, "lora")
    torch.save({"x": torch.zeros(1)}, out / "adapter_model.bin")
    with pytest.raises(AutopeftError, match="adapter_model.bin, a pickle file"):
        load_model(out)


def test_load_model_refuses_truncated_weights(trained_study, tmp_path) -> None:
    out = _exported(trained_study, tmp_path, "adapter")
    weights = out / "trained.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AutopeftError, match="weights do not fit"):
        load_model(out)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"config": "lora r=8"}, "'config' is missing or not a dict"),
        ({"labels": None}, "'labels' is missing or not a list"),
        ({"model": {"name": 7, "revision": None, "trust_remote_code": False, "overrides": {}}}, "wrong type"),
        ({"labels": ["a", "b", "c"]}, "weights do not fit"),  # a 3-class head for 2-class weights
    ],
)
def test_load_model_refuses_a_malformed_record(trained_study, tmp_path, changes, expected) -> None:
    out = _exported(trained_study, tmp_path, "lora")
    _edit(out, **changes)
    with pytest.raises(AutopeftError, match=expected):
        load_model(out)


def test_load_model_refuses_out_of_range_blocks(trained_study, tmp_path) -> None:
    out = _exported(trained_study, tmp_path, "adapter")
    record = json.loads((out / PROVENANCE_FILE).read_text())
    _edit(out, config={**record["config"], "sizes": [8] * 40})  # the model has 2 blocks
    with pytest.raises(AutopeftError, match="weights do not fit"):
        load_model(out)


def test_load_model_refuses_deeply_nested_provenance(tmp_path) -> None:
    (tmp_path / PROVENANCE_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AutopeftError, match="no readable provenance.json"):
        load_model(tmp_path)


def test_a_good_export_still_loads_with_the_trained_logits(trained_study, tmp_path) -> None:
    _, study, logits = trained_study
    out = _exported(trained_study, tmp_path, "adapter")
    with torch.no_grad():
        got = load_model(out)(**tokenized()).logits
    torch.testing.assert_close(got, logits[_trial(study, "adapter")], atol=1e-5, rtol=0)


def _provenance(folder: Path, **model) -> Path:
    record = {
        "method": "lora",
        "config": {},
        "labels": [0, 1],
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "revision": None, "overrides": {}, **model},
    }
    (folder / PROVENANCE_FILE).write_text(json.dumps(record))
    return folder


def test_an_extra_key_in_an_exported_model_record_is_named_alone(tmp_path) -> None:
    """Not "'model' has unknown fields ['evil', 'name', 'overrides', ...]": only the unknown one, and the known."""
    with pytest.raises(AutopeftError) as info:
        load_model(_provenance(tmp_path, evil=1, trust_remote_code=False))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/{PROVENANCE_FILE}: 'model' has unknown field 'evil' (known: name, "), message
    assert "'name'" not in message and "'overrides'" not in message
    assert message.endswith("remove it, or export a trial with `autopeft export`"), message
    with pytest.raises(AutopeftError, match=r"unknown fields 'evil', 'x' \(known: name, revision, trust_remote_code"):
        load_model(_provenance(tmp_path, evil=1, x=2))


def test_an_exported_record_whose_overrides_autopeft_sets_itself_is_refused(tmp_path) -> None:
    with pytest.raises(AutopeftError) as info:
        load_model(_provenance(tmp_path, overrides={"trust_remote_code": True}))
    message = str(info.value)
    assert "'model' overrides 'trust_remote_code' is not a config override" in message, message
    assert "multiple values" not in message and "install" not in message


def test_an_export_whose_plugin_saves_nothing_fails_naming_the_plugin(
    tmp_path, capsys, monkeypatch, minilm_available
) -> None:
    from autopeft_plugins.bitfit import BitFit

    monkeypatch.setattr(BitFit, "save", lambda self, model, directory: None)  # a plugin bug: writes nothing
    path = write_study(
        tmp_path,
        study={"n_trials": 1, "keep_weights": "all"},
        data={"max_train_examples": 16},
        search={"methods": ["bitfit"]},
    )
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    kept = "[trial 0] weights not kept: its method's save() wrote no file (a bug in the method's plugin)"
    assert f"{kept}; fix the plugin's save()\n" in err and "retrains" not in err  # export cannot retrain it either
    out = tmp_path / "out"
    assert main(["export", str(path), "--best", str(out), "--quiet"]) == 2
    line = _one_line(capsys)
    assert line.startswith("autopeft: error: export: method 'bitfit' (plugin bitfit from autopeft "), line
    assert "saved no weights for trial 0: its save() wrote nothing into the folder it was given" in line
    assert not (out / PROVENANCE_FILE).exists() and not [p for p in out.iterdir()]  # nothing exported
