"""The race on a study: its plan, which training each worker takes next, and the decision at the end.

``autopeft run`` on a study with ``[search] race = true`` (the default) plans a race of the
incumbent and the portfolio (:mod:`autopeft.search.portfolio`), each candidate at the rates of its
bracket, within ``[search] trainings`` full trainings (:func:`autopeft.search.race.plan_race`), and
runs it as Optuna trials. Every training of the race is one trial with a ``race`` attribute naming
its rung, entrant and paired seed, so ``autopeft trials``, the report and export read it like any
other trial, and the storage is the race's only state:

- the plan is written into the study once (``race_plan``) and read back by every worker, so
  workers that start together race the same entrants;
- the members of a rung follow from the scores of the rung below, which every worker reads from the
  storage; a worker takes the first member and seed of the lowest unfinished rung that no trial
  holds (:meth:`RaceState.next_claim`), and of two that take the same one at once the later gives way;
- a trial that failed (a dead worker, an interrupt) is retried with its ``race`` attribute; a
  member that failed more often than the storage retries is scored as the metric's worst;
- a race stopped halfway therefore resumes where it stopped: finished trainings are kept.

The decision (:func:`autopeft.search.race.decide`) is recorded as ``race_decision``, and the
study's winner (:func:`autopeft.storage.results.winner`) is the chosen entrant's first final trial.

A two-objective study races its front instead (:func:`make_front_plan`): once its search has
finished, every Pareto-front trial is trained again at the final fidelity on the same paired seeds,
and only the points that survive them (:func:`autopeft.search.race.front_survivors`) stay on the
front, recorded as ``front_decision``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import ConfigError
from autopeft.search.coordination import Surplus
from autopeft.search.portfolio import PORTFOLIO, Candidate, catalogue, incumbent, rate_prior, structure_config
from autopeft.search.race import (
    Decision,
    Rung,
    Schedule,
    decide,
    front_survivors,
    paired_difference,
    plan_race,
    rank,
    rate_bracket,
)
from autopeft.storage.backends import MAX_RETRIES
from autopeft.storage.results import FINISHED, FRONT_ATTR, SCORED_BY_ATTR
from autopeft.training.train import FULL, Fidelity

if TYPE_CHECKING:
    from autopeft.search.search_space import SearchSpace

__all__ = [
    "DECISION_ATTR",
    "FRONT_ATTR",
    "PLAN_ATTR",
    "RACE_ATTR",
    "Claim",
    "claim_of",
    "RaceEntrant",
    "RacePlan",
    "RaceState",
    "RaceTurn",
    "make_front_plan",
    "make_race_plan",
    "race_seed",
    "race_training",
    "tier_order",
]

#: A race trial's user attribute: {"rung", "entrant", "seed"} (the seed's index among the paired seeds).
RACE_ATTR = "race"
#: The study's user attribute holding the race's plan (:meth:`RacePlan.as_record`).
PLAN_ATTR = "race_plan"
#: The study's user attribute holding the decision (:meth:`RaceState.decision_record`).
DECISION_ATTR = "race_decision"

#: Rates in each candidate's bracket, and how far apart (a factor): the prior, half and twice it
#: (benchmarks/README.md, "Rates race at full fidelity": three times the prior collapsed to the majority
#: class for five of six LoRA candidates on sentiment and three of five on subjectivity; twice it less
#: often, and half the prior beat a third of it).
BRACKET_SIZE, BRACKET_SPREAD = 3, 2.0
#: Each rung keeps the best 1/ETA of its entrants and trains ETA times longer than the one below.
ETA = 3
#: What the rungs below the final rank by: the validation loss, which moves before the metric does
#: (benchmarks/README.md, "How early a rung ranks like a full training"); the final rung, by the metric.
SHORT_RUNGS = "loss"
#: At most this many structure trials (:func:`~autopeft.search.portfolio.structure_config`) join the
#: first rung, as the budget left after the planned race allows: their candidate name, and their keys'
#: prefix ("search-1", ...).
MAX_STRUCTURE, STRUCTURE = 6, "search"
#: The shortest rung, as a share of a full training (benchmarks/README.md, "How early a rung ranks like a
#: full training"): on the sentiment task a ninth of a training (5 steps) ranked by the metric at random
#: (Spearman +0.04) and by the loss with a bias to the highest rates, whose loss falls first and which
#: then diverge (its best entrant by the loss was 13th of 21 at full fidelity); a third (16 steps)
#: ranked by the loss at +0.73 and kept the full top three.
MIN_FRACTION = 1 / 3


def race_seed(study_seed: int, index: int) -> int:
    """The ``index``-th paired seed: every entrant trains with it, distinct from search trials' seeds."""
    return study_seed + 7_000 + index


