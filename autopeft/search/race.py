"""The race's arithmetic: its schedule, its rankings and the paired rule that may displace the incumbent.

At the budgets people give a search (a dozen trainings) one seed moves a trial more than most
structures differ, so a winner is decided the way racing methods (F-Race, irace) and successive
halving decide it. Entrants (each candidate at each rate of its learning-rate bracket) climb rungs of
fidelity; at every rung the survivors are trained again with more seeds, and every entrant at a rung
trains with the *same* seeds, so two entrants' scores differ by the configuration and not by the head's
initialisation or the data order (the differences are paired). The last rung is the study's final
fidelity with at least three seeds, and the incumbent (the configuration a user would type) always
runs in it.

The recommendation is the finalist with the best paired mean. It displaces the incumbent only when
its mean paired difference exceeds :data:`DISPLACE_SE` standard errors of that difference: with three
seeds, about a one-sided 90% level under Student's t; with five, about 95%. Anything less is noise,
and the incumbent stands.

A two-objective study races its Pareto front in one rung at the final fidelity instead
(:func:`front_survivors`): a point stays on the front only if its paired mean beats that of every
smaller point that stayed.

Nothing here trains or touches a study: the functions take scores by seed, so the rule is tested on
known sequences of values, and the search layer feeds it trials.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DISPLACE_SE",
    "Decision",
    "PairedDifference",
    "Rung",
    "Schedule",
    "decide",
    "front_survivors",
    "paired_difference",
    "plan_race",
    "rank",
    "rate_bracket",
]

#: A challenger displaces the incumbent when its mean paired difference exceeds this many standard errors.
DISPLACE_SE = 2.0

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Rung:
    """One rung of the race: the share of the final fidelity each entrant trains for, the paired seeds
    each trains with, and how many entrants run it."""

    fraction: float
    seeds: tuple[int, ...]
    entrants: int

    @property
    def cost(self) -> float:
        """Its cost in full trainings at the final fidelity."""
        return self.entrants * len(self.seeds) * self.fraction


@dataclass(frozen=True)
class Schedule:
    """The race planned before its first training: what ``autopeft plan`` prints."""

    rungs: tuple[Rung, ...]

    @property
    def cost(self) -> float:
        """Every rung's cost, in full trainings at the final fidelity."""
        return sum(rung.cost for rung in self.rungs)


def plan_race(
    entrants: int, budget: float, eta: int = 3, final_seeds: int = 3, min_fraction: float = 1 / 9
) -> Schedule:
    """The race of ``entrants`` with the fewest rungs whose cost fits ``budget`` full trainings.

    A race of ``k`` rungs trains its first rung at ``eta**-(k-1)`` of the final fidelity, and each
    rung above it ``eta`` times longer, up to the final fidelity. Each rung keeps the best ``1/eta``
    of its entrants, and the incumbent joins the final rung's survivors. Seeds rise from one at the
    first rung to ``final_seeds`` at the last. Fewer rungs are preferred: a longer first rung ranks
    more truly. No rung is shorter than ``min_fraction``, since a rung too short to learn anything
    ranks at random, and every rung above the first cuts someone.

    Raises:
        ValueError: no race within those limits fits the budget (the message gives the cheapest's
            cost), or the arguments make no race.
    """
    if entrants < 1 or eta < 2 or final_seeds < 1 or not 0 < min_fraction <= 1:
        raise ValueError(f"no race of {entrants} entrants with eta {eta} and {final_seeds} final seeds")
    cheapest = math.inf
    for count in range(1, 64):
        if float(eta) ** -(count - 1) < min_fraction:
            break
        schedule = _race(entrants, count, eta, final_seeds)
        if any(upper.entrants >= lower.entrants for lower, upper in zip(schedule.rungs, schedule.rungs[1:])):
            break  # a rung that cuts nobody costs trainings and tells nothing
        if schedule.cost <= budget + 1e-9:
            return schedule
        cheapest = min(cheapest, schedule.cost)
    raise ValueError(
        f"a race of {entrants} entrants needs at least {cheapest:.1f} full trainings, and the budget is {budget:g}"
    )


def _race(entrants: int, count: int, eta: int, final_seeds: int) -> Schedule:
    """The race of ``entrants`` over ``count`` rungs (see :func:`plan_race`)."""
    rungs = []
    for i in range(count):
        alive = entrants if i == 0 else math.ceil(entrants / eta**i)
        if count > 1 and i == count - 1:
            alive = min(entrants, alive + 1)  # the incumbent runs the final rung, survivor or not
        seeds = final_seeds if count == 1 else 1 + round((final_seeds - 1) * i / (count - 1))
        rungs.append(Rung(float(eta) ** -(count - 1 - i), tuple(range(seeds)), alive))
    return Schedule(tuple(rungs))


