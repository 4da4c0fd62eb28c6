"""How long an over-budget trial costs: it is counted, told to Optuna as infeasible, never trained.

    python benchmarks/bench_infeasible.py [--trials 30]

A random search over LoRA r=8 with targets in {query+value, all} on the quickstart model with a 20k
budget: sampling is fitted to the budget, but r=8 on every linear of even one block (55k) cannot fit,
so the configurations with targets "all" are over budget: about half. Prints the ask-to-tell time of
the infeasible trials (SQLite storage included) and checks that no trained trial exceeded the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile

from common import study as resolve

from autopeft import run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    config = resolve().config
    config = dataclasses.replace(
        config,
        study=dataclasses.replace(config.study, sampler="random", pruner="none"),
        budget=dataclasses.replace(config.budget, max_trainable="20k"),
        data=dataclasses.replace(config.data, max_train_examples=32, max_eval_examples=32),
        search=dataclasses.replace(
            config.search,
            methods=["lora"],
            warm_start=False,
            options={"lora": {"r": [8], "targets": ["query+value", "all"]}},
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        study = run_study(config, n_trials=args.trials, storage=f"sqlite:///{folder}/infeasible.db", quiet=True)
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    trained = [t for t in study.trials if "train_seconds" in t.user_attrs]
    ms = [(t.datetime_complete - t.datetime_start).total_seconds() * 1000 for t in infeasible]
    print(f"{len(infeasible)} of {len(study.trials)} trials over budget (20,000): never trained")
    print(f"ask-to-tell of an infeasible trial: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms")
    largest = max(t.user_attrs["trainable_params"] for t in trained)
    print(f"{len(trained)} trained trials, the largest with {largest} trainable parameters")
    assert largest <= 20_000


if __name__ == "__main__":
    main()
