"""The pruning schedule: rungs, successive-halving decisions on known reports (Optuna's for one
objective, size buckets for two), and trials that report at their rungs."""

from __future__ import annotations

import optuna
import pytest
from conftest import write_study

from autopeft import ConfigError, load_config, run_study
from autopeft.search.pruning import (
    SizeBucketHalvingPruner,
    TrialReporter,
    make_pruner,
    own_pruner,
    rungs,
    trial_fidelity,
)


def _config(tmp_path, **study):
    return load_config(write_study(tmp_path, study=study))


def test_rungs_are_geometric_below_the_full_run() -> None:
    assert rungs(47, 5, 3) == (5, 15, 45)  # the quickstart's 47 steps, eta 3
    assert rungs(100, 4, 2) == (4, 8, 16, 32, 64)
    assert rungs(10, 20, 3) == ()  # a first rung past the end: the trial only reports its result


def test_sha_trials_report_at_the_rungs_others_at_their_evaluations(tmp_path) -> None:
    # 47 // 3² = 5, but the loss has had no chance to fall by then: the warm-up's end, at least 8
    assert trial_fidelity(_config(tmp_path, pruner="sha"), 47).report_at == (8, 24)
    assert trial_fidelity(_config(tmp_path, pruner="sha"), 900).report_at == (100, 300)  # 900 // 3²
    warm = load_config(write_study(tmp_path, study={"pruner": "sha"}, train={"warmup_ratio": 0.2}))
    assert trial_fidelity(warm, 900).report_at == (180, 540)
    assert trial_fidelity(_config(tmp_path, pruner="hyperband", pruner_min_steps=2), 47).report_at == (2, 6, 18)
    assert trial_fidelity(_config(tmp_path, pruner="median"), 47).report_at is None
    with pytest.raises(ConfigError, match="study.pruner_eta: must be an integer >= 2"):
        _config(tmp_path, pruner="sha", pruner_eta=1)


def test_the_pruner_follows_the_study_file(tmp_path) -> None:
    median = make_pruner(_config(tmp_path, pruner_startup_trials=5, pruner_min_steps=7), 47)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 7)
    assert isinstance(make_pruner(_config(tmp_path, pruner="sha"), 47), optuna.pruners.SuccessiveHalvingPruner)
    hyperband = make_pruner(_config(tmp_path, pruner="hyperband"), 47)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 47
    assert isinstance(make_pruner(_config(tmp_path, pruner="none"), 47), optuna.pruners.NopPruner)
    two = {"objectives": ["accuracy", "trainable_params"]}
    assert isinstance(make_pruner(_config(tmp_path, pruner="sha", **two), 47), optuna.pruners.NopPruner)
    assert isinstance(own_pruner(_config(tmp_path, pruner="sha", **two)), SizeBucketHalvingPruner)
    assert own_pruner(_config(tmp_path, pruner="sha")) is None  # one objective: Optuna's own


def test_successive_halving_stops_a_trial_below_the_best_third_at_a_rung(tmp_path) -> None:
    study = optuna.create_study(direction="maximize", pruner=make_pruner(_config(tmp_path, pruner="sha"), 47))
    for value in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4):  # earlier trials, each judged at the first rung (step 8)
        trial = study.ask()
        trial.report(value, 8)
        trial.should_prune()
        study.tell(trial, value)
    low, high = study.ask(), study.ask()
    low.report(0.45, 8)
    high.report(0.95, 8)
    assert low.should_prune() and not high.should_prune()


def _reported(study: optuna.Study, size: int, value: float, step: int = 5) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            values=[value, size], user_attrs={"trainable_params": size, "intermediate": {str(step): value}}
        )
    )


def test_size_bucket_halving_compares_only_trials_of_a_similar_size() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for size, value in ((100, 0.9), (120, 0.8), (150, 0.7), (200, 0.6), (90_000, 0.99)):
        _reported(study, size, value)
    pruner = SizeBucketHalvingPruner(eta=3)
    assert pruner.should_prune(study, 150, 5, 0.65)  # 3 of its 4 peers did better: not in the best third
    assert not pruner.should_prune(study, 150, 5, 0.85)  # one did better: it goes on
    assert not pruner.should_prune(study, 100_000, 5, 0.1)  # alone in its bucket: nothing to compare with
    assert not pruner.should_prune(study, 150, 6, 0.1)  # nobody reported at that step


def test_a_sha_study_reports_at_its_rungs(tmp_path, minilm_available) -> None:
    path = write_study(
        tmp_path,
        study={"n_trials": 3, "pruner": "sha", "pruner_min_steps": 1},
        data={"max_train_examples": 32, "max_eval_examples": 16},
        train={"batch_size": 8, "epochs": 2},  # 8 steps: rungs at 1, 3
    )
    study = run_study(path, quiet=True)
    reported = [sorted(t.intermediate_values) for t in study.trials if t.intermediate_values]
    assert reported and all(steps and set(steps) <= {1, 3} for steps in reported)
    assert isinstance(study.pruner, optuna.pruners.SuccessiveHalvingPruner)


def _reporter(study: optuna.Study, losses: list[float], baseline: float | None = 0.58) -> TrialReporter:
    report = TrialReporter(study.ask(), 1_000, "accuracy", None, lambda line: None, baseline)
    for step, loss in enumerate(losses, 1):
        report.loss(step, loss)
    return report


@pytest.mark.parametrize("objectives", [["maximize"], ["maximize", "minimize"]])
def test_a_trial_at_the_baseline_whose_loss_has_not_fallen_is_stopped_as_degenerate(objectives) -> None:
    study = optuna.create_study(directions=objectives)
    flat = [0.69, 0.70, 0.69, 0.70, 0.69, 0.70, 0.69, 0.70]
    report = _reporter(study, flat)
    assert report(8, 0.58) is True  # the majority class, loss flat: degenerate, whatever the pruner says
    attrs = study.trials[-1].user_attrs
    assert attrs["pruned_reason"].startswith("degenerate: accuracy 0.5800 is the baseline's (0.5800)")
    assert attrs["pruned_at_step"] == 8

    falling = _reporter(study, [0.69, 0.68, 0.6, 0.5, 0.45, 0.4, 0.38, 0.35])
    assert falling(8, 0.58) is False  # at the baseline, but learning: it goes on
    assert _reporter(study, flat)(8, 0.61) is False  # above the baseline
    assert _reporter(study, flat, baseline=None)(8, 0.58) is False  # a task without a baseline
    later = _reporter(study, flat)
    assert later(8, 0.61) is False and later(16, 0.58) is False  # judged at its first report only
    early = _reporter(study, flat[:4])
    assert early(4, 0.58) is False  # 4 steps: the loss has not had the chance to fall; not judged yet
    for step in range(5, 9):
        early.loss(step, 0.69)
    assert early(8, 0.58) is True  # the first report after 8 steps judges it
