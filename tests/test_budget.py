"""Budget parsing, fitting blocks to it, and the driver's promise never to train over it."""

from __future__ import annotations

import optuna
import pytest
from conftest import write_study

from autopeft import BudgetError, parse_budget, run_study
from autopeft.budget import format_count, lowest_start_block


@pytest.mark.parametrize(
    "value,expected",
    [(150000, 150000), ("150k", 150000), ("1.5M", 1500000), ("0.5%", 5000), ("2 %", 20000), (" 42 ", 42)],
)
def test_parse_budget(value, expected) -> None:
    assert parse_budget(value, total_params=1_000_000) == expected


@pytest.mark.parametrize("value", ["lots", "0%", "-5", "5 kilo", True, 0, "%"])
def test_parse_budget_rejects(value) -> None:
    with pytest.raises(ValueError):
        parse_budget(value, total_params=1_000_000)


def test_lowest_start_block() -> None:
    assert lowest_start_block([10, 10, 10], fixed=5, budget=35) == 0
    assert lowest_start_block([10, 10, 10], fixed=5, budget=25) == 1
    assert lowest_start_block([10, 10, 10], fixed=5, budget=14) is None
    assert format_count(73728) == "73.7k" and format_count(999) == "999"


def test_budget_nothing_fits_fails_before_any_trial(tmp_path, minilm_available) -> None:
    path = write_study(tmp_path, budget={"max_trainable": 500})
    with pytest.raises(
        BudgetError, match=r"budget.max_trainable: 500 parameters fit no configuration; the smallest is \w+ with"
    ):
        run_study(path, quiet=True)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert study.trials == []


def test_over_budget_configurations_are_never_trained(tmp_path, minilm_available) -> None:
    # 20k parameters: LoRA r=16 on every linear of one block (~36k) does not fit, r=2 on query+value does.
    path = write_study(
        tmp_path,
        study={"n_trials": 8, "sampler": "random", "pruner": "none"},
        budget={"max_trainable": "20k"},
        data={"max_train_examples": 16, "max_eval_examples": 16},
        search={"methods": ["lora"], "warm_start": False, "lora": {"r": [2, 16], "targets": ["query+value", "all"]}},
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
