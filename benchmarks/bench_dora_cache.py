"""DoRA's cache in evaluation: one DoRA training of the instruction study, scored with and without it.

    python benchmarks/bench_dora_cache.py [--steps 8]

The race's DoRA entrant (r=1 on every linear of SmolLM2-135M-Instruct) trains ``--steps`` steps with
the same seed twice: once with peft's DoRA cache off during evaluation (``FREE_MEMORY_SHARE = 0``,
so it never fits), once as autopeft runs it. Each fit scores the validation split (200 greedy
answers and the answers' loss) and the test split (400 answers). The cache must change neither the
metric nor the loss; it should cut the evaluation time.
"""

from __future__ import annotations

import argparse

from common import workbench

from autopeft import inference_cache
from autopeft.training.train import Fidelity

DORA_ALL = {"alpha": 2, "dropout": 0.0, "targets": "all", "variant": "dora"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    bench = workbench("studies/smollm2-instruct.toml")
    config = DORA_ALL | {"ranks": [1] * len(bench.ctx.blocks)}
    found = {}
    for name, share in (("without the cache", 0.0), ("with the cache", inference_cache.FREE_MEMORY_SHARE)):
        inference_cache.FREE_MEMORY_SHARE = share
        result = bench.fit(
            "lora", config, learning_rate=8e-3, seed=1, fidelity=Fidelity(steps=args.steps), score_loss=True, test=True
        )
        found[name] = (result.metric, result.validation_loss, result.test_metric)
        scores = f"exact match {result.metric:.4f}, loss {result.validation_loss:.4f}, test {result.test_metric:.4f}"
        times = f"train {result.train_seconds:.1f} s, validation {result.eval_seconds:.1f} s"
        print(f"{name}: {scores}; {times}, test {result.test_seconds:.1f} s", flush=True)
    assert found["with the cache"] == found["without the cache"], found


if __name__ == "__main__":
    main()
