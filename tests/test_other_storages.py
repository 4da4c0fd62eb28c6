"""Storages beyond SQL: a journal file (many processes on one machine) and Optuna's gRPC storage
proxy in front of the study's database (`autopeft serve-storage`, for many workers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from conftest import write_study

from autopeft import load_config, run_study
from autopeft.cli.command import main
from autopeft.search.coordination import fail_dead_local_trials
from autopeft.search.study import open_study
from autopeft.storage.backends import open_storage


@pytest.fixture
def instant(monkeypatch):
    """Training replaced by a formula of the size: these tests are about where trials are stored."""
    import math

    from autopeft.training.train import TrainResult
    from autopeft.training.workbench import Workbench

    def fit(self, method, config, **unused):  # type: ignore[no-untyped-def]
        method = self.enabled[method] if isinstance(method, str) else method
        return TrainResult(0.5 + 0.01 * math.log(method.count_trainable(self.ctx, config)), 0.01, 0.01, 10, 1, 1)

    monkeypatch.setattr(Workbench, "fit", fit)


def test_a_journal_file_holds_the_study_and_the_commands_read_it(tmp_path, instant, capsys, minilm_available) -> None:
    journal = tmp_path / "study.log"
    path = write_study(tmp_path, study={"n_trials": 4, "storage": f"journal:///{journal}"})
    study = run_study(path, quiet=True)
    assert isinstance(study._storage, optuna.storages.JournalStorage) and journal.is_file()
    assert len([t for t in study.trials if t.state.is_finished()]) == 4
    again = run_study(path, n_trials=6, quiet=True)  # resumed from the journal
    assert len([t for t in again.trials if t.state.is_finished()]) == 6
    assert main(["best", str(path)]) == 0 and main(["trials", str(path), "--format", "json"]) == 0
    assert "best trial" in capsys.readouterr().out


def test_a_dead_local_workers_trial_in_a_journal_is_queued_again(tmp_path, minilm_available) -> None:
    path = write_study(tmp_path, study={"storage": f"journal:///{tmp_path / 'study.log'}"})
    study = open_study(load_config(path), directions=["maximize"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"method": optuna.distributions.CategoricalDistribution(["lora"])})
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    fail_dead_local_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]  # failed, and queued again


def test_a_trial_no_worker_ever_named_is_failed_and_queued_again_once_old(tmp_path) -> None:
    """A process that died before its trial's first write (a disk that filled) left neither a
    heartbeat nor a worker: once the trial is older than the grace it is failed and queued again,
    so later workers do not wait for it for good; a trial whose worker named itself is left alone."""
    from autopeft.search.coordination import fail_orphaned_trials

    path = write_study(tmp_path, study={"n_trials": 4})
    study = open_study(load_config(path), directions=["maximize"])
    orphan = study.ask({"method": optuna.distributions.CategoricalDistribution(["lora"])})
    alive = study.ask({"method": optuna.distributions.CategoricalDistribution(["lora"])})
    alive.set_user_attr("worker", "elsewhere:1")
    fail_orphaned_trials(study)  # twice the heartbeat interval has not passed yet
    assert [t.state for t in study.get_trials(deepcopy=False)] == [optuna.trial.TrialState.RUNNING] * 2
    fail_orphaned_trials(study, grace=0.0)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    running, waiting = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING
    assert states == [optuna.trial.TrialState.FAIL, running, waiting]  # the orphan failed and queued again
    queued = study.get_trials(deepcopy=False)[2]
    assert queued.params == {"method": "lora"} and queued.system_attrs["failed_trial"] == orphan.number
    assert alive.number == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_workers_reach_the_database_through_the_grpc_proxy(tmp_path, instant, minilm_available) -> None:
    path = write_study(tmp_path, study={"n_trials": 3})
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autopeft", "serve-storage", str(path), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert f"on 127.0.0.1:{port}" in server.stderr.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the proxy did not start listening"
                time.sleep(0.2)
        study = run_study(path, storage=f"grpc://127.0.0.1:{port}", quiet=True)
        assert isinstance(study._storage, optuna.storages.GrpcStorageProxy)
        assert len([t for t in study.trials if t.state.is_finished()]) == 3
        budget = study.user_attrs["budget"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    stored = optuna.load_study(study_name="tiny", storage=open_storage(f"sqlite:///{tmp_path / 'tiny.db'}", 60))
    assert len(stored.trials) == 3 and stored.user_attrs["budget"] == budget


def test_the_proxy_serves_an_rdb_study_through_optunas_trial_cache(tmp_path, monkeypatch) -> None:
    """Without the cache every client read is a full query of the study: 5.5 s a trial at trial
    1,000 (benchmarks/README.md)."""
    from optuna.storages._cached_storage import _CachedStorage

    served = []
    monkeypatch.setattr(optuna.storages, "run_grpc_proxy_server", lambda storage, **where: served.append(storage))
    assert main(["serve-storage", str(write_study(tmp_path)), "--port", "1"]) == 0
    assert isinstance(served[0], _CachedStorage)


def test_a_bad_journal_or_grpc_url_is_one_line(tmp_path, capsys) -> None:
    for url, words in (("journal://", "names no file"), ("grpc://nohost", "is not grpc://host:port")):
        path = write_study(tmp_path, study={"storage": url})
        assert main(["trials", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
