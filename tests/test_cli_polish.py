"""The first hour of a new user: the no-learning baseline shown wherever results are, and the small
inconsistencies a first look finds (shares, trial lines, help, plan, pipes, a full disk)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import write_study
from optuna.distributions import CategoricalDistribution

from autopeft import load_config, run_study
from autopeft.cli.command import main
from autopeft.data import Split
from autopeft.outputs.report import build_figures, write_html
from autopeft_plugins.bitfit import BitFit
from autopeft_plugins.tasks import CausalLanguageModelling, SequenceClassification, score


@pytest.fixture(scope="module")
def ran(tmp_path_factory, minilm_available) -> tuple[Path, optuna.Study]:
    """A finished one-trial study, plus a trial at the baseline's value (what a constant predictor scores)."""
    folder = tmp_path_factory.mktemp("baseline")
    path = write_study(folder, study={"name": "base", "n_trials": 1}, search={"methods": ["bitfit"]})
    study = run_study(path, quiet=True)
    baseline = study.user_attrs["baseline"]["value"]
    study.add_trial(
        optuna.trial.create_trial(
            value=baseline,
            params={"method": "bitfit"},
            distributions={"method": CategoricalDistribution(["bitfit"])},
            user_attrs={"method": "bitfit", "config": '{"blocks": [0, 1]}', "trainable_params": 800},
            system_attrs={"constraints": [-1.0]},
        )
    )
    return path, study


def test_the_baseline_is_the_majority_class_of_the_validation_split(ran) -> None:
    path, study = ran
    labels = pd.read_parquet(path.parent / "validation.parquet")["label"]
    train_majority = pd.read_parquet(path.parent / "train.parquet")["label"].value_counts().idxmax()
    train = pd.read_parquet(path.parent / "train.parquet")["label"]
    shares = (train.value_counts() + 1) / (len(train) + len(set(train) | set(labels)))  # add-one smoothed
    assert study.user_attrs["baseline"] == {
        "name": "majority class",
        "value": float((labels == train_majority).mean()),
        "loss": pytest.approx(float(-labels.map(shares).apply(math.log).mean())),
    }


