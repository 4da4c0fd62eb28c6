"""How workers that share a study take turns: who may start a trial, and what happens to a dead one.

Any number of processes run one study (``autopeft worker``, ``run --workers``); together they
finish exactly ``n_trials`` trials. A worker starts a trial only while finished plus running trials
are fewer than the target (:func:`wait_for_slot`); two that check at the same moment are sorted
out by :func:`check_not_surplus`; a worker that died leaves a running trial that is failed and
queued again, by Optuna's heartbeat or, on one machine, at once (:func:`fail_dead_local_trials`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from autopeft.progress import Progress
from autopeft.storage.backends import retry_trial
from autopeft.storage.optuna_adapter import fail_running_trial, storage_of, storage_url
from autopeft.storage.results import FINISHED

__all__ = [
    "Surplus",
    "check_not_surplus",
    "wait_for_slot",
    "fail_dead_local_trials",
    "fail_orphaned_trials",
    "fail_dead_trials",
    "found_dead_at_once",
]

#: The least time a running trial may go without naming its worker before it counts as orphaned, and
#: the whole of it where the storage keeps no heartbeat interval (a journal): a live worker names
#: itself in its trial's first write, which a loaded machine may delay by seconds, never minutes.
ORPHAN_SECONDS = 120.0


class Surplus(Exception):
    """A trial started when other workers' trials already complete the study; it is not run."""


def check_not_surplus(trial: optuna.Trial, target: int) -> None:
    """Refuse a trial that two workers' simultaneous starts made one too many.

    Workers start a trial only while finished plus running trials are fewer than the target,
    but two can check at the same moment. The one that started later (by start time, then
    number: a queued retry can have a lower number than a new trial) then gives way, recorded
    as failed with ``surplus`` (failed trials do not count), and is never trained.

    Raises:
        Surplus: this trial is the one too many.
    """
    others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    me = next(t for t in others if t.number == trial.number)
    mine = (me.datetime_start, me.number)
    ahead = [t for t in others if t.state in FINISHED or t is not me and (t.datetime_start, t.number) < mine]
    if len(ahead) >= target:
        trial.set_user_attr("surplus", True)
        raise Surplus(f"not run: other workers had started the study's last {target} trials")


def fail_dead_local_trials(study: optuna.Study) -> None:
    """Fail and queue again the running trials of processes on this machine that no longer exist.

    A process that died without a word (a full disk, ``kill -9``) leaves its trial running until its
    heartbeat ages, 2 × ``heartbeat_seconds``; on one machine the process table says at once that
    it is gone. Only for SQLite and journal-file studies: their workers all run on this machine (WAL
    and the journal's file lock need a local disk), so a host name cannot be shared with another
    machine. (A journal has no heartbeats: this is how its dead workers' trials are found.)
    """
    if not _local(study):
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # This process's own trials count too: between its trials (where this runs) none of them is running.
        if not _of_a_dead_local_process(trial):
            continue
        # Only the process whose write failed it queues the retry: one retry when several notice.
        failed = fail_running_trial(study, trial)
        if failed is not None:
            retry_trial(study, failed)


def fail_orphaned_trials(study: optuna.Study, grace: float | None = None) -> None:
    """Fail and queue again the running trials that no worker ever named itself on, once they are
    ``grace`` seconds old (default: twice the storage's heartbeat interval, and at least
    :data:`ORPHAN_SECONDS`).

    A process that died between creating its trial and its first write (a disk that filled, a
    database that went away) leaves a trial with neither a heartbeat nor a ``worker`` attribute:
    Optuna's stale-trial check finds only trials whose heartbeat aged, and the process table needs
    the worker's process id, so such a trial would stay running for good, and every later worker
    would wait for it. A live worker names itself in its trial's first write.
    """
    if grace is None:
        interval = getattr(storage_of(study), "get_heartbeat_interval", lambda: None)()
        grace = max(2.0 * interval, ORPHAN_SECONDS) if interval else ORPHAN_SECONDS
    now = datetime.datetime.now()  # Optuna stamps datetime_start in local time, as this does
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        if "worker" in trial.user_attrs or started is None or (now - started).total_seconds() < grace:
            continue
        failed = fail_running_trial(study, trial)
        if failed is not None:
            retry_trial(study, failed)


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail and queue again every running trial whose worker is gone, however that shows: an aged
    heartbeat (Optuna), a process this machine no longer runs, or no worker named at all."""
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study)
    fail_orphaned_trials(study)


def found_dead_at_once(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether the next run on this machine fails ``trial`` at once when its process is gone
    (:func:`fail_dead_local_trials`): a local storage, and the trial recorded its worker. Otherwise
    only its heartbeat, 2 × ``heartbeat_seconds`` old, says that it died."""
    worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return _local(study) and worker_host == socket.gethostname() and pid.isdigit()


def _local(study: optuna.Study) -> bool:
    return storage_url(study).startswith("sqlite") or isinstance(storage_of(study), optuna.storages.JournalStorage)


def _of_a_dead_local_process(trial: FrozenTrial) -> bool:
    worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if worker_host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) == os.getpid() or not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and belongs to someone else
        return True
    return True


def wait_for_slot(study: optuna.Study, target: int, progress: Progress, poll: float) -> bool:
    """Whether this worker may start another trial: False once ``target`` trials have finished.

    While the trials other workers are running would complete the study, wait: one of them may
    still fail (or its worker die, which the heartbeat notices here) and need running again.
    """
    waiting = False
    while True:
        fail_dead_trials(study)  # a dead worker's trial: failed, and queued again
        states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))]
        finished = sum(1 for s in states if s in FINISHED)
        if finished >= target:
            return False
        if len(states) < target:
            return True
        if not waiting:
            progress.line(f"waiting: the {len(states) - finished} running trials would finish the study")
            waiting = True
        time.sleep(poll)
