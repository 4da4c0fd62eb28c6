"""Local worker processes: ``autopeft run STUDY --workers N``.

Each worker is ``python -m autopeft worker`` on the same study and storage, exactly what a worker
on another machine runs; the study's storage is the only thing they share. The CPU cores are split
between them (``OMP_NUM_THREADS``), and on a machine with several GPUs each worker gets one.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna

from autopeft.errors import AutopeftError, Interrupted
from autopeft.progress import Progress
from autopeft.search.study import prepare_study, resolve
from autopeft.storage.backends import STORAGE_ENV

__all__ = ["run_workers", "worker_env"]

#: How long a worker may take to record its interrupted trial before it is killed.
_STOP_SECONDS = 60


def worker_env(index: int, workers: int, cores: int, gpus: list[str]) -> dict[str, str]:
    """Environment of local worker ``index`` of ``workers``: its share of the cores, and its GPU.

    ``gpus`` are the visible GPU ids (``CUDA_VISIBLE_DEVICES`` order); workers take them in turn.
    """
    threads = str(max(1, cores // workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def _visible_gpus() -> list[str]:
    import torch

    count = torch.cuda.device_count()
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def run_workers(
    study_file: str | Path,
    workers: int,
    n_trials: int | None = None,
    storage: str | None = None,
    quiet: bool = False,
    start_from: str | Path | None = None,
) -> optuna.Study:
    """Prepare the study here, then run ``workers`` worker processes on it until it has ``n_trials``.

    Raises:
        AutopeftError: a worker exited with an error (its own line on stderr says which).
        Interrupted: Ctrl-C or SIGTERM; each worker marked its running trial failed and queued it again.
    """
    resolved = resolve(study_file, check_data=True)
    config = resolved.config
    if ":memory:" in (storage or config.storage):
        raise AutopeftError(
            "--workers: an in-memory SQLite study cannot be shared between processes; use a file or a server"
        )
    target = n_trials or config.study.n_trials
    progress = Progress(quiet=quiet)
    study, objective = prepare_study(resolved, target, storage, progress, start_from)
    if objective is None:
        return study
    del objective  # the workers load their own copy of the model
    gc.collect()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = _visible_gpus()
    shares = f"{max(1, cores // workers)} CPU threads each"
    if gpus:
        shares += ", GPUs " + ", ".join(
            worker_env(i, workers, cores, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(workers)
        )
    progress.line(f"starting {workers} workers, {shares}")
    command = [sys.executable, "-m", "autopeft", "worker", str(config.path), "--n-trials", str(target)]
    command += ["--quiet"] if quiet else []
    # The URL (and any password in it) goes through the environment, which only this user can read; a
    # command line is visible to every local user through ps.
    shared = {STORAGE_ENV: storage} if storage else {}
    # Each in its own session: Ctrl-C reaches only this process, which passes the stop on to each.
    procs = [
        subprocess.Popen(
            [*command, "--label", f"w{i + 1}"],
            env={**os.environ, **shared, **worker_env(i, workers, cores, gpus)},
            start_new_session=True,
        )
        for i in range(workers)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        _stop(procs)
        raise Interrupted(
            f"interrupted: {workers} workers stopped, each trial they were running marked failed and queued again"
        ) from None
    failed = [(i + 1, code) for i, code in enumerate(codes) if code != 0]
    if failed:
        raise AutopeftError(
            f"worker w{failed[0][0]} exited with code {failed[0][1]} (its error is above); "
            "fix it and run the same command to resume"
        )
    return study


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            # SIGTERM, not SIGINT: a shell starts background jobs with SIGINT ignored, and the workers
            # inherit that; autopeft handles SIGTERM itself, the way it handles Ctrl-C.
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            p.kill()  # its trial's heartbeat stops; the next worker to start fails and retries it
