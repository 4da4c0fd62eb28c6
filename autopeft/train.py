"""The training and evaluation loop: plain PyTorch, one function each, readable in one sitting.

AdamW on the trainable parameters only, linear warmup then linear decay, gradient clipping, the
task's loss and metric (:mod:`autopeft.tasks`), dynamic padding (see :mod:`autopeft.data`),
evaluation under ``inference_mode``. ``report`` is called after every evaluation but the last,
and may raise ``optuna.TrialPruned`` to stop a hopeless trial.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn

from autopeft.config import TrainSection
from autopeft.data import Split, batches, bucketed_order
from autopeft.tasks import Task, eval_logits

__all__ = [
    "NonFiniteLoss",
    "TrainResult",
    "planned_steps",
    "learning_rate_at",
    "score",
    "predict",
    "evaluate",
    "train",
    "autocast_for",
    "enable_gradient_checkpointing",
]


@dataclass
class TrainResult:
    """What one training run measured."""

    metric: float
    train_seconds: float
    eval_seconds: float
    train_tokens: int
    steps: int
    setup_seconds: float = 0.0  # copying the base model and applying the method (set by the caller)
    peak_memory_mb: float = 0.0  # set by the caller, which knows the device
    cached_blocks: int = 0  # leading blocks the prefix cache stood in for (set by the caller)
    cache_seconds: float = 0.0  # computing the prefix states this trial did not find cached
    test_seconds: float = 0.0  # scoring the test split (set by the caller, which decides whether to)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite: the trial cannot recover, so it stops here."""

    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value
        super().__init__(f"loss was {value} at step {step}")


def planned_steps(train_split: Split, settings: TrainSection) -> int:
    """Optimizer steps a full training run takes; the pruner counts the steps it saves against it."""
    return math.ceil(len(train_split) / settings.batch_size) * settings.epochs


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def score(metric: str, labels: list[int], predictions: list[int]) -> float:
    """The study metric from scikit-learn. ``f1`` is the F1 of class 1 (the second in label order) when
    labels and predictions hold at most two classes, macro F1 otherwise; ``macro_f1`` is always macro."""
    if metric == "accuracy":
        return float(accuracy_score(labels, predictions))
    if metric in ("f1", "macro_f1"):
        binary = metric == "f1" and len(set(labels) | set(predictions)) <= 2
        return float(f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0))
    if metric == "mcc":
        return float(matthews_corrcoef(labels, predictions))
    raise ValueError(f"unknown metric {metric!r}")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def predict(
    model: nn.Module, split: Split, pad_token_id: int, batch_size: int, device: torch.device, precision: str = "auto"
) -> list[int]:
    """Predicted class of every example of ``split``, in the split's order; dropout off."""
    predictions = [0] * len(split)
    for indices, logits, _ in eval_logits(model, split, pad_token_id, batch_size, device, precision):
        for i, label in zip(indices, logits.argmax(-1).tolist()):
            predictions[i] = label
    return predictions


def evaluate(
    model: nn.Module,
    split: Split,
    pad_token_id: int,
    batch_size: int,
    metric: str,
    device: torch.device,
    precision: str = "auto",
) -> float:
    """Score ``model`` on ``split`` with the study metric."""
    return score(
        metric, cast(list[int], split.labels), predict(model, split, pad_token_id, batch_size, device, precision)
    )


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX, read from Linux's
    ``/proc/cpuinfo``). Elsewhere bf16 autocast is emulated, and slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether ``[train] precision`` means bf16 autocast on ``device``.

    ``auto`` turns it on where the hardware has bf16 matrix units: GPUs that support it, and CPUs
    with AVX512-BF16 or AMX (1.8x tokens/s on this project's CPU; the validation metric within 0.1
    point over 5 seeds, ``benchmarks/compare.py``).
    """
    if precision == "auto":
        return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    return precision == "bf16"


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context ``[train] precision`` asks for on ``device`` (disabled for fp32).

    Trained parameters stay fp32 (master weights); autocast runs the matmuls in bf16 (or fp16, on a
    GPU only: CPUs have no fast fp16)."""
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (``[train] gradient_checkpointing``).

    Non-reentrant checkpointing: with every input weight frozen, the reentrant kind would see no
    input that needs a gradient and silently train nothing below the checkpoint.
    """
    target: Any = getattr(model, "get_base_model", lambda: model)()  # peft wraps the transformers model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(target).__name__} does not support gradient checkpointing; set it to false")
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def train(
    model: nn.Module,
    task: Task,
    train_split: Split,
    eval_split: Split,
    pad_token_id: int,
    settings: TrainSection,
    learning_rate: float,
    metric: str,
    device: torch.device,
    seed: int,
    report: Callable[[int, float], None] = lambda step, value: None,
    progress: Callable[[int, int, float], None] = lambda step, total, loss: None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad for ``task``; return the final validation metric."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=settings.weight_decay)
    # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(enabled=settings.precision == "fp16" and device.type == "cuda")
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    total_steps = planned_steps(train_split, settings)
    steps_per_epoch = total_steps // settings.epochs
    warmup_steps = max(1, int(settings.warmup_ratio * total_steps))
    evals = settings.evals_per_epoch
    eval_steps = {
        e * steps_per_epoch + max(1, round(k * steps_per_epoch / evals))
        for e in range(settings.epochs)
        for k in range(1, evals + 1)
    }
    shuffle = random.Random(seed)

    step, tokens, train_seconds, eval_seconds, value = 0, 0, 0.0, 0.0, float("nan")
    model.train()
    for _epoch in range(settings.epochs):
        order = bucketed_order(train_split, settings.batch_size, shuffle) if settings.length_buckets else None
        for batch in batches(train_split, settings.batch_size, pad_token_id, shuffle, order=order):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, learning_rate, warmup_steps)
            batch = _to(batch, device)
            labels = batch.pop("labels")
            with autocast_for(device, settings.precision):
                logits = model(**batch).logits
            loss = task.loss(logits, labels)
            loss_value = loss.item()  # checked before the update: a NaN must not reach the weights
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step, loss_value)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            train_seconds += time.perf_counter() - started
            progress(step, total_steps, loss_value)

            if step in eval_steps:
                started = time.perf_counter()
                value = task.evaluate(
                    model, eval_split, metric, pad_token_id, settings.eval_batch_size, device, settings.precision
                )
                eval_seconds += time.perf_counter() - started
                if step < total_steps:  # the last value is the result: too late to prune
                    report(step, value)  # may raise optuna.TrialPruned
    return TrainResult(value, train_seconds, eval_seconds, tokens, step)
