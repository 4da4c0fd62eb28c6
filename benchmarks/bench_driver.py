"""The time autopeft's driver adds per trial, at trial 10, 100 and 1,000 of one study.

    python benchmarks/bench_driver.py [--trials 1000] [--storage URL] [--proxy] [--profile]

The quickstart study (its model, budget, TPE sampler and real search space: lora with per-block
ranks, unfreeze, bitfit) with training replaced by an instant formula, so every second measured is
the driver's: the gate before each trial, sampling, budget counting, the user attributes, the
storage writes and reads, and the bookkeeping after each trial. A trial's time is from the end of
one instant "training" to the end of the next. SQLite by default; ``--storage postgresql://...``
for a server (the study is deleted first). ``--proxy`` runs the last 20 trials through ``autopeft
serve-storage`` (Optuna's gRPC storage proxy, in its own process) in front of that storage, as
thousands of workers would, after the first ones went straight to it (through the proxy they would
take an hour: its cost grows with the study); only the figure at the last trial is then printed.
``--profile`` prints where the last 20 trials' time went.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import optuna
from common import instant_fit, study

from autopeft import run_study
from autopeft.storage.backends import mask_url
from autopeft.training.workbench import Workbench

ENDS: list[float] = []
TAIL = 20  # --proxy: trials run through the proxy, at the end
SPENT: dict[str, list[tuple[float, float]]] = {"sampler": [], "trial reads": []}  # seconds, appended per call


def _timed(owner: type, name: str, bucket: str) -> None:
    """Wrap ``owner.name`` so the seconds each call takes land in ``SPENT[bucket]`` (with the time)."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[bucket].append((started, time.perf_counter() - started))

    setattr(owner, name, timed)


def share_at(at: int, bucket: str) -> float:
    """Milliseconds per trial spent in ``bucket`` over the same trials :func:`per_trial_ms` looks at."""
    lo, hi = (max(0, at - 7), at - 2) if at <= 10 else (at - 12, at - 1)
    start, end = ENDS[lo], ENDS[hi]
    return 1000 * sum(d for t, d in SPENT[bucket] if start <= t < end) / (hi - lo)


def per_trial_ms(at: int) -> float:
    """Median driver time of the trials around trial number ``at`` (1-based), in milliseconds."""
    gaps = [b - a for a, b in zip(ENDS, ENDS[1:])]  # gaps[i]: trial i+2
    window = gaps[max(0, at - 7) : at - 2] if at <= 10 else gaps[at - 12 : at - 1]
    return 1000 * statistics.median(window)


@contextlib.contextmanager
def grpc_proxy(study_file: str, backend: str) -> Iterator[str]:
    """``autopeft serve-storage`` in front of ``backend`` in a process of its own; its grpc:// URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "AUTOPEFT_STORAGE": backend}  # the URL's password stays off the command line
    cmd = [sys.executable, "-m", "autopeft", "serve-storage", study_file, "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # the proxy listens once its storage is open
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"autopeft serve-storage did not start (exit {server.poll()})")
            time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--proxy", action="store_true", help="through autopeft serve-storage (gRPC)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    Workbench.fit = instant_fit(lambda bench, method, n: ENDS.append(time.perf_counter()))  # type: ignore[method-assign]
    from optuna.samplers import TPESampler
    from optuna.storages._cached_storage import _CachedStorage

    for name in ("infer_relative_search_space", "sample_relative", "sample_independent"):
        _timed(TPESampler, name, "sampler")
    _timed(_CachedStorage, "get_all_trials", "trial reads")
    if args.proxy:
        from optuna.storages import GrpcStorageProxy

        _timed(GrpcStorageProxy, "get_all_trials", "trial reads")
    config = study().config
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        storage = args.storage or f"sqlite:///{folder}/driver.db"
        try:
            optuna.delete_study(study_name=config.study.name, storage=storage)
        except KeyError:
            pass
        backend = mask_url(storage).split(":")[0]
        started = time.perf_counter()
        if args.proxy:
            run_study(config, n_trials=args.trials - TAIL, storage=storage, quiet=True)
            storage = stack.enter_context(grpc_proxy(str(config.path), storage))
            backend = f"{backend}, the last {TAIL} trials through the gRPC proxy"
        run_study(config, n_trials=args.trials - 20 if args.profile else args.trials, storage=storage, quiet=True)
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run_study, config, n_trials=args.trials, storage=storage, quiet=True)
        total = time.perf_counter() - started
    print(f"{backend}: {args.trials} trials in {total:.1f} s")
    for at in (10, 100, 1000):
        if at <= len(ENDS) and (not args.proxy or at > args.trials - TAIL + 8):
            parts = ", ".join(f"{bucket} {share_at(at, bucket):.0f} ms" for bucket in SPENT)
            print(f"  per trial at trial {at}: {per_trial_ms(at):.0f} ms ({parts}; the sampler's reads are in both)")
    if args.profile:
        stats = pstats.Stats(profile).sort_stats("cumulative")
        stats.print_stats(30)
        stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