def test_trials_pareto_best_and_report_show_the_baseline(ran, tmp_path, capsys) -> None:
    path, study = ran
    value = study.user_attrs["baseline"]["value"]
    nothing_learned = sum(t.values[0] <= value for t in study.trials)  # the added trial, and maybe the real one
    assert main(["trials", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"no better than the majority class baseline ({value:.4f})") == nothing_learned
    assert f"baseline: majority class {value:.4f}; {nothing_learned} trials no better" in out
    assert main(["pareto", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"baseline: majority class {value:.4f}"
    assert main(["best", str(path)]) == 0
    assert f"majority class {value:.4f} without learning" in capsys.readouterr().out.splitlines()[0]
    page = write_html(study, tmp_path / "r.html").read_text()
    assert f"baseline: majority class {value:.4f}" in page and f"{nothing_learned} trials no better" in page
    notes = {a.text: a for a in build_figures(study)["pareto"].layout.annotations}
    assert f"majority class baseline {value:.4f}" in notes  # a dotted line on the plot, labelled
    budget = study.user_attrs["budget"]
    label = notes[f"budget {budget:,}"]  # and the budget line has its label, where the log axis puts the line
    assert label.x == pytest.approx(__import__("math").log10(budget)) and label.xref == "x"


def test_run_prints_the_baseline_first(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, study={"name": "b", "n_trials": 1}, search={"methods": ["bitfit"]})
    assert main(["run", str(path)]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "; majority class baseline 0." in first


def test_baselines_of_the_builtin_tasks() -> None:
    train, validation = Split([{}] * 5, [1, 1, 1, 0, 2]), Split([{}] * 4, [1, 0, 1, 1])
    assert SequenceClassification().baseline(train, validation, "accuracy") == ("majority class", 0.75)
    assert SequenceClassification().baseline(train, validation, "mcc") == ("majority class", 0.0)
    lm = CausalLanguageModelling()
    text = Split([{}] * 2, [[5, 5, 5, 6], [5, 6, 6, 5]])
    name, perplexity = lm.baseline(text, text, "perplexity")
    assert name == "unigram model" and 1 < perplexity < 3  # two tokens, about equally frequent
    assert lm.baseline(text, text, "loss")[1] == pytest.approx(__import__("math").log(perplexity))
    # the loss of the class shares (add-one smoothed: 4/8, 2/8, 2/8), which a trial ranked by its loss must beat
    loss = SequenceClassification().baseline_loss(train, validation)
    assert loss == pytest.approx(-(3 * math.log(4 / 8) + math.log(2 / 8)) / 4)
    assert lm.baseline_loss(text, text) == pytest.approx(math.log(perplexity))


# -- small inconsistencies ---------------------------------------------------------------------------


def test_the_trainable_share_is_a_percentage_in_tables_and_a_fraction_in_json(ran, capsys) -> None:
    path, study = ran
    share = study.trials[0].user_attrs["trainable_share"]
    assert main(["trials", str(path)]) == 0
    assert f"{100 * share:.3f}%" in capsys.readouterr().out
    assert main(["trials", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["trainable_share"] == share


def test_trial_lines_read_as_words() -> None:
    assert BitFit().describe({"blocks": [1, 0, 1]}) == "biases of blocks 0,2"
    assert BitFit().describe({"blocks": [0, 1]}) == "biases of block 1"


@pytest.mark.parametrize(
    "command", ["run", "worker", "best", "trials", "pareto", "plan", "confirm", "export", "report"]
)
def test_every_study_argument_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "path of the study file (TOML)" in capsys.readouterr().out


def test_every_command_that_writes_a_file_takes_the_same_output_option() -> None:
    # `report -o` and `init --out` once differed; -o/--output is now every such command's, old spellings kept.
    from autopeft.cli.command import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    writers = {}
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        for action in parser._actions:
            if action.dest == "output":
                writers[name] = action.option_strings
    assert set(writers) == {"init", "report"}, writers
    assert all(strings[:2] == ["-o", "--output"] for strings in writers.values()), writers
    assert writers["init"] == ["-o", "--output", "--out"]


def test_each_subcommand_declares_its_arguments_beside_the_function_that_runs_it() -> None:
    from autopeft.cli.command import COMMANDS

    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) == 14
    for command in COMMANDS:
        assert command.run.__module__ == command.arguments.__module__, command.name


def test_plan_prints_the_classes_and_writes_nothing(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, task={"metric": "f1"}, data={"cache_tokens": True})
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("task sequence-classification: 2 classes (0, 1); metric f1 (F1 of the second class")
    assert "majority class baseline 0." in out[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no token cache, no database


def test_plan_on_a_budget_nothing_fits_ends_with_one_line_and_exit_2(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, budget={"max_trainable": 10})
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert "(skipped: its smallest configuration" in captured.out  # the plan shows why
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "budget.max_trainable: 10 parameters fit no configuration" in err[0]


def test_macro_f1_is_a_metric_and_f1_says_what_it_is(tmp_path) -> None:
    labels, predicted = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]
    assert score("macro_f1", labels, predicted) == pytest.approx((0.8 + 0.8) / 2)
    assert score("f1", labels, predicted) == pytest.approx(0.8)  # the second class's F1 with two classes
    assert load_config(write_study(tmp_path, task={"metric": "macro_f1"})).task.metric == "macro_f1"


def test_a_closed_pipe_ends_quietly(ran) -> None:
    path, _ = ran
    result = subprocess.run(
        f"{sys.executable} -m autopeft trials {path} | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.startswith("number") and result.stderr == ""


def test_a_wrong_text_column_is_reported_before_the_plugins_load(tmp_path, monkeypatch) -> None:
    import autopeft.registry

    def too_late(*args, **kwargs):
        raise AssertionError("the plugins (torch, peft, transformers) were loaded before the data was checked")

    monkeypatch.setattr(autopeft.registry, "get_plugin_manager", too_late)
    path = write_study(tmp_path, data={"text": "review"})
    assert main(["run", str(path)]) == 2


def test_a_disk_error_writing_the_report_is_one_line(ran, tmp_path, capsys) -> None:
    path, _ = ran
    (tmp_path / "file").write_text("x")
    assert main(["report", str(path), "-o", str(tmp_path / "file" / "report.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autopeft: error: ") and "Traceback" not in err[0]
