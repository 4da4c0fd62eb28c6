"""Does the fast path keep the metric? Each speed-up against autopeft's plain loop, with paired seeds.

    python benchmarks/fast_path_metric.py [--seeds 10] [--study studies/quickstart.toml]

The quickstart's default configuration (LoRA r=8 on query and value, lr 3e-3) is trained once per
seed in each arm: the plain loop (fp32, batches in shuffled order, every block run every step), each
speed-up alone (bf16 autocast, length-bucketed batches, the frozen-prefix cache), and all of them (the
study's settings). A seed fixes the task head's initial weights and the shuffle, so arm and plain
loop differ only by the speed-up (length buckets reorder the batches: that is the speed-up). Per arm:
validation accuracy mean ± sd, and the paired difference to the plain loop with its 95% t-interval.
The speed-ups keep the metric when the mean difference is within 1 point and the interval covers 0.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import QUICKSTART, workbench
from scipy import stats

ARMS = {
    "plain loop (fp32, shuffled, no cache)": {"precision": "fp32", "length_buckets": False, "prefix_cache": False},
    "bf16 autocast": {"precision": "bf16", "length_buckets": False, "prefix_cache": False},
    "length buckets": {"precision": "fp32", "length_buckets": True, "prefix_cache": False},
    "frozen-prefix cache": {"precision": "fp32", "length_buckets": False, "prefix_cache": True},
    "all three (the study's settings)": {"precision": "bf16", "length_buckets": True, "prefix_cache": True},
}
LORA = {"ranks": [8] * 6, "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


def interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% t-interval."""
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--study", type=Path, default=QUICKSTART)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    scores: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for arm, train in ARMS.items():
        bench = workbench(args.study, **train)
        started = time.perf_counter()
        scores[arm] = [bench.fit("lora", LORA, learning_rate=3e-3, seed=s).metric for s in seeds]
        seconds[arm] = (time.perf_counter() - started) / len(seeds)
        print(f"{arm}: {', '.join(f'{v:.4f}' for v in scores[arm])}", flush=True)
    plain = scores[next(iter(ARMS))]
    print(f"\n| arm | accuracy mean ± sd ({len(seeds)} seeds) | paired difference, points [95% interval] | s per fit |")
    print("| --- | ---: | ---: | ---: |")
    for arm, values in scores.items():
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        if values is plain:
            paired = "-"
        else:
            d, low, high = interval([a - b for a, b in zip(values, plain)])
            paired = f"{100 * d:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        print(f"| {arm} | {mean:.4f} ± {sd:.4f} | {paired} | {seconds[arm]:.1f} |")


if __name__ == "__main__":
    main()
