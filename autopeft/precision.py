"""The precision policy: when matmuls run in bf16 or fp16 autocast, and when in fp32, and which
attention kernel a bf16 training step on a CPU runs.

Its own module because the training loop, evaluation and the prefix cache must all decide it the
same way: a prefix computed in another precision than the trial trains in would change results.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["cpu_has_bf16", "uses_bf16", "autocast_for", "attention_for_training", "CPU_FLASH_MIN_LENGTH"]

#: From this many tokens a sequence, PyTorch's CPU flash attention trains SmolLM2-135M in bf16 faster
#: than the math kernel: 1.83 s against 2.39 s a step at 4 x 256 tokens, where at 8 x 128 the math
#: kernel took 2.04 s and flash 2.40 s (benchmarks/bench_train_step.py).
CPU_FLASH_MIN_LENGTH = 256


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


def attention_for_training(
    device: torch.device, precision: str, length: int
) -> contextlib.AbstractContextManager[object]:
    """The scaled-dot-product attention kernels a training step's forward pass (and so its backward)
    may use, for batches ``length`` tokens long.

    PyTorch's CPU flash-attention kernel is slow to differentiate in bf16 on short sequences: on
    SmolLM2-135M at about 80 tokens its forward and backward took 0.57 s of a training step, the
    math kernel's (matmuls and a softmax, the same function) 0.10 s (benchmarks/README.md, "Shorter
    training steps on a CPU"). Below :data:`CPU_FLASH_MIN_LENGTH` tokens, bf16 training on a CPU
    runs the math kernel; elsewhere (fp32, GPUs, long sequences, evaluation) PyTorch chooses as it
    always does. Models that train with attention dropout (BERT's) already get the math kernel, and
    models with their own attention code (eager) are unaffected.
    """
    if device.type == "cpu" and length < CPU_FLASH_MIN_LENGTH and uses_bf16(device, precision):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()
