"""`autopeft refit`: the best trials trained again at the [final] fidelity with new seeds, recorded
in the study with their weights; the winner is the best refit mean, and export and best use it."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import write_study

from autopeft import load_config, run_study
from autopeft.cli.command import main
from autopeft.errors import ConfigError
from autopeft.storage.artifacts import median_seed
from autopeft.storage.results import REFIT_PREFIX, best_trial, best_trials, refit_record, winner


@pytest.fixture(scope="module")
def searched(tmp_path_factory, minilm_available) -> tuple[Path, optuna.Study]:
    folder = tmp_path_factory.mktemp("refit")
    path = write_study(
        folder,
        study={"n_trials": 4, "seed": 3},
        data={"test": "validation.parquet", "max_train_examples": 64},
        final={"epochs": 2, "max_train_examples": 96, "seeds": 2, "top": 2},
    )
    return path, run_study(path, quiet=True)


def _reload(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{path.parent / 'tiny.db'}")


def test_refit_records_the_top_trials_at_the_final_fidelity_and_resumes(searched, capsys) -> None:
    path, study = searched
    top = best_trials(study, 2)
    assert main(["refit", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and "2 epochs, 96 examples" in out[0] and out[-1].startswith("winner: trial ")
    reloaded = _reload(path)
    records = {t.number: refit_record(reloaded, t) for t in top}
    for number, r in records.items():
        assert r is not None and len(r["seeds"]) == len(r["values"]) == len(r["test_values"]) == 2
        assert r["fidelity"] == {"epochs": 2, "max_train_examples": 96}
        assert set(r["weights"]) == {str(s) for s in r["seeds"]} and all(r["weights"].values())
        assert r["mean"] == pytest.approx(sum(r["values"]) / 2)
        assert reloaded.user_attrs[f"{REFIT_PREFIX}{number}"] == r
    chosen = winner(reloaded)
    assert chosen is not None and chosen.number == max(records, key=lambda n: (records[n]["mean"], -n))
    assert main(["refit", str(path), "--quiet"]) == 0  # resumed: nothing new to train
    capsys.readouterr()
    assert {t.number: refit_record(_reload(path), t) for t in top} == records


def test_best_and_export_use_the_refit_winner_and_its_weights(searched, capsys, tmp_path) -> None:
    from autopeft.outputs.export import load_model

    path, _ = searched
    assert main(["refit", str(path), "--quiet"]) == 0
    capsys.readouterr()
    study = _reload(path)
    chosen = winner(study)
    record = refit_record(study, chosen)
    assert main(["best", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"best trial {chosen.number}:") and "refit: " in text and "over 2 seeds" in text
    out = tmp_path / "export"
    assert main(["export", str(path), "--best", str(out), "--quiet"]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["trial"]["number"] == chosen.number
    assert provenance["weights"]["source"] == "refit" and provenance["weights"]["seed"] == int(median_seed(record))
    assert provenance["trial"]["refit"]["mean"] == record["mean"] and "weights" not in provenance["trial"]["refit"]
    assert "refit accuracy" in (out / "README.md").read_text()
    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_winner_is_the_best_refit_mean_not_the_luckiest_search_trial() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.90, 0.80, 0.70):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trainable_params": 100}))
    lucky, steady, _ = study.trials
    assert best_trial(study).number == lucky.number and winner(study).number == lucky.number  # nothing refit
    study.set_user_attr(f"{REFIT_PREFIX}{steady.number}", {"seeds": [4], "values": [0.95], "mean": 0.95})
    assert winner(study).number == lucky.number  # the best search trial was not refit: it stays the winner
    study.set_user_attr(
        f"{REFIT_PREFIX}{lucky.number}", {"seeds": [1, 2, 3], "values": [0.6, 0.9, 0.5], "mean": 0.6667}
    )
    study.set_user_attr(
        f"{REFIT_PREFIX}{steady.number}", {"seeds": [4, 5, 6], "values": [0.8, 0.79, 0.81], "mean": 0.8}
    )
    assert winner(study).number == steady.number
    assert median_seed({"seeds": [1, 2, 3], "values": [0.6, 0.9, 0.5]}) == "1"


def test_final_section_is_checked(tmp_path) -> None:
    path = write_study(tmp_path, final={"seeds": 0})
    with pytest.raises(ConfigError, match=r"^final.seeds: must be a positive integer"):
        load_config(path)
    config = load_config(write_study(tmp_path, final={"epochs": 3}))
    final = config.at_final_fidelity()
    assert final.train.epochs == 3 and final.data.max_train_examples == config.data.max_train_examples
    assert load_config(write_study(tmp_path)).at_final_fidelity().train.epochs == 1
