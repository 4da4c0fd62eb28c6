"""Shorter training steps on a CPU: the attention kernel and the answer-only logits, each on and off.

    python benchmarks/bench_train_step.py [--steps 12] [--rounds 3]

Two studies, the default LoRA (r=8 on query and value) for ``--steps`` steps with the same seed, in
the study's own precision (bf16 autocast on a CPU with bf16 units):

- ``studies/smollm2-instruct.toml`` (SmolLM2-135M, 8 chats of about 80 tokens a step, the loss on
  the one-word answer): with PyTorch's CPU flash attention or the math kernel, and with the
  vocabulary's logits at every position or at the answer's positions only;
- ``studies/quickstart.toml`` (MiniLM-L6, a classifier): flash or math.

The variants take turns, ``--rounds`` times. Each line gives the median of a variant's seconds a
training step (a fit's median between steps, the first left out), each round's, and the validation
metrics it reached, which the kernels and the kept logits must not move beyond bf16's rounding.

``--profile`` instead profiles one fit of each kernel on each study (6 steps and the validation pass)
and prints the CPU seconds of the attention operators: this machine's speed wanders by a third from
minute to minute, the operators' share of a step much less.

Then where flash attention overtakes the math kernel (``CPU_FLASH_MIN_LENGTH``): the same LoRA on
SmolLM2, a step on random tokens (the loss on every position) at 128, 256 and 512 tokens, in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Iterator

import torch
from common import DEFAULT_LORA, workbench
from torch.nn.attention import SDPBackend, sdpa_kernel

from autopeft.tasks import Task
from autopeft.training import train as train_module
from autopeft.training.train import Fidelity
from autopeft_plugins.tasks import CausalLanguageModelling


@contextlib.contextmanager
def _variant(*, math_kernel: bool, kept_logits: bool) -> Iterator[None]:
    """Training as before this benchmark's two changes, where asked: PyTorch's own attention kernel,
    every position's logits."""
    kernel, kept = train_module.attention_for_training, CausalLanguageModelling.training_loss
    if not math_kernel:
        train_module.attention_for_training = lambda *_: contextlib.nullcontext()
    if not kept_logits:
        CausalLanguageModelling.training_loss = Task.training_loss
    try:
        yield
    finally:
        train_module.attention_for_training, CausalLanguageModelling.training_loss = kernel, kept


def _default_lora(bench) -> dict:
    return {"ranks": [8] * len(bench.ctx.blocks), **DEFAULT_LORA}


def _fit(bench, steps: int, *, math_kernel: bool, kept_logits: bool) -> tuple[float, float]:
    """(median seconds a step after the first, validation metric) of one default-LoRA fit."""
    stamps: list[float] = []
    with _variant(math_kernel=math_kernel, kept_logits=kept_logits):
        result = bench.fit(
            "lora",
            _default_lora(bench),
            learning_rate=4e-3,
            seed=1,
            fidelity=Fidelity(steps=steps),
            on_loss=lambda *_: stamps.append(time.perf_counter()),
        )
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])), result.metric


def _by_length(bench, rows: int, length: int, *, math_kernel: bool, steps: int = 4) -> float:
    """Median seconds of a forward and backward pass of the default LoRA on ``rows`` random sequences."""
    model = bench.enabled["lora"].apply(copy.deepcopy(bench.base), bench.ctx, _default_lora(bench)).train()
    ids = torch.randint(0, bench.base.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        kernel = sdpa_kernel(SDPBackend.MATH) if math_kernel else contextlib.nullcontext()
        with torch.autocast("cpu", dtype=torch.bfloat16), kernel:
            loss = bench.task.training_loss(model, batch, ids)
        loss.backward()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def _attention_seconds(bench, steps: int, *, math_kernel: bool) -> dict[str, float]:
    """CPU seconds of each attention operator (flash, math, their matmuls and softmax) in one fit."""
    from torch.profiler import ProfilerActivity, profile

    with _variant(math_kernel=math_kernel, kept_logits=True), profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.fit("lora", _default_lora(bench), learning_rate=4e-3, seed=1, fidelity=Fidelity(steps=steps))
    names = ("scaled_dot_product", "bmm", "softmax")
    return {
        e.key: e.self_cpu_time_total / 1e6
        for e in prof.key_averages()
        if any(n in e.key for n in names) and e.self_cpu_time_total > 1e4
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="the attention operators' CPU seconds instead")
    args = parser.parse_args()
    if args.profile:
        for path in ("studies/smollm2-instruct.toml", "studies/quickstart.toml"):
            bench = workbench(path)
            for math_kernel in (False, True):
                found = _attention_seconds(bench, 6, math_kernel=math_kernel)
                shown = ", ".join(f"{k.removeprefix('aten::')} {v:.2f} s" for k, v in sorted(found.items()))
                print(f"{path}: {'math' if math_kernel else 'flash'} kernel: {shown}", flush=True)
        return
    cases = {
        "studies/smollm2-instruct.toml": [(False, False), (True, False), (False, True), (True, True)],
        "studies/quickstart.toml": [(False, False), (True, False)],
    }
    for path, variants in cases.items():
        bench = workbench(path)
        found: dict[tuple[bool, bool], list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.rounds):  # the variants in turn, so that a slow spell of the machine hits each
            for math_kernel, kept_logits in variants:
                found[math_kernel, kept_logits].append(
                    _fit(bench, args.steps, math_kernel=math_kernel, kept_logits=kept_logits)
                )
        for (math_kernel, kept_logits), runs in found.items():
            kernel = "math kernel" if math_kernel else "flash kernel"
            logits = ", answer logits only" if kept_logits else ""
            steps = ", ".join(f"{seconds:.3f}" for seconds, _ in runs)
            metrics = sorted({round(metric, 4) for _, metric in runs})
            print(
                f"{path}: {kernel}{logits}: median {statistics.median(s for s, _ in runs):.3f} s a step "
                f"({steps}), validation {metrics}",
                flush=True,
            )
        if path.startswith("studies/smollm2"):
            for rows, length in ((8, 128), (4, 256), (2, 512)):
                flash, math = (_by_length(bench, rows, length, math_kernel=m) for m in (False, True))
                print(f"SmolLM2, {rows} x {length} random tokens: flash {flash:.3f} s, math {math:.3f} s", flush=True)


if __name__ == "__main__":
    main()
