"""The training loop: plain PyTorch, one function, readable in one sitting.

AdamW on the trainable parameters only (or the optimizer a method brings), linear warmup then
linear decay, gradient clipping, the task's loss and metric (:mod:`autopeft.tasks`), dynamic
padding (see :mod:`autopeft.data`). ``on_report`` sees the validation metric at every reporting
point but the last, and may stop a hopeless run there.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autopeft.config import TrainSection
from autopeft.data import Split, TaskData, batches, bucketed_order
from autopeft.precision import attention_for_training, autocast_for
from autopeft.tasks import EvalSettings, Task

__all__ = [
    "FULL",
    "Fidelity",
    "NonFiniteLoss",
    "TrainResult",
    "planned_steps",
    "steps_per_epoch",
    "learning_rate_at",
    "train",
    "enable_gradient_checkpointing",
]


@dataclass(frozen=True)
class Fidelity:
    """How much training one fit gets, and where it reports: what multi-fidelity search varies.

    The default is the study's full run (``[train] epochs`` over the train split, reporting
    ``evals_per_epoch`` times an epoch). ``steps`` (optimizer steps) or ``examples`` (examples seen,
    rounded up to whole batches) make a shorter or longer run with its own warmup and decay;
    ``report_at`` names the steps at which the validation metric is computed (the last step always
    is). A caller that wants a prefix of the full run instead keeps the full fidelity and stops it
    through ``on_report``.
    """

    steps: int | None = None
    examples: int | None = None
    report_at: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.examples is not None:
            raise ValueError("Fidelity: give steps or examples, not both")
        for what, value in (("steps", self.steps), ("examples", self.examples)):
            if value is not None and value < 1:
                raise ValueError(f"Fidelity: {what} must be >= 1, got {value}")

    def total_steps(self, train_split: Split, settings: TrainSection) -> int:
        """Optimizer steps of a fit at this fidelity."""
        if self.steps is not None:
            return self.steps
        if self.examples is not None:
            return math.ceil(self.examples / (settings.batch_size * settings.gradient_accumulation_steps))
        return planned_steps(train_split, settings)

    def report_steps(self, train_split: Split, settings: TrainSection) -> set[int]:
        """The steps at which the validation metric is computed; the last step is always one."""
        total = self.total_steps(train_split, settings)
        if self.report_at is not None:
            return {s for s in self.report_at if 0 < s < total} | {total}
        per_epoch = steps_per_epoch(train_split, settings)
        epochs = math.ceil(total / per_epoch)
        evals = settings.evals_per_epoch
        steps = {
            e * per_epoch + max(1, round(k * per_epoch / evals)) for e in range(epochs) for k in range(1, evals + 1)
        }
        return {s for s in steps if s < total} | {total}


#: The study's full training run.
FULL = Fidelity()


@dataclass
class TrainResult:
    """What one fit measured."""

    metric: float
    train_seconds: float
    eval_seconds: float
    train_tokens: int
    steps: int
    total_steps: int = 0  # the steps the fit was planned for: steps < total_steps when on_report stopped it
    stopped_at: int | None = None  # the step on_report stopped the fit at, None when it ran to the end
    setup_seconds: float = 0.0  # copying the base model and applying the method (set by the caller)
    peak_memory_mb: float = 0.0  # set by the caller, which knows the device
    cached_blocks: int = 0  # leading blocks the prefix cache stood in for (set by the caller)
    cache_seconds: float = 0.0  # computing the prefix states this trial did not find cached
    test_metric: float | None = None  # the test split's metric, when the caller asked for it
    test_seconds: float = 0.0  # scoring the test split
    trained_count: int | None = None  # PeftMethod.trained_count: what carries the update (AdaLoRA's pruned ranks)
    metric_se: float | None = None  # the metric's standard error on a small validation split (set by the caller)
    validation_loss: float | None = None  # the task's loss on the validation split, when the caller asked for it

    def measurements(self) -> dict[str, float]:
        """What a trial records of its fit (its user attributes): timings, throughput, memory, test metric."""
        keys = ("setup_seconds", "train_seconds", "eval_seconds", "train_tokens", "peak_memory_mb", "cached_blocks")
        found = {key: getattr(self, key) for key in (*keys, "cache_seconds", "test_seconds")}
        found["tokens_per_second"] = self.train_tokens / max(self.train_seconds, 1e-9)
        found |= {"test_metric": self.test_metric} if self.test_metric is not None else {}
        found |= {"metric_se": self.metric_se} if self.metric_se is not None else {}
        found |= {"validation_loss": self.validation_loss} if self.validation_loss is not None else {}
        return found | ({"trained_count": self.trained_count} if self.trained_count is not None else {})


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite: the trial cannot recover, so it stops here."""

    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value
        super().__init__(f"loss was {value} at step {step}")


def steps_per_epoch(train_split: Split, settings: TrainSection) -> int:
    """Optimizer steps of one pass over the train split: its batches, ``gradient_accumulation_steps``
    to a step (the last step of an epoch may add up fewer)."""
    return math.ceil(math.ceil(len(train_split) / settings.batch_size) / settings.gradient_accumulation_steps)


