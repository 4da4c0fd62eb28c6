"""The SQL storage a study lives in: SQLite on one machine, PostgreSQL (or MySQL) shared by workers.

Every storage gets Optuna's heartbeats, so a worker that dies in mid-trial (``kill -9``, a lost
machine) leaves a trial that another worker marks failed and queues again (:func:`retry_trial`,
Optuna's ``RetryHeartbeatStaleTrialCallback`` without the failed trial's error); the retry names
the trial it repeats in its ``failed_trial`` system attribute.

SQLite is opened in WAL mode with a long busy timeout: with the default rollback journal and
Python's 5-second timeout, parallel workers fail with "database is locked" (optuna/optuna#820).
WAL needs a local disk; on a network filesystem use PostgreSQL. Its connections use
``synchronous=NORMAL``, SQLite's recommended setting for WAL: a commit no longer waits for the disk
(Optuna commits each parameter and attribute on its own, ~40 times a trial), the file cannot be
corrupted, and a killed process loses nothing; only a power cut or OS crash can undo the last commits.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import warnings
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["open_storage", "mask_url", "retry_trial", "set_user_attrs", "MAX_RETRIES", "SQLITE_TIMEOUT_SECONDS"]

#: How often a trial killed in mid-run is queued again before the study gives up on it.
MAX_RETRIES = 3
#: How long an SQLite writer waits for another worker's transaction before "database is locked".
SQLITE_TIMEOUT_SECONDS = 120
#: User attributes a retry inherits: how the trial came to be queued. Its results and errors it earns itself.
_INHERITED = ("warm_start", "started_from")


def mask_url(url: str) -> str:
    """The storage URL with any password replaced by ``***``, for logs and errors."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's parameters again, linked to it, unless it was retried ``MAX_RETRIES`` times.

    The heartbeat calls this for trials of dead workers; ``autopeft run`` calls it for the trial
    Ctrl-C interrupted, so that resuming runs it again. The links are the ones Optuna's
    ``RetryHeartbeatStaleTrialCallback`` writes (system attributes ``failed_trial``, the first
    trial of the series, and ``retry_history``), without copying the failed trial's error.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRIES:
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k in _INHERITED},
            system_attrs={**trial.system_attrs, "failed_trial": history[0], "retry_history": history},
        )
    )


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction.

    ``Trial.set_user_attr`` opens a session and commits for each attribute, and a trial records
    about twenty: batching them is a third of the driver's time per trial on SQLite
    (``benchmarks/bench_driver.py``). This reuses the RDB storage's own per-attribute statement
    (private to Optuna, which is pinned below 6), falling back to one call per attribute elsewhere.
    """
    backend = getattr(trial.storage, "_backend", trial.storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if not isinstance(backend, RDBStorage) or write is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            write(session, models.TrialUserAttributeModel, trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.user_attrs reads, as set_user_attr keeps it


def _driver_url(url: str) -> str:
    # SQLAlchemy's plain postgresql:// means psycopg2; autopeft[postgres] installs psycopg 3.
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _sqlite_wal(url: str) -> None:
    """Switch an SQLite file to WAL (a property of the file, kept across connections)."""
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or "?" in path:
        return
    try:
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_SECONDS) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # a read-only copy, a missing folder: opening the storage reports what matters


def open_storage(url: str, heartbeat_seconds: int) -> RDBStorage:
    """An Optuna RDB storage for ``url`` with heartbeats every ``heartbeat_seconds``.

    A trial whose worker sent no heartbeat for twice that long is failed and retried.

    Raises:
        Whatever SQLAlchemy raises for a bad URL, a missing driver or an unreachable server; the
        caller turns it into one line with the password masked.
    """
    engine_kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite:")
    if sqlite:
        _sqlite_wal(url)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_SECONDS}
    with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            _driver_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=2 * heartbeat_seconds,
            heartbeat_stale_trial_callback=retry_trial,
        )
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_synchronous_normal)
        storage.engine.dispose()  # the connections opened while creating the tables get it too
    return storage


def _sqlite_synchronous_normal(connection: Any, _record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")
