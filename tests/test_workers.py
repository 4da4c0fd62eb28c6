"""Many workers on one study: exactly n_trials, dead workers' trials retried, Ctrl-C resumable.

Workers are real processes (``python -m autopeft``), on SQLite and on the PostgreSQL server
``.ci/run`` starts. ``tests/faults`` holds their trials in mid-run until the test has sent its signal
(``AUTOPEFT_TEST_HOLD_DIR``), so a test stops one in mid-trial however busy the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import write_study
from optuna.trial import TrialState

from autopeft.progress import Progress
from autopeft.search.coordination import Surplus, check_not_surplus, wait_for_slot
from autopeft.search.workers import worker_env
from autopeft.storage.backends import open_storage, retry_trial
from autopeft.storage.optuna_adapter import set_user_attrs
from autopeft.storage.results import FINISHED, retry_of

FAULTS = Path(__file__).parent / "faults"
# The pieces are tested with study.ask(), which warns that heartbeats are meant for study.optimize.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _env(step_seconds: float = 0.0, hold: Path | None = None) -> dict[str, str]:
    """The environment of a worker process: the fault hooks on PYTHONPATH; ``hold``: every trial's
    fit waits in mid-trial until the test writes ``hold/release`` (see :func:`_held`)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]),
        "AUTOPEFT_TEST_STEP_SECONDS": str(step_seconds),
    }
    env.pop("AUTOPEFT_TEST_HOLD_DIR", None)
    return {**env, "AUTOPEFT_TEST_HOLD_DIR": str(hold)} if hold is not None else env


