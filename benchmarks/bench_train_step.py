"""Shorter training steps on a CPU: the attention kernel and the answer-only logits, each on and off.

    python benchmarks/bench_train_step.py [--steps 12]

Two studies, the default LoRA (r=8 on query and value) for ``--steps`` steps with the same seed, in
the study's own precision (bf16 autocast on a CPU with bf16 units):

- ``studies/smollm2-instruct.toml`` (SmolLM2-135M, 8 chats of about 80 tokens a step, the loss on
  the one-word answer): with PyTorch's CPU flash attention or the math kernel, and with the
  vocabulary's logits at every position or at the answer's positions only;
- ``studies/quickstart.toml`` (MiniLM-L6, a classifier): flash or math.

Each line gives seconds a training step (the loop's own clock, the first step left out) and the
validation metric, which the kernels and the kept logits must not move beyond bf16's rounding.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from common import workbench

from autopeft.tasks import Task
from autopeft.training import train as train_module
from autopeft.training.train import Fidelity
from autopeft_plugins.tasks import CausalLanguageModelling

DEFAULT_LORA = {"alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


def _fit(bench, steps: int, *, math_kernel: bool, kept_logits: bool) -> tuple[float, float]:
    """(median seconds a step after the first, validation metric) of one default-LoRA fit."""
    kernel = train_module.attention_for_training
    kept = CausalLanguageModelling.training_loss
    if not math_kernel:
        train_module.attention_for_training = lambda *_: contextlib.nullcontext()
    if not kept_logits:
        CausalLanguageModelling.training_loss = Task.training_loss
    stamps: list[float] = []
    try:
        result = bench.fit(
            "lora",
            {"ranks": [8] * len(bench.ctx.blocks), **DEFAULT_LORA},
            learning_rate=4e-3,
            seed=1,
            fidelity=Fidelity(steps=steps),
            on_loss=lambda *_: stamps.append(time.perf_counter()),
        )
    finally:
        train_module.attention_for_training, CausalLanguageModelling.training_loss = kernel, kept
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])), result.metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    cases = {
        "studies/smollm2-instruct.toml": [(False, False), (True, False), (False, True), (True, True)],
        "studies/quickstart.toml": [(False, False), (True, False)],
    }
    for path, variants in cases.items():
        bench = workbench(path)
        for math_kernel, kept_logits in variants:
            seconds, metric = _fit(bench, args.steps, math_kernel=math_kernel, kept_logits=kept_logits)
            kernel = "math kernel" if math_kernel else "flash kernel"
            logits = ", answer logits only" if kept_logits else ""
            print(f"{path}: {kernel}{logits}: {seconds:.3f} s a step, validation {metric:.4f}", flush=True)


if __name__ == "__main__":
    main()
