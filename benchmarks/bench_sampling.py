"""How often the search samples over budget, and what sampling costs, on the shipped studies' spaces.

    python benchmarks/bench_sampling.py [--trials 300]

Runs the quickstart (one objective: lora, unfreeze, bitfit) and quickstart-pareto (two objectives,
five methods) search spaces with training replaced by an instant formula, with the studies' own
samplers (TPE, seeded) and budgets, into SQLite. Prints the share of sampled configurations that were
over budget (none of them is trained either way) and the median time from ask to tell per trial.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from autopeft import load_config, run_study
from autopeft.objective import Objective
from autopeft.progress import quiet_libraries
from autopeft.train import TrainResult

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def _instant_fit(self, method, config, learning_rate, seed, report=None, label="", test=False):  # type: ignore[no-untyped-def]
    n = method.count_trainable(self.ctx, config)
    assert n <= self.budget, "an over-budget configuration reached training"
    value = 0.6 + 0.1 * math.log(n) / math.log(self.budget) + 0.05 * math.sin(learning_rate * 1e3)
    return TrainResult(value, 0.0, 0.0, 0, self.total_steps), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    quiet_libraries()
    Objective.fit = _instant_fit  # type: ignore[method-assign]
    for name in ("quickstart.toml", "quickstart-pareto.toml"):
        config = load_config(STUDIES / name)
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
