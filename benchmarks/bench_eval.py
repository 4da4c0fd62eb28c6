"""Evaluation speed by batch size: the quickstart's validation split scored by autopeft's ``predict``.

    python benchmarks/bench_eval.py [--precision fp32]

``predict`` runs under ``inference_mode`` with batches sorted by length; the quickstart trains with
batches of 32 and evaluates with 128 (``[train] eval_batch_size``). Each size is timed twice, the
better run kept; the predictions must not depend on the batch size.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from common import workbench

from autopeft_plugins.tasks import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    bench = workbench()
    data, model = bench.data, bench.base
    reference = None
    for size in (32, 128, 256):
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            settings = dataclasses.replace(bench.evaluation, batch_size=size, precision=args.precision)
            predictions = predict(model, data.validation, settings)
            seconds.append(time.perf_counter() - started)
        reference = reference or predictions
        same = sum(a == b for a, b in zip(predictions, reference))
        print(
            f"batch {size}: {min(seconds):.2f} s for {len(data.validation):,} examples "
            f"({len(data.validation) / min(seconds):,.0f}/s); predictions equal to batch 32's: {same:,}"
        )


if __name__ == "__main__":
    main()
