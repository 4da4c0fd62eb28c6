"""Trials per hour with 1, 2 and 4 local workers on the same study.

    python benchmarks/bench_workers.py [--workers 1 2 4] [--trials 12] [--storage URL]

Runs ``autopeft run STUDY --workers N --n-trials T`` on a fresh study per N: the quickstart study
(MiniLM, LoRA / unfreeze / BitFit under 0.5%) on a 400-example slice of its training data and 300
validation examples, so each trial takes seconds on a CPU. Reports the wall time of the whole command
(worker start-up included), trials per hour over it and over the span from the first trial's start to
the last one's end (start-up excluded), and checks that exactly T trials finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autopeft.storage.backends import open_storage
from autopeft.storage.results import FINISHED

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def study_file(folder: Path, name: str) -> Path:
    """The quickstart study file, renamed, on a smaller slice of its data."""
    text = (STUDIES / "quickstart.toml").read_text()
    text = text.replace('name = "quickstart"', f'name = "{name}"').replace('"data/', f'"{STUDIES}/data/')
    text = text.replace("max_train_examples = 1500", "max_train_examples = 400\nmax_eval_examples = 300")
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def run(workers: int, trials: int, folder: Path, storage: str | None) -> dict:
    name = f"bench-workers-{workers}-{int(time.time())}"
    path = study_file(folder, name)
    command = [sys.executable, "-m", "autopeft", "run", str(path), "--workers", str(workers), "--n-trials", str(trials)]
    command += ["--storage", storage] if storage else []
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    wall = time.perf_counter() - started
    url = storage or f"sqlite:///{folder / name}.db"
    done = optuna.load_study(study_name=name, storage=open_storage(url, 30)).get_trials(states=FINISHED)
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "workers": workers,
        "finished": len(done),
        "wall_seconds": round(wall, 1),
        "trials_per_hour": round(len(done) / wall * 3600),
        "trials_per_hour_after_startup": round(len(done) / span * 3600),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--storage", help="a shared database instead of a fresh SQLite file per run")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"{os.cpu_count()} CPU cores; {args.trials} trials per run")
    print("| workers | finished | wall s | trials/hour | trials/hour after start-up |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            row = run(n, args.trials, Path(tmp), args.storage)
            rows.append(row)
            print(
                f"| {n} | {row['finished']} | {row['wall_seconds']} | {row['trials_per_hour']} | "
                f"{row['trials_per_hour_after_startup']} |",
                flush=True,
            )
            assert row["finished"] == args.trials, row
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
