"""How early does a rung rank the race's entrants as a full training does, by the metric or by the loss?

    python benchmarks/race_rungs.py --task sentiment --json rungs.json   # resumable: fits in the JSON are kept
    python benchmarks/race_rungs.py --task debates --summary-only --json rungs.json

The entrants are the race's own (the incumbent's bracket and the portfolio's, as ``autopeft run``
plans them, with the study's ``[search] trainings`` raised so that every candidate enters). Each is
trained at every ``--fractions`` of a full training with paired seed 0 (the race's first rung trains
one seed), scoring the validation metric and the validation loss, and at the full fidelity with
``--seeds`` paired seeds, scoring the metric. For each short fraction the table gives Spearman's rho
between its score (metric, or loss) and the full-fidelity mean, whether the best entrant at full
fidelity survives a cut to the top third, and how many of the full top three do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import study
from search_quality import TASKS

from autopeft.registry import ResolvedStudy
from autopeft.search import racing
from autopeft.search.racing import make_race_plan, race_seed
from autopeft.search.search_space import SearchSpace
from autopeft.training.train import FULL, Fidelity, planned_steps
from autopeft.training.workbench import Workbench


def _fits(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def measure(
    task: str, fractions: list[float], seeds: int, out: Path, spread: float | None = None, only: set[str] | None = None
) -> None:
    """Every planned entrant (of the candidates in ``only``, when given; with each bracket ``spread``
    apart, when given) at each of ``fractions`` on seed 0 and at full fidelity on ``seeds`` seeds."""
    if spread is not None:
        racing.BRACKET_SPREAD = spread  # the bracket's spacing is the quantity measured: set it for this run
    resolved = study(TASKS[task])
    config = resolved.config.at_final_fidelity()
    config = dataclasses.replace(config, search=dataclasses.replace(config.search, trainings=1e6))
    bench = Workbench(ResolvedStudy(config, resolved.task, resolved.pm))
    space = SearchSpace(bench)
    total = planned_steps(bench.data.train, config.train)
    from autopeft.search.proxy import proxy_scores

    plan = make_race_plan(space, 1e6, total, proxy_scores(bench).blocks)
    entrants = [e for e in plan.entrants if only is None or e.candidate in only]
    fits = _fits(out)
    done = {(f["entrant"], f["fraction"], f["seed"]) for f in fits}
    work = [(e, f, 0) for f in fractions for e in entrants] + [(e, 1.0, s) for s in range(seeds) for e in entrants]
    started = time.perf_counter()
    todo = [w for w in work if (w[0].key, w[1], w[2]) not in done]
    for i, (entrant, fraction, seed) in enumerate(todo, 1):
        steps = max(1, round(fraction * total))
        began = time.perf_counter()
        result = bench.fit(
            entrant.method,
            entrant.config,
            learning_rate=entrant.learning_rate,
            seed=race_seed(config.study.seed, seed),
            fidelity=FULL if steps >= total else Fidelity(steps=steps),
            score_loss=fraction < 1,
            test=fraction >= 1,
        )
        fits.append(
            {
                "entrant": entrant.key,
                "candidate": entrant.candidate,
                "fraction": fraction,
                "steps": steps,
                "seed": seed,
                "metric": result.metric,
                "loss": result.validation_loss,
                "test": result.test_metric,
                "seconds": time.perf_counter() - began,
            }
        )
        out.write_text(json.dumps(fits, indent=1))
        elapsed = time.perf_counter() - started
        print(
            f"[{i}/{len(todo)}] {entrant.key} at {steps} steps, seed {seed}: {result.metric:.4f}; "
            f"{elapsed / 60:.1f} min, about {elapsed / i * (len(todo) - i) / 60:.1f} min left",
            flush=True,
        )
    summary(
        task, out, sign=1 if resolved.directions[0] == "maximize" else -1, total=total, baseline=bench.baseline_value
    )


def summary(task: str, out: Path, sign: int, total: int, baseline: float | None = None) -> None:
    from scipy.stats import spearmanr

    fits = _fits(out)
    full: dict[str, list[float]] = {}
    test: dict[str, list[float]] = {}
    for f in fits:
        if f["fraction"] >= 1:
            full.setdefault(f["entrant"], []).append(f["metric"])
            test.setdefault(f["entrant"], []).append(f["test"])
    truth = {k: statistics.fmean(v) for k, v in full.items()}
    ranked = sorted(truth, key=lambda k: -sign * truth[k])
    print(f"\n### {task}: {len(truth)} entrants, a full training is {total} steps\n")
    print("| entrant | full validation mean ± sd | test mean |")
    print("| --- | ---: | ---: |")
    for k in ranked:
        sd = statistics.stdev(full[k]) if len(full[k]) > 1 else 0.0
        print(f"| {k} | {truth[k]:.4f} ± {sd:.4f} | {statistics.fmean(x for x in test[k] if x is not None):.4f} |")
    print("\n| fraction | steps | scored by | Spearman rho | best survives top third | full top 3 in top third |")
    print("| ---: | ---: | --- | ---: | --- | ---: |")
    degenerate = {}
    for fraction in sorted({f["fraction"] for f in fits if f["fraction"] < 1}):
        low = {f["entrant"]: f for f in fits if f["fraction"] == fraction and f["entrant"] in truth}
        keys = sorted(low)
        for by, goodness in (("metric", lambda f: sign * f["metric"]), ("loss", lambda f: -f["loss"])):
            rho = spearmanr([goodness(low[k]) for k in keys], [sign * truth[k] for k in keys]).statistic
            kept = sorted(keys, key=lambda k: -goodness(low[k]))[: max(1, -(-len(keys) // 3))]
            steps = next(iter(low.values()))["steps"]
            print(
                f"| {fraction:.3f} | {steps} | {by} | {rho:+.2f} | {'yes' if ranked[0] in kept else 'no'} | "
                f"{len(set(ranked[:3]) & set(kept))} |"
            )
        if baseline is not None:
            degenerate[steps] = sum(sign * low[k]["metric"] <= sign * baseline + 1e-9 for k in keys), len(keys)
    if baseline is not None:
        at_full = [sign * statistics.fmean(v) <= sign * baseline + 1e-9 for v in full.values()]
        degenerate[total] = sum(at_full), len(at_full)
        shares = ", ".join(f"{s} steps {d}/{n}" for s, (d, n) in sorted(degenerate.items()))
        print(f"\nat or below the baseline ({baseline:.4f}) by the metric: {shares} (full: by the seeds' mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--fractions", default="0.111,0.333")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--spread", type=float, help="the rate bracket's factor between rates (default: the race's)")
    parser.add_argument("--candidates", help="comma-separated candidate names to measure (default: every one)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.summary_only:
        resolved = study(TASKS[args.task])
        sign = 1 if resolved.directions[0] == "maximize" else -1
        bench = Workbench(resolved)
        total = planned_steps(bench.data.train, resolved.config.at_final_fidelity().train)
        summary(args.task, args.json, sign, total, bench.baseline_value)
    else:
        fractions = [float(x) for x in args.fractions.split(",") if x]
        only = set(args.candidates.split(",")) if args.candidates else None
        measure(args.task, fractions, args.seeds, args.json, args.spread, only)


if __name__ == "__main__":
    main()
