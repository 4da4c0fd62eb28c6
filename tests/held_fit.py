"""A training function (``[train] fit = "held_fit:fit"``) for worker tests: it trains nothing, holds
each worker's first trial until every expected worker has started one, and scores a configuration
by its rate and seed. Worker processes import it from ``PYTHONPATH``."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any


def fit(
    model: Any,
    tokenizer: Any,
    train: Any,
    validation: Any,
    learning_rate: float,
    max_steps: int,
    seed: int,
    report: Any,
) -> float:
    marks = Path(os.environ["AUTOPEFT_TEST_MARKS"])
    marks.mkdir(exist_ok=True)
    (marks / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while (
        len(list(marks.iterdir())) < int(os.environ.get("AUTOPEFT_TEST_WORKERS", "2")) and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return 0.6 + 0.01 * math.log10(learning_rate) + 0.001 * (seed % 7) + 0.0001 * max_steps
