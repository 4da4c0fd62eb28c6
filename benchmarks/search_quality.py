"""Does the search earn its cost? autopeft's search + refit against what a user would do instead.

    python benchmarks/search_quality.py                      # every task below, one after the other
    python benchmarks/search_quality.py --task subjectivity  # one task
    python benchmarks/search_quality.py --task sentiment --seeds 3 --json out.json
    python benchmarks/search_quality.py --task sentiment --arms c   # the default and AdaLoRA only
    python benchmarks/search_quality.py --task instruct --arms f --seeds 3   # issue 29's comparison

On each task, in one run, at the same full fidelity (the study's ``[final]`` epochs and examples) and
the same budget, every arm ends in configurations trained with the same new seeds and scored on the
**test** split:

- (a) the default: LoRA r=8 on query and value, alpha 16, at LoRA's default learning rate;
- (a') the default with only its learning rate searched (``--arms lr``): TPE over the rate at the
  study's fidelity and pruner, then its ``[final] top`` rates refit with 3 seeds, the whole within the
  wall time (f) took;
- (b) LoRA on every linear of every block, at the largest uniform rank that fits the budget;
- (c) AdaLoRA from the largest initial rank that fits on query and value, pruned to r=8 (the
  default's size at the end: a matched final budget);
- (d) EVA-initialised LoRA r=8 on query and value;
- (e) random search (no race, no warm starts, no proxy), the same pruner and refit, within the wall
  time (f) took;
- (f) autopeft: ``autopeft run`` on the study as shipped, which races the incumbent and the portfolio
  on paired seeds and recommends one entrant (its final rung included in its time).

The task's baselines are scored on the test split too (the majority class or answer, and for the
instruction task the untuned base model answering zero-shot). Every arm's final configuration is
then trained again with new test seeds, not counted in its cost:
``--seeds`` (default 5) paired seeds for (a), (a') and (f), the same seeds for each, and the first 3
of them for (b) to (e). Each arm's row is the mean ± sd and the median of its test metric; the paired
differences (f) - (a') and (f) - (a) come with their 95% interval (Student's t). Searches ((a'),
(e), (f)) run in a temporary copy of the study, so nothing in ``studies/`` changes. The cost of each
arm is given in full-fidelity trainings of the default: the median of its fits' wall times, as the
first fit also does the one-time work (tokenizing, warming kernels) that every later fit reuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from common import DEFAULT_LORA, STUDIES, study

from autopeft import run_study
from autopeft.methods import PeftMethod
from autopeft.outputs.confirm import confirm_seeds, refit
from autopeft.registry import ResolvedStudy
from autopeft.search.pruning import make_pruner, trial_fidelity
from autopeft.storage.results import winner
from autopeft.training.train import planned_steps
from autopeft.training.workbench import Workbench

TASKS = {
    "sentiment": STUDIES / "quickstart.toml",
    "subjectivity": STUDIES / "subjectivity.toml",
    "lm": STUDIES / "smollm2-lm.toml",
    "debates": STUDIES / "debates.toml",  # three classes, macro F1, 258 steps a training (issue 28)
    "instruct": STUDIES / "smollm2-instruct.toml",  # chat answers, exact match of greedy answers (issue 29)
}


@dataclasses.dataclass
class Arm:
    """One row of the table: the test metric of each seed, and what the arm cost in seconds."""

    name: str
    what: str
    test: list[float]
    seconds: float
    validation: list[float] = dataclasses.field(default_factory=list)
    fit_seconds: list[float] = dataclasses.field(default_factory=list)  # each fit's, for the fixed arms

    def summary(self, sign: int) -> dict[str, Any]:
        sd = statistics.stdev(self.test) if len(self.test) > 1 else 0.0
        return {
            "arm": self.name,
            "what": self.what,
            "test_mean": statistics.fmean(self.test),
            "test_sd": sd,
            "test_median": statistics.median(self.test),
            "test": self.test,
            "validation": self.validation,
            "fit_seconds": self.fit_seconds,
            "seconds": self.seconds,
        }


def _copy(path: Path, folder: Path, edit: Callable[[str], str] = lambda text: text) -> Path:
    """The study file ``path`` (and its data) copied into ``folder``, its text passed through ``edit``."""
    shutil.copytree(path.parent / "data", folder / "data", dirs_exist_ok=True)
    target = folder / path.name
    target.write_text(edit(path.read_text()))
    return target


def _fixed(
    bench: Workbench,
    name: str,
    method: PeftMethod,
    config: dict[str, Any],
    seeds: list[int],
    learning_rate: float | None = None,
) -> Arm:
    """``config`` trained once per seed at ``learning_rate`` (default: ``method``'s default), at
    ``bench``'s fidelity."""
    results, fit_seconds = [], []
    rate = method.default_learning_rate if learning_rate is None else learning_rate
    for s in seeds:
        started = time.perf_counter()
        results.append(bench.fit(method, config, learning_rate=rate, seed=s, test=True))
        fit_seconds.append(time.perf_counter() - started)
    what = f"{method.describe(config)}, {method.count_trainable(bench.ctx, config):,} params"
    test, validation = [float(r.test_metric or 0.0) for r in results], [r.metric for r in results]
    return Arm(name, what, test, sum(fit_seconds), validation, fit_seconds)


def _refit_arm(name: str, path: Path, seeds: int, searched_seconds: float, full: Workbench, test: list[int]) -> Arm:
    """``autopeft refit`` of a searched study copy with ``seeds`` seeds; its winner trained again on
    the ``test`` seeds (not counted in the arm's cost)."""
    started = time.perf_counter()
    done, _ = refit(path, seeds=seeds, quiet=True)
    chosen = winner(done)
    assert chosen is not None
    seconds = searched_seconds + time.perf_counter() - started
    a = chosen.user_attrs
    method = full.enabled[a["method"]]
    arm = _fixed(full, name, method, json.loads(a["config"]), test, a["learning_rate"])
    arm.what = f"trial {chosen.number}: {a['method']} {a['config']}, {a['trainable_params']:,} params"
    arm.what += f", lr {a['learning_rate']:.2e}"
    arm.seconds = seconds
    return arm


def _degenerate(study: optuna.Study, rung: int | None = None, by_metric: bool = False) -> tuple[int, int]:
    """(trials pruned as degenerate or completed at the baseline, trials) of a search; of a race's
    rung ``rung`` alone, when given; ``by_metric``: judging every trial by its metric, even those a
    race ranked by their validation loss."""
    from autopeft.search.racing import claim_of
    from autopeft.storage.results import Standard

    standard = Standard.of(study).by_metric() if by_metric else Standard.of(study)
    trials = [t for t in study.trials if t.state.is_finished()]
    if rung is not None:
        trials = [t for t in trials if (claim := claim_of(t.user_attrs)) is not None and claim.rung == rung]
    bad = [t for t in trials if "degenerate" in str(t.user_attrs.get("pruned_reason", "")) or standard.at_baseline(t)]
    return len(bad), len(trials)


def _learning_rate_only(
    resolved: ResolvedStudy, bench: Workbench, seconds: float, training: float, full: Workbench, test_seeds: list[int]
) -> Arm:
    """(a'): the default LoRA with only its learning rate searched (TPE, the study's pruner) while
    the time left holds its refit, then the ``[final] top`` rates refit with 3 new seeds; the winner
    (the best refit mean on validation) is trained again on ``test_seeds``."""
    config = resolved.config
    method = bench.enabled["lora"]
    lora = {"ranks": [8] * len(bench.ctx.blocks), **DEFAULT_LORA}
    rates = config.learning_rate_for("lora", method.learning_rates)
    low, high = rates if isinstance(rates, tuple) else (rates, rates)
    total = planned_steps(bench.data.train, config.train)
    sign = 1 if resolved.directions[0] == "maximize" else -1
    direction = optuna.study.StudyDirection.MAXIMIZE if sign > 0 else optuna.study.StudyDirection.MINIMIZE
    search = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=config.study.seed),
        pruner=make_pruner(config, total),
    )
    fidelity = trial_fidelity(config, total)
    started = time.perf_counter()
    search.enqueue_trial({"lr": method.default_learning_rate})
    refit_seconds = config.final.top * 3 * training
    while time.perf_counter() - started + refit_seconds < seconds or not search.trials:
        trial = search.ask()
        lr = trial.suggest_float("lr", low, high, log=True)

        def report(step: int, value: float, trial: optuna.Trial = trial) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        result = bench.fit(
            method, lora, learning_rate=lr, seed=config.study.seed + trial.number, fidelity=fidelity, on_report=report
        )
        if result.stopped_at is not None:
            search.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            search.tell(trial, result.metric)
    complete = [t for t in search.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = sorted(complete, key=lambda t: -sign * float(t.value or 0.0))[: config.final.top]
    best: tuple[float, float] | None = None
    for t in top:
        results = [
            full.fit(method, lora, learning_rate=t.params["lr"], seed=s)
            for s in confirm_seeds(config.study.seed, t.number, 3)
        ]
        mean = statistics.fmean(r.metric for r in results)
        if best is None or sign * mean > sign * best[0]:
            best = (mean, t.params["lr"])
    assert best is not None
    spent = time.perf_counter() - started
    arm = _fixed(full, "(a') learning rate only", method, lora, test_seeds, best[1])
    arm.what = f"lora r=8 query+value, lr {best[1]:.2e} ({len(search.trials)} trials)"
    arm.seconds = spent
    return arm


def _raced(path: Path, full: Workbench, test_seeds: list[int], extra: dict[str, Any]) -> Arm:
    """(f): ``autopeft run`` on the study as shipped (the race), its recommendation trained again on
    ``test_seeds``; the arm's cost is the run's wall time."""
    from autopeft.search.racing import DECISION_ATTR, PLAN_ATTR, RaceEntrant, RacePlan

    started = time.perf_counter()
    raced = run_study(path, quiet=True)
    seconds = time.perf_counter() - started
    plan = RacePlan.from_record(raced.user_attrs[PLAN_ATTR])
    decided = raced.user_attrs[DECISION_ATTR]
    # The decision records every finalist, structure trials too, which are not among the plan's entrants.
    chosen = RaceEntrant(**decided["entrants"][decided["chosen"]])
    extra["f_degenerate"] = _degenerate(raced)
    extra["f_degenerate_by_rung"] = [_degenerate(raced, r) for r in range(len(plan.schedule.rungs))]
    extra["f_degenerate_by_metric"] = _degenerate(raced, by_metric=True)
    extra["f_decision"] = decided
    extra["f_plan_cost"] = plan.schedule.cost
    arm = _fixed(
        full, "(f) autopeft race", full.enabled[chosen.method], chosen.config, test_seeds, chosen.learning_rate
    )
    arm.what = f"{chosen.key}: {arm.what}" + (" (displaced the incumbent)" if decided["displaced"] else "")
    arm.seconds = seconds
    return arm


#: The arms besides the default, which always runs (its training time is the unit of cost).
ARMS = ("f", "lr", "b", "c", "d", "e")


def _random_search(
    path: Path,
    folder: Path,
    seconds: float,
    training: float,
    extra: dict[str, Any],
    full: Workbench,
    test: list[int],
    seeds: int = 3,
) -> Arm:
    """(e): random search (no race, no warm starts, no proxy), the same pruner, while the time left
    holds its refit (``[final] top`` trials x ``seeds``), then that refit."""
    rand = _copy(
        path,
        folder / "e",
        lambda text: text.replace('sampler = "tpe"', 'sampler = "random"').replace(
            "[search]\n", "[search]\nproxy = false\nrace = false\n", 1
        ),
    )
    started = time.perf_counter()
    n = 0
    random_study = None
    refit_seconds = study(rand).config.final.top * seeds * training
    while time.perf_counter() - started + refit_seconds < seconds or n == 0:
        n += 1
        random_study = run_study(rand, n_trials=n, quiet=True)
    extra["e_trials"] = n
    extra["e_degenerate"] = _degenerate(random_study) if random_study else None
    spent = time.perf_counter() - started
    return _refit_arm("(e) random search, same wall time + refit", rand, seeds, spent, full, test)


def _test_baselines(full: Workbench) -> dict[str, float]:
    """The task's baselines on the test split (the majority class or answer; the untuned base model
    where the task scores it), name -> value: what every arm's test score must beat."""
    data, metric = full.data, full.config.task.metric
    if data.test is None:
        return {}
    found = [
        full.task.baseline(data.train, data.test, metric),
        full.task.model_baseline(full.base, data.test, metric, full.evaluation),
    ]
    return {name: value for name, value in (f for f in found if f is not None)}


def paired(a: list[float], b: list[float], sign: int) -> dict[str, float]:
    """The paired difference ``a - b`` seed by seed, in the metric's better direction: mean, sd and
    the 95% interval (Student's t with n - 1 degrees of freedom)."""
    from scipy.stats import t as student

    diffs = [sign * (x - y) for x, y in zip(a, b)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(student.ppf(0.975, len(diffs) - 1)) * sd / len(diffs) ** 0.5
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": len(diffs)}


def run_task(task: str, seeds: int, which: tuple[str, ...] = ARMS) -> dict[str, Any]:
    path = TASKS[task]
    resolved = study(path)
    config = resolved.config
    sign = 1 if resolved.directions[0] == "maximize" else -1
    full = Workbench(ResolvedStudy(config.at_final_fidelity(), resolved.task, resolved.pm))
    bench = Workbench(resolved)
    test_seeds = confirm_seeds(config.study.seed, 10_000, seeds)  # new seeds, the same for every arm
    few = test_seeds[:3]  # (b) to (e)
    blocks = len(full.ctx.blocks)
    chosen = set(which)
    arms: list[Arm] = []
    default = _fixed(full, "(a) default", full.enabled["lora"], {"ranks": [8] * blocks, **DEFAULT_LORA}, test_seeds)
    arms.append(default)
    # One full-fidelity training of the default: the median fit, as the first also tokenizes the data
    # and warms the kernels once for every fixed arm after it.
    training = statistics.median(default.fit_seconds)
    extra: dict[str, Any] = {"full_training_seconds": training, "default_fit_seconds": default.fit_seconds}
    extra["test_baselines"] = _test_baselines(full)

    with tempfile.TemporaryDirectory() as folder:
        # (f) the race; (a') and (e) get its wall time
        raced = _raced(_copy(path, Path(folder) / "f"), full, test_seeds, extra)
        search_seconds = raced.seconds
        extra["f_seconds"] = search_seconds
        if "f" in chosen:
            arms.append(raced)

        # (a') the learning rate alone, same wall time
        if "lr" in chosen:
            arms.append(_learning_rate_only(resolved, bench, search_seconds, training, full, test_seeds))

        # (b) LoRA on all linears at the largest uniform rank that fits
        lora = full.enabled["lora"]
        fits = [
            r
            for r in range(1, 257)
            if lora.count_trainable(full.ctx, {"ranks": [r] * blocks, **DEFAULT_LORA, "targets": "all"}) <= full.budget
        ]
        if fits and "b" in chosen:
            config_b = {"ranks": [max(fits)] * blocks, **DEFAULT_LORA, "targets": "all"}
            arms.append(_fixed(full, "(b) LoRA on all linears", lora, config_b, few))

        # (c) AdaLoRA: the largest init_r on query+value that fits, pruned to the default's r=8
        from autopeft_plugins.adalora import AdaLora
        from autopeft_plugins.eva import EvaLora

        adalora = AdaLora()
        inits = [
            r
            for r in range(8, 65)
            if adalora.count_trainable(full.ctx, {"init_r": r, "target_r": 8, "targets": "query+value"}) <= full.budget
        ]
        if inits and "c" in chosen:
            config_c = {"init_r": max(inits), "target_r": 8, "targets": "query+value"}
            arms.append(_fixed(full, "(c) AdaLoRA", adalora, config_c, few))
        # (d) EVA LoRA r=8 query+value
        if "d" in chosen:
            config_d = {"ranks": [8] * blocks, **DEFAULT_LORA}
            arms.append(_fixed(full, "(d) EVA LoRA", EvaLora(), config_d, few))

        # (e) random search for as long as (f) searched
        if "e" in chosen:
            arms.append(_random_search(path, Path(folder), search_seconds, training, extra, full, few))

    rows = [arm.summary(sign) for arm in arms]
    for row in rows:
        row["trainings"] = row["seconds"] / training
    by_arm = {row["arm"][:4]: row["test"] for row in rows}
    for other in ("(a')", "(a) "):
        if "(f) " in by_arm and other in by_arm:
            extra[f"f_minus_{other.strip('() ')}"] = paired(by_arm["(f) "], by_arm[other], sign)
    return {
        "task": task,
        "study": str(path.relative_to(STUDIES.parent)),
        "metric": config.task.metric,
        "rows": rows,
        **extra,
    }


def print_table(result: dict[str, Any]) -> None:
    metric = result["metric"]
    print(f"\n### {result['task']} ({result['study']}; test {metric}, {len(result['rows'][0]['test'])} seeds)\n")
    print(f"| arm | configuration | test {metric} mean ± sd | median | cost (default trainings) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in result["rows"]:
        print(
            f"| {r['arm']} | {r['what']} | {r['test_mean']:.4f} ± {r['test_sd']:.4f} | {r['test_median']:.4f} | "
            f"{r['trainings']:.1f} |"
        )
    for key, name in (("f_minus_a'", "(f) - (a')"), ("f_minus_a", "(f) - (a)")):
        if key in result:
            d = result[key]
            print(
                f"| {name} | paired, {d['n']} seeds | {d['mean']:+.4f} ± {d['sd']:.4f} | "
                f"95% [{d['low']:+.4f}, {d['high']:+.4f}] | |"
            )
    notes = [f"one full-fidelity training of the default: {result['full_training_seconds']:.1f} s"]
    if result.get("test_baselines"):
        notes.append("test baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in result["test_baselines"].items()))
    if result.get("f_degenerate"):
        notes.append("(f) degenerate trials {} of {}".format(*result["f_degenerate"]))
    if result.get("f_degenerate_by_metric"):
        notes.append("by the metric alone {} of {}".format(*result["f_degenerate_by_metric"]))
    if result.get("f_degenerate_by_rung"):
        notes.append("by rung: " + ", ".join("{} of {}".format(*d) for d in result["f_degenerate_by_rung"]))
    if "e_trials" in result:
        notes.append(f"(e) ran {result['e_trials']} trials")
    if result.get("e_degenerate"):
        notes.append("(e) degenerate {} of {}".format(*result["e_degenerate"]))
    if "f_plan_cost" in result:
        notes.append(f"(f) planned {result['f_plan_cost']:.1f} trainings")
    print("\n" + "; ".join(notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), action="append", help="repeat for several; default: all")
    parser.add_argument("--seeds", type=int, default=5, help="paired test seeds of (a), (a') and (f); (b)-(e) take 3")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"besides the default (a), a comma-separated subset of {','.join(ARMS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for task in args.task or list(TASKS):
        started = time.perf_counter()
        results.append(run_task(task, args.seeds, tuple(args.arms.split(","))))
        results[-1]["seconds"] = time.perf_counter() - started
        print_table(results[-1])
        print(f"({task}: {results[-1]['seconds'] / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
