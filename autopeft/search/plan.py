"""``autopeft plan``: what a study would search, without training anything.

Shows the blocks and sub-modules discovered in the model, each method's smallest and largest
configuration, how much of each method's space fits the budget (before and after autopeft shapes
the sampling to it), and the size of each method's default configuration. It loads the model and
the data, so it also checks the study file end to end in seconds.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from autopeft.config import StudyConfig
from autopeft.storage.results import describe_baselines

if TYPE_CHECKING:
    from autopeft.registry import ResolvedStudy
    from autopeft.training.workbench import Workbench

__all__ = ["make_plan", "format_plan"]


class _RandomTrial:
    """Uniform draws for the ``suggest_*`` calls methods make: Optuna's ask/tell costs ~1 ms a
    sample, this costs microseconds, and the shares need hundreds of samples per method."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._rng.randrange(low, high + 1, step)

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return math.exp(self._rng.uniform(math.log(low), math.log(high))) if log else self._rng.uniform(low, high)


def _fit_shares(bench: Workbench, name: str, samples: int) -> tuple[float, float]:
    """(share of unshaped samples that fit, share of shaped samples that fit) for one method."""
    from autopeft.training.workbench import UNBOUNDED

    method, options, ctx = bench.enabled[name], bench.options[name], bench.ctx
    fits = [0, 0]
    for shaped, budget in enumerate((UNBOUNDED, bench.budget)):
        trial: Any = _RandomTrial(random.Random(shaped))
        for _ in range(samples):
            config = method.suggest(trial, ctx, options, budget)
            fits[shaped] += method.count_trainable(ctx, config) <= bench.budget
    return fits[0] / samples, fits[1] / samples


def make_plan(
    study: StudyConfig | ResolvedStudy, pm: pluggy.PluginManager | None = None, samples: int = 1000
) -> dict[str, Any]:
    """The plan of a study as a JSON-able dict (see the module docstring); ``pm``: the plugins to
    resolve a loaded study file against (the installed ones by default)."""
    from autopeft.registry import resolve_study
    from autopeft.search.search_space import SearchSpace
    from autopeft.training.workbench import UNBOUNDED, Workbench

    resolved = resolve_study(study, pm) if isinstance(study, StudyConfig) else study
    bench = Workbench(resolved, write_cache=False)
    space = SearchSpace(bench)
    ctx = bench.ctx
    methods = []
    for name, method in bench.enabled.items():
        options = bench.options[name]
        warm = method.warm_start(ctx, options)
        default = None
        if warm is not None:
            default = method.count_trainable(ctx, space.config_of({"method": name, **warm}, UNBOUNDED)[1])
        unshaped, shaped = _fit_shares(bench, name, samples)
        methods.append(
            {
                "method": name,
                "smallest": method.count_trainable(ctx, method.smallest(ctx, options)),
                "largest": method.count_trainable(ctx, method.largest(ctx, options)),
                "default": default,
                "default_fits": default is not None and default <= bench.budget,
                "share_fitting_unshaped": unshaped,
                "share_fitting_sampled": shaped,
                "learning_rate": space.rates(name),
                "enabled": name in bench.methods,
                "skipped": bench.skipped.get(name),
            }
        )
    return {
        "model": bench.config.model.name,
        "task": {
            "type": bench.config.task.type,
            "metric": bench.config.task.metric,
            "metric_meaning": _METRIC_MEANING.get(bench.config.task.metric, ""),
            "classes": bench.data.label_names,
            "baseline": bench.baseline,
        },
        "no_fit": bench.no_fit(),
        "total_params": ctx.total_params,
        "budget": bench.budget,
        "budget_share": bench.budget / ctx.total_params,
        "head": {"modules": ctx.head, "params": ctx.head_params},
        "blocks": [
            {
                "index": b.index,
                "path": b.path,
                "params": sum(b.params.values()),
                "groups": {g: paths for g, paths in b.groups.items()},
            }
            for b in ctx.blocks
        ],
        "methods": methods,
        "objectives": bench.config.objectives,
        "samples": samples,
        "race": _race(space),
    }


def _race(space: Any) -> dict[str, Any] | None:
    """The race ``autopeft run`` would run (without the proxy's candidate, whose ranks come from
    gradients the run computes), or None where the study is not raced."""
    from autopeft.errors import ConfigError
    from autopeft.search.racing import make_race_plan
    from autopeft.search.study import races, races_front
    from autopeft.training.train import planned_steps

    bench = space.bench
    if races_front(bench.config):
        return {"front": {"n_trials": bench.config.study.n_trials, "seeds": max(3, bench.config.final.seeds)}}
    if not races(bench.config) or bench.no_fit() is not None:
        return None
    steps = planned_steps(bench.data.train, bench.config.at_final_fidelity().train)
    try:
        plan = make_race_plan(space, bench.config.search.trainings, steps)
    except ConfigError as exc:
        return {"error": str(exc)}
    record = plan.as_record()
    for rung, row in enumerate(record["rungs"]):
        row["steps"] = plan.steps(rung)
    for entrant in record["entrants"]:
        entrant["describe"] = bench.enabled[entrant["method"]].describe(json.loads(entrant["config_json"]))
    return record | {"cost": plan.cost}