@dataclass(frozen=True)
class RaceEntrant:
    """A candidate at one rate of its bracket: what a race trial trains."""

    key: str  # "lora-all@9.0e-03"
    candidate: str
    method: str
    config_json: str
    learning_rate: float
    trainable: int
    incumbent: bool
    tier: int = 0  # its rate's place in its bracket: 0 the prior, -1 the rate below it, 1 the one above

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.config_json))


def tier_order(tier: int) -> tuple[int, int]:
    """The order in which the rate tiers fill a cut: the prior first, then below it, then above it
    (benchmarks/README.md, "Rates race at full fidelity"): at full fidelity the prior was the best
    rate of most LoRA candidates on both tasks measured, the rate below it mostly second, and the
    rate above it collapsed to the majority class on some seeds."""
    return abs(tier), tier


@dataclass(frozen=True)
class Claim:
    """One training the race needs: ``entrant`` at rung ``rung`` with paired seed number ``seed``."""

    rung: int
    entrant: str
    seed: int

    def as_record(self) -> dict[str, Any]:
        return {"rung": self.rung, "entrant": self.entrant, "seed": self.seed}


@dataclass(frozen=True)
class RacePlan:
    """The race planned before its first training: entrants (incumbent's first), rungs, and the
    optimizer steps of a full training that the rungs' shares are of."""

    entrants: tuple[RaceEntrant, ...]
    schedule: Schedule
    total_steps: int
    budget: float
    seed: int  # the study's [study] seed, from which the paired seeds follow
    short_rungs: str = "loss"  # what the rungs below the final rank by: "loss" (validation) or "metric"
    kind: str = "portfolio"  # or "front": a two-objective study's front, raced on its paired seeds
    structure: int = 0  # structure trials that join the first rung, drawn once the portfolio's have run

    @property
    def cost(self) -> float:
        """The race's cost in full trainings: its rungs', and the structure trials' on the first rung."""
        return self.schedule.cost + self.structure * self.schedule.rungs[0].fraction

    def slots(self) -> list[str]:
        """The structure trials' entrant keys."""
        return [f"{STRUCTURE}-{i + 1}" for i in range(self.structure)]

    def steps(self, rung: int) -> int:
        """Optimizer steps of a training at rung ``rung``."""
        return max(1, round(self.schedule.rungs[rung].fraction * self.total_steps))

    def entrant(self, key: str) -> RaceEntrant | None:
        """The planned entrant ``key`` (None for a structure trial's key, or another)."""
        return next((e for e in self.entrants if e.key == key), None)

    def as_record(self) -> dict[str, Any]:
        rungs = [{"fraction": r.fraction, "seeds": len(r.seeds), "entrants": r.entrants} for r in self.schedule.rungs]
        return {
            "entrants": [asdict(e) for e in self.entrants],
            "rungs": rungs,
            "total_steps": self.total_steps,
            "budget": self.budget,
            "seed": self.seed,
            "short_rungs": self.short_rungs,
            "kind": self.kind,
            "structure": self.structure,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RacePlan:
        rungs = tuple(Rung(r["fraction"], tuple(range(r["seeds"])), r["entrants"]) for r in record["rungs"])
        entrants = tuple(RaceEntrant(**e) for e in record["entrants"])
        short, kind = str(record.get("short_rungs", "metric")), str(record.get("kind", "portfolio"))
        budget, seed, structure = float(record["budget"]), int(record["seed"]), int(record.get("structure", 0))
        return cls(entrants, Schedule(rungs), int(record["total_steps"]), budget, seed, short, kind, structure)


def _entrants(space: SearchSpace, candidate: Candidate, steps: int, is_incumbent: bool) -> list[RaceEntrant]:
    method = space.bench.enabled[candidate.method]
    rates, prior = space.rates(candidate.method), rate_prior(candidate, steps)
    if isinstance(rates, float):  # the study file fixed the rate: one entrant
        bracket: tuple[float, ...] = (rates,)
    else:
        bracket = rate_bracket(prior, BRACKET_SIZE, BRACKET_SPREAD, *rates)
    scale = method.learning_rate_scale(candidate.config)
    # a rate's tier is its place in the bracket counted from the rate nearest the prior, so that a rate
    # clipped to the study's range keeps its side of the prior
    middle = min(range(len(bracket)), key=lambda i: abs(math.log(bracket[i] / prior)))
    return [
        RaceEntrant(
            f"{candidate.name}@{rate * scale:.1e}",
            candidate.name,
            candidate.method,
            candidate.config_json,
            rate * scale,
            candidate.trainable,
            is_incumbent,
            i - middle,
        )
        for i, rate in enumerate(bracket)
    ]


def make_race_plan(
    space: SearchSpace,
    budget: float,
    total_steps: int,
    proxy_blocks: list[float] | None = None,
    first: list[Candidate] | None = None,
) -> RacePlan:
    """The incumbent's bracket and as many of the other candidates (``first``, another study's front
    (:func:`~autopeft.search.portfolio.from_front`), then the portfolio's in :data:`PORTFOLIO`'s
    order; whole brackets) as a race within ``budget`` full trainings holds.

    Raises:
        ConfigError: not even the incumbent's bracket can race within the budget (the fix names the
            least budget that can).
    """
    others = {c.name: c for c in catalogue(space, proxy_blocks) if c.name != "incumbent"}
    typed = incumbent(space)
    chosen = [c for c in first or [] if c.config_json != typed.config_json]
    chosen += [
        others[n] for n in PORTFOLIO if n in others and others[n].config_json not in {c.config_json for c in chosen}
    ]
    config = space.bench.config
    seeds = max(3, config.final.seeds)
    base = _entrants(space, typed, total_steps, True)
    while True:
        entrants = base + [e for c in chosen for e in _entrants(space, c, total_steps, False)]
        try:
            schedule = plan_race(len(entrants), budget, ETA, seeds, MIN_FRACTION)
        except ValueError as exc:
            if chosen:
                chosen.pop()
                continue
            raise ConfigError(
                "search.trainings", f"{exc}", "raise [search] trainings, or set [search] race = false"
            ) from None
        structure = 0
        if len(schedule.rungs) > 1 and any(e.method == "lora" for e in entrants):  # room left on the first rung
            structure = min(MAX_STRUCTURE, int((budget - schedule.cost + 1e-9) / schedule.rungs[0].fraction))
        return RacePlan(
            tuple(entrants), schedule, total_steps, budget, config.study.seed, SHORT_RUNGS, structure=structure
        )


def make_front_plan(front: list[FrozenTrial], seeds: int, study_seed: int, total_steps: int) -> RacePlan:
    """The race of a two-objective study's Pareto front: each point (``front``, its search trials) an
    entrant keyed ``trial N``, one rung at the final fidelity with ``seeds`` paired seeds."""
    entrants = tuple(
        RaceEntrant(
            f"trial {t.number}",
            "front",
            str(t.user_attrs["method"]),
            str(t.user_attrs["config"]),
            float(t.user_attrs["learning_rate"]),
            int(t.user_attrs["trainable_params"]),
            False,
        )
        for t in front
    )
    schedule = Schedule((Rung(1.0, tuple(range(seeds)), len(entrants)),))
    return RacePlan(entrants, schedule, total_steps, schedule.cost, study_seed, "metric", "front")


class RaceState:
    """The race as the storage holds it: each entrant's scores by rung and seed, from ``trials``.

    ``sign`` is 1 where the metric is maximized, -1 where minimized; ``worst`` the metric of a
    training that could not finish (a non-finite loss, or failed more often than retried). A rung
    that ranks by the validation loss holds it as ``-sign * loss``, so that one ``sign`` ranks
    every rung.
    """

    def __init__(self, plan: RacePlan, trials: list[FrozenTrial], sign: int, worst: float) -> None:
        self.plan, self.sign, self.worst = plan, sign, worst
        self.scores: list[dict[str, dict[int, float]]] = [{} for _ in plan.schedule.rungs]
        self.final_trials: dict[str, list[int]] = {}
        self.test: dict[str, list[float]] = {}
        self.held: set[Claim] = set()
        self.structure: dict[str, RaceEntrant] = {}  # the structure trials drawn so far, from their trials
        failures: dict[Claim, int] = {}
        slots = set(plan.slots())
        for t in trials:
            claim = claim_of(t.user_attrs)
            if claim is None or claim.rung >= len(self.scores):
                continue
            a = t.user_attrs
            if claim.rung == 0 and claim.entrant in slots and t.state in FINISHED and "config" in a:
                self.structure.setdefault(
                    claim.entrant,
                    RaceEntrant(
                        claim.entrant,
                        STRUCTURE,
                        a["method"],
                        a["config"],
                        a["learning_rate"],
                        a["trainable_params"],
                        False,
                    ),
                )
            if t.state == TrialState.COMPLETE and t.values is not None:
                self._score(claim, self._value(claim.rung, t), t)
            elif t.state == TrialState.PRUNED:
                self._score(claim, self._worst(claim.rung), t)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                self.held.add(claim)
            elif t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
                failures[claim] = failures.get(claim, 0) + 1
        for claim, count in failures.items():
            if count > MAX_RETRIES and claim not in self.held:
                self._score(claim, self._worst(claim.rung), None)

    def entrant(self, key: str) -> RaceEntrant | None:
        """Entrant ``key``: planned, or a structure trial drawn (None for one not drawn yet)."""
        return self.structure.get(key) or self.plan.entrant(key)

    def around(self) -> RaceEntrant | None:
        """The planned LoRA entrant at the prior rate (its bracket's tier 0) with the best first-rung
        score, which structure trials are drawn around; None until every planned entrant has run the
        first rung."""
        planned = [e.key for e in self.plan.entrants]
        if not all(0 in self.scores[0].get(k, {}) for k in planned):
            return None
        at_prior = self._first_tier([e for e in self.plan.entrants if e.method == "lora"])
        lora = {e.key: self.scores[0][e.key] for e in at_prior}
        ranked = rank(lora, (0,), self.sign)
        return self.plan.entrant(ranked[0]) if ranked else None

    def _by_loss(self, rung: int) -> bool:
        return self.plan.short_rungs == "loss" and rung < len(self.plan.schedule.rungs) - 1

    def _value(self, rung: int, trial: FrozenTrial) -> float:
        loss = trial.user_attrs.get("validation_loss")
        if not self._by_loss(rung):
            return float(trial.values[0])
        return -self.sign * float(loss) if isinstance(loss, (int, float)) else self._worst(rung)

    def _worst(self, rung: int) -> float:
        return -self.sign * math.inf if self._by_loss(rung) else self.worst

    def _score(self, claim: Claim, value: float, trial: FrozenTrial | None) -> None:
        by_seed = self.scores[claim.rung].setdefault(claim.entrant, {})
        if claim.seed in by_seed:  # a duplicate of two workers' simultaneous claims: the first counts
            return
        by_seed[claim.seed] = value
        if trial is not None and claim.rung == len(self.scores) - 1:
            self.final_trials.setdefault(claim.entrant, []).append(trial.number)
            if isinstance(test := trial.user_attrs.get("test_metric"), float):
                self.test.setdefault(claim.entrant, []).append(test)

    def members(self, rung: int) -> list[str] | None:
        """The entrants of ``rung``, or None while the rung below has not finished."""
        rungs = self.plan.schedule.rungs
        if rung == 0:
            return [e.key for e in self.plan.entrants] + self.plan.slots()
        below = self.members(rung - 1)
        if below is None or not self._complete(rung - 1, below):
            return None
        ranked = rank({k: self.scores[rung - 1][k] for k in below}, rungs[rung - 1].seeds, self.sign)
        if rungs[rung - 1].fraction < 1:
            ranked = self._by_tier(ranked)
        wanted = rungs[rung].entrants
        if rung < len(rungs) - 1:
            return ranked[:wanted]
        best_incumbent = self._best_incumbent_below(rung)
        top = [k for k in ranked if k != best_incumbent][: wanted - 1]
        return [best_incumbent, *top]

    def _tier(self, key: str) -> int:
        entrant = self.entrant(key)
        return entrant.tier if entrant is not None else 0

    def _by_tier(self, ranked: list[str]) -> list[str]:
        """``ranked`` (a short rung's order) re-ordered so that entrants compete only with those at the
        same place in their rate brackets: the best at the prior, the best below it, the best above
        it, then each tier's second, and so on. A short run favours higher rates (its whole schedule
        is shorter), so a short rung ranks rates against each other backwards (benchmarks/README.md,
        "Rates race at full fidelity"); the rate is decided where the race trains at full fidelity."""
        tiers: dict[int, list[str]] = {}
        for key in ranked:
            tiers.setdefault(self._tier(key), []).append(key)
        rows = itertools.zip_longest(*(tiers[t] for t in sorted(tiers, key=tier_order)))
        return [key for row in rows for key in row if key is not None]

    @staticmethod
    def _first_tier(entrants: list[RaceEntrant]) -> list[RaceEntrant]:
        """Those of ``entrants`` in the tier that :func:`tier_order` puts first (the prior's, where any is)."""
        first = min((tier_order(e.tier) for e in entrants), default=None)
        return [e for e in entrants if tier_order(e.tier) == first]

    def _best_incumbent_below(self, rung: int) -> str:
        """The incumbent's entrant that the final rung trains whether or not it survived the cuts: of
        its entrants at the prior rate (the tier a short rung cannot rank against the others), the
        best at the highest rung below ``rung`` that one of them reached."""
        anchors = {e.key for e in self._first_tier([e for e in self.plan.entrants if e.incumbent])}
        for lower in range(rung - 1, -1, -1):
            mine = {k: v for k, v in self.scores[lower].items() if k in anchors}
            ranked = rank(mine, self.plan.schedule.rungs[lower].seeds, self.sign)
            if ranked:
                return ranked[0]
        return next(e.key for e in self.plan.entrants if e.key in anchors)

    def _complete(self, rung: int, members: list[str]) -> bool:
        seeds = self.plan.schedule.rungs[rung].seeds
        return all(s in self.scores[rung].get(k, {}) for k in members for s in seeds)

    def current_rung(self) -> int | None:
        """The lowest rung not finished, or None once the final rung is."""
        for rung in range(len(self.plan.schedule.rungs)):
            members = self.members(rung)
            if members is None or not self._complete(rung, members):
                return rung
        return None

    def next_claim(self) -> Claim | None:
        """The first training of the current rung that no trial has finished or holds, or None
        (the race is decided, or the rest of the rung is running elsewhere)."""
        rung = self.current_rung()
        if rung is None:
            return None
        members = self.members(rung) or []
        if rung == 0 and self.around() is None:  # structure trials are drawn around the portfolio's best
            members = [k for k in members if k not in self.plan.slots()]
        for seed in self.plan.schedule.rungs[rung].seeds:
            for key in members:
                claim = Claim(rung, key, seed)
                if seed not in self.scores[rung].get(key, {}) and claim not in self.held:
                    return claim
        return None

    def decision(self) -> Decision | None:
        """The final rung's recommendation, once it has finished (a front's: :meth:`front_record`)."""
        if self.current_rung() is not None or self.plan.kind == "front":
            return None
        final = len(self.plan.schedule.rungs) - 1
        seeds = self.plan.schedule.rungs[final].seeds
        scores = {k: self.scores[final][k] for k in self.members(final) or []}
        return decide(scores, self.incumbent(), seeds, self.sign)

    def incumbent(self) -> str:
        """The incumbent at its best rate: the best of its entrants in the final rung."""
        final = len(self.plan.schedule.rungs) - 1
        members = self.members(final) or []
        ranked = rank({k: self.scores[final][k] for k in members}, self.plan.schedule.rungs[final].seeds, self.sign)
        return next(k for k in ranked if (e := self.entrant(k)) is not None and e.incumbent)

    def decision_record(self, decision: Decision) -> dict[str, Any]:
        """What ``race_decision`` holds: the chosen, best and incumbent entrants, the paired
        difference with its 95% interval, the final means, and the chosen entrant's final trials."""
        final = self.scores[-1]
        members = self.members(len(self.scores) - 1) or []
        diff, best = decision.difference, decision.best
        if diff is None:  # the incumbent was best: the margin is the best challenger's, below it
            seeds = self.plan.schedule.rungs[-1].seeds
            ranked = rank({k: final[k] for k in members}, seeds, self.sign)
            challengers = [k for k in ranked if (e := self.entrant(k)) is not None and not e.incumbent]
            if challengers:
                best = challengers[0]
                diff = paired_difference(final[best], final[self.incumbent()], self.sign)
        return {
            "chosen": decision.chosen,
            "best": best,
            "incumbent": self.incumbent(),
            "displaced": decision.displaced,
            "difference": None
            if diff is None
            else {"mean": diff.mean, "sd": diff.sd, "n": diff.n, "interval": list(_finite(diff.interval()))},
            "means": {k: statistics.fmean(final[k].values()) for k in members},
            "test_means": {k: statistics.fmean(v) for k, v in self.test.items() if k in members},
            "trials": self.final_trials.get(str(decision.chosen), []),
            "entrants": {k: asdict(e) for k in members if (e := self.entrant(k)) is not None},
        }

    def front_record(self) -> dict[str, Any] | None:
        """What ``front_decision`` holds once a raced front's rung has finished: the surviving points
        smallest first (their search trial, paired mean and spread, test mean, their race trials, and
        the paired difference from the next smaller survivor), and the dropped points."""
        if self.plan.kind != "front" or self.current_rung() is not None:
            return None
        seeds = self.plan.schedule.rungs[0].seeds
        scores = self.scores[0]
        sizes = {e.key: e.trainable for e in self.plan.entrants}
        survivors = front_survivors(scores, sizes, seeds, self.sign)
        kept = []
        for key, smaller, diff in survivors:
            values = [scores[key][s] for s in seeds]
            kept.append(
                {
                    "entrant": key,
                    "trial": int(key.split()[-1]),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "test_mean": statistics.fmean(self.test[key]) if self.test.get(key) else None,
                    "trials": self.final_trials.get(key, []),
                    "over": None if smaller is None else int(smaller.split()[-1]),
                    "difference": None
                    if diff is None
                    else {"mean": diff.mean, "sd": diff.sd, "n": diff.n, "interval": list(_finite(diff.interval()))},
                }
            )
        dropped = sorted(int(k.split()[-1]) for k in scores if k not in {key for key, _, _ in survivors})
        return {"seeds": len(seeds), "kept": kept, "dropped": dropped}


def _finite(pair: tuple[float, float]) -> tuple[float | None, float | None]:
    return tuple(None if not math.isfinite(x) else x for x in pair)  # type: ignore[return-value]


@dataclass(frozen=True)
class RaceTurn:
    """What the race loop gives a worker's next trial: the training to take (None: none now), and
    the race as it read it (for the entrants of structure trials)."""

    claim: Claim | None
    state: RaceState


def race_training(
    trial: optuna.Trial, plan: RacePlan, turn: RaceTurn | None, space: SearchSpace
) -> tuple[str, float, dict[str, Any], int, Fidelity, str]:
    """(method, learning rate, configuration, seed, fidelity, label) of the race training the
    ``turn`` gives, which ``trial`` then trains, recorded in its ``race`` attribute: a retried
    trial's own claim, else the turn's. A structure trial not drawn yet is drawn here, around the
    best planned LoRA entrant's configuration and at its rate.

    Raises:
        Surplus: there is no claim (the race needs no training now), or a trial numbered lower
            already holds it (two workers took it at once: the earlier trains it).
    """
    claim = claim_of(trial.user_attrs) or (turn.claim if turn is not None else None)
    if claim is None or turn is None:
        trial.set_user_attr("surplus", True)
        raise Surplus("not run: the race needs no training now")
    trial.set_user_attr(RACE_ATTR, claim.as_record())
    if plan.short_rungs == "loss" and claim.rung < len(plan.schedule.rungs) - 1:
        trial.set_user_attr(SCORED_BY_ATTR, "validation_loss")  # judged by it: see Standard.at_baseline
    for other in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if other.number < trial.number and claim_of(other.user_attrs) == claim:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"not run: trial {other.number} trains the same race member")
    entrant = turn.state.entrant(claim.entrant)
    if entrant is None:  # a structure trial, drawn now
        around = turn.state.around()
        if around is None:
            trial.set_user_attr("surplus", True)
            raise Surplus("not run: structure trials wait for the planned entrants' first rung")
        taken = {
            e.config_json for e in (*turn.state.plan.entrants, *turn.state.structure.values()) if e.method == "lora"
        }
        config = structure_config(trial, space, around.config, taken)
        lora = space.bench.enabled["lora"]
        rate = around.learning_rate / lora.learning_rate_scale(around.config) * lora.learning_rate_scale(config)
        entrant = RaceEntrant(claim.entrant, STRUCTURE, "lora", json.dumps(config, sort_keys=True), rate, 0, False)
    steps = plan.steps(claim.rung)
    fidelity = FULL if steps >= plan.total_steps else Fidelity(steps=steps)
    label = f"rung {claim.rung + 1}/{len(plan.schedule.rungs)} seed {claim.seed + 1} {entrant.candidate}: "
    seed = race_seed(plan.seed, claim.seed)
    return entrant.method, entrant.learning_rate, entrant.config, seed, fidelity, label


def claim_of(user_attrs: dict[str, Any]) -> Claim | None:
    """The race training a trial (its ``user_attrs``) is, or None for a trial outside the race."""
    record = user_attrs.get(RACE_ATTR)
    if not isinstance(record, dict):
        return None
    try:
        return Claim(int(record["rung"]), str(record["entrant"]), int(record["seed"]))
    except (KeyError, TypeError, ValueError):
        return None
