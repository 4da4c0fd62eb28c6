"""Budget parsing, fitting blocks to it, and the driver's promise never to train over it."""

from __future__ import annotations

import optuna
import pytest
from conftest import write_study

from autopeft import BudgetError, parse_budget, run_study
from autopeft.budget import fit_sizes, format_count


@pytest.mark.parametrize(
    "value,expected",
    [(150000, 150000), ("150k", 150000), ("0.75M", 750000), ("0.5%", 5000), ("2 %", 20000), (" 42 ", 42)],
)
def test_parse_budget(value, expected) -> None:
    assert parse_budget(value, total_params=1_000_000) == expected


@pytest.mark.parametrize("value", ["lots", "0%", "-5", "5 kilo", True, 0, "%"])
def test_parse_budget_rejects(value) -> None:
    with pytest.raises(ValueError):
        parse_budget(value, total_params=1_000_000)


def test_fit_sizes_serves_the_top_blocks_first() -> None:
    cost = lambda i, size: 10 * size  # noqa: E731
    assert fit_sizes([4, 4, 4], cost, [1, 2, 4], fixed=5, budget=1000) == [4, 4, 4]  # fits: unchanged
    assert fit_sizes([4, 4, 4], cost, [1, 2, 4], fixed=5, budget=105) == [2, 4, 4]  # lowest block shrinks
    assert fit_sizes([4, 0, 4], cost, [1, 2, 4], fixed=5, budget=55) == [1, 0, 4]  # a left-out block stays out
    assert fit_sizes([0, 0, 0], cost, [1, 2, 4], fixed=5, budget=1000) == [0, 0, 1]  # at least one block
    assert fit_sizes([4, 4], cost, [4], fixed=5, budget=20) == [0, 4]  # nothing fits: top block, infeasible
    assert format_count(73728) == "73.7k" and format_count(999) == "999"


def test_budget_nothing_fits_fails_before_any_trial(tmp_path, minilm_available) -> None:
    path = write_study(tmp_path, budget={"max_trainable": 500})
    with pytest.raises(
        BudgetError, match=r"budget.max_trainable: 500 parameters fit no configuration; the smallest is \w+ with"
    ):
        run_study(path, quiet=True)
    assert not (tmp_path / "tiny.db").exists()  # a study file that fails validation leaves no empty study


def test_over_budget_configurations_are_never_trained(tmp_path, minilm_available) -> None:
    # 20k parameters: LoRA r=8 on every linear of one block (~55k) does not fit, on query+value (~12k) it does.
    path = write_study(
        tmp_path,
        study={"n_trials": 8, "sampler": "random", "pruner": "none"},
        budget={"max_trainable": "20k"},
        data={"max_train_examples": 16, "max_eval_examples": 16},
        search={"methods": ["lora"], "warm_start": False, "lora": {"r": [8], "targets": ["query+value", "all"]}},
    )
    study = run_study(path, quiet=True)
    trials = study.trials
    assert len(trials) == 8
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    trained = [t for t in trials if "train_seconds" in t.user_attrs]
    assert infeasible, "this space has over-budget corners; the sampler should have hit one"
    assert all(t.user_attrs["trainable_params"] > 20_000 and t.constraints["trainable_params"] > 0 for t in infeasible)
    assert all("train_seconds" not in t.user_attrs for t in infeasible)
    assert all(t.user_attrs["trainable_params"] <= 20_000 for t in trained)
    assert study.best_trial.user_attrs["trainable_params"] <= 20_000


def test_a_count_above_the_models_size_is_refused_as_a_share_above_100_percent_is() -> None:
    assert parse_budget(1_000_000, total_params=1_000_000) == 1_000_000  # the whole model: allowed
    for value in (1_000_001, 10**18, "1.5M", "2B"):
        with pytest.raises(ValueError, match=r"is more than the model's 1,000,000 parameters"):
            parse_budget(value, total_params=1_000_000)
    assert parse_budget(10**18, total_params=None) == 10**18  # the form alone, before the model is known
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="expected a finite count"):
            parse_budget(value, total_params=None)


def test_a_budget_above_the_model_is_one_line_before_any_trial(tmp_path, capsys, minilm_available) -> None:
    from autopeft.cli.command import main

    path = write_study(tmp_path, budget={"max_trainable": 10**18})
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("autopeft: error: budget.max_trainable: 1000000000000000000 is more than the model's ")
    assert err[0].endswith('parameters; use e.g. "0.5%" or "150k"'), err[0]
    assert not (tmp_path / "tiny.db").exists()


def test_a_method_whose_whole_space_exceeds_the_budget_is_one_line_at_the_start(
    tmp_path, capsys, minilm_available
) -> None:
    from autopeft.cli.command import main

    small = {"max_train_examples": 16}
    path = write_study(
        tmp_path,
        study={"n_trials": 1},
        data=small,
        search={"methods": ["lora", "bitfit"], "lora": {"r": [1_000_000]}},
    )
    assert main(["run", str(path), "--quiet"]) == 0  # said even with --quiet: it is about the study file
    err = capsys.readouterr().err.strip().splitlines()
    skipped = [line for line in err if "skipped" in line]
    assert skipped == [err[0]] and skipped[0].startswith(
        "autopeft: method 'lora' skipped: its smallest configuration ("
    ), err
    assert "exceeds the budget" in skipped[0]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert [t.user_attrs["method"] for t in study.trials] == ["bitfit"]
    # the only method: an error, before a study exists
    (tmp_path / "only").mkdir()
    only = write_study(tmp_path / "only", data=small, search={"methods": ["lora"], "lora": {"r": [1_000_000]}})
    assert main(["run", str(only)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "budget.max_trainable: 78.1k parameters fit no configuration; the smallest is lora" in err[0]
    )
    assert not (tmp_path / "only" / "tiny.db").exists()
