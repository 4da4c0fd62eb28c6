"""How often the search samples over budget, and what sampling costs, on the shipped studies' spaces.

    python benchmarks/bench_sampling.py [--trials 300]

Runs the quickstart (one objective: lora, unfreeze, bitfit) and quickstart-pareto (two objectives,
five methods) search spaces with training replaced by an instant formula, with the studies' own
samplers (TPE, seeded) and budgets, into SQLite. Prints the share of sampled configurations that were
over budget (none of them is trained either way) and the median time from ask to tell per trial.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from common import STUDIES, instant_fit
from common import study as resolve

from autopeft import run_study
from autopeft.training.workbench import Workbench


def _within_budget(bench: Workbench, method: object, n: int) -> None:
    assert n <= bench.budget, "an over-budget configuration reached training"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    Workbench.fit = instant_fit(_within_budget)  # type: ignore[method-assign]
    for name in ("quickstart.toml", "quickstart-pareto.toml"):
        config = resolve(STUDIES / name).config
        with tempfile.TemporaryDirectory() as folder:
            study = run_study(config, n_trials=args.trials, storage=f"sqlite:///{folder}/s.db", quiet=True)
        trials = study.trials
        infeasible = sum(1 for t in trials if t.user_attrs.get("infeasible"))
        ms = [(t.datetime_complete - t.datetime_start).total_seconds() * 1000 for t in trials]
        print(
            f"{name}: {infeasible} of {len(trials)} sampled configurations over budget "
            f"({100 * infeasible / len(trials):.1f}%); ask-to-tell median {statistics.median(ms):.0f} ms"
        )


if __name__ == "__main__":
    main()