def _autopeft(
    *args: object, step_seconds: float = 0.0, background: bool = False, hold: Path | None = None
) -> subprocess.Popen[str]:
    """``python -m autopeft ARGS``; ``background``: with SIGINT ignored, as a shell starts ``cmd &``;
    ``hold``: its trials wait in mid-trial until released (:func:`_held`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "autopeft", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(step_seconds, hold),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None,
    )


def _hold_dir(tmp_path: Path) -> Path:
    hold = tmp_path / "hold"
    hold.mkdir()
    return hold


def _held(hold: Path, count: int = 1, timeout: float = 300, procs: tuple[subprocess.Popen[str], ...] = ()) -> list[int]:
    """Numbers of ``count`` trials held in mid-run by the fault hook (``AUTOPEFT_TEST_HOLD_DIR``):
    each is inside its fit and stays there until ``hold/release`` exists, so a signal sent now lands
    in mid-trial however slow the machine. Fails early if one of ``procs`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = sorted(int(f.read_text()) for f in hold.glob("held-*"))
        if len(held) >= count:
            return held
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            raise AssertionError(
                f"exited with {exited[0].returncode} before {count} trials were held: {exited[0].communicate()}"
            )
        time.sleep(0.1)
    raise AssertionError(f"no {count} trials held within {timeout} s")


def _release(hold: Path) -> None:
    (hold / "release").write_text("")


def _study(
    tmp_path: Path, n_trials: int, storage: str | None = None, methods: tuple[str, ...] = ("bitfit", "lora")
) -> tuple[Path, str, str]:
    """A tiny study with 1-second heartbeats: (study file, storage URL, study name)."""
    name = f"workers-{uuid.uuid4().hex[:8]}"
    study = {"name": name, "n_trials": n_trials, "seed": 0, "heartbeat_seconds": 1}
    path = write_study(
        tmp_path,
        study={**study, **({"storage": storage} if storage else {})},
        search={"methods": list(methods)},
        data={"max_train_examples": 32, "max_eval_examples": 16},
    )
    return path, storage or f"sqlite:///{tmp_path / name}.db", name


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, 1))


def _running_trials(url: str, name: str, count: int = 1, timeout: float = 180) -> list[int]:
    """Numbers of ``count`` trials in mid-training (their method chosen), once there are that many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = _load(url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # not created yet
            trials = []
        started = [t.number for t in trials if "method" in t.user_attrs]
        if len(started) >= count:
            return started
        time.sleep(0.2)
    raise AssertionError(f"no {count} running trials within {timeout} s")


def _assert_accounted_for(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n_trials finished, nothing left running or waiting, every failure with its reason or retry."""
    trials = study.get_trials()
    assert sum(t.state in FINISHED for t in trials) == n_trials
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = {retry_of(t) for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "error" in t.user_attrs or t.number in retried, t
    return trials


def _assert_sampled_configurations_differ(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Workers sample with their own seeds: no two sampled (not queued) trials are the same."""
    sampled = [
        json.dumps(t.params, sort_keys=True)
        for t in trials
        if t.state in FINISHED and "warm_start" not in t.user_attrs and "retry_history" not in t.system_attrs
    ]
    assert len(sampled) == len(set(sampled)), sampled


# -- the pieces ---------------------------------------------------------------------------------


def test_worker_env_splits_cores_and_deals_out_gpus() -> None:
    assert worker_env(0, 4, 16, [])["OMP_NUM_THREADS"] == "4"
    assert worker_env(3, 4, 2, [])["OMP_NUM_THREADS"] == "1"  # never zero threads
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2, 8, [])
    assert [worker_env(i, 3, 8, ["4", "6"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "6", "4"]


def _plain_study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'plain.db'}", 1))


def test_wait_for_slot_waits_while_running_trials_would_finish_the_study(tmp_path: Path) -> None:
    study = _plain_study(tmp_path)
    study.tell(study.ask(), 1.0)
    running = study.ask()
    assert wait_for_slot(study, 3, Progress(quiet=True), 0.05)  # 1 finished + 1 running < 3: start one

    def fail_it() -> None:  # the running trial fails in another worker after a while
        time.sleep(0.5)
        study.tell(running, state=TrialState.FAIL)

    threading.Thread(target=fail_it).start()
    started = time.monotonic()
    assert wait_for_slot(study, 2, Progress(quiet=True), 0.05)  # it waited, then the slot opened
    assert time.monotonic() - started >= 0.4
    study.tell(study.ask(), 2.0)
    assert not wait_for_slot(study, 2, Progress(quiet=True), 0.05)  # 2 finished: stop


def test_wait_for_slot_fails_a_dead_workers_trial_and_queues_it_again(tmp_path: Path) -> None:
    study = _plain_study(tmp_path)
    study.tell(study.ask(), 1.0)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat thread: looks dead
    study._storage.record_heartbeat(dead._trial_id)  # type: ignore[attr-defined]
    assert wait_for_slot(study, 2, Progress(quiet=True), 0.2)  # waits out the 2-second grace period
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[-1].state == TrialState.WAITING and trials[-1].system_attrs["failed_trial"] == dead.number
    assert trials[-1].params == trials[dead.number].params


def test_retries_stop_after_max_retries(tmp_path: Path) -> None:
    from autopeft.storage.backends import MAX_RETRIES

    study = _plain_study(tmp_path)
    number = study.ask().number
    for _ in range(MAX_RETRIES + 2):
        study.tell(number, state=TrialState.FAIL)
        retry_trial(study, study.get_trials()[number])
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if not waiting:
            break
        number = study.ask().number  # pops the retry
    assert len(study.trials) == MAX_RETRIES + 1
    assert study.trials[-1].system_attrs["retry_history"] == list(range(MAX_RETRIES))


def test_a_simultaneous_surplus_start_gives_way(tmp_path: Path) -> None:
    study = _plain_study(tmp_path)
    first, second = study.ask(), study.ask()  # two workers asked at the same moment for the last trial
    check_not_surplus(first, 1)  # the earlier one runs
    with pytest.raises(Surplus):
        check_not_surplus(second, 1)
    assert study.trials[1].user_attrs["surplus"] is True


def test_sqlite_takes_parallel_writers_without_database_is_locked(tmp_path: Path) -> None:
    # Four processes writing trials as fast as they can, with heartbeats: Optuna's default SQLite
    # setup fails this way ("database is locked"); WAL and the long busy timeout must not.
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    optuna.create_study(study_name="busy", storage=open_storage(url, 1))
    code = (
        "import optuna, sys\n"
        "from autopeft.storage.backends import open_storage\n"
        "optuna.logging.set_verbosity(optuna.logging.ERROR)\n"
        f"study = optuna.load_study(study_name='busy', storage=open_storage({url!r}, 1))\n"
        "study.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=40)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    states = [t.state for t in _load(url, "busy").get_trials()]
    assert len(states) == 160 and set(states) == {TrialState.COMPLETE}
    import sqlite3

    with sqlite3.connect(tmp_path / "busy.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "memory"])
def test_user_attributes_set_together_are_stored_and_seen(tmp_path: Path, request, backend) -> None:
    if backend == "memory":
        storage = optuna.storages.InMemoryStorage()  # no RDB: one call per attribute
    else:
        url = f"sqlite:///{tmp_path / 'attrs.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
        storage = open_storage(url, 30)
    name = f"attrs-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    trial.set_user_attr("kept", 1)
    set_user_attrs(trial, {"a": 1, "b": [1, 2], "kept": 2})
    assert trial.user_attrs == {"kept": 2, "a": 1, "b": [1, 2]}
    study.tell(trial, 0.5)
    stored = optuna.load_study(study_name=name, storage=storage).trials[0].user_attrs
    assert stored == {"kept": 2, "a": 1, "b": [1, 2]}
    with pytest.raises(RuntimeError):  # a finished trial stays finished, as with set_user_attr
        set_user_attrs(trial, {"late": 1})
    if backend == "sqlite":
        with storage.engine.connect() as connection:  # commits need not wait for the disk under WAL
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


# -- whole workers ------------------------------------------------------------------------------


def test_run_with_local_workers_finishes_exactly_n_trials(tmp_path: Path, minilm_available) -> None:
    path, url, name = _study(tmp_path, 4)
    hold = _hold_dir(tmp_path)
    # Each worker's first trial waits until both are in mid-trial: one cannot finish all 4 alone.
    run = _autopeft("run", path, "--workers", "2", hold=hold)
    _held(hold, count=2, procs=(run,))
    _release(hold)
    out, err = run.communicate(timeout=600)
    run = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert run.returncode == 0, run.stderr
    assert "starting 2 workers, 1 CPU threads each" in run.stderr
    assert "[w1] " in run.stderr and "[w2] " in run.stderr and "best trial" in run.stdout
    trials = _assert_accounted_for(_load(url, name), 4)
    assert len({t.user_attrs["worker"] for t in trials if t.state in FINISHED}) == 2
    _assert_sampled_configurations_differ(trials)


def test_three_workers_share_one_postgresql_study(tmp_path: Path, postgres_url: str, minilm_available) -> None:
    path, url, name = _study(tmp_path, 5)  # the study file names no storage: each worker is told
    hold = _hold_dir(tmp_path)  # the first trials wait until two workers are in mid-trial
    workers = [_autopeft("worker", path, "--storage", postgres_url, "--label", f"m{i}", hold=hold) for i in range(3)]
    _held(hold, count=2, procs=tuple(workers))
    _release(hold)
    results = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in results]
    assert all("worker done" in out for out, _ in results)
    trials = _assert_accounted_for(_load(postgres_url, name), 5)
    assert len({t.user_attrs["worker"] for t in trials if t.state in FINISHED}) >= 2
    _assert_sampled_configurations_differ(trials)
    assert not Path(url.removeprefix("sqlite:///")).exists()  # nothing went to the default SQLite file


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_worker_s_trial_is_failed_and_retried(tmp_path: Path, request, backend, minilm_available) -> None:
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    path, url, name = _study(tmp_path, 3, storage)
    hold = _hold_dir(tmp_path)
    victim = _autopeft("worker", path, hold=hold)  # its trial waits in mid-run until it is killed
    [killed] = _held(hold, procs=(victim,))
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    survivor = _autopeft("worker", path)
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err

    trials = _assert_accounted_for(_load(url, name), 3)
    assert trials[killed].state == TrialState.FAIL and "error" not in trials[killed].user_attrs
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state in FINISHED and retry.params == trials[killed].params
    shown = subprocess.run(
        [sys.executable, "-m", "autopeft", "trials", str(path), "--format", "csv"],
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout
    assert "its worker was lost in mid-trial" in shown
    assert any(line.split(",")[0] == str(retry.number) and line.endswith(f",{killed}") for line in shown.splitlines())


def test_ctrl_c_marks_the_trial_and_the_same_command_resumes(tmp_path: Path, minilm_available) -> None:
    path, url, name = _study(tmp_path, 2)
    hold = _hold_dir(tmp_path)
    run = _autopeft("run", path, hold=hold)  # its trial waits in mid-run until the signal: never finished first
    [stopped] = _held(hold, procs=(run,))
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"autopeft: interrupted: trial {stopped} marked failed and queued again; run the same command again to resume"
    )
    trials = _load(url, name).get_trials()
    assert trials[stopped].state == TrialState.FAIL and trials[stopped].user_attrs["error"].startswith("interrupted")
    assert [t.state for t in trials if t.state in (TrialState.RUNNING,)] == []
    [queued] = [t for t in trials if t.state == TrialState.WAITING and t.system_attrs.get("failed_trial") == stopped]

    again = _autopeft("run", path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    trials = _assert_accounted_for(_load(url, name), 2)
    assert trials[queued.number].state in FINISHED and trials[queued.number].params == trials[stopped].params


def test_sigterm_stops_local_workers_and_the_same_command_resumes(tmp_path: Path, minilm_available) -> None:
    path, url, name = _study(tmp_path, 3)
    # Started the way `nohup autopeft run ... &` is (SIGINT ignored, and inherited by the workers)
    hold = _hold_dir(tmp_path)  # both workers' trials wait in mid-run until the signal
    run = _autopeft("run", path, "--workers", "2", background=True, hold=hold)
    stopped = _held(hold, count=2, procs=(run,))
    run.send_signal(signal.SIGTERM)  # what a scheduler sends; Ctrl-C takes the same path
    _, err = run.communicate(timeout=180)
    assert run.returncode == 130, err
    assert "2 workers stopped" in err.strip().splitlines()[-1]
    trials = _load(url, name).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(trials[n].state == TrialState.FAIL for n in stopped)
    assert all(trials[n].user_attrs["error"].startswith("interrupted") for n in stopped)  # stopped, not killed
    again = _autopeft("run", path, "--workers", "2")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    trials = _assert_accounted_for(_load(url, name), 3)
    assert {t.system_attrs.get("failed_trial") for t in trials} >= set(stopped)


def test_a_trial_failed_by_another_worker_does_not_stop_this_one(tmp_path: Path, monkeypatch, minilm_available) -> None:
    # Another worker took this worker's trial for dead (its heartbeats came late) and failed it while
    # it was still training: Optuna cannot record the result; the worker goes on with the study.
    from autopeft import run_study
    from autopeft_plugins.bitfit import BitFit

    path, url, name = _study(tmp_path, 2, methods=("bitfit",))
    real, calls = BitFit.apply, []

    def apply_while_another_worker_fails_the_trial(self, model, ctx, config):
        calls.append(1)
        if len(calls) == 1:
            other = _load(url, name)
            [running] = other.get_trials(states=(TrialState.RUNNING,))
            other.tell(running.number, state=TrialState.FAIL)
        return real(self, model, ctx, config)

    monkeypatch.setattr(BitFit, "apply", apply_while_another_worker_fails_the_trial)
    study = run_study(path, quiet=True)
    trials = study.get_trials()
    assert sum(t.state in FINISHED for t in trials) == 2
    assert trials[0].state == TrialState.FAIL


def test_a_queued_retry_started_first_keeps_its_place(tmp_path: Path) -> None:
    # The retry of trial 0 has a lower number than the new trial 2 but started after it: it gives way.
    study = _plain_study(tmp_path)
    study.tell(study.ask(), state=TrialState.FAIL)
    retry_trial(study, study.trials[0])  # trial 1, waiting
    optuna_new = study._storage.create_new_trial(study._study_id)  # type: ignore[attr-defined]
    assert study._storage.get_trial(optuna_new).number == 2  # type: ignore[attr-defined]
    retry = study.ask()  # pops trial 1 after trial 2 started
    assert retry.number == 1
    with pytest.raises(Surplus):
        check_not_surplus(retry, 1)


def test_workers_refuse_an_in_memory_study(study_file: Path, capsys) -> None:
    from autopeft.cli.command import main

    assert main(["run", str(study_file), "--workers", "2", "--storage", "sqlite:///:memory:"]) == 2
    assert "cannot be shared between processes" in capsys.readouterr().err


def test_workers_sample_with_their_own_seeds(study_file: Path) -> None:
    from autopeft.config import load_config
    from autopeft.search.samplers import make_sampler

    def first_draw(worker_seed: int) -> float:
        study = optuna.create_study(sampler=make_sampler(load_config(study_file), worker_seed))
        return study.ask().suggest_float("x", 0, 1)

    assert first_draw(0) == first_draw(0)  # one worker: reproducible
    assert first_draw(0) != first_draw(2**32 - 1)  # two workers: different draws (no seed overflow)


def test_only_workers_count_running_trials_as_poor_results(study_file: Path) -> None:
    # TPE's constant liar steers a worker away from what the others are running; a lone run has
    # nothing running elsewhere, and the liar would cost a study read per parameter group.
    from autopeft.config import load_config
    from autopeft.search.samplers import make_sampler

    config = load_config(study_file)
    assert make_sampler(config, 0)._constant_liar is False
    assert make_sampler(config, 12345)._constant_liar is True


# -- creating a study at once ----------------------------------------------------------------------

_CREATE_AT_ONCE = """
import pathlib, sys, time
from autopeft.config import load_config
from autopeft.search.study import open_study
config, url, start = load_config(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(start.parent / f"ready-{sys.argv[4]}").write_text("")
while not start.exists():
    time.sleep(0.001)
study = open_study(config, url, directions=["maximize"])
study.set_user_attr("opened_by", sys.argv[4])
print(study.study_name)
"""


def _start_together(tmp_path: Path, count: int, code: str, *args: object) -> list[subprocess.CompletedProcess[str]]:
    """``count`` processes running ``code``, each waiting until all are ready and ``start`` appears:
    they reach the line after the wait within a millisecond or so of each other."""
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args), str(start), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(count)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    start.write_text("")
    results = [p.communicate(timeout=120) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, results)]


@pytest.mark.parametrize("attempt", range(2))
def test_runs_started_together_on_a_new_sqlite_file_all_open_the_study(tmp_path: Path, attempt: int) -> None:
    """Optuna creates a new database's tables without a lock: before autopeft retried, all but one of
    processes started together failed with "table ... already exists" or "UNIQUE constraint failed:
    alembic_version.version_num" (in 13 of 24 such processes tried)."""
    path = write_study(tmp_path, study={"name": "together", "n_trials": 1})
    url = f"sqlite:///{tmp_path / 'together.db'}"
    done = _start_together(tmp_path, 4, _CREATE_AT_ONCE, path, url)
    assert [r.returncode for r in done] == [0, 0, 0, 0], [r.stderr for r in done]
    assert all(r.stdout.strip() == "together" and "Traceback" not in r.stderr for r in done)
    [study] = optuna.get_all_study_summaries(url)
    assert study.study_name == "together" and study.user_attrs["opened_by"] in {"0", "1", "2", "3"}


def test_two_workers_started_together_on_a_new_sqlite_file_finish_the_study(tmp_path: Path, minilm_available) -> None:
    """What the issue saw: local workers launched together on a study that does not exist yet. Each
    is held in its first trial until both are in one, so both create (or join) the study and train."""
    path, url, name = _study(tmp_path, 2, methods=("bitfit",))
    hold = _hold_dir(tmp_path)
    workers = [_autopeft("worker", path, "--label", f"w{i}", "--quiet", hold=hold) for i in range(2)]
    _held(hold, count=2, procs=tuple(workers))
    _release(hold)
    results = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in results]
    assert not any("Traceback" in err or "error" in err for _, err in results), results
    trials = _assert_accounted_for(_load(url, name), 2)
    assert len({t.user_attrs["worker"] for t in trials if t.state in FINISHED}) == 2
