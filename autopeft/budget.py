"""The trainable-parameter budget: parsing ``150000`` / ``"150k"`` / ``"0.5%"`` and fitting per-block sizes to it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["parse_budget", "fit_sizes", "suggest_sizes", "format_count"]

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*$")
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


#: The model size :func:`parse_budget` assumes for a share when the model is not known yet.
_NOMINAL_TOTAL = 10**15


def parse_budget(value: int | float | str, total_params: int | None) -> int:
    """The largest allowed number of trainable parameters.

    Args:
        value: a count (``150000``, ``"150k"``, ``"1.5M"``) or a share of the model (``"0.5%"``).
        total_params: parameters of the loaded model, task head included; None checks the form
            alone (a study file read before its model is loaded).

    Raises:
        ValueError: for anything else, a budget that is not positive, a share above 100%, or a
            count above ``total_params`` (as a share above 100% is refused, so is a count that
            more than the whole model could never bind).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a count or a percentage, got {value!r}")
    total = _NOMINAL_TOTAL if total_params is None else total_params
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite count like 150000, got {value!r}")
        count = int(value)
    elif (share := _SHARE.match(value)) is not None:
        if float(share.group(1)) > 100:
            raise ValueError(f"a share of the model is at most 100%, got {value!r}")
        count = int(float(share.group(1)) / 100 * total)
    elif (number := _COUNT.match(value)) is not None:
        count = int(float(number.group(1)) * _SCALE[number.group(2).lower()])
    else:
        raise ValueError(f"expected a count like 150000 or '150k', or a share like '0.5%', got {value!r}")
    if count <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    if total_params is not None and count > total_params:
        raise ValueError(f"{value!r} is more than the model's {total_params:,} parameters")
    return count


def fit_sizes(
    wanted: Sequence[int], cost: Callable[[int, int], int], choices: Sequence[int], fixed: int, budget: int
) -> list[int]:
    """Shrink per-block sizes, top block first, until ``fixed + sum(cost(i, size_i))`` fits ``budget``.

    Each block keeps the largest size from ``0`` and ``choices`` that is at most what was asked and
    still fits what the blocks above it left over: the top blocks carry the most task-specific
    features, so they are served first. When every block ends at 0, the top block gets the
    smallest choice even if that breaks the budget (the driver then records the trial as
    infeasible): a method must touch at least one block.
    """
    sizes = [0] * len(wanted)
    total = fixed
    for i in range(len(wanted) - 1, -1, -1):
        for size in sorted((c for c in {0, *choices} if c <= wanted[i]), reverse=True):
            if total + cost(i, size) <= budget:
                sizes[i], total = size, total + cost(i, size)
                break
    if not any(sizes) and sizes:
        sizes[-1] = min(c for c in choices if c > 0)
    return sizes


def suggest_sizes(
    trial: optuna.trial.BaseTrial,
    name: str,
    choices: Sequence[int],
    cost: Callable[[int, int], int],
    n_blocks: int,
    fixed: int,
    budget: int,
) -> list[int]:
    """Sample a size per block (``name[i]``, 0 = block left out), then fit them to ``budget``.

    Every ``name[i]`` has the same choices in every trial, so the space has a fixed size and the
    sampler models all of it jointly (a range that moved with the budget left would make Optuna's
    TPE fall back to independent sampling). :func:`fit_sizes` then turns the sample into a
    configuration that fits, so over-budget configurations are never trained and rarely sampled.
    """
    options = sorted({0, *choices})
    wanted = [int(trial.suggest_categorical(f"{name}[{i}]", options)) for i in range(n_blocks)]
    return fit_sizes(wanted, cost, [c for c in options if c > 0], fixed, budget)


def format_count(n: int) -> str:
    """``73728`` -> ``'73.7k'``: short counts for progress lines."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
