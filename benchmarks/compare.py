"""autopeft against the hand-written Trainer search and a plain PyTorch loop, side by side in one run.

    python benchmarks/compare.py [--trials 10] [--precision bf16]

Runs, in one process and in this order: the baseline search of :mod:`baseline` (Optuna TPE around
``Trainer`` with ``model_init``), the quickstart study with autopeft's speed-ups on (tokens cached,
length-bucketed batches, frozen-prefix caching, ``--precision``), and one epoch of the plain fp32 loop.
Same model, data, budget (0.5%), epochs (1) and number of trained trials. Prints the ratios the
speed goals are stated in: timings on a shared machine vary from run to run, ratios from one run less.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from baseline import SearchRecord, plain_loop, trainer_search  # this folder's modules
from common import QUICKSTART as STUDY
from common import study as resolve

from autopeft import run_study
from autopeft.registry import ResolvedStudy
from autopeft.training.workbench import Workbench


def fast_config(folder: Path, precision: str) -> ResolvedStudy:
    """The quickstart copied into ``folder`` (no token cache from an earlier run), speed-ups on."""
    shutil.copytree(STUDY.parent / "data", folder / "data")
    shutil.copy(STUDY, folder / STUDY.name)
    return resolve(folder / STUDY.name, precision=precision, length_buckets=True, prefix_cache=True)


def autopeft_search(n_trials: int, precision: str) -> tuple[SearchRecord, optuna.Study]:
    """The quickstart study with the speed-ups on: a timeline like the baseline's."""
    with tempfile.TemporaryDirectory() as folder:
        config = fast_config(Path(folder), precision)
        started, wall = time.perf_counter(), time.time()
        study = run_study(config, n_trials=n_trials, storage=f"sqlite:///{folder}/compare.db", quiet=True)
        record = SearchRecord(total_seconds=time.perf_counter() - started)
    for t in study.trials:
        a = t.user_attrs
        record.trials.append(
            {
                "start": t.datetime_start.timestamp() - wall,
                "end": t.datetime_complete.timestamp() - wall,
                "value": t.value if "train_seconds" in a else None,
                "train": a.get("train_seconds", 0.0),
                "eval": a.get("eval_seconds", 0.0) + a.get("test_seconds", 0.0),  # new bests score the test split
                "method": a["method"],
                "tokens_per_second": a.get("tokens_per_second"),
            }
        )
    return record, study


def autopeft_lora(seeds: list[int], precision: str) -> list[dict[str, float]]:
    """The plain loop's configuration (LoRA r=8, alpha 16, query+value, lr 3e-3) trained by autopeft
    with the speed-ups on, once per seed: tokens/s and validation accuracy."""
    with tempfile.TemporaryDirectory() as folder:
        bench = Workbench(fast_config(Path(folder), precision))
        config = {"ranks": [8] * 6, "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}
        results = [bench.fit("lora", config, learning_rate=3e-3, seed=seed) for seed in seeds]
    return [{"tokens_per_second": r.train_tokens / r.train_seconds, "accuracy": r.metric} for r in results]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def first_reaching(record: SearchRecord, value: float) -> float | None:
    """Seconds from the start of a search until a trial scored at least ``value``; None if none did."""
    ends = [t["end"] for t in record.trials if t["value"] is not None and t["value"] >= value]
    return min(ends) if ends else None


def overhead(record: SearchRecord) -> float:
    """Seconds per trained trial that were neither training nor evaluation steps: the whole search's
    time less its steps, so start-up, model loads and untrained over-budget trials are counted."""
    trained = [t for t in record.trials if t["value"] is not None]
    steps = sum(t["train"] + t["eval"] for t in trained)
    return (record.total_seconds - steps) / len(trained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the throughput and metric check")
    args = parser.parse_args()
    resolve()  # imports done before any clock starts, for both searches

    baseline = trainer_search(args.trials, budget=113_569)
    ours, study = autopeft_search(args.trials, args.precision)
    seeds = list(range(args.seeds))
    plain = [plain_loop(seed) for seed in seeds]
    fast = autopeft_lora(seeds, args.precision)

    print("## Trials\n\n| search | trial | method / configuration | start s | end s | train s | eval s | accuracy |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, record in (("baseline", baseline), ("autopeft", ours)):
        for number, t in enumerate(record.trials):
            what = t.get("method") or f"lora {t['params']}"
            value = "over budget" if t["value"] is None else f"{t['value']:.4f}"
            print(
                f"| {name} | {number} | {what} | {t['start']:.1f} | {t['end']:.1f} | {t['train']:.1f} | "
                f"{t['eval']:.1f} | {value} |"
            )

    reached = first_reaching(ours, baseline.best)
    print("\n## Ratios (goal in brackets)\n")
    trained = sum(t["value"] is not None for t in baseline.trials)
    print(f"- trained trials: baseline {trained} (of {len(baseline.trials)} tried), autopeft {len(ours.trials)}")
    print(f"- best validation accuracy: baseline {baseline.best:.4f}, autopeft {ours.best:.4f}")
    print(
        f"- total wall time: baseline {baseline.total_seconds:.1f} s, autopeft {ours.total_seconds:.1f} s: "
        f"**{ours.total_seconds / baseline.total_seconds:.2f}x**"
    )
    if reached is None:
        print("- time to reach the baseline's best: not reached within autopeft's trials (<= 0.33x)")
    else:
        print(
            f"- time to reach the baseline's best ({baseline.best:.4f}): autopeft {reached:.1f} s = "
            f"**{reached / baseline.total_seconds:.2f}x** the baseline's total (<= 0.33x)"
        )
    print(
        f"- per-trial overhead (not training or evaluation): baseline {overhead(baseline):.2f} s, "
        f"autopeft {overhead(ours):.2f} s: **{overhead(ours) / overhead(baseline):.2f}x**"
    )
    plain_speed, fast_speed = (_mean_sd([r["tokens_per_second"] for r in rs]) for rs in (plain, fast))
    plain_metric, fast_metric = (_mean_sd([r["accuracy"] for r in rs]) for rs in (plain, fast))
    print(
        f"- training tokens/s, LoRA r=8 query+value, mean ± sd of {len(seeds)} seeds: plain fp32 loop "
        f"{plain_speed[0]:,.0f} ± {plain_speed[1]:,.0f}, autopeft {fast_speed[0]:,.0f} ± {fast_speed[1]:,.0f}: "
        f"**{fast_speed[0] / plain_speed[0]:.2f}x** (>= 2x)"
    )
    each = [", ".join(f"{r['accuracy']:.4f}" for r in rs) for rs in (plain, fast)]
    print(
        f"- their validation accuracy: plain fp32 loop {plain_metric[0]:.4f} ± {plain_metric[1]:.4f} "
        f"({each[0]}), autopeft {fast_metric[0]:.4f} ± {fast_metric[1]:.4f} ({each[1]}): "
        f"**{100 * (fast_metric[0] - plain_metric[0]):+.2f} points** (within 1)"
    )


if __name__ == "__main__":
    main()
