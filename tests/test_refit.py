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
    study.set_user_attr(f"{REFIT_PREFIX}{steady.number}", {"seeds": [4], "values": [0.95], "mean": 0.95, "std": 0.0})
    assert winner(study).number == lucky.number  # the best search trial was not refit: it stays the winner
    study.set_user_attr(
        f"{REFIT_PREFIX}{lucky.number}", {"seeds": [1, 2, 3], "values": [0.6, 0.9, 0.5], "mean": 0.6667, "std": 0.2}
    )
    study.set_user_attr(
        f"{REFIT_PREFIX}{steady.number}", {"seeds": [4, 5, 6], "values": [0.8, 0.79, 0.81], "mean": 0.8, "std": 0.01}
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


def _recorded_study(tmp_path: Path) -> tuple[Path, optuna.Study]:
    """A two-objective study of two complete trials, built directly (no training)."""
    from autopeft import open_study

    path = write_study(tmp_path, study={"objectives": ["accuracy", "trainable_params"]})
    study = open_study(load_config(path), directions=["maximize", "minimize"])
    study.set_user_attr("metric", "accuracy")
    for value, n in ((0.8, 9000), (0.7, 5000)):
        attrs = {"trainable_params": n, "method": "bitfit", "config": '{"blocks": [1, 1]}', "learning_rate": 1e-3}
        study.add_trial(optuna.trial.create_trial(values=[value, n], user_attrs=attrs))
    return path, study


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"seeds": [1], "values": [0.9], "std": 0.0}, "'mean' is missing"),
        ({"seeds": [1], "values": [0.9], "mean": "0.9", "std": 0.0}, "'mean' is '0.9', not a number"),
        ({"seeds": [1, 2], "values": [0.9], "mean": 0.9, "std": 0.0}, "2 seeds for 1 values"),
        (
            {"seeds": [1], "values": [0.9], "mean": 0.9, "std": 0.0, "weights": {"1": "x"}},
            "'weights' is not a table of seed -> [[artifact id, file name], ...]",
        ),
        ("refit me", "a str, not a table"),
    ],
)
def test_a_bad_refit_record_is_skipped_with_one_warning_by_every_reader(
    tmp_path, capsys, monkeypatch, record, problem
) -> None:
    """Not `KeyError: 'mean'` from best, pareto, report and export: the record is skipped, said once."""
    from autopeft.storage import results

    path, study = _recorded_study(tmp_path)
    study.set_user_attr(f"{REFIT_PREFIX}0", record)
    warning = (
        f"autopeft: warning: study 'tiny': skipping the refit record of trial 0 (refit:0: {problem}); "
        "run `autopeft refit --trial 0` to record it again"
    )
    for args in (["best"], ["best", "--format", "json"], ["pareto"], ["pareto", "--format", "json"]):
        monkeypatch.setattr(results, "_said", set())  # once per command, as a new process would
        assert main([*args, str(path)]) == 0, args
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [warning], (args, captured.err)
        assert "refit" not in captured.out.replace("autopeft refit", "") or args[-1] == "json", captured.out
    monkeypatch.setattr(results, "_said", set())
    assert main(["report", str(path), "-o", str(tmp_path / "report.html")]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [warning]
    assert winner(study).number == 0 and refit_record(study, study.trials[0]) is None  # as if never refit


def test_a_good_refit_or_confirm_record_is_read_as_written(tmp_path) -> None:
    from autopeft.storage.results import confirm_record, record_problem

    _, study = _recorded_study(tmp_path)
    good = {"trial": 1, "seeds": [1, 2], "values": [0.6, 0.7], "mean": 0.65, "std": 0.07, "test_mean": 0.6}
    assert record_problem(good) == "'test_mean' and 'test_std' come as a pair"
    good["test_std"] = 0.01
    study.set_user_attr("confirm:1", good)
    study.set_user_attr(f"{REFIT_PREFIX}1", {**good, "fidelity": {"epochs": 2, "max_train_examples": None}})
    assert confirm_record(study, study.trials[1]) == good
    assert refit_record(study, study.trials[1])["fidelity"]["epochs"] == 2
