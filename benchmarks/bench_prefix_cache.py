"""Epoch time of trials whose lower blocks are frozen, with and without the prefix cache.

    python benchmarks/bench_prefix_cache.py [--epochs 3] [--precision fp32]

The quickstart model and data (6 blocks), two configurations with the 4 lower blocks frozen and
unadapted (LoRA r=8 on query+value of blocks 4-5; layer norms of blocks 4-5 unfrozen), each trained
twice (two learning rates, as two trials of a study would), first with ``[train] prefix_cache = false``
then ``true``, in one process. An epoch is its training steps plus its evaluation of the validation
split; *fill* is the one-off computation of the cached states, paid by the first trial that needs them.
"""

from __future__ import annotations

import argparse

from common import workbench

CONFIGS = {
    "lora r=8 q+v, blocks 4-5": (
        "lora",
        {"ranks": [0, 0, 0, 0, 8, 8], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.1},
    ),
    "layer norms, blocks 4-5": ("unfreeze", {"part": "norms", "blocks": [0, 0, 0, 0, 1, 1]}),
}
RATES = {"lora": (3e-3, 1e-2), "unfreeze": (1e-2, 3e-2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    print("| configuration | lr | cache | cached blocks | fill s | s per epoch | accuracy |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    per_epoch: dict[tuple[str, float, bool], float] = {}
    for cache in (False, True):
        bench = workbench(epochs=args.epochs, precision=args.precision, prefix_cache=cache)
        for label, (name, settings) in CONFIGS.items():
            for lr in RATES[name]:
                result = bench.fit(name, settings, learning_rate=lr, seed=0)
                seconds = (result.train_seconds + result.eval_seconds) / args.epochs
                per_epoch[label, lr, cache] = seconds
                print(
                    f"| {label} | {lr:g} | {'on' if cache else 'off'} | {result.cached_blocks} | "
                    f"{result.cache_seconds:.1f} | {seconds:.2f} | {result.metric:.4f} |"
                )
    print()
    for label, (name, _) in CONFIGS.items():
        for lr in RATES[name]:
            ratio = per_epoch[label, lr, False] / per_epoch[label, lr, True]
            print(f"{label}, lr {lr:g}: epochs {ratio:.2f}x faster with the cache (goal 2.5x)")


if __name__ == "__main__":
    main()