_METRIC_MEANING = {
    "f1": "F1 of the second class (in label order) with two classes, macro-averaged over classes with more",
    "macro_f1": "F1 averaged over classes, each class counting the same",
    "mcc": "Matthews correlation coefficient, 0 for a constant predictor",
    "entity_f1": "F1 of whole entities (IOB tags), micro-averaged, as named-entity recognition is scored",
}


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    from autopeft.budget import format_count

    task = plan["task"]
    classes = task["classes"]
    metric = task["metric"] + (f" ({task['metric_meaning']})" if task["metric_meaning"] else "")
    baseline = task["baseline"]
    lines = [
        f"model {plan['model']}: {format_count(plan['total_params'])} parameters; budget "
        f"{format_count(plan['budget'])} ({100 * plan['budget_share']:.3g}%); "
        f"objectives {', '.join(plan['objectives'])}",
        f"task {task['type']}"
        + (f": {len(classes)} classes ({', '.join(map(str, classes))})" if classes else "")
        + f"; metric {metric}"
        + (f"; {describe_baselines(baseline)}" if baseline else ""),
        f"head: {', '.join(plan['head']['modules'])} ({format_count(plan['head']['params'])})"
        if plan["head"]["modules"]
        else "head: none new (the model's own output layer stays frozen)",
        f"{len(plan['blocks'])} blocks:",
    ]
    for b in plan["blocks"]:
        groups = "; ".join(f"{g}: {', '.join(p)}" for g, p in b["groups"].items())
        lines.append(f"  {b['index']:>3} {b['path']} ({format_count(b['params'])})  {groups}")
    lines.append(
        f"{'method':<10} {'smallest':>9} {'largest':>9} {'default':>9} {'learning rate':>15}  "
        "fits budget (space / as sampled)"
    )
    for m in plan["methods"]:
        default = "-" if m["default"] is None else format_count(m["default"]) + ("" if m["default_fits"] else "!")
        note = "" if m["enabled"] else f"  (skipped: {m.get('skipped') or 'smallest exceeds the budget'})"
        lr = m["learning_rate"]
        rate = f"{lr:.0e}" if isinstance(lr, float) else f"{lr[0]:.0e}..{lr[1]:.0e}"
        lines.append(
            f"{m['method']:<10} {format_count(m['smallest']):>9} {format_count(m['largest']):>9} {default:>9} "
            f"{rate:>15}  "
            f"{100 * m['share_fitting_unshaped']:5.1f}% / {100 * m['share_fitting_sampled']:5.1f}%{note}"
        )
    lines.append(f"(shares from {plan['samples']} random samples per method; ! = default exceeds the budget)")
    return "\n".join(lines + _race_lines(plan.get("race")))


def _race_lines(race: dict[str, Any] | None) -> list[str]:
    from autopeft.budget import format_count

    if race is None:
        return ["no race: [search] race = false: the sampler runs n_trials trials"]
    if "front" in race:
        front = race["front"]
        return [
            f"search: the sampler runs {front['n_trials']} trials; then its Pareto front races: every point "
            f"trained again on the same {front['seeds']} paired seeds at the final fidelity, kept only if it "
            "beats every smaller point that stays"
        ]
    if "error" in race:
        return [f"race: {race['error']}"]
    lines = [f"race: {len(race['entrants'])} entrants, {race['cost']:.1f} of {race['budget']:g} full trainings"]
    tiers = {-1: " (below the prior)", 0: " (the prior)", 1: " (above the prior)"}
    bracketed = Counter(e["candidate"] for e in race["entrants"])  # a rate the study fixed has no bracket
    for e in race["entrants"]:
        mark = "  (incumbent)" if e["incumbent"] else ""
        tier = tiers.get(e.get("tier", 0), "") if bracketed[e["candidate"]] > 1 else ""
        lines.append(
            f"  {e['key']:<22} {e['method']} {e['describe']}, {format_count(e['trainable'])} params, "
            f"lr {e['learning_rate']:.1e}{tier}{mark}"
        )
    for i, r in enumerate(race["rungs"], 1):
        cost = r["entrants"] * r["seeds"] * r["fraction"]
        lines.append(
            f"  rung {i}: {r['entrants']} entrants x {r['seeds']} paired seed(s) at {r['steps']} steps "
            f"({r['fraction']:.3g} of a training): {cost:.1f} trainings"
            + (", cut within rate tiers" if r["fraction"] < 1 else "")
        )
        if i == 1 and race.get("structure"):
            lines.append(
                f"    + {race['structure']} structure trials: LoRA drawn near the best LoRA entrant at the prior "
                f"(targets, rank, where the rank goes), at its rate: {race['structure'] * r['fraction']:.1f} trainings"
            )
    lines.append(
        "  the final rung adds the incumbent at its prior rate and decides the rates at full fidelity; "
        "a challenger must beat the incumbent at its best rate by 2 standard errors"
    )
    return lines
