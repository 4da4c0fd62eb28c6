"""A worker's part in a race: read the plan from the storage, take the next training, decide at the end.

Every worker of a raced study runs :func:`run_race`. It keeps no state of its own between trainings:
each turn it reads the study's trials (:class:`~autopeft.search.racing.RaceState`), takes the first
training of the lowest unfinished rung that no trial holds, and trains it as one Optuna trial. When
the rest of a rung is running on other workers it waits, failing the trials of dead workers so that
their retries are queued. Once the final rung has finished, the decision is written into the study
(by every worker that sees it: the same decision from the same trials).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autopeft.budget import format_count
from autopeft.progress import Progress
from autopeft.search.coordination import fail_dead_trials
from autopeft.search.portfolio import from_front
from autopeft.search.race_test import score_chosen_on_test, tests_after_decision
from autopeft.search.racing import (
    DECISION_ATTR,
    PLAN_ATTR,
    RaceEntrant,
    RacePlan,
    RaceState,
    RaceTurn,
    make_front_plan,
    make_race_plan,
)
from autopeft.storage.results import FINISHED, FRONT_ATTR, pareto_front

if TYPE_CHECKING:
    from autopeft.config import StudyConfig
    from autopeft.search.objective import Objective
    from autopeft.search.search_space import SearchSpace

__all__ = ["describe_decision", "describe_front", "front_plan", "race_plan", "race_state", "run_race"]

Callback = Callable[[optuna.Study, FrozenTrial], None]

#: Consecutive failed race trainings after which the race stops: a fault that fails every one.
MAX_FAILURES_IN_A_ROW = 5


def race_plan(
    study: optuna.Study,
    space: SearchSpace,
    total_steps: int,
    progress: Progress,
    start_from: tuple[str, list[dict[str, Any]]] | None = None,
) -> RacePlan:
    """The study's race: the one its storage holds, else a new plan, written there first, with
    ``start_from``'s front (another study's name and its front trials' parameters: ``run --from``)
    racing first after the incumbent.

    Two workers that plan at once may both write; each then reads back what the storage holds, so
    from their first training on they race the same plan.
    """
    from autopeft.search.proxy import PROXY_ATTR, proxy_scores

    recorded = study.user_attrs.get(PLAN_ATTR)
    if isinstance(recorded, dict):
        plan = RacePlan.from_record(recorded)
        progress.line(f"race: resuming the race the study planned ({_schedule_line(plan)})")
        return plan
    bench = space.bench
    blocks = None
    if bench.config.search.proxy and "lora" in bench.methods:
        proxy = study.user_attrs.get(PROXY_ATTR)
        if not isinstance(proxy, dict):
            proxy = proxy_scores(bench).as_record()
            study.set_user_attr(PROXY_ATTR, proxy)
        blocks = list(proxy["blocks"])
    first = None
    if start_from is not None:
        first = from_front(space, "from", start_from[1])
        progress.line(
            f"race: {len(first)} of the {len(start_from[1])} Pareto configurations of study {start_from[0]!r} enter"
        )
    plan = make_race_plan(space, bench.config.search.trainings, total_steps, blocks, first)
    study.set_user_attr(PLAN_ATTR, plan.as_record())
    plan = RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    progress.line(f"race: {_schedule_line(plan)}")
    for entrant in plan.entrants:
        method = bench.enabled[entrant.method]
        what = method.describe(entrant.config)
        progress.line(f"  {entrant.key}: {entrant.method} {what}, {format_count(entrant.trainable)} params")
    return plan


def front_plan(study: optuna.Study, config: StudyConfig, total_steps: int, progress: Progress) -> RacePlan | None:
    """The race of a two-objective study's front, once its search has finished: the one its storage
    holds, else its Pareto front now, each point on the same ``max(3, [final] seeds)`` paired seeds;
    None when the search found no feasible point."""
    recorded = study.user_attrs.get(PLAN_ATTR)
    if isinstance(recorded, dict) and recorded.get("kind") == "front":
        plan = RacePlan.from_record(recorded)
        progress.line(f"front race: resuming ({_schedule_line(plan)})")
        return plan
    front = pareto_front(study)
    if not front:
        progress.line("front race: the search found no feasible point to race")
        return None
    plan = make_front_plan(front, max(3, config.final.seeds), config.study.seed, total_steps)
    study.set_user_attr(PLAN_ATTR, plan.as_record())
    plan = RacePlan.from_record(study.user_attrs[PLAN_ATTR])  # another worker's, if it wrote first
    progress.line(f"front race: the Pareto front's {_schedule_line(plan)}, on the same paired seeds")
    return plan


def _schedule_line(plan: RacePlan) -> str:
    rungs = ", ".join(
        f"{r.entrants} x {len(r.seeds)} seed{'s' * (len(r.seeds) > 1)} at {plan.steps(i)} steps"
        for i, r in enumerate(plan.schedule.rungs)
    )
    drawn = f" (+ {plan.structure} structure trials on the first)" if plan.structure else ""
    return f"{len(plan.entrants)} entrants, rungs {rungs}{drawn}: {plan.cost:.1f} of {plan.budget:g} trainings"


def race_state(study: optuna.Study, plan: RacePlan, worst: float) -> RaceState:
    sign = -1 if study.directions[0] == StudyDirection.MINIMIZE else 1
    return RaceState(plan, study.get_trials(deepcopy=False), sign, worst)


def run_race(
    study: optuna.Study,
    objective: Objective,
    progress: Progress,
    callbacks: list[Callback],
    optimize: Callable[[optuna.Study, Objective, list[Callback], Progress, int | None], bool],
) -> list[FrozenTrial]:
    """Train the race's trainings until it is decided, and record the decision; returns the
    trainings that failed in a row at the end (the caller raises when there are too many)."""
    plan = objective.race
    assert plan is not None
    worst = objective.bench.task.worst(objective.config.task.metric)
    poll = min(5.0, objective.config.study.heartbeat_seconds / 2)
    failed: list[FrozenTrial] = []

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            failed.append(trial)
        elif trial.state in FINISHED:
            failed.clear()

    said: set[int] = set()
    while objective.fatal is None and len(failed) < MAX_FAILURES_IN_A_ROW:
        state = race_state(study, plan, worst)
        rung = state.current_rung()
        if rung is None:
            break
        objective.turn = RaceTurn(state.next_claim(), state)
        waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if objective.turn.claim is None and not waiting:  # the rest of the rung runs on other workers
            fail_dead_trials(study)
            time.sleep(poll)
            continue
        if rung not in said:
            said.add(rung)
            r = plan.schedule.rungs[rung]
            progress.line(
                f"race rung {rung + 1}/{len(plan.schedule.rungs)}: {len(state.members(rung) or [])} entrants, "
                f"{len(r.seeds)} paired seed(s), {plan.steps(rung)} steps each"
            )
        optimize(study, objective, [after, *callbacks], progress, 1)
    state = race_state(study, plan, worst)
    front = state.front_record()
    if front is not None:
        if study.user_attrs.get(FRONT_ATTR) != front:
            study.set_user_attr(FRONT_ATTR, front)
        for line in describe_front(study, plan):
            progress.line(line)
    decision = state.decision()
    if decision is not None:
        record = state.decision_record(decision)
        if tests_after_decision(plan, objective.config):
            record = _with_chosen_test(study, objective, record, progress)
        if study.user_attrs.get(DECISION_ATTR) != record:
            study.set_user_attr(DECISION_ATTR, record)
        for line in describe_decision(study, plan):
            progress.line(line)
    return failed


def _with_chosen_test(
    study: optuna.Study, objective: Objective, record: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """``record`` with the chosen entrant's test values (``test_values``, by trial) and their mean:
    an earlier record's for the same trainings (a resumed run, a second worker), else scored now
    from their kept weights (:mod:`autopeft.search.race_test`)."""
    earlier = study.user_attrs.get(DECISION_ATTR)
    if isinstance(earlier, dict) and earlier.get("trials") == record["trials"] and "test_values" in earlier:
        values = earlier["test_values"]
    else:
        if objective.bench.data.test is not None:
            progress.line(f"race: scoring the recommendation, {record['chosen']}, on the test split")
        values = score_chosen_on_test(study, objective.bench, record, progress)
    tested = {"test_means": {record["chosen"]: statistics.fmean(values.values())}} if values else {}
    return record | {"test_values": values} | tested


def describe_decision(study: optuna.Study, plan: RacePlan | None = None) -> list[str]:
    """The race's last lines: what it recommends, its paired margin over the incumbent at its best
    rate with the 95% interval, and its test score; nothing before the race is decided."""
    record = study.user_attrs.get(DECISION_ATTR)
    if not isinstance(record, dict):
        return []
    plan = plan or RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    metric = study.user_attrs.get("metric", "value")
    chosen, best, incumbent = record["chosen"], record["best"], record["incumbent"]
    seeds = len(plan.schedule.rungs[-1].seeds)
    tests = record.get("test_means", {})

    entrants = record.get("entrants", {})

    def about(key: str) -> str:
        e = RaceEntrant(**entrants[key]) if key in entrants else plan.entrant(key)
        assert e is not None, key
        test = f", test {tests[key]:.4f}" if key in tests else ""
        what = f"{key} ({e.method}, {format_count(e.trainable)} params, lr {e.learning_rate:.1e})"
        return f"{what}: {metric} {record['means'][key]:.4f} over {seeds} seeds{test}"

    lines = [f"race decided: recommends {about(chosen)}"]
    diff = record.get("difference")
    if diff is not None:
        low, high = (f"{x:+.4f}" if x is not None else "?" for x in diff["interval"])
        margin = f"{diff['mean']:+.4f} [95% interval {low}, {high}] over {diff['n']} paired seeds"
        if record["displaced"]:
            lines.append(f"  it beats the incumbent {about(incumbent)} by {margin}")
        elif diff["mean"] <= 0:
            lines.append(
                f"  the incumbent at its best rate beat every challenger: the best, {about(best)}, was {margin}"
            )
        else:
            lines.append(f"  the incumbent stands: the best challenger {about(best)} was {margin},")
            lines.append("  within noise (a challenger must beat it by more than 2 standard errors of the difference)")
    else:
        lines.append("  no challenger reached the final rung: the incumbent at its best rate stands")
    return lines


def describe_front(study: optuna.Study, plan: RacePlan | None = None) -> list[str]:
    """A raced front's last lines: each surviving point, smallest first, with its paired mean, test
    score and paired margin over the next smaller survivor; the points the seeds dropped."""
    record = study.user_attrs.get(FRONT_ATTR)
    if not isinstance(record, dict):
        return []
    plan = plan or RacePlan.from_record(study.user_attrs[PLAN_ATTR])
    metric = study.user_attrs.get("metric", "value")
    kept = f"{len(record['kept'])} of {len(plan.entrants)} points kept"
    lines = [f"front raced on {record['seeds']} paired seeds: {kept}"]
    for point in record["kept"]:
        e = plan.entrant(point["entrant"])
        assert e is not None, point
        test = f", test {point['test_mean']:.4f}" if point.get("test_mean") is not None else ""
        line = f"  trial {point['trial']} ({e.method}, {format_count(e.trainable)} params, lr {e.learning_rate:.1e}): "
        line += f"{metric} {point['mean']:.4f} ± {point['std']:.4f}{test}"
        diff = point.get("difference")
        if diff is not None:
            low, high = (f"{x:+.4f}" if x is not None else "?" for x in diff["interval"])
            line += f"; {diff['mean']:+.4f} [95% interval {low}, {high}] over trial {point['over']}"
        lines.append(line)
    if record["dropped"]:
        dropped = ", ".join(str(n) for n in record["dropped"])
        lines.append(f"  dropped: trial(s) {dropped} (no better than a smaller point on the paired seeds)")
    return lines
