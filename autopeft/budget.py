"""The trainable-parameter budget: parsing ``150000`` / ``"150k"`` / ``"0.5%"`` and fitting blocks to it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["parse_budget", "lowest_start_block", "suggest_start_block", "format_count"]

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*$")
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_budget(value: int | float | str, total_params: int) -> int:
    """The largest allowed number of trainable parameters.

    Args:
        value: a count (``150000``, ``"150k"``, ``"1.5M"``) or a share of the model (``"0.5%"``).
        total_params: parameters of the loaded model, task head included.

    Raises:
        ValueError: for anything else, or a budget that is not positive.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a count or a percentage, got {value!r}")
    if isinstance(value, (int, float)):
        count = int(value)
    elif (share := _SHARE.match(value)) is not None:
        count = int(float(share.group(1)) / 100 * total_params)
    elif (number := _COUNT.match(value)) is not None:
        count = int(float(number.group(1)) * _SCALE[number.group(2).lower()])
    else:
        raise ValueError(f"expected a count like 150000 or '150k', or a share like '0.5%', got {value!r}")
    if count <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return count


def lowest_start_block(costs: Sequence[int], fixed: int, budget: int) -> int | None:
    """Lowest ``i`` such that training blocks ``i..end`` (``sum(costs[i:]) + fixed``) fits ``budget``.

    Methods adapt the top blocks first because they carry the most task-specific features; this
    turns "which blocks" into one integer whose feasible range is known before sampling.
    Returns None when not even the last block fits.
    """
    total = fixed
    start = None
    for i in range(len(costs) - 1, -1, -1):
        total += costs[i]
        if total > budget:
            break
        start = i
    return start


def suggest_start_block(trial: optuna.Trial, name: str, costs: Sequence[int], fixed: int, budget: int) -> int:
    """Sample the first trained block among those :func:`lowest_start_block` allows.

    When not even the top block fits, the top block is still sampled: the driver then records the
    trial as infeasible in milliseconds, and the sampler learns to avoid what led there.
    """
    last = len(costs) - 1
    low = lowest_start_block(costs, fixed, budget)
    return trial.suggest_int(name, last if low is None else low, last)


def format_count(n: int) -> str:
    """``73728`` -> ``'73.7k'``: short counts for progress lines."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
