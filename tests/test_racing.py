"""The race run on a study: its state read from trials, a run that ends in a recommendation, a race
resumed after an interrupt, and two workers racing one study."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from conftest import write_study
from optuna.trial import TrialState, create_trial

from autopeft.search.race import Rung, Schedule
from autopeft.search.racing import DECISION_ATTR, PLAN_ATTR, Claim, RaceEntrant, RacePlan, RaceState, claim_of
from autopeft.storage.backends import MAX_RETRIES
from autopeft.storage.results import recorded_test_metric


def _plan(keys: list[str], rungs: list[tuple[float, int, int]], short_rungs: str = "metric") -> RacePlan:
    entrants = tuple(RaceEntrant(k, k.split("@")[0], "lora", "{}", 1e-3, 10, k.startswith("inc")) for k in keys)
    schedule = Schedule(tuple(Rung(f, tuple(range(s)), n) for f, s, n in rungs))
    return RacePlan(entrants, schedule, total_steps=90, budget=12, seed=0, short_rungs=short_rungs)


def _trial(rung: int, entrant: str, seed: int, value: float | None, state: TrialState = TrialState.COMPLETE, **attrs):
    user_attrs = {"race": {"rung": rung, "entrant": entrant, "seed": seed}, **attrs}
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None, user_attrs=user_attrs)


KEYS = ["inc@1", "inc@3", "a@1", "a@3", "b@1", "b@3", "c@1", "c@3", "d@1"]
RUNGS = [(1 / 9, 1, 9), (1 / 3, 2, 3), (1.0, 3, 2)]


def test_the_first_rung_is_every_entrant_and_the_next_waits_for_it() -> None:
    plan = _plan(KEYS, RUNGS)
    state = RaceState(plan, [_trial(0, "inc@1", 0, 0.5)], 1, 0.0)
    assert state.members(0) == KEYS and state.members(1) is None
    assert state.current_rung() == 0
    assert state.next_claim() == Claim(0, "inc@3", 0)
    held = _trial(0, "inc@3", 0, None, TrialState.RUNNING)
    assert RaceState(plan, [_trial(0, "inc@1", 0, 0.5), held], 1, 0.0).next_claim() == Claim(0, "a@1", 0)
    assert plan.steps(0) == 10 and plan.steps(2) == 90


def test_survivors_are_the_best_third_and_the_final_rung_adds_the_incumbent_at_its_best_rate() -> None:
    plan = _plan(KEYS, RUNGS)
    first = [0.50, 0.55, 0.70, 0.60, 0.80, 0.40, 0.65, 0.30, 0.20]
    trials = [_trial(0, k, 0, v) for k, v in zip(KEYS, first)]
    state = RaceState(plan, trials, 1, 0.0)
    assert state.members(1) == ["b@1", "a@1", "c@1"]
    second = {"b@1": (0.8, 0.7), "a@1": (0.9, 0.9), "c@1": (0.5, 0.5)}
    trials += [_trial(1, k, s, v[s]) for k, v in second.items() for s in (0, 1)]
    state = RaceState(plan, trials, 1, 0.0)
    # inc@3 (0.55) beat inc@1 at the first rung: it is the incumbent at its best rate, with a@1
    assert state.members(2) == ["inc@3", "a@1"]
    assert state.next_claim() == Claim(2, "inc@3", 0)
    assert state.decision() is None


def test_a_short_rung_cuts_within_rate_tiers_so_the_final_rung_decides_the_rate() -> None:
    # two candidates at half, at and twice the prior; the short rung favours the higher rates, as short runs do
    tiers = {"inc@0.5": -1, "inc@1": 0, "inc@2": 1, "a@0.5": -1, "a@1": 0, "a@2": 1}
    entrants = tuple(
        RaceEntrant(k, k.split("@")[0], "lora", "{}", 1e-3, 10, k.startswith("inc"), t) for k, t in tiers.items()
    )
    plan = RacePlan(entrants, Schedule((Rung(1 / 3, (0,), 6), Rung(1.0, (0, 1, 2), 3))), 90, 12, 0, "metric")
    first = {"inc@0.5": 0.60, "inc@1": 0.65, "inc@2": 0.80, "a@0.5": 0.62, "a@1": 0.70, "a@2": 0.75}
    state = RaceState(plan, [_trial(0, k, 0, v) for k, v in first.items()], 1, 0.0)
    # a cut over every entrant would keep both at twice the prior; within tiers it keeps the best at
    # the prior and the best below it, and the incumbent joins at the prior whatever its rivals at 2x did
    assert state.members(1) == ["inc@1", "a@1", "a@0.5"]
    assert state.around() == plan.entrant("a@1")  # structure trials are drawn around the best at the prior
    # the final rung, at full fidelity, ranks the rates against each other
    final = {"inc@1": (0.70, 0.71, 0.72), "a@1": (0.69, 0.70, 0.70), "a@0.5": (0.74, 0.75, 0.76)}
    trials = [_trial(0, k, 0, v) for k, v in first.items()]
    trials += [_trial(1, k, s, v[s]) for k, v in final.items() for s in range(3)]
    decision = RaceState(plan, trials, 1, 0.0).decision()
    assert decision is not None and decision.chosen == "a@0.5" and decision.displaced
    # an old plan's entrants (no tier recorded) all sit at the prior: one cut over all, as before
    record = json.loads(json.dumps(plan.as_record()))
    for e in record["entrants"]:
        del e["tier"]
    assert {e.tier for e in RacePlan.from_record(record).entrants} == {0}


def test_a_clear_paired_margin_displaces_the_incumbent_and_noise_does_not() -> None:
    plan = _plan(["inc@1", "a@1"], [(1.0, 3, 2)])
    clear = [_trial(0, "inc@1", s, v) for s, v in enumerate([0.70, 0.72, 0.71])]
    clear += [_trial(0, "a@1", s, v) for s, v in enumerate([0.75, 0.76, 0.77])]
    state = RaceState(plan, clear, 1, 0.0)
    decision = state.decision()
    assert decision is not None and decision.displaced and decision.chosen == "a@1"
    record = state.decision_record(decision)
    assert record["incumbent"] == "inc@1" and record["difference"]["interval"][0] > 0
    noisy = clear[:3] + [_trial(0, "a@1", s, v) for s, v in enumerate([0.80, 0.66, 0.72])]
    decision = RaceState(plan, noisy, 1, 0.0).decision()
    assert decision is not None and decision.best == "a@1" and not decision.displaced and decision.chosen == "inc@1"
    # a loss is minimized: the same numbers the other way round keep the incumbent, and the record
    # gives the best challenger's margin below it
    state = RaceState(plan, clear, -1, 9.0)
    decision = state.decision()
    assert decision is not None and decision.chosen == "inc@1" and decision.difference is None
    record = state.decision_record(decision)
    assert record["best"] == "a@1" and record["difference"]["mean"] == pytest.approx(-0.05)
    assert record["entrants"]["a@1"]["method"] == "lora"


def test_a_pruned_training_and_one_failed_more_than_retried_score_the_worst_and_duplicates_count_once() -> None:
    plan = _plan(["inc@1", "a@1", "b@1"], [(1 / 3, 1, 3), (1.0, 3, 2)])
    trials = [
        _trial(0, "inc@1", 0, 0.6),
        _trial(0, "inc@1", 0, 0.1),  # a duplicate of two workers' claims: the first counts
        _trial(0, "a@1", 0, None, TrialState.PRUNED),
        *[_trial(0, "b@1", 0, None, TrialState.FAIL) for _ in range(MAX_RETRIES + 1)],
        _trial(0, "b@1", 0, None, TrialState.FAIL, surplus=True),
    ]
    state = RaceState(plan, trials, 1, 0.0)
    assert state.scores[0] == {"inc@1": {0: 0.6}, "a@1": {0: 0.0}, "b@1": {0: 0.0}}
    assert state.current_rung() == 1
    # fewer failures than retries: the member waits for its retry
    assert RaceState(plan, trials[:4], 1, 0.0).current_rung() == 0


def test_short_rungs_that_rank_by_the_validation_loss_keep_the_lowest_loss_whatever_the_metric_says() -> None:
    plan = _plan(["inc@1", "a@1", "b@1"], [(1 / 3, 1, 3), (1.0, 3, 2)], short_rungs="loss")
    at_majority = [
        _trial(0, "inc@1", 0, 0.58, validation_loss=0.69),
        _trial(0, "a@1", 0, 0.58, validation_loss=0.61),  # the same accuracy, a falling loss
        _trial(0, "b@1", 0, None, TrialState.PRUNED),
    ]
    for sign in (1, -1):  # the loss ranks the same way whichever way the metric goes
        state = RaceState(plan, at_majority, sign, 0.0)
        assert state.members(1) == ["inc@1", "a@1"]
        assert state.scores[0]["b@1"][0] == -sign * float("inf")
    # the final rung ranks by the metric, not the loss
    final = [_trial(1, "inc@1", s, 0.70, validation_loss=0.1) for s in range(3)]
    final += [_trial(1, "a@1", s, 0.80 + s / 100, validation_loss=0.9) for s in range(3)]
    decision = RaceState(plan, at_majority + final, 1, 0.0).decision()
    assert decision is not None and decision.chosen == "a@1" and decision.displaced


def test_structure_trials_wait_for_the_planned_first_rung_then_compete_for_the_cut() -> None:
    import dataclasses

    plan = dataclasses.replace(_plan(["inc@1", "a@1", "b@1"], [(1 / 3, 1, 3), (1.0, 3, 2)]), structure=2)
    assert plan.slots() == ["search-1", "search-2"] and plan.cost == pytest.approx(1 + 2 / 3 + 6)
    assert RacePlan.from_record(json.loads(json.dumps(plan.as_record()))) == plan
    planned = [_trial(0, k, 0, v) for k, v in (("inc@1", 0.6), ("a@1", 0.7))]
    state = RaceState(plan, planned + [_trial(0, "b@1", 0, None, TrialState.RUNNING)], 1, 0.0)
    assert state.members(0) == ["inc@1", "a@1", "b@1", "search-1", "search-2"]
    assert state.around() is None and state.next_claim() is None  # b@1 runs elsewhere; the slots wait for it
    planned.append(_trial(0, "b@1", 0, 0.65))
    state = RaceState(plan, planned, 1, 0.0)
    assert state.around() == plan.entrant("a@1") and state.next_claim() == Claim(0, "search-1", 0)
    assert state.entrant("search-1") is None  # not drawn yet
    drawn = {"method": "lora", "config": '{"ranks": [4]}', "learning_rate": 1e-3, "trainable_params": 9}
    trials = planned + [_trial(0, "search-1", 0, 0.9, **drawn), _trial(0, "search-2", 0, 0.5, **drawn)]
    state = RaceState(plan, trials, 1, 0.0)
    assert state.entrant("search-1") is not None and state.entrant("search-1").trainable == 9
    # the cut keeps the best third of all five (2), and the incumbent joins the final rung
    assert state.members(1) == ["inc@1", "search-1"]


def test_a_trial_ranked_by_its_loss_learned_nothing_only_when_its_loss_is_no_lower_than_the_baselines() -> None:
    from autopeft.storage.results import SCORED_BY_ATTR, Standard, reason

    standard = Standard(budget=100, baseline=0.58, baseline_name="majority class", baseline_loss=0.68)

    def trial(loss: float, **attrs):
        attrs = {"trainable_params": 10, "validation_loss": loss, **attrs}
        return create_trial(state=TrialState.COMPLETE, value=0.58, user_attrs=attrs)

    # the majority class's accuracy a third of the way through, with a loss that has left the baseline's
    assert not standard.at_baseline(trial(0.60, **{SCORED_BY_ATTR: "validation_loss"}))
    stuck = trial(0.70, **{SCORED_BY_ATTR: "validation_loss"})
    assert standard.at_baseline(stuck)
    assert reason(stuck, standard) == "validation loss 0.7000 no lower than the majority class's (0.6800)"
    # a trial its metric ranked (a final rung, a sampled trial) is judged by its metric
    assert standard.at_baseline(trial(0.60)) and reason(trial(0.60), standard) == (
        "no better than the majority class baseline (0.5800)"
    )
    # a study recorded before the baseline had a loss judges every trial by its metric, as a front does
    assert Standard(budget=100, baseline=0.58).at_baseline(trial(0.60, **{SCORED_BY_ATTR: "validation_loss"}))
    assert standard.by_metric().at_baseline(trial(0.60, **{SCORED_BY_ATTR: "validation_loss"}))
    # a loss that is not a number learned nothing
    assert standard.at_baseline(trial(float("nan"), **{SCORED_BY_ATTR: "validation_loss"}))


def test_a_plan_survives_its_record_and_a_broken_race_attribute_is_no_claim() -> None:
    plan = _plan(KEYS, RUNGS)
    assert RacePlan.from_record(json.loads(json.dumps(plan.as_record()))) == plan
    assert claim_of({"race": {"rung": "x"}}) is None and claim_of({}) is None


def _race_study(folder: Path, train: dict | None = None, keep_weights: str = "front", **search) -> Path:
    return write_study(
        folder,
        study={"name": "raced", "seed": 0, "keep_weights": keep_weights},
        data={"test": "validation.parquet"},
        search={"methods": ["lora", "bitfit"], "race": True, "trainings": 7, "proxy": False, **search},
        **({"train": train} if train else {}),
    )


def _complete(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def test_a_run_races_and_ends_in_a_recommendation(tmp_path, capsys, minilm_available) -> None:
    from autopeft import load_config, open_study, winner
    from autopeft.cli.command import main

    path = _race_study(tmp_path, trainings=8)  # the incumbent's race costs 7: room for 3 structure trials
    assert main(["plan", str(path)]) == 0
    assert "+ 3 structure trials" in capsys.readouterr().out
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "race decided: recommends" in out and "over 3 seeds" in out
    study = open_study(load_config(path), create=False)
    plan = RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    decided = study.user_attrs[DECISION_ATTR]
    assert plan.cost <= 8 and plan.entrants[0].incumbent and plan.structure == 3
    incumbent = [e for e in plan.entrants if e.incumbent]  # below, at and above its prior rate
    assert [e.tier for e in incumbent] == [-1, 0, 1], [e.learning_rate for e in incumbent]
    assert incumbent[0].learning_rate * 2 == pytest.approx(incumbent[1].learning_rate)
    assert incumbent[1].learning_rate < incumbent[2].learning_rate
    claims = [claim_of(t.user_attrs) for t in _complete(study)]
    rung_trainings = sum(r.entrants * len(r.seeds) for r in plan.schedule.rungs)
    assert len(claims) == len(set(claims)) == rung_trainings + plan.structure
    # the structure trials ran on the first rung after every planned entrant, drawn by the sampler
    first = [t for t in _complete(study) if t.user_attrs["race"]["rung"] == 0]
    # the first rung ranks by the validation loss, so that is what judges whether a trial learned anything
    assert all(t.user_attrs.get("scored_by") == "validation_loss" for t in first)
    assert not any("scored_by" in t.user_attrs for t in _complete(study) if t.user_attrs["race"]["rung"] > 0)
    drawn = [t for t in first if t.user_attrs["race"]["entrant"].startswith("search-")]
    assert len(drawn) == 3 and min(t.number for t in drawn) > max(t.number for t in first if t not in drawn)
    assert all(set(t.params) == {"structure.targets", "structure.rank", "structure.tilt"} for t in drawn)
    assert all(t.user_attrs["trainable_params"] <= study.user_attrs["budget"] for t in drawn)
    structures = [t.user_attrs["config"] for t in drawn]  # each a structure the race did not have
    assert len(set(structures)) == 3 and not set(structures) & {e.config_json for e in plan.entrants}
    assert [t.user_attrs["race"]["entrant"] for t in study.get_trials() if t.number in decided["trials"]] == [
        decided["chosen"]
    ] * 3
    best = winner(study)
    assert best is not None and best.number == decided["trials"][0]
    # the test split scored the recommendation alone, once decided, from its kept weights
    assert sorted(decided["test_values"]) == sorted(str(n) for n in decided["trials"])
    assert list(decided["test_means"]) == [decided["chosen"]]
    assert not any("test_metric" in t.user_attrs for t in study.get_trials())
    assert recorded_test_metric(best, study.user_attrs) == decided["test_values"][str(best.number)]
    assert f"test {decided['test_means'][decided['chosen']]:.4f}" in out
    from autopeft.outputs.report import build_figures

    lines = [trace for trace in build_figures(study)["race"].data if trace.mode == "lines"]
    assert {trace.name for trace in lines} == {e.key for e in plan.entrants} | set(plan.slots())
    assert [trace.line.width for trace in lines if trace.name == decided["chosen"]] == [4]
    assert main(["trials", str(path)]) == 0
    table = capsys.readouterr().out
    assert "rung" in table.splitlines()[0] and "entrant" in table.splitlines()[0]
    # run again, or refit: the race is decided (its final rung was the refit), nothing trains
    assert main(["run", str(path), "--quiet"]) == 0
    assert main(["refit", str(path)]) == 0
    assert "race decided: recommends" in capsys.readouterr().out
    assert len(_complete(open_study(load_config(path), create=False))) == len(claims)


def test_the_recommendation_scored_from_its_kept_weights_equals_scoring_every_final_training(
    tmp_path, minilm_available
) -> None:
    # Keeping no weights, a race tests each final training as it finishes (the old way): the same
    # race keeping them scores only its recommendation, after the decision, to the same values.
    from autopeft import load_config, open_study, run_study

    studies = {}
    for keep in ("front", "none"):
        (tmp_path / keep).mkdir()
        path = _race_study(tmp_path / keep, keep_weights=keep)
        run_study(path, quiet=True)
        studies[keep] = open_study(load_config(path), create=False)
    kept, each = (studies[k].user_attrs[DECISION_ATTR] for k in ("front", "none"))
    assert kept["chosen"] == each["chosen"] and kept["trials"] == each["trials"]
    tested = {t.number: t.user_attrs.get("test_metric") for t in studies["none"].get_trials()}
    finals = [t.number for t in studies["none"].get_trials() if t.user_attrs["race"]["rung"] == 1]
    assert all(tested[n] is not None for n in finals) and len(each["test_means"]) > 1
    assert "test_values" not in each
    assert kept["test_values"] == pytest.approx({str(n): tested[n] for n in each["trials"]}, abs=1e-9)
    assert kept["test_means"] == pytest.approx({kept["chosen"]: each["test_means"][each["chosen"]]}, abs=1e-9)
    # the final trainings' weights were kept: they are what export ships, never retrained
    from autopeft.storage.artifacts import artifact_store, fetch_weights

    store = artifact_store(load_config(tmp_path / "front" / "study.toml"))
    trials = {t.number: t for t in studies["front"].get_trials()}
    assert all(fetch_weights(store, studies["front"], trials[n], tmp_path / "w" / str(n)) for n in kept["trials"])


def test_kept_weights_that_do_not_load_leave_the_decision_recorded_without_a_test_score(
    tmp_path, monkeypatch, capsys, minilm_available
) -> None:
    from autopeft import load_config, open_study, run_study
    from autopeft.training.workbench import Workbench

    def broken(self, *args, **kwargs):
        raise RuntimeError("a cut file\nand its traceback")

    monkeypatch.setattr(Workbench, "score_saved_on_test", broken)
    path = _race_study(tmp_path)
    run_study(path)
    decided = open_study(load_config(path), create=False).user_attrs[DECISION_ATTR]
    assert decided["test_values"] == {} == decided["test_means"] and len(decided["trials"]) == 3
    err = capsys.readouterr().err
    first = decided["trials"][0]
    assert f"race: trial {first}'s kept weights could not be scored on the test split (RuntimeError: a cut file)" in err
    assert "race decided: recommends" in err


def test_a_race_stopped_halfway_resumes_from_the_storage(tmp_path, monkeypatch, minilm_available) -> None:
    from autopeft import load_config, open_study, run_study
    from autopeft.errors import Interrupted
    from autopeft.training.workbench import Workbench

    path = _race_study(tmp_path)
    fit, calls = Workbench.fit, []

    def interrupted_at_the_fifth(self, *args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Workbench, "fit", interrupted_at_the_fifth)
    with pytest.raises(Interrupted):
        run_study(path, quiet=True)
    study = open_study(load_config(path), create=False)
    before = {claim_of(t.user_attrs) for t in _complete(study)}
    assert len(before) == 4
    monkeypatch.setattr(Workbench, "fit", fit)
    study = run_study(path, quiet=True)
    after = [claim_of(t.user_attrs) for t in _complete(study)]
    assert len(after) == len(set(after)) and before < set(after)  # nothing trained twice
    assert DECISION_ATTR in study.user_attrs
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and claim_of(interrupted[0].user_attrs) in set(after)


def test_two_workers_race_one_study_and_train_each_member_once(tmp_path, capsys, monkeypatch, minilm_available) -> None:
    from autopeft import load_config, open_study
    from autopeft.cli.command import main

    # Each worker's first trial waits until both have one (tests/held_fit.py): both take part,
    # however fast either loads; the race's coordination, not training, is the subject here.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("AUTOPEFT_TEST_MARKS", str(tmp_path / "marks"))
    path = _race_study(tmp_path, train={"fit": "held_fit:fit"})
    assert main(["run", str(path), "--workers", "2"]) == 0
    assert "race decided: recommends" in capsys.readouterr().out
    study = open_study(load_config(path), create=False)
    complete = _complete(study)
    claims = [claim_of(t.user_attrs) for t in complete]
    plan = RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    assert len(claims) == len(set(claims)) == sum(r.entrants * len(r.seeds) for r in plan.schedule.rungs)
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert DECISION_ATTR in study.user_attrs


def test_plan_prints_the_race_and_a_budget_too_small_for_it_is_one_line(tmp_path, capsys, minilm_available) -> None:
    from autopeft.cli.command import main

    path = _race_study(tmp_path)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "race: " in out and "(incumbent)" in out and "rung 1:" in out and "paired seed" in out
    assert "(the prior)" in out and "(below the prior)" in out and "cut within rate tiers" in out
    (tmp_path / "small").mkdir()
    small = _race_study(tmp_path / "small", trainings=2)
    assert main(["run", str(small)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "search.trainings" in last and "needs at least 7.0 full trainings" in last and "raise [search]" in last


def test_a_front_point_stays_only_if_it_beats_every_smaller_survivor_on_the_paired_seeds() -> None:
    from autopeft.search.race import front_survivors

    scores = {
        "small": {0: 0.70, 1: 0.72, 2: 0.71},
        "lucky": {0: 0.69, 1: 0.72, 2: 0.70},  # bigger, and its search trial's seed flattered it: dropped
        "big": {0: 0.74, 1: 0.75, 2: 0.76},
        "bigger": {0: 0.75, 1: 0.74, 2: 0.75},  # no better than "big": dropped
    }
    sizes = {"small": 10, "lucky": 20, "big": 40, "bigger": 80}
    kept = front_survivors(scores, sizes, [0, 1, 2])
    assert [k for k, _, _ in kept] == ["small", "big"]
    _, over, diff = kept[1]
    assert over == "small" and diff is not None and diff.n == 3 and abs(diff.mean - 0.04) < 1e-9
    assert [k for k, _, _ in front_survivors(scores, sizes, [0, 1, 2], sign=-1)] == ["small", "lucky"]
    with pytest.raises(ValueError, match="every seed"):
        front_survivors({"small": {0: 0.7}}, sizes, [0, 1])


def test_a_two_objective_run_races_its_front_on_paired_seeds(tmp_path, capsys, minilm_available) -> None:
    from autopeft import load_config, open_study, pareto_front
    from autopeft.cli.command import main
    from autopeft.search.racing import race_seed
    from autopeft.storage.results import FRONT_ATTR

    path = write_study(
        tmp_path,
        study={"name": "front", "n_trials": 4, "seed": 0, "objectives": ["accuracy", "trainable_params"]},
        data={"test": "validation.parquet"},
        search={"methods": ["lora", "bitfit"], "race": True},
        final={"seeds": 2},
    )
    assert main(["plan", str(path)]) == 0
    assert "its Pareto front races" in capsys.readouterr().out.splitlines()[-1]
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "front raced on 3 paired seeds" in out
    study = open_study(load_config(path), create=False)
    plan = RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    searched = [t for t in study.get_trials() if "race" not in t.user_attrs and t.state == TrialState.COMPLETE]
    assert plan.kind == "front" and len(searched) == 4
    raced = [t for t in _complete(study) if "race" in t.user_attrs]
    # every front point trained again on the same three seeds, at the final fidelity, tested
    assert len(raced) == 3 * len(plan.entrants)
    seeds = {
        e.key: sorted(t.user_attrs["seed"] for t in raced if t.user_attrs["race"]["entrant"] == e.key)
        for e in plan.entrants
    }
    assert all(s == [race_seed(0, i) for i in range(3)] for s in seeds.values())
    assert all("test_metric" in t.user_attrs for t in raced)
    record = study.user_attrs[FRONT_ATTR]
    kept = [p["trial"] for p in record["kept"]]
    assert sorted(kept + record["dropped"]) == sorted(int(e.key.split()[-1]) for e in plan.entrants)
    assert [t.number for t in pareto_front(study)] == kept  # the front is the survivors, smallest first
    means = [p["mean"] for p in record["kept"]]
    assert means == sorted(means) and len(set(means)) == len(means)
    assert main(["pareto", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["raced_mean"] for r in rows] == means and rows[0]["margin_over_smaller"] is None
    # run again: decided, nothing trains
    assert main(["run", str(path), "--quiet"]) == 0
    assert len(_complete(open_study(load_config(path), create=False))) == len(searched) + len(raced)


def test_another_studys_front_enters_the_race_first_after_the_incumbent(tmp_path, minilm_available) -> None:
    from autopeft.config import load_config
    from autopeft.registry import resolve_study
    from autopeft.search.portfolio import from_front
    from autopeft.search.racing import make_race_plan
    from autopeft.search.search_space import SearchSpace
    from autopeft.search.study import front_params, run_study
    from autopeft.training.workbench import Workbench

    (tmp_path / "a").mkdir()
    other = write_study(
        tmp_path / "a", study={"name": "other", "n_trials": 2, "seed": 0}, search={"methods": ["bitfit"]}
    )
    run_study(other, quiet=True)
    name, front = front_params(other)
    space = SearchSpace(Workbench(resolve_study(load_config(_race_study(tmp_path)))))
    first = from_front(space, "from", front)
    assert name == "other" and first and all(c.method == "bitfit" and not c.scaled for c in first)
    rates = {json.dumps(p, sort_keys=True) for p in front}
    assert all(any(str(c.prior) in r for r in rates) for c in first)  # centred on the rate it trained at there
    plan = make_race_plan(space, 12, 8, None, first)
    candidates = list(dict.fromkeys(e.candidate for e in plan.entrants))
    assert candidates[0] == "incumbent" and candidates[1] == "from-1"
    assert "bitfit" not in candidates  # the portfolio's BitFit is the other study's: it races once
    assert "from-1" not in {e.candidate for e in make_race_plan(space, 12, 8).entrants}
