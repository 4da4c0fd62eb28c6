"""Evaluation speed by batch size: the quickstart's validation split scored by autopeft's ``predict``.

    python benchmarks/bench_eval.py [--precision fp32]

``predict`` runs under ``inference_mode`` with batches sorted by length; the quickstart trains with
batches of 32 and evaluates with 128 (``[train] eval_batch_size``). Each size is timed twice, the
better run kept; the predictions must not depend on the batch size.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from autopeft import get_plugin_manager, load_config
from autopeft.objective import Objective
from autopeft.progress import quiet_libraries
from autopeft.train import predict

STUDY = Path(__file__).resolve().parent.parent / "studies" / "quickstart.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    quiet_libraries()
    config = load_config(STUDY)
    objective = Objective(config, get_plugin_manager())
    data, model = objective.data, objective.base
    reference = None
    for size in (32, 128, 256):
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            predictions = predict(model, data.validation, data.pad_token_id, size, torch.device("cpu"), args.precision)
            seconds.append(time.perf_counter() - started)
        reference = reference or predictions
        same = sum(a == b for a, b in zip(predictions, reference))
        print(
            f"batch {size}: {min(seconds):.2f} s for {len(data.validation):,} examples "
            f"({len(data.validation) / min(seconds):,.0f}/s); predictions equal to batch 32's: {same:,}"
        )


if __name__ == "__main__":
    main()
