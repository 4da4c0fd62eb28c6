"""What the race runs: the incumbent a user would type, and a portfolio of different candidates at the budget.

A random space over method × structure × rate, judged on one seed a trial, cannot beat a user's
default in the dozen trainings people give a search (benchmarks/README.md). So the race starts from
a few candidates known to be strong and different, each at a few rates of its own:

- the **incumbent**, LoRA r=8 on query and value (alpha 16) at LoRA's rate: what a user types. If
  it exceeds the budget, the largest uniform rank on query and value that fits; if no LoRA fits,
  the smallest method's default;
- LoRA on **every linear** and on the **MLP only**, at the rank whose size is closest to the
  incumbent's (the literature's matched comparison: attention-only LoRA loses to LoRA with the MLP);
- **DoRA** on every linear at that rank;
- the **proxy's** per-block ranks: the incumbent's total rank moved to the blocks whose gradients
  are largest (:mod:`autopeft.search.proxy`);
- every other enabled method at its own default (its :meth:`~autopeft.methods.PeftMethod.warm_start`
  configuration, else the largest that fits): IA3, BitFit, unfreezing, a third-party method.

Which of them race is :data:`PORTFOLIO`'s choice, made from measurements on the benchmark tasks
(benchmarks/README.md, "Choosing the portfolio"); the catalogue here builds every one, for the
benchmark to measure. Every name is built from the model's own blocks and the method plugins, never
from one model family's module names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from autopeft.search.search_space import SearchSpace

__all__ = [
    "Candidate",
    "PORTFOLIO",
    "STRUCTURE_TARGETS",
    "catalogue",
    "from_front",
    "incumbent",
    "rate_prior",
    "short_run_scale",
    "structure_config",
]

#: The candidates that race beside the incumbent, in the order they are listed (catalogue names); a
#: short budget leaves out the last first. The order is each candidate's full-training mean at its best
#: rate on the sentiment task (benchmarks/README.md, "Choosing the portfolio"): the LoRA family within
#: noise of each other, BitFit and unfreezing unable to learn in 47 steps at most of their rates. IA3,
#: not enabled there, is put before them.
PORTFOLIO = ("dora-all", "proxy", "lora-all", "lora-mlp", "ia3", "bitfit", "unfreeze")

#: LoRA's scale: lora_alpha = alpha × r; alpha 2 is the alpha 16 at r=8 people type.
_ALPHA = 2


@dataclass(frozen=True)
class Candidate:
    """One configuration of one method; its race entrants are this at each rate of its bracket."""

    name: str  # "incumbent", a catalogue name ("lora-all") or the method's name for its default
    method: str
    config_json: str  # the configuration, as JSON (hashable, and what a trial records)
    prior: float  # the learning rate its bracket is centred on, before the short-run scale
    trainable: int
    scaled: bool = True  # False: ``prior`` is a rate found at this kind of run (another study's), not scaled

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.config_json))


def _candidate(space: SearchSpace, name: str, method: str, config: dict[str, Any]) -> Candidate | None:
    """The candidate, or None where it exceeds the budget or trains nothing beyond the head."""
    from autopeft.methods import checked_count  # methods imports torch; reading a study must not

    bench = space.bench
    n = checked_count(bench.enabled[method], bench.ctx, config)
    if n > bench.budget or n <= bench.ctx.head_params:
        return None
    prior = bench.enabled[method].default_learning_rate
    rates = space.rates(method)
    if isinstance(rates, float):  # the study file fixed the method's rate: the bracket is centred there
        prior = rates
    return Candidate(name, method, json.dumps(config, sort_keys=True), prior, n)


def _lora(space: SearchSpace, rank: int, targets: str, variant: str = "lora") -> dict[str, Any]:
    options = space.bench.options["lora"]
    blocks = len(space.bench.ctx.blocks)
    dropout = options.get("dropout", 0.0)
    return {"ranks": [rank] * blocks, "alpha": _ALPHA, "targets": targets, "variant": variant, "dropout": dropout}


def incumbent(space: SearchSpace) -> Candidate:
    """The configuration a user would type, within the budget (see the module's docstring).

    Raises:
        ValueError: no enabled method has a configuration within the budget (the workbench says so
            before a race is planned).
    """
    if "lora" in space.bench.enabled:
        for rank in range(8, 0, -1):
            found = _candidate(space, "incumbent", "lora", _lora(space, rank, "query+value"))
            if found is not None:
                return found
    defaults = [c for c in (_default(space, name) for name in space.bench.methods) if c is not None]
    if not defaults:
        raise ValueError("no enabled method has a configuration within the budget")
    smallest = min(defaults, key=lambda c: c.trainable)
    return Candidate("incumbent", smallest.method, smallest.config_json, smallest.prior, smallest.trainable)


def _default(space: SearchSpace, name: str) -> Candidate | None:
    """Method ``name``'s known-good configuration, else its largest that fits, else its smallest."""
    bench = space.bench
    method, options = bench.enabled[name], bench.options[name]
    params = method.warm_start(bench.ctx, options)
    configs = [space.config_of({"method": name, **params})[1]] if params is not None else []
    configs += [method.largest(bench.ctx, options), method.smallest(bench.ctx, options)]
    return next((c for c in (_candidate(space, name, name, config) for config in configs) if c is not None), None)


def _matched(space: SearchSpace, name: str, targets: str, variant: str, size: int) -> Candidate | None:
    """LoRA on ``targets`` at the uniform rank whose size is closest to ``size``, within the budget."""
    fits = [c for r in range(1, 65) if (c := _candidate(space, name, "lora", _lora(space, r, targets, variant)))]
    return min(fits, key=lambda c: (abs(c.trainable - size), c.trainable)) if fits else None


def from_front(space: SearchSpace, name: str, front: list[dict[str, Any]]) -> list[Candidate]:
    """Another study's Pareto-front trials (``front``, their Optuna parameters) as candidates
    ``<name>-1``, ``<name>-2``, ...: mapped onto this model's blocks, each centred on the rate it
    trained at there; those whose method or choices this study lacks, or that exceed its budget,
    left out (``autopeft run --from``)."""
    found: list[Candidate] = []
    for params in front:
        adopted = space.adopt(params)
        if adopted is None:
            continue
        method, config = space.config_of(adopted)
        candidate = _candidate(space, f"{name}-{len(found) + 1}", method, config)
        rate = adopted.get(f"{method}.learning_rate")
        if candidate is not None and isinstance(rate, float):  # where the other study found it learned
            candidate = Candidate(candidate.name, method, candidate.config_json, rate, candidate.trainable, False)
        if candidate is not None and all(c.config_json != candidate.config_json for c in found):
            found.append(candidate)
    return found


def catalogue(space: SearchSpace, proxy_blocks: list[float] | None = None) -> list[Candidate]:
    """Every candidate the module's docstring lists that the study enables and the budget holds,
    incumbent first, without two of the same configuration."""
    from autopeft.search.proxy import proxy_ranks

    bench = space.bench
    first = incumbent(space)
    found: list[Candidate | None] = [first]
    if "lora" in bench.methods:
        found += [
            _matched(space, "lora-all", "all", "lora", first.trainable),
            _matched(space, "lora-mlp", "mlp", "lora", first.trainable),
            _matched(space, "dora-all", "all", "dora", first.trainable),
        ]
        if proxy_blocks is not None and first.method == "lora":
            config = first.config
            choices = sorted({*bench.options["lora"].get("r", [4, 8, 16]), max(config["ranks"])})
            ranks = proxy_ranks(proxy_blocks, choices, max(config["ranks"]))
            found.append(_candidate(space, "proxy", "lora", {**config, "ranks": ranks}))
    found += [_default(space, name) for name in bench.methods if name != "lora"]
    unique: dict[tuple[str, str], Candidate] = {}
    for c in found:
        if c is not None and (c.method, c.config_json) not in unique:
            unique[(c.method, c.config_json)] = c
    return list(unique.values())


def short_run_scale(steps: int) -> float:
    """How much higher than its default a rate is centred for a run of ``steps`` optimizer steps: 1
    from 200 steps up, rising as √(200/steps) to 3 for the shortest runs. Adapters' best rates rise
    as runs shorten (LoRA's is about 10× full fine-tuning's, more under 100 steps: "LoRA Without
    Regret", 2025); the defaults were set for runs of a few hundred steps."""
    return min(3.0, max(1.0, math.sqrt(200 / max(steps, 1))))


#: The linears a structure trial may adapt (:func:`structure_config`).
STRUCTURE_TARGETS = ("query+value", "all", "mlp")


def structure_config(
    trial: optuna.Trial, space: SearchSpace, around: dict[str, Any], taken: Collection[str] = ()
) -> dict[str, Any]:
    """A LoRA configuration near ``around`` (the best LoRA entrant's), drawn by the study's sampler from
    three numbers instead of one rank per block, so that the handful of trials a race has room for
    can learn something: which linears (``structure.targets``), a rank (``structure.rank``), and
    where the rank goes (``structure.tilt``: every block, or the first or last half at that rank and
    the other at a quarter of it). Variant, alpha and dropout are ``around``'s. A draw over the budget
    is brought down to the largest rank of its choices that fits, and a draw the race already has
    (``taken``: configurations as JSON; the incumbent's is one of the 36 draws) down to the next rank
    it has not, or up to one where none below is new, so that every structure trial is a new
    structure where the budget allows one.
    """
    from autopeft.methods import checked_count

    bench = space.bench
    lora, n = bench.enabled["lora"], len(bench.ctx.blocks)
    choices = sorted({*bench.options["lora"].get("r", [2, 4, 8, 16]), max(around["ranks"])})
    targets = trial.suggest_categorical("structure.targets", STRUCTURE_TARGETS)
    rank = int(trial.suggest_categorical("structure.rank", choices))
    tilt = trial.suggest_categorical("structure.tilt", ("flat", "early", "late"))

    def profile(r: int) -> list[int]:
        low, half = max(1, r // 4), max(1, n // 2)
        return {"flat": [r] * n, "early": [r] * half + [low] * (n - half), "late": [low] * (n - half) + [r] * half}[
            tilt
        ]

    # The drawn rank, then the ranks below it, then those above: a duplicate of the smallest rank
    # (rank 2 on the MLP, drawn twice) becomes the next rank up rather than a second training of it.
    below = [r for r in choices if r <= rank][::-1]
    configs = [{**around, "ranks": profile(r), "targets": targets} for r in [*below, *(r for r in choices if r > rank)]]
    fits = [c for c in configs if checked_count(lora, bench.ctx, c) <= bench.budget]
    new = [c for c in fits if json.dumps(c, sort_keys=True) not in taken]
    return new[0] if new else fits[0] if fits else configs[len(below) - 1]


def rate_prior(candidate: Candidate, steps: int) -> float:
    """The rate ``candidate``'s bracket is centred on, for a run of ``steps`` steps."""
    return candidate.prior * short_run_scale(steps) if candidate.scaled else candidate.prior
