"""Will a training step fit? A step's peak memory estimated before the first trial, against what the
device has left once the base is loaded.

Without it a study whose batch or length cannot fit grows until the kernel kills it (exit 137, no
message) or CUDA runs out of memory in the first trial; with it, the run stops before any trial with
one line naming the setting to lower. The estimate is coarse on purpose: it must refuse what cannot
fit by far, and never what fits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from autopeft.errors import ConfigError
from autopeft.precision import uses_bf16

if TYPE_CHECKING:
    from autopeft.training.workbench import Workbench

__all__ = ["available_memory", "require_memory", "step_memory_bytes"]


def require_memory(bench: Workbench) -> None:
    """Refuse, before the first trial, a batch that cannot fit the memory left on the device
    once the base is loaded (:func:`step_memory_bytes` against :func:`available_memory`).

    Raises:
        ConfigError: naming the setting to lower (``train.batch_size`` or
            ``train.eval_batch_size``, and ``data.max_length``).
    """
    found = available_memory(bench.device)
    if found is None:
        return
    free, what = found
    settings, data = bench.config.train, bench.data
    model_config = getattr(bench.base, "config", None)
    heads = next(
        (
            v
            for name in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
            if isinstance(v := getattr(model_config, name, None), int) and v > 0
        ),
        max(bench.ctx.embedding_dim // 64, 1),
    )
    width, layers = max(bench.ctx.embedding_dim, 1), max(len(bench.ctx.blocks), 1)
    if bench.task.new_head:
        outputs = max(len(data.label_names), 1)
    else:  # a language model's logits span its vocabulary
        embed = getattr(bench.base, "get_input_embeddings", None)
        embeddings = embed() if callable(embed) else None
        outputs = int(getattr(embeddings, "num_embeddings", 0) or getattr(model_config, "vocab_size", 1) or 1)
    half = settings.precision in ("bf16", "fp16") or uses_bf16(bench.device, settings.precision)
    largest = [bench.count(n, "largest") for n in bench.methods]
    trainable = min(bench.budget, max(largest, default=0))
    copied = 0
    if any(m.modifies_base for m in bench.methods.values()):  # such a method trains a copy of the base
        copied = sum(p.numel() * p.element_size() for p in bench.base.parameters())
    longest = max(len(f["input_ids"]) for f in data.train.features)
    need = step_memory_bytes(
        min(settings.batch_size, len(data.train)),
        longest,
        width,
        layers,
        heads,
        outputs,
        2 if half else 4,
        trainable,
        settings.gradient_checkpointing,
        copied_base_bytes=copied,
    )
    shape = f"{min(settings.batch_size, len(data.train))} × {longest} tokens × {layers} blocks of width {width}"
    if need > free:
        raise ConfigError(
            "train.batch_size",
            f"a training step needs about {_gib(need)} ({shape}, a coarse estimate), more than the "
            f"{_gib(free)} of {what} left",
            f"lower train.batch_size ({settings.batch_size}) or data.max_length ({bench.config.data.max_length})"
            + ("" if settings.gradient_checkpointing else ", or set train.gradient_checkpointing = true"),
        )
    scored = [s for s in (data.validation, data.test) if s is not None]
    batch = min(settings.eval_batch_size, max(len(s) for s in scored))
    longest = max(len(f["input_ids"]) for s in scored for f in s.features)
    need = step_memory_bytes(batch, longest, width, layers, heads, outputs, 2 if half else 4, training=False)
    if need > free:
        raise ConfigError(
            "train.eval_batch_size",
            f"an evaluation batch needs about {_gib(need)} ({batch} × {longest} tokens, a coarse estimate), "
            f"more than the {_gib(free)} of {what} left",
            f"lower train.eval_batch_size ({settings.eval_batch_size}) or data.max_length "
            f"({bench.config.data.max_length})",
        )


def step_memory_bytes(
    batch: int,
    length: int,
    width: int,
    layers: int,
    heads: int,
    outputs: int,
    element_bytes: int = 4,
    trainable: int = 0,
    checkpointing: bool = False,
    training: bool = True,
    copied_base_bytes: int = 0,
) -> int:
    """A coarse estimate of a step's peak memory beyond the loaded base, in bytes.

    Training keeps each block's activations for the backward pass: ``34·b·s·h + 5·a·b·s²`` bytes a
    block at 2 bytes an element (Korthikanti et al., 2022, "Reducing activation recomputation in large
    transformer models"), for ``b`` examples of ``s`` tokens, width ``h`` and ``a`` attention heads;
    with gradient checkpointing only each block's input is kept, plus one block's activations. The
    logits (``outputs`` per token: the vocabulary of a language model) are held in fp32 with their
    softmax and gradient, and every trainable parameter costs 16 bytes (fp32 weight, gradient and
    Adam's two moments); a method that rewrites base weights trains a copy of the base
    (``copied_base_bytes``). Evaluation (``training=False``) keeps one block's activations at a time.
    """
    per_block = (34 * batch * length * width + 5 * heads * batch * length**2) * element_bytes // 2
    logits = 3 * batch * length * outputs * 4
    if not training:
        return per_block + logits
    if checkpointing:
        kept = layers * batch * length * width * element_bytes + per_block
    else:
        kept = layers * per_block
    return kept + logits + 16 * trainable + copied_base_bytes


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes a step can still use on ``device``, what they are), or None where that cannot be read:
    CUDA's free memory plus what PyTorch holds unused; on a CPU, ``MemAvailable`` of
    ``/proc/meminfo`` (``os.sysconf`` elsewhere), or a container's cgroup limit less its use when
    that is smaller."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a mocked or vanished device: no estimate, never a crash
            free, _ = torch.cuda.mem_get_info(device)
            spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + spare), "free GPU memory"
        return None
    if device.type == "mps":
        with contextlib.suppress(Exception):  # older PyTorch lacks these
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()), "MPS memory"
        return None
    found = [v for v in (_ram_available(), _cgroup_available()) if v is not None]
    return (min(found), "available RAM") if found else None


def _ram_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration, IndexError):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024
    import os

    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_available() -> int | None:
    """A cgroup's memory limit less what it uses (its reclaimable page cache counted as free): what
    the kernel lets this container grow by before it kills a process (exit 137)."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        root = Path("/sys/fs/cgroup")
        with contextlib.suppress(OSError, ValueError):
            limit_text = (root / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:  # no limit
                return None
            used = int((root / usage_file).read_text())
            stats = dict(line.split() for line in (root / stat_file).read_text().splitlines() if line.count(" ") == 1)
            return max(int(limit_text) - used + int(stats.get(cache_key, 0)), 0)
    return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
