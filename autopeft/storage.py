"""The SQL storage a study lives in: SQLite on one machine, PostgreSQL (or MySQL) shared by workers.

Every storage gets Optuna's heartbeats, so a worker that dies in mid-trial (``kill -9``, a lost
machine) leaves a trial that another worker marks failed and queues again (:func:`retry_trial`,
Optuna's ``RetryHeartbeatStaleTrialCallback`` without the failed trial's error); the retry names
the trial it repeats in its ``failed_trial`` system attribute.

SQLite is opened in WAL mode with a long busy timeout: with the default rollback journal and
Python's 5-second timeout, parallel workers fail with "database is locked" (optuna/optuna#820).
WAL needs a local disk; on a network filesystem use PostgreSQL.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["open_storage", "mask_url", "retry_trial", "MAX_RETRIES", "SQLITE_TIMEOUT_SECONDS"]

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
    if url.startswith("sqlite:"):
        _sqlite_wal(url)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_SECONDS}
    with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            _driver_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=2 * heartbeat_seconds,
            heartbeat_stale_trial_callback=retry_trial,
        )
