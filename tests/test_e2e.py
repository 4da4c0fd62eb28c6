"""A whole study on MiniLM cut to 2 blocks with ~100 examples, into SQLite, read back with Optuna."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import write_study

from autopeft import best_trial, run_study
from autopeft.cli.command import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory, minilm_available) -> tuple[Path, optuna.Study]:
    folder = tmp_path_factory.mktemp("e2e")
    path = write_study(
        folder, study={"n_trials": 4, "seed": 3}, data={"test": "validation.parquet", "max_train_examples": 100}
    )
    return path, run_study(path, quiet=True)


def test_trials_are_in_sqlite_and_readable_by_optuna(finished) -> None:
    path, _ = finished
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{path.parent / 'tiny.db'}")
    assert len(study.trials) == 4
    assert study.user_attrs["budget"] == int(0.005 * study.user_attrs["total_params"])
    first = study.trials[0]
    assert first.user_attrs["warm_start"] is True and first.params["method"] == "lora"
    for trial in study.trials:
        a = trial.user_attrs
        assert a["method"] in {"lora", "unfreeze", "bitfit"}
        assert isinstance(json.loads(a["config"]), dict)
        assert 0 < a["trainable_params"] <= a["budget"]
        assert a["trainable_share"] == pytest.approx(a["trainable_params"] / study.user_attrs["total_params"])
        assert a["versions"]["torch"] and a["versions"]["peft"] and a["seed"] == 3 + trial.number
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert a["train_seconds"] > 0 and a["eval_seconds"] > 0 and a["tokens_per_second"] > 0
            assert a["peak_memory_mb"] > 0 and 0.0 <= trial.value <= 1.0


def test_best_trial_has_a_test_score(finished) -> None:
    _, study = finished
    assert 0.0 <= best_trial(study).user_attrs["test_metric"] <= 1.0


def test_rerun_resumes_to_n_trials(finished) -> None:
    path, _ = finished
    again = run_study(path, quiet=True)
    assert len(again.trials) == 4  # already done: nothing added
    more = run_study(path, n_trials=5, quiet=True)
    assert len(more.trials) == 5 and more.trials[-1].state.is_finished()


def test_cli_best_and_trials(finished, capsys) -> None:
    path, study = finished
    assert main(["best", str(path)]) == 0
    out = capsys.readouterr().out
    best = best_trial(study)
    assert f"best trial {best.number}" in out and "trainable" in out
    same = [t for t in study.trials if t.value == best.value and t.user_attrs.get("trainable_params")]
    assert best.user_attrs["trainable_params"] == min(t.user_attrs["trainable_params"] for t in same)  # ties: smaller
    assert main(["trials", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == list(range(len(study.trials)))
    assert all(r["trainable_params"] > 0 for r in rows)


def test_unknown_label_in_validation_is_a_data_error(tmp_path: Path, capsys, minilm_available) -> None:
    import pandas as pd

    path = write_study(tmp_path)
    frame = pd.read_parquet(tmp_path / "validation.parquet")
    frame.loc[0, "label"] = 7
    frame.to_parquet(tmp_path / "validation.parquet")
    assert main(["run", str(path)]) == 2
    assert "data.validation: label '7' is not among the train labels" in capsys.readouterr().err


def test_wrong_text_column_is_a_data_error(tmp_path: Path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, data={"text": "review"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.train: column 'review' not found (columns: text, label, category, movie_name" in err


def test_string_labels_from_csv(tmp_path: Path, minilm_available) -> None:
    import pandas as pd

    path = write_study(
        tmp_path,
        study={"n_trials": 1},
        search={"methods": ["bitfit"]},
        data={
            "train": "train.csv",
            "validation": "validation.csv",
            "label": "category",
            "labels": ["rotten", "fresh"],
            "max_train_examples": 32,
            "max_eval_examples": 32,
        },
    )
    for split in ("train", "validation"):
        pd.read_parquet(tmp_path / f"{split}.parquet").to_csv(tmp_path / f"{split}.csv", index=False)
    study = run_study(path, quiet=True)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_workers_start_from_the_same_task_head(tmp_path: Path, minilm_available) -> None:
    # The classifier head is drawn when the model loads; every worker and every rerun must draw the same.
    import torch
    from conftest import workbench_for

    from autopeft import load_config

    config = load_config(write_study(tmp_path, data={"max_train_examples": 8, "max_eval_examples": 8}))
    heads = []
    for _ in range(2):
        bench = workbench_for(config)
        heads.append(bench.base.get_submodule(bench.ctx.head[0]).weight.clone())
        torch.rand(100)  # whatever else the process draws in between
    assert torch.equal(heads[0], heads[1])


def test_text_pairs_are_tokenized_as_pairs(tmp_path: Path, minilm_available) -> None:
    from autopeft import get_plugin_manager, load_config
    from autopeft.training.models import load_tokenizer, resolve_model_name
    from autopeft.training.token_cache import load_task_data
    from autopeft_plugins.tasks import SequenceClassification

    config = load_config(
        write_study(tmp_path, data={"text": ["text", "movie_name"], "max_train_examples": 8, "max_eval_examples": 8})
    )
    source, offline = resolve_model_name(get_plugin_manager(autoload=False), config.model.name)
    data = load_task_data(config, load_tokenizer(config.model, source, offline), SequenceClassification())
    first = data.train.features[0]
    assert set(first["token_type_ids"]) == {0, 1}  # second segment present
    assert first["input_ids"].count(102) == 2  # [SEP] after each text


def test_interrupted_study_resumes_with_its_warm_start(tmp_path: Path, minilm_available) -> None:
    # What Ctrl-C leaves behind: a failed first trial. The rerun retries the warm start and finishes.
    path = write_study(tmp_path, study={"n_trials": 2}, data={"max_train_examples": 16, "max_eval_examples": 16})
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    interrupted = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    interrupted.tell(interrupted.ask(), state=optuna.trial.TrialState.FAIL)
    study = run_study(path, quiet=True)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2 and states[0] == optuna.trial.TrialState.FAIL
    assert study.trials[1].user_attrs.get("warm_start") is True


def test_pruned_trial_records_where_and_when(tmp_path: Path, minilm_available) -> None:
    from conftest import objective_for

    from autopeft import load_config

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    config = load_config(
        write_study(
            tmp_path,
            train={"evals_per_epoch": 2, "batch_size": 8},
            data={"max_train_examples": 32, "max_eval_examples": 16},
        )
    )
    study = optuna.create_study(direction="maximize", pruner=Always())
    study.optimize(objective_for(config), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_at_step"] == 2 and list(trial.intermediate_values) == [2]
    assert trial.user_attrs["seconds_before_pruning"] > 0 and "train_seconds" not in trial.user_attrs


def test_hub_dataset_offline_is_a_one_line_data_error(tmp_path: Path, capsys, minilm_available) -> None:
    name = "cornell-movie-review-data/rotten_tomatoes"
    path = write_study(tmp_path, data={"train": name, "validation": f"{name}:validation"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"autopeft: error: data.train: cannot load '{name}'")
