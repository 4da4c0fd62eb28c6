"""`autopeft export`: kept weights as Optuna artifacts, peft-format folders plain peft loads with the
trained model's logits, native exports through `autopeft.load_model`, provenance, and retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from conftest import capturing_logits, tokenized, write_study
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from autopeft import AutopeftError, get_plugin_manager, load_config, load_model, run_study
from autopeft.cli.command import main
from autopeft.outputs.export import PROVENANCE_FILE
from autopeft.storage.artifacts import on_front
from autopeft.storage.results import best_trial, pareto_front

ATOL = 1e-5


def _trial_of(study: optuna.Study, method: str) -> optuna.trial.FrozenTrial:
    return next(t for t in study.trials if t.user_attrs.get("method") == method and t.state == TrialState.COMPLETE)


def _plain_peft(folder: Path) -> torch.nn.Module:
    """What a user without autopeft does: base model from the hub name the adapter records, then peft.
    (Offline, the hub name is looked up in the offline package, where the hub would serve it.)"""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from autopeft.training.models import resolve_model_name

    record = json.loads((folder / PROVENANCE_FILE).read_text())
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # portable: no local path
    assert adapter["task_type"] == "SEQ_CLS"
    source, _ = resolve_model_name(get_plugin_manager(autoload=False), adapter["base_model_name_or_path"])
    base = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(record["labels"]), **record["model"]["overrides"]
    )
    return PeftModel.from_pretrained(base, str(folder)).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenized()).logits


def test_every_trial_kept_its_weights_as_artifacts(trained_study) -> None:
    _, study, logits = trained_study
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["method"] for t in complete} == {"lora", "ia3", "adapter"}
    for t in complete:
        names = {m.filename for m in get_all_artifact_meta(t, storage=study._storage)}
        expected = {"trained.safetensors"} if t.user_attrs["method"] == "adapter" else {"adapter_model.safetensors"}
        assert expected <= names and not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
        assert len(t.user_attrs["block_params"]) == 2 and sum(t.user_attrs["block_params"]) > 0
        assert t.number in logits
    lora = _trial_of(study, "lora")  # per-block counts read off the trained model agree with the configuration
    ranks, per_block = json.loads(lora.user_attrs["config"])["ranks"], lora.user_attrs["block_params"]
    assert [p == 0 for p in per_block] == [r == 0 for r in ranks]
    assert sum(per_block) + 384 * 2 + 2 == lora.user_attrs["trainable_params"]  # + the classifier head


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_export_loads_in_plain_peft_with_the_trained_logits(trained_study, tmp_path, method, capsys) -> None:
    path, study, logits = trained_study
    trial = _trial_of(study, method)
    out = tmp_path / "adapter"
    assert main(["export", str(path), "--trial", str(trial.number), str(out), "--quiet"]) == 0
    assert "kept weights" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", PROVENANCE_FILE} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == method.upper()
    torch.testing.assert_close(_logits(_plain_peft(out)), logits[trial.number], atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(load_model(out)), logits[trial.number], atol=ATOL, rtol=0)


def test_native_export_loads_with_load_model(trained_study, tmp_path) -> None:
    path, study, logits = trained_study
    trial = _trial_of(study, "adapter")
    out = tmp_path / "native"
    assert main(["export", str(path), "--trial", str(trial.number), str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {"trained.safetensors", PROVENANCE_FILE, "README.md"}
    model = load_model(out)
    assert not model.training
    torch.testing.assert_close(_logits(model), logits[trial.number], atol=ATOL, rtol=0)


def test_provenance_records_study_trial_metrics_configuration_budget_versions(trained_study, tmp_path) -> None:
    path, study, _ = trained_study
    assert main(["export", str(path), "--best", str(tmp_path / "best"), "--quiet"]) == 0
    record = json.loads((tmp_path / "best" / PROVENANCE_FILE).read_text())
    best = best_trial(study)
    assert best is not None
    assert record["study"]["name"] == "trained" and record["study"]["metric"] == "accuracy"
    assert record["study"]["budget"] == best.user_attrs["budget"] and record["study"]["storage"].startswith("sqlite")
    assert record["trial"]["number"] == best.number and record["trial"]["values"] == best.values
    assert record["trial"]["test_metric"] == best.user_attrs.get("test_metric")
    assert record["trial"]["trainable_params"] == best.user_attrs["trainable_params"]
    assert record["method"] == best.user_attrs["method"]
    assert record["config"] == json.loads(best.user_attrs["config"])
    assert record["model"]["overrides"] == {"num_hidden_layers": 2}
    assert record["labels"] == study.user_attrs["labels"]
    assert record["weights"]["source"] == "artifact"
    for versions in record["versions"].values():
        assert {"autopeft", "torch", "transformers", "peft", "optuna"} <= set(versions)


def test_pareto_export_writes_one_folder_per_front_trial(trained_study, tmp_path) -> None:
    path, study, _ = trained_study
    out = tmp_path / "front"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "x").write_text("not ours")
    assert main(["export", str(path), "--pareto", str(out), "--quiet"]) == 2  # a folder autopeft did not write
    shutil.rmtree(out)
    assert main(["export", str(path), "--pareto", str(out), "--quiet"]) == 0
    numbers = [t.number for t in pareto_front(study)]
    index = json.loads((out / "pareto.json").read_text())
    assert [row["trial"] for row in index] == numbers
    assert sorted(p.name for p in out.iterdir()) == sorted(["pareto.json", *(f"trial-{n}" for n in numbers)])
    assert main(["export", str(path), "--pareto", str(out), "--quiet"]) == 0  # an earlier export is replaced


def test_exporting_what_cannot_be_exported_is_a_one_line_error(trained_study, tmp_path, capsys) -> None:
    path, study, _ = trained_study
    assert main(["export", str(path), "--trial", "999", str(tmp_path / "x")]) == 2
    assert "has no trial 999" in capsys.readouterr().err
    assert main(["export", str(path), "--trial", "one", str(tmp_path / "x")]) == 2
    assert "not a trial number" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", str(path), "--best", str(busy)]) == 2
    err = capsys.readouterr().err
    assert "not an autopeft export" in err and len(err.strip().splitlines()) == 1
    assert (busy / "notes.txt").read_text() == "mine"


def test_pruned_or_infeasible_trials_are_not_exported(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, study={"name": "p", "n_trials": 1, "seed": 0}, search={"methods": ["bitfit"]})
    study = run_study(path, quiet=True)
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"method": "bitfit"}))
    study.add_trial(
        optuna.trial.create_trial(
            value=0.0,
            user_attrs={"method": "bitfit", "infeasible": True, "trainable_params": 9},
            system_attrs={"constraints": [5.0]},  # as the objective records an over-budget trial
        )
    )
    for number, why in ((1, "is pruned"), (2, "over budget")):
        assert main(["export", str(path), "--trial", str(number), str(tmp_path / "x")]) == 2
        assert why in capsys.readouterr().err


def test_weights_not_kept_are_retrained_and_reproduce_the_trial(tmp_path, capsys, minilm_available) -> None:
    path = write_study(
        tmp_path, study={"name": "none", "n_trials": 1, "seed": 3, "keep_weights": "none"}, search={"methods": ["lora"]}
    )
    with capturing_logits() as logits:
        study = run_study(path, quiet=True)
    assert not load_config(path).artifacts_dir.exists() or not any(load_config(path).artifacts_dir.iterdir())
    assert main(["export", str(path), "--best", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "weights were not kept; retraining" in captured.err and "retrained weights" in captured.out
    record = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    assert record["weights"]["source"] == "retrained" and record["weights"]["reproduced"] is True
    assert record["weights"]["retrained_metric"] == study.trials[0].values[0]
    torch.testing.assert_close(_logits(load_model(tmp_path / "out")), logits[0], atol=ATOL, rtol=0)


def test_weights_missing_from_the_store_are_retrained(trained_study, tmp_path, capsys) -> None:
    path, study, logits = trained_study
    copy = tmp_path / "copy"
    shutil.copytree(path.parent, copy)
    shutil.rmtree(copy / "trained.artifacts")  # the store was cleaned; the database still lists the artifacts
    trial = _trial_of(study, "lora")
    assert main(["export", str(copy / path.name), "--trial", str(trial.number), str(tmp_path / "out")]) == 0
    assert "retraining" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())["weights"]["reproduced"] is True
    torch.testing.assert_close(_logits(_plain_peft(tmp_path / "out")), logits[trial.number], atol=ATOL, rtol=0)


def test_front_policy_keeps_a_trial_only_when_it_joins_the_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for metric, n in ((0.7, 1000), (0.8, 5000)):
        study.add_trial(
            optuna.trial.create_trial(
                values=[metric, n], user_attrs={"trainable_params": n}, system_attrs={"constraints": [0.0]}
            )
        )
    assert on_front(study, 0.75, 2000)  # between the two
    assert on_front(study, 0.9, 9000)  # better than everything
    assert on_front(study, 0.6, 500)  # smaller than everything
    assert not on_front(study, 0.7, 1000)  # a tie with a front point: the earlier one stays
    assert not on_front(study, 0.65, 3000)  # dominated


def test_load_model_refuses_what_it_should_not_load(trained_study, tmp_path) -> None:
    path, study, _ = trained_study
    with pytest.raises(AutopeftError, match="provenance.json"):
        load_model(tmp_path)
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"model": {"name": "x", "unknown_key": 1}}))
    with pytest.raises(AutopeftError, match="provenance.json"):
        load_model(tmp_path)
    out = tmp_path / "lora"
    assert main(["export", str(path), "--trial", str(_trial_of(study, "lora").number), str(out), "--quiet"]) == 0
    record = json.loads((out / PROVENANCE_FILE).read_text())
    record["model"]["trust_remote_code"] = True
    (out / PROVENANCE_FILE).write_text(json.dumps(record))
    with pytest.raises(AutopeftError, match="trust_remote_code"):
        load_model(out)
    record["model"]["trust_remote_code"], record["method"] = False, "not-installed"
    (out / PROVENANCE_FILE).write_text(json.dumps(record))
    with pytest.raises(AutopeftError, match="not installed"):
        load_model(out)
