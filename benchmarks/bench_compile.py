"""Does ``torch.compile`` pay for its compile time within one quickstart trial?

    python benchmarks/bench_compile.py [--precision fp32]

One epoch of the quickstart's default LoRA (r=8, query+value) through autopeft's own ``train``,
eager and then ``torch.compile(model, dynamic=True)`` (dynamic: every batch is padded to its own
length), the compile time included in the compiled run's first steps, as a trial would pay it.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import workbench

from autopeft.training.train import train

LORA = {"ranks": [8] * 6, "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    bench = workbench(precision=args.precision, prefix_cache=False)
    lora = bench.enabled["lora"]
    for compiled in (False, True):
        torch.manual_seed(0)
        model = lora.apply(copy.deepcopy(bench.base), bench.ctx, LORA)
        if compiled:
            model = torch.compile(model, dynamic=True)
        started = time.perf_counter()
        result = train(
            model,
            bench.task,
            bench.data,
            bench.config.train,
            bench.evaluation,
            learning_rate=3e-3,
            metric=bench.config.task.metric,
            seed=0,
        )
        wall = time.perf_counter() - started
        print(
            f"{'compiled' if compiled else 'eager'}: trial {wall:.1f} s (train {result.train_seconds:.1f} s, "
            f"eval {result.eval_seconds:.1f} s), {result.train_tokens / result.train_seconds:,.0f} tokens/s, "
            f"accuracy {result.metric:.4f}"
        )


if __name__ == "__main__":
    main()
