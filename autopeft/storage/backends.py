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

A server storage (PostgreSQL, MySQL) can go away for a moment: a restart, a fail-over, a network blip.
Every storage call then retries with backoff for up to :data:`OUTAGE_SECONDS` (saying so once) instead
of killing the worker in mid-trial; a longer outage ends in :class:`StorageUnavailable`, one line.

Commands that only read a study open an SQLite file read-only (``mode=ro``, and ``immutable=1`` where
the file sits on read-only media, which cannot hold WAL's shared-memory file), so a study on a
read-only mount can still be listed, reported and exported.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import AutopeftError, first_line
from autopeft.storage.optuna_adapter import RDB_PRIVATE_CALLED

__all__ = [
    "open_storage",
    "mask_url",
    "retry_trial",
    "storage_failure",
    "sqlite_path",
    "journal_path",
    "StorageUnavailable",
    "MAX_RETRIES",
    "OUTAGE_SECONDS",
    "STORAGE_ENV",
    "SQLITE_TIMEOUT_SECONDS",
]

#: How often a trial killed in mid-run is queued again before the study gives up on it.
MAX_RETRIES = 3
#: How long an SQLite writer waits for another worker's transaction before "database is locked".
SQLITE_TIMEOUT_SECONDS = 120
#: The environment variable every command reads its storage URL from when ``--storage`` is not given:
#: a process's environment is private to its user, its command line is not (``ps``).
STORAGE_ENV = "AUTOPEFT_STORAGE"
#: How long a server storage may be unreachable before the worker gives up (its trial is then retried
#: by the next worker, through its stale heartbeat).
OUTAGE_SECONDS = 120.0
#: User attributes a retry inherits: how the trial came to be queued. Its results and errors it earns itself.
_INHERITED = ("warm_start", "started_from")
#: System attributes a retry does not inherit: its own constraint and kept weights it records itself.
_EARNED = ("constraints", "artifacts:")


# user:password@ in a URL's authority; the password may itself hold "@" (unescaped), so it runs to the
# last "@" before the host. The user name may be empty (postgresql://:secret@host/db).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@]*):(?P<secret>[^\s@]*(?:@[^\s@/]*(?=@))*)@")
# password=... as a URL query parameter (?password=, &sslpassword=) or a libpq key=value pair.
_SECRET_PARAM = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd|sslpassword)\s*=\s*)(?P<secret>[^\s&;#'\"]+)")


def mask_url(text: str) -> str:
    """``text`` (a storage URL, or a message quoting one) with every password replaced by ``***``.

    Covers ``user:password@``, an empty user name (``://:password@``) and ``password=`` query or
    key=value parameters: the places SQLAlchemy and libpq accept one.
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}***", text)


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
            system_attrs={
                **{k: v for k, v in trial.system_attrs.items() if not k.startswith(_EARNED)},
                "failed_trial": history[0],
                "retry_history": history,
            },
        )
    )


def _driver_url(url: str) -> str:
    # SQLAlchemy's plain postgresql:// means psycopg2; autopeft[postgres] installs psycopg 3.
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def sqlite_path(url: str) -> str | None:
    """The file of a plain ``sqlite:///path`` URL; None for memory, URI-style or parameterised URLs."""
    path = url.removeprefix("sqlite:///")
    if path == url or not path or path == ":memory:" or "?" in path or path.startswith("file:"):
        return None
    return path


def _sqlite_wal(url: str) -> None:
    """Switch an SQLite file to WAL (a property of the file, kept across connections)."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_SECONDS) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # a read-only copy, a missing folder: opening the storage reports what matters


class StorageUnavailable(AutopeftError):
    """The study's database stayed unreachable for longer than :data:`OUTAGE_SECONDS`."""


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the connection to the server was lost or refused,
    as opposed to a statement the database rejected. Optuna wraps most of these in
    ``StorageInternalError``."""
    for _ in range(20):  # a chain of causes, never a cycle
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, sqlalchemy.exc.DisconnectionError):
            return True
        if (exc := exc.__cause__ or exc.__context__) is None:  # type: ignore[assignment]
            return False
    return False


def storage_failure(exc: BaseException) -> BaseException | None:
    """The storage error at the root of ``exc`` (an outage, a full disk, a read-only database), or None.

    Optuna sometimes buries it: when recording a trial fails, its own clean-up raises a second,
    unrelated error (``UnboundLocalError``) whose context holds the real one.
    """
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, (StorageUnavailable, sqlite3.OperationalError, sqlalchemy.exc.OperationalError)):
            return exc
        if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
            return exc.__cause__
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return None


_T = TypeVar("_T")


class _OutageTolerantStorage(RDBStorage):
    """Optuna's RDB storage whose calls ride out a short outage of a database server.

    Every public storage call is retried with exponential backoff (0.5 s doubling to 8 s) while the
    error is a lost or refused connection, for up to ``outage_seconds`` from the first failure of
    that outage; SQLAlchemy's ``pool_pre_ping`` replaces the connections the outage broke. After the
    deadline each call fails at once with :class:`StorageUnavailable`, so a worker does not wait
    the window out once per call. A statement the database rejects is never retried.
    """

    outage_seconds: float = OUTAGE_SECONDS
    say: Callable[[str], None] = staticmethod(lambda line: print(line, file=sys.stderr, flush=True))
    _outage_since: float | None = None

    def call_retrying(self, name: str, call: Callable[[], _T]) -> _T:
        delay = 0.5
        while True:
            try:
                result = call()
            except Exception as exc:
                if not _is_outage(exc):
                    raise
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    self.say(
                        f"autopeft: storage {mask_url(self.url)} unreachable ({mask_url(first_line(exc))}); "
                        f"retrying for up to {self.outage_seconds:.0f} s"
                    )
                if now + delay - self._outage_since > self.outage_seconds:
                    raise StorageUnavailable(
                        f"study.storage: {mask_url(self.url)} has been unreachable for "
                        f"{now - self._outage_since:.0f} s ({mask_url(first_line(exc))}); the running trial is "
                        "retried by the next worker; check the server and run the same command again"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            if self._outage_since is not None:
                self.say(f"autopeft: storage reachable again after {time.monotonic() - self._outage_since:.1f} s")
                self._outage_since = None
            return result


def _retried(name: str) -> Callable[..., Any]:
    def method(self: _OutageTolerantStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call_retrying(name, lambda: getattr(RDBStorage, name)(self, *args, **kwargs))

    method.__name__ = name
    return method


# Every storage operation Optuna calls: the public BaseStorage and BaseHeartbeat API, and the private
# methods its _CachedStorage calls on the RDB storage directly (optuna_adapter's test checks that
# they still exist). Not the schema-version helpers, which run once at start-up and should fail at once.
_NOT_RETRIED = {"upgrade", "get_current_version", "get_head_version", "get_all_versions", "remove_session"}
for _name, _value in vars(RDBStorage).items():
    if callable(_value) and (not _name.startswith("_") and _name not in _NOT_RETRIED or _name in RDB_PRIVATE_CALLED):
        setattr(_OutageTolerantStorage, _name, _retried(_name))


def _read_only_url(path: str, immutable: bool) -> str:
    flag = "immutable=1" if immutable else "mode=ro"
    return f"sqlite:///file:{Path(path).as_posix()}?{flag}&uri=true"


def open_storage(
    url: str, heartbeat_seconds: int, read_only: bool = False, outage_seconds: float = OUTAGE_SECONDS
) -> BaseStorage:
    """An Optuna storage for ``url``: an RDB storage with heartbeats every ``heartbeat_seconds``, a
    journal file (``journal:///path/study.log``) or a gRPC storage proxy (``grpc://host:port``).

    A trial whose worker sent no heartbeat for twice that long is failed and retried.

    Args:
        read_only: the caller only reads (``trials``, ``best``, ``report``, ``export``): an SQLite
            file is opened read-only and never created.
        outage_seconds: how long calls to a database server retry a lost connection.

    Raises:
        AutopeftError: ``read_only`` and the SQLite file does not exist.
        Whatever SQLAlchemy raises for a bad URL, a missing driver or an unreachable server; the
            caller turns it into one line with the password masked.
    """
    if url.startswith(("journal:", "grpc:")):
        return _journal(url, read_only) if url.startswith("journal:") else _grpc(url)
    engine_kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite:")
    path = sqlite_path(url) if sqlite else None
    if sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_SECONDS}
        if read_only and path is not None:
            if not Path(path).is_file():
                raise AutopeftError(f"no study database at {path}; run `autopeft run` first, or pass --storage")
            return _read_only_storage(path, heartbeat_seconds, engine_kwargs)
        _sqlite_wal(url)
    else:
        engine_kwargs["pool_pre_ping"] = True  # connections an outage broke are replaced, not reused
    storage = _rdb(_driver_url(url), heartbeat_seconds, engine_kwargs, cls=RDBStorage if sqlite else None)
    if isinstance(storage, _OutageTolerantStorage):
        storage.outage_seconds = outage_seconds
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_synchronous_normal)
        storage.engine.dispose()  # the connections opened while creating the tables get it too
    return storage


def journal_path(url: str) -> str | None:
    """The file of a ``journal:///path`` URL (``journal://relative/path`` from the working folder)."""
    path = url.removeprefix("journal://")
    return path if path != url and path else None


def _journal(url: str, read_only: bool) -> BaseStorage:
    """Optuna's journal storage on one file: an append-only log many processes on one machine share
    (Optuna's recommendation there); no heartbeats, so a dead local worker's trial is found by its
    process id (:func:`autopeft.search.coordination.fail_dead_local_trials`)."""
    from optuna.storages.journal import JournalFileBackend

    path = journal_path(url)
    if path is None:
        raise AutopeftError(f"study.storage: {url!r} names no file; use e.g. journal:///path/to/study.log")
    if read_only and not Path(path).is_file():
        raise AutopeftError(f"no study journal at {path}; run `autopeft run` first, or pass --storage")
    return optuna.storages.JournalStorage(JournalFileBackend(path))


def _grpc(url: str) -> BaseStorage:
    """A client of ``autopeft serve-storage`` (Optuna's gRPC storage proxy) at ``grpc://host:port``."""
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise AutopeftError(f"study.storage: {url!r} is not grpc://host:port; e.g. grpc://localhost:13000")
    try:
        with warnings.catch_warnings():  # marked experimental since Optuna 4.2, and what a gRPC URL asks for
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    except ImportError:
        raise AutopeftError("study.storage: grpc:// needs grpcio; pip install 'autopeft[grpc]'") from None


def _rdb(
    url: str, heartbeat_seconds: int, engine_kwargs: dict[str, Any], cls: type[RDBStorage] | None = None
) -> RDBStorage:
    with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return (cls or _OutageTolerantStorage)(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=2 * heartbeat_seconds,
            heartbeat_stale_trial_callback=retry_trial,
        )


def _read_only_storage(path: str, heartbeat_seconds: int, engine_kwargs: dict[str, Any]) -> RDBStorage:
    """The SQLite study at ``path``, opened so that nothing is written: ``mode=ro``, or
    ``immutable=1`` when that fails (a WAL database on read-only media has no shared-memory file)."""
    try:
        storage = _rdb(_read_only_url(path, immutable=False), heartbeat_seconds, engine_kwargs, RDBStorage)
        storage.get_all_studies()  # mode=ro connects lazily: fail here, not in the middle of a command
        return storage
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return _rdb(_read_only_url(path, immutable=True), heartbeat_seconds, engine_kwargs, RDBStorage)


def _sqlite_synchronous_normal(connection: Any, _record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")
