"""Another study's Pareto front as this study's first trials: per-block parameters mapped by depth.

A study of the same task on a smaller (or larger) model has already found what works; its front,
mapped onto this model's blocks, is a better start than random samples. Per-block parameters
(``lora.r[3]``) are mapped by relative depth, so block 3 of 6 becomes block 1 of 2 or block 6 of 12.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["map_to_blocks"]

_PER_BLOCK = re.compile(r"^(.+)\[(\d+)\]$")


def map_to_blocks(params: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    """``params`` with every per-block parameter re-indexed for a model with ``n_blocks`` blocks.

    The source depth is read from the parameters themselves (the highest index + 1), so the other
    model need not be loaded. Block ``j`` takes the value of the source block at the same relative
    depth; a 1-block target takes the top block's value.
    """
    mapped: dict[str, Any] = {}
    per_block: dict[str, dict[int, Any]] = {}
    for name, value in params.items():
        if match := _PER_BLOCK.match(name):
            per_block.setdefault(match.group(1), {})[int(match.group(2))] = value
        else:
            mapped[name] = value
    for prefix, values in per_block.items():
        top = max(values)
        for j in range(n_blocks):
            source = top if n_blocks == 1 else round(j * top / (n_blocks - 1))
            mapped[f"{prefix}[{j}]"] = values.get(source, 0)
    return mapped
