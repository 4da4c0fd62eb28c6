"""Inject faults into a running multi-worker study and count what was lost.

    python benchmarks/bench_faults.py [--trials 16] [--workers 3] [--kills 3] [--interrupts 2]
                                      [--nan-rate 0.01] [--error-rate 0.01] [--storage URL]

Workers (``autopeft worker``) share one study (a fresh SQLite file, or ``--storage``) of the
quickstart on a small data slice with 2-second heartbeats. ``tests/faults/sitecustomize.py`` makes
each training step's loss NaN, or raise ``RuntimeError("injected fault")``, at the given per-step
rates. Meanwhile the script ``kill -9``s a worker in mid-trial ``--kills`` times and sends SIGINT
(Ctrl-C) to one ``--interrupts`` times, starting a fresh worker after each. At the end it checks that
exactly ``--trials`` trials finished, that nothing is left running or queued, and that every killed
or interrupted trial was retried, and prints the tally.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autopeft.storage.backends import open_storage
from autopeft.storage.results import FINISHED, retry_of

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"


def study_file(folder: Path, name: str) -> Path:
    text = (STUDIES / "quickstart.toml").read_text()
    text = text.replace('name = "quickstart"', f'name = "{name}"\nheartbeat_seconds = 2')
    text = text.replace('"data/', f'"{STUDIES}/data/')
    text = text.replace("max_train_examples = 1500", "max_train_examples = 200\nmax_eval_examples = 100")
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--interrupts", type=int, default=2)
    parser.add_argument("--nan-rate", type=float, default=0.01)
    parser.add_argument("--error-rate", type=float, default=0.01)
    parser.add_argument("--storage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dice = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp())
    name = f"bench-faults-{int(time.time())}"
    path = study_file(tmp, name)
    url = args.storage or f"sqlite:///{tmp / name}.db"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), os.environ.get("PYTHONPATH", "")]),
        "AUTOPEFT_TEST_STEP_SECONDS": "0.3",
        "AUTOPEFT_TEST_NAN_RATE": str(args.nan_rate),
        "AUTOPEFT_TEST_ERROR_RATE": str(args.error_rate),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "autopeft", "worker", str(path), "--n-trials", str(args.trials), "--quiet"]
    command += ["--storage", args.storage] if args.storage else []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp / f"worker-{time.monotonic_ns()}.log").open("wb")
        # SIGINT as a terminal's Ctrl-C delivers it, even when this script runs as a background job
        # (whose children a shell starts with SIGINT ignored).
        return subprocess.Popen(
            command, env=env, stderr=log, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
        )

    procs = {p.pid: p for p in (start() for _ in range(args.workers))}
    faults = ["kill"] * args.kills + ["interrupt"] * args.interrupts
    dice.shuffle(faults)
    done: dict[str, list[int]] = {"kill": [], "interrupt": []}
    started = time.perf_counter()
    while faults and any(p.poll() is None for p in procs.values()):
        time.sleep(dice.uniform(2, 6))
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url, 2))
        except KeyError:
            continue
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "worker" in t.user_attrs]
        victims = [(t, int(t.user_attrs["worker"].rsplit(":", 1)[1])) for t in running]
        victims = [(t, pid) for t, pid in victims if pid in procs and procs[pid].poll() is None]
        if not victims:
            continue
        trial, pid = dice.choice(victims)
        fault = faults.pop()
        procs[pid].send_signal(signal.SIGKILL if fault == "kill" else signal.SIGINT)
        procs[pid].wait()
        done[fault].append(trial.number)
        new = start()
        procs[new.pid] = new
    codes = [p.wait(timeout=1800) for p in procs.values()]
    seconds = time.perf_counter() - started

    trials = optuna.load_study(study_name=name, storage=open_storage(url, 2)).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    retried = {retry_of(t): t for t in trials if retry_of(t) is not None}
    nan = [t for t in trials if str(t.user_attrs.get("pruned_reason", "")).startswith("loss was nan")]
    errors = [t for t in trials if t.user_attrs.get("error", "").startswith("RuntimeError: injected fault")]
    dangling = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    unretried = [n for n in done["kill"] + done["interrupt"] if n not in retried]
    lost = max(0, args.trials - len(finished)) + len(unretried) + len(dangling)
    print(f"storage: {url if not args.storage else 'postgresql'}; {args.workers} workers; {seconds:.0f} s")
    print(f"workers started: {len(procs)}; exit codes: {sorted(codes)} (-9 killed, 130 interrupted)")
    print(
        f"faults injected: {len(done['kill'])} kill -9 (trials {done['kill']}), {len(done['interrupt'])} SIGINT "
        f"(trials {done['interrupt']}), {len(nan)} NaN losses (pruned), {len(errors)} plugin exceptions (failed)"
    )
    print(
        f"trials: {len(trials)} recorded, {len(finished)} finished of {args.trials} wanted, "
        f"{len(retried)} retries linked to their failed trial, {len(dangling)} left running or queued"
    )
    print(f"trials lost: {lost}")
    for log in sorted(tmp.glob("worker-*.log")):
        text = log.read_text().strip()
        if "Traceback" in text or "error" in text:
            print(f"{log}:\n{text[-3000:]}")
    sys.exit(0 if lost == 0 and len(finished) == args.trials else 1)


if __name__ == "__main__":
    main()
