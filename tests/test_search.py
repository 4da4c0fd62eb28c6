"""The search itself, with training replaced by an instant stand-in: budget-aware sampling on the
quickstart space, a sampler that learns across methods, size-aware pruning of two-objective trials."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from autopeft import load_config, run_study
from autopeft.search.pruning import SizeAwareMedianPruner, TrialReporter
from autopeft.training.train import TrainResult, planned_steps
from autopeft.training.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def instant(monkeypatch):
    """Replace training by a formula: bitfit scores 0.9, other methods 0.6, bigger is slightly better.

    Halfway through, the stand-in reports 0.1 below its final value, so pruning decisions are real.
    Returns the list of (method, trainable parameters, budget) of every configuration "trained".
    """
    trained: list[tuple[str, int, int]] = []

    def fit(self, method, config, *, learning_rate, seed, on_report=None, label="", test=False, **unused):
        method = self.enabled[method] if isinstance(method, str) else method
        n = method.count_trainable(self.ctx, config)
        trained.append((method.name, n, self.budget))
        value = (0.9 if method.name == "bitfit" else 0.6) + 0.05 * math.log(n) / math.log(self.budget)
        total = planned_steps(self.data.train, self.config.train)
        if on_report is not None and on_report(total // 2, value - 0.1):
            return TrainResult(value - 0.1, 0.01, 0.01, 100, total // 2, total, stopped_at=total // 2)
        return TrainResult(value, 0.01, 0.01, 100, total, total)

    monkeypatch.setattr(Workbench, "fit", fit)
    return trained


def _study_copy(tmp_path: Path, name: str, replace: dict[str, str] | None = None) -> Path:
    """A shipped study file (and its data) copied into ``tmp_path``, with lines replaced."""
    shutil.copytree(ROOT / "studies" / "data", tmp_path / "data")
    text = (ROOT / "studies" / name).read_text().replace("[search]\n", "[search]\nrace = false\n", 1)
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_quickstart_space_rarely_samples_over_budget_and_never_trains_it(tmp_path, instant, minilm_available) -> None:
    study = run_study(_study_copy(tmp_path, "quickstart.toml"), n_trials=150, quiet=True)
    trials = study.trials
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert len(trials) == 150 and len(infeasible) / len(trials) < 0.05
    assert instant and all(n <= budget for _, n, budget in instant)  # nothing over budget was trained
    assert len(instant) == 150 - len(infeasible) - 0  # every feasible trial was trained (none pruned here)


def _method_share(sampler: str, tmp_path: Path, caplog) -> float:
    config = load_config(_study_copy(tmp_path / sampler, "quickstart-pareto.toml"))
    config = replace(config, study=replace(config.study, sampler=sampler))
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="optuna"):
            study = run_study(config, n_trials=60, quiet=True)
    finally:
        optuna.logging.disable_propagation()
    later = [t for t in study.trials if t.number >= 20]
    return sum(t.params["method"] == "bitfit" for t in later) / len(later)


def test_sampler_learns_across_methods(tmp_path, instant, caplog, minilm_available) -> None:
    # Five methods, each with its own per-block parameters: TPE must still learn which method wins,
    # and must model every method's parameters jointly instead of falling back to independent sampling.
    (tmp_path / "tpe").mkdir(), (tmp_path / "random").mkdir()
    tpe = _method_share("tpe", tmp_path, caplog)
    assert not [r for r in caplog.records if "sampled independently" in r.getMessage()]
    random = _method_share("random", tmp_path, caplog)
    # Two objectives: small configurations of every method stay worth sampling, so TPE does not pick
    # bitfit every time, but far more often than chance (1 in 5).
    assert tpe >= 2 * random and tpe >= random + 0.25, (tpe, random)


def test_two_objective_trials_are_pruned_by_size_and_counted(tmp_path, instant, minilm_available) -> None:
    # Bitfit (0.9) beats LoRA (0.6) at every size, so LoRA trials larger than three finished bitfit
    # trials are hopeless for the front once those outnumber the smaller LoRA trials.
    methods = 'methods = ["lora", "ia3", "adapter", "bitfit", "unfreeze"]'
    path = _study_copy(tmp_path, "quickstart-pareto.toml", {methods: 'methods = ["lora", "bitfit"]'})
    study = run_study(path, n_trials=30, quiet=True)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "LoRA trials larger than three finished bitfit trials should have been pruned"
    for t in pruned:
        assert t.params["method"] != "bitfit" and t.user_attrs["steps_saved"] > 0
    assert study.user_attrs["pruned_trials"] == len(pruned)
    assert study.user_attrs["pruning_steps_saved"] == sum(t.user_attrs["steps_saved"] for t in pruned)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.values[1] == t.user_attrs["trainable_params"] for t in complete)


def test_each_method_searches_its_own_learning_rates(tmp_path, instant, minilm_available) -> None:
    # No [train] learning_rate (the quickstart has none): each method its own range; bitfit's table
    # fixes its rate; rsLoRA's rate is scaled by 1/sqrt(mean rank), unfreezing norms by 10.
    path = _study_copy(
        tmp_path,
        "quickstart.toml",
        {
            'targets = ["query+value", "query+key+value+attn_output", "all"]': 'variants = ["rslora"]\n'
            '[search.unfreeze]\nparts = ["norm"]\n[search.bitfit]\nlearning_rate = 0.02',
        },
    )
    study = run_study(path, n_trials=25, quiet=True)
    seen = set()
    for t in study.trials:
        name, rate = t.params["method"], t.user_attrs.get("learning_rate")
        if rate is None:
            continue
        seen.add(name)
        if name == "bitfit":
            assert rate == 0.02 and "bitfit.learning_rate" not in t.params
            continue
        sampled = t.params[f"{name}.learning_rate"]
        low, high = {"lora": (5e-4, 2e-2), "unfreeze": (1e-5, 1e-3)}[name]
        assert low <= sampled <= high
        if name == "unfreeze":
            assert rate == pytest.approx(10 * sampled)
        else:
            ranks = [r for r in t.params if r.startswith("lora.r[")]
            assert ranks and rate < sampled  # every rank >= 4 here: scaled down
    assert seen == {"lora", "unfreeze", "bitfit"}


def _finished(study: optuna.Study, size: int, at_step: float) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.8, size],
            user_attrs={"trainable_params": size, "intermediate": {"5": at_step}},
        )
    )


def test_size_aware_pruner_compares_with_no_larger_trials_only() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for size, value in ((100, 0.7), (200, 0.8), (300, 0.9), (10_000, 0.99)):
        _finished(study, size, value)
    pruner = SizeAwareMedianPruner(min_peers=3)
    assert pruner.should_prune(study, 500, 5, 0.75)  # below the median (0.8) of the three smaller trials
    assert not pruner.should_prune(study, 500, 5, 0.85)
    assert not pruner.should_prune(study, 250, 5, 0.1)  # only two smaller trials: too few to judge
    assert not pruner.should_prune(study, 500, 6, 0.1)  # no peer reported at that step
    assert pruner.should_prune(study, 20_000, 5, 0.84)  # median of four peers is 0.85


def test_reporter_prunes_two_objective_trials_and_records_where() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for size in (100, 200, 300):
        _finished(study, size, 0.9)
    trial = study.ask()
    report = TrialReporter(trial, 1_000, "accuracy", SizeAwareMedianPruner(), lambda line: None)
    assert report(5, 0.5) is True  # stop the fit here
    attrs = study.trials[-1].user_attrs
    assert attrs["intermediate"] == {"5": 0.5} and attrs["pruned_at_step"] == 5


@pytest.mark.parametrize("sampler,kind", [("gp", optuna.samplers.GPSampler), ("nsga2", optuna.samplers.NSGAIISampler)])
def test_optunas_gp_and_nsga2_samplers_search_the_same_space(
    tmp_path, instant, sampler, kind, minilm_available
) -> None:
    path = _study_copy(tmp_path, "quickstart.toml", {'sampler = "tpe"': f'sampler = "{sampler}"'})
    study = run_study(path, n_trials=14, quiet=True)
    assert isinstance(study.sampler, kind)
    done = [t for t in study.trials if t.state.is_finished()]  # the stand-in's halfway report lets some be pruned
    sampled = {t.params["method"] for t in done if "warm_start" not in t.user_attrs}
    assert len(done) == 14 and sampled == {"lora", "unfreeze", "bitfit"}  # the queued defaults do not narrow it
    trained = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE and "infeasible" not in t.user_attrs]
    assert trained and all(t.user_attrs["trainable_params"] <= t.user_attrs["budget"] for t in trained)


def test_the_auto_sampler_offline_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch, minilm_available) -> None:
    import sys

    from autopeft.cli.command import main

    monkeypatch.setitem(sys.modules, "optunahub", None)  # not installed (CI); installed and offline fails alike
    path = _study_copy(tmp_path, "quickstart.toml", {'sampler = "tpe"': 'sampler = "auto"'})
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.sampler" in err[0] and "optunahub" in err[0].lower() and 'sampler = "tpe"' in err[0]
