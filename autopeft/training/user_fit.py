"""Your own training loop in place of autopeft's: ``autopeft.tune(..., fit=my_fit)``.

autopeft still proposes each configuration under the exact budget, applies it to the resident base,
seeds the run, records the trial and gives the base back bit-identical; the user's function only
trains and scores. Its contract (docs: Your own training loop):

    my_fit(model, tokenizer, train, validation, learning_rate, max_steps, seed, report) -> float

- ``model`` is the adapted model (a ``PeftModel`` for peft's methods); train what requires a gradient,
  at ``learning_rate``, for at most ``max_steps`` optimizer steps, seeded by ``seed``;
- ``train`` and ``validation`` are ``datasets.Dataset``s of the task's tokenized examples:
  ``input_ids``, ``attention_mask``, ``labels`` (a class id, or one per token with -100 where the loss
  skips), and for tasks that answer, ``completion_mask`` (1 on the answer's tokens);
- ``report(step, value)`` hands over the validation metric at a step; True means stop now (pruning);
- it returns the study's validation metric as a finite number.

It must not change frozen weights (no precision cast of the whole model, no merging), save the base,
or keep the model after returning.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from autopeft.data import IGNORE_INDEX, Split
from autopeft.errors import FitError
from autopeft.training.train import TrainResult

__all__ = ["FitFunction", "as_dataset", "call_user_fit", "checked_metric"]


class FitFunction(Protocol):
    """The user's training function (the module's docstring gives its contract)."""

    def __call__(
        self,
        model: nn.Module,
        tokenizer: Any,
        train: Any,
        validation: Any,
        learning_rate: float,
        max_steps: int,
        seed: int,
        report: Callable[[int, float], bool],
    ) -> float: ...


def as_dataset(split: Split) -> Any:
    """``split`` as a ``datasets.Dataset`` of tokenized columns, what a transformers ``Trainer`` or
    TRL's ``SFTTrainer`` takes: ``input_ids``, ``attention_mask``, ``labels`` and, where the labels
    are per token, ``completion_mask`` (the positions the loss counts)."""
    from datasets import Dataset

    columns: dict[str, list[Any]] = {key: [f[key] for f in split.features] for key in split.features[0]}
    columns["attention_mask"] = [[1] * len(f["input_ids"]) for f in split.features]
    columns["labels"] = list(split.labels)
    if split.labels and isinstance(split.labels[0], list):
        columns["completion_mask"] = [[int(t != IGNORE_INDEX) for t in row] for row in split.labels]  # type: ignore[union-attr]
    return Dataset.from_dict(columns)


def checked_metric(value: Any) -> float:
    """What the user's fit returned, as the trial's metric.

    Raises:
        FitError: it is not a finite number (None, a string, NaN): every later trial would return
            the same, so the search stops at the first.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise FitError(
            "fit",
            f"returned {value!r} ({type(value).__name__}), not the validation metric",
            "return the study's metric on the validation split as a finite float",
        )
    return float(value)


def call_user_fit(
    fit: FitFunction,
    model: nn.Module,
    tokenizer: Any,
    data: tuple[Any, Any],
    *,
    learning_rate: float,
    max_steps: int,
    seed: int,
    on_report: Callable[[int, float], bool] | None,
) -> TrainResult:
    """Train ``model`` with the user's ``fit`` on ``data`` (train and validation datasets); the
    result's ``stopped_at`` is the step ``on_report`` said stop at (the returned value is then not
    needed), else the returned metric is checked (:func:`checked_metric`)."""
    stopped: list[int] = []
    seen: set[int] = set()

    def report(step: int, value: float) -> bool:
        if stopped:
            return True
        if step >= max_steps or step in seen:  # the last value is the result; a step is reported once
            return False
        seen.add(step)
        if on_report is not None and on_report(int(step), float(value)):
            stopped.append(int(step))
            return True
        return False

    started = time.perf_counter()
    value = fit(model, tokenizer, data[0], data[1], learning_rate, max_steps, seed, report)
    seconds = time.perf_counter() - started
    if stopped:
        return TrainResult(float("nan"), seconds, 0.0, 0, stopped[0], max_steps, stopped_at=stopped[0])
    return TrainResult(checked_metric(value), seconds, 0.0, 0, max_steps, max_steps)