def rate_bracket(
    prior: float, size: int = 3, spread: float = 3.0, low: float = 0.0, high: float = math.inf
) -> tuple[float, ...]:
    """``size`` learning rates log-spaced ``spread`` apart and centred on ``prior``, clipped to
    ``[low, high]`` with duplicates dropped: each candidate's own few rates, instead of one random rate
    drawn from a range shared with its structure."""
    if prior <= 0 or size < 1 or spread <= 1:
        raise ValueError(f"no bracket around {prior} of {size} rates {spread} apart")
    rates = (min(high, max(low, prior * spread ** (k - (size - 1) / 2))) for k in range(size))
    return tuple(dict.fromkeys(rates))


@dataclass(frozen=True)
class PairedDifference:
    """A challenger's scores minus the incumbent's, seed by seed: their mean, spread and count."""

    mean: float
    sd: float
    n: int

    @property
    def se(self) -> float:
        """The standard error of the mean difference (infinite with one pair: one pair shows no noise)."""
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.inf

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """The mean ± ``z`` standard errors."""
        return self.mean - z * self.se, self.mean + z * self.se


def paired_difference(
    challenger: Mapping[int, float], incumbent: Mapping[int, float], sign: int = 1
) -> PairedDifference:
    """``challenger`` minus ``incumbent`` on the seeds both ran, in the metric's better direction
    (``sign`` -1 for a loss or perplexity), so a positive mean is always the challenger doing better.

    Raises:
        ValueError: the two share no seed.
    """
    shared = sorted(set(challenger) & set(incumbent))
    if not shared:
        raise ValueError("the two entrants share no seed: their scores are not paired")
    diffs = [sign * (challenger[s] - incumbent[s]) for s in shared]
    return PairedDifference(statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0, len(diffs))


def rank(scores: Mapping[Key, Mapping[int, float]], seeds: Sequence[int], sign: int = 1) -> list[Key]:
    """The entrants that ran every one of ``seeds``, best mean first (ties: the order given); an entrant
    still missing a seed is not ranked yet, since its mean would not be paired with the others'."""
    complete = [key for key, by_seed in scores.items() if all(s in by_seed for s in seeds)]
    return sorted(complete, key=lambda key: -sign * statistics.fmean(scores[key][s] for s in seeds))


@dataclass(frozen=True)
class Decision:
    """What the final rung recommends, and the evidence: ``best`` (the finalist with the best paired
    mean), its difference from the incumbent, and whether that displaced the incumbent."""

    chosen: Hashable
    best: Hashable
    difference: PairedDifference | None
    displaced: bool


def decide(
    final: Mapping[Key, Mapping[int, float]],
    incumbent: Key,
    seeds: Sequence[int],
    sign: int = 1,
    threshold: float = DISPLACE_SE,
) -> Decision:
    """The recommendation of the final rung's ``final`` scores (entrant -> seed -> metric).

    Raises:
        ValueError: the incumbent has not run every final seed.
    """
    ranked = rank(final, seeds, sign)
    if incumbent not in ranked:
        raise ValueError(f"the incumbent has not run every final seed {list(seeds)}")
    best = ranked[0]
    if best == incumbent:
        return Decision(incumbent, incumbent, None, False)
    diff = paired_difference({s: final[best][s] for s in seeds}, {s: final[incumbent][s] for s in seeds}, sign)
    displaced = diff.n > 1 and diff.mean > threshold * diff.se
    return Decision(best if displaced else incumbent, best, diff, displaced)


def front_survivors(
    scores: Mapping[Key, Mapping[int, float]], sizes: Mapping[Key, int], seeds: Sequence[int], sign: int = 1
) -> list[tuple[Key, Key | None, PairedDifference | None]]:
    """The front points that survive the paired seeds, smallest first, each with the smaller survivor
    it must beat and its paired difference from it: a point whose paired mean is no better than a
    smaller (or equal) point's is dominated once the seeds' luck is averaged out, and leaves the front.

    Raises:
        ValueError: a point has not run every seed.
    """
    ranked = rank(scores, seeds, sign)
    if len(ranked) < len(scores):
        raise ValueError(f"a front point has not run every seed {list(seeds)}")
    means = {k: statistics.fmean(scores[k][s] for s in seeds) for k in ranked}
    kept: list[tuple[Key, Key | None, PairedDifference | None]] = []
    for key in sorted(ranked, key=lambda k: (sizes[k], ranked.index(k))):
        if not kept:
            kept.append((key, None, None))
            continue
        smaller = kept[-1][0]
        if sign * (means[key] - means[smaller]) > 0:
            pick = {s: scores[key][s] for s in seeds}
            kept.append((key, smaller, paired_difference(pick, {s: scores[smaller][s] for s in seeds}, sign)))
    return kept