def planned_steps(train_split: Split, settings: TrainSection) -> int:
    """Optimizer steps of the study's full training run."""
    return steps_per_epoch(train_split, settings) * settings.epochs


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


#: Devices whose AdamW has a fused kernel: one launch a step, and the scaler's skip without a host sync.
_FUSED_ADAMW = ("cuda", "cpu")


def _read_every(device: torch.device) -> int:
    """Optimizer steps between reads of the loss: 10 on an accelerator, where each read waits for
    the device to finish its queue; every step on a CPU, where a read costs nothing."""
    return 1 if device.type == "cpu" else 10


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (``[train] gradient_checkpointing``).

    Non-reentrant checkpointing: with every input weight frozen, the reentrant kind would see no
    input that needs a gradient and silently train nothing below the checkpoint.
    """
    target: Any = getattr(model, "get_base_model", lambda: model)()  # peft wraps the transformers model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(target).__name__} does not support gradient checkpointing; set it to false")
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _grad_scaler(settings: TrainSection, device: torch.device) -> torch.amp.GradScaler:
    """The scaler skips a step whose gradients are not finite, on the device, so a NaN never reaches the
    weights and no step waits for the host. Its scale stays 1 but for fp16 (whose range underflows
    small gradients)."""
    fp16 = settings.precision == "fp16" and device.type == "cuda"
    scale, growth = (2.0**16, 2000) if fp16 else (1.0, 2**30)
    return torch.amp.GradScaler(device.type, init_scale=scale, growth_interval=growth)


def _read_losses(
    losses: torch.Tensor, read: int, step: int, progress: Callable[[int, int, float], None] | None
) -> None:
    """Read the losses of steps ``read`` to ``step`` off the device (the loop's one host sync), and stop
    at a non-finite one: its step was skipped, so the weights are still finite."""
    for at, loss_value in enumerate(losses[read:step].tolist(), start=read):
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(at, loss_value)
        if progress is not None:
            progress(at + 1, len(losses), loss_value)


def train(
    model: nn.Module,
    task: Task,
    data: TaskData,
    settings: TrainSection,
    evaluation: EvalSettings,
    *,
    learning_rate: float,
    metric: str,
    seed: int,
    fidelity: Fidelity = FULL,
    optimizer: torch.optim.Optimizer | None = None,
    on_report: Callable[[int, float], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad for ``task``; the result holds the final
    validation metric.

    ``optimizer`` (from the method's ``optimizer`` hook) defaults to AdamW; each of its parameter
    groups warms up to, and decays from, the learning rate it was created with. ``on_report(step,
    value)`` returning True stops the fit there; ``on_step(step, total)`` runs after every update
    (AdaLoRA reallocates its ranks there); ``progress(step, total, loss)`` drives the progress bar.
    """
    device = evaluation.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(
        params, lr=learning_rate, weight_decay=settings.weight_decay, fused=device.type in _FUSED_ADAMW
    )
    peaks = [group["lr"] for group in optimizer.param_groups]
    scaler = _grad_scaler(settings, device)
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    total_steps = fidelity.total_steps(data.train, settings)
    warmup_steps = max(1, int(settings.warmup_ratio * total_steps))
    report_steps = fidelity.report_steps(data.train, settings)
    accumulate = settings.gradient_accumulation_steps
    read_every = _read_every(device)
    losses = torch.zeros(total_steps, device=device)  # each step's loss, read in batches: one sync each
    shuffle = random.Random(seed)

    step, read, tokens, train_seconds, eval_seconds, value = 0, 0, 0, 0.0, 0.0, float("nan")
    model.train()
    while step < total_steps:  # one epoch a pass; a fidelity may end in the middle of one
        order = bucketed_order(data.train, settings.batch_size, shuffle) if settings.length_buckets else None
        epoch = batches(data.train, settings.batch_size, evaluation.pad_token_id, shuffle, order=order)
        while group_of := list(itertools.islice(epoch, accumulate)):  # the batches of one optimizer step
            started = time.perf_counter()
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = learning_rate_at(step, total_steps, peak, warmup_steps)
            for batch in group_of:  # gradients add up over the step's batches
                tokens += int(batch["attention_mask"].sum())  # counted on the host, before the copy
                batch = _to(batch, device)
                labels = batch.pop("labels")
                kernels = attention_for_training(device, settings.precision, batch["attention_mask"].shape[1])
                with autocast_for(device, settings.precision), kernels:
                    loss = task.training_loss(model, batch, labels)
                losses[step] += loss.detach() / len(group_of)
                scaler.scale(loss / len(group_of)).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if on_step is not None:
                on_step(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - started
            if step - read >= read_every or step in report_steps or step >= total_steps:
                _read_losses(losses, read, step, progress)
                read = step

            if step in report_steps:
                started = time.perf_counter()
                value = task.evaluate(model, data.validation, metric, evaluation)
                eval_seconds += time.perf_counter() - started
                # The last value is the result: too late to stop.
                if step < total_steps and on_report is not None and on_report(step, value):
                    return TrainResult(value, train_seconds, eval_seconds, tokens, step, total_steps, stopped_at=step)
            if step >= total_steps:
                break
    return TrainResult(value, train_seconds, eval_seconds, tokens, step, total_steps)
