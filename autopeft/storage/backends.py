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
import os
import random
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
    "check_credentials",
    "open_failure",
    "check_sqlite_folder",
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
_INHERITED = ("warm_start", "started_from", "race")
#: System attributes a retry does not inherit: its own constraint and kept weights it records itself.
_EARNED = ("constraints", "artifacts:")


# scheme://user:password@ in a URL: the user information runs to the last "@" of the URL (a password may
# hold an unescaped "@"), the password from the first ":" in it. A URL with such characters is refused
# before it reaches a driver (:func:`check_credentials`); masking stays greedy for any message that quotes one.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://)(?P<userinfo>[^\s'\"<>]*)@")
# user:password@host with no scheme (a URL missing its "postgresql://"), at the start of a word.
_BARE_USERINFO = re.compile(r"(?P<head>(?:^|(?<=[\s'\"(=]))[\w.+-]+):(?!//)(?P<secret>[^\s'\"<>]*)@(?=[\w\[])")
# password=... as a URL query parameter (?password=, &sslpassword=) or a libpq key=value pair.
_SECRET_PARAM = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd|sslpassword)\s*=\s*)(?P<secret>[^\s&;#'\"]+)")
# What must be percent-encoded in a URL's user name or password: the driver splits the URL at them.
_RESERVED = "@/?#"
_PERCENT_CODES = "'@' as %40, ':' as %3A, '/' as %2F, '?' as %3F, '#' as %23, '%' as %25"


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['head']}{user}:***@" if colon else match[0]


def mask_url(text: str) -> str:
    """``text`` (a storage URL, or a message quoting one) with every password replaced by ``***``.

    Covers ``user:password@`` (to the URL's last ``@``, so a password holding ``@``, ``/`` or ``?``
    is masked whole), an empty user name (``://:password@``), ``user:password@host`` without a
    scheme, and ``password=`` query or key=value parameters: the places SQLAlchemy and libpq accept one.
    """
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _BARE_USERINFO.sub(lambda m: f"{m['head']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}***", text)


def check_credentials(url: str) -> None:
    """Refuse a URL whose user name or password holds an unencoded ``@``, ``/``, ``?``, ``#`` or a
    ``%`` that starts no escape (a ``:`` in the user name ends it, so it cannot be told apart).

    SQLAlchemy splits a URL at its first ``@``: ``postgresql://u:S3cr@t@host/db`` connects to host
    ``t@host`` with password ``S3cr``, and the driver's error then quotes the rest of the password. The
    line names neither the user name nor the password.

    Raises:
        AutopeftError: such a character, and how to percent-encode it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest or rest.startswith("/") and scheme.startswith(("sqlite", "journal")):
        return  # no credentials, or a file's path (sqlite:///path/with@sign.db)
    userinfo, _, host = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    for part, what in ((user, "user name"), (password, "password")):
        bad = next((c for c in part if c in _RESERVED), None)
        if bad is None and re.search(r"%(?![0-9A-Fa-f]{2})", part):
            bad = "%"
        if bad is not None:
            raise AutopeftError(
                f"study.storage: the {what} in {scheme}://***@{mask_url(host)} "
                f"holds an unencoded {bad!r}, which the database driver reads as part of the address; "
                f"percent-encode the {what} ({_PERCENT_CODES}), e.g. urllib.parse.quote(value, safe='')"
            )


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


def _outage(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the connection to the server was lost or refused, as
    opposed to a statement the database rejected; None for the latter. Optuna wraps most of these in
    ``StorageInternalError``, whose own message ("invalid data in the commit, e.g. exceeding max
    length") is a guess that is wrong for an outage: the lines quote the driver's error instead."""
    for cause in _chain(exc):
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return cause
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return cause
        if isinstance(cause, sqlalchemy.exc.DisconnectionError):
            return cause
    return None


def _driver_error(exc: BaseException) -> str:
    """The driver's own first line for a SQLAlchemy error (without SQLAlchemy's ``(Background on
    this error at: ...)`` and the statement), masked."""
    orig = getattr(exc, "orig", None)
    text = first_line(orig) if orig is not None else first_line(exc)
    return mask_url(text)


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
                lost = _outage(exc)
                if lost is None:
                    raise
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    self.say(
                        f"autopeft: storage {mask_url(self.url)} unreachable (connection lost or refused: "
                        f"{_driver_error(lost)}); retrying for up to {self.outage_seconds:.0f} s"
                    )
                if now + delay - self._outage_since > self.outage_seconds:
                    raise StorageUnavailable(
                        f"study.storage: {mask_url(self.url)} has been unreachable for "
                        f"{now - self._outage_since:.0f} s (connection lost or refused: {_driver_error(lost)}); "
                        "the running trial is retried by the next worker; check that the database server is "
                        "running and reachable, then run the same command again"
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
    check_credentials(url)
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


#: How often creating a new database's tables is tried again when another process created them first.
CREATION_ATTEMPTS = 8


def _creation_race(exc: BaseException) -> bool:
    """Whether ``exc`` is what two processes creating one new database's tables at once run into:
    the same table created twice, or Optuna's schema version (Alembic's) recorded twice."""
    for cause in _chain(exc):
        if isinstance(cause, sqlalchemy.exc.IntegrityError):
            return True
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError)):
            return "already exists" in str(cause)
    return False


def _rdb(
    url: str, heartbeat_seconds: int, engine_kwargs: dict[str, Any], cls: type[RDBStorage] | None = None
) -> RDBStorage:
    """Optuna's RDB storage on ``url``, creating its tables on a new database.

    Optuna creates them without a lock: workers started together on a new SQLite file (or an empty
    PostgreSQL database) race, and the losers fail with "table ... already exists" or "UNIQUE
    constraint failed: alembic_version.version_num". Opening again finds the winner's tables.
    """
    for attempt in range(1, CREATION_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return (cls or _OutageTolerantStorage)(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=2 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=retry_trial,
                )
        except Exception as exc:
            if attempt == CREATION_ATTEMPTS or not _creation_race(exc):
                raise
            time.sleep(0.05 * attempt * (1 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


_SQLITE_HEADER = b"SQLite format 3\x00"
_ANOTHER_FILE = "pass --storage with the study's database (sqlite:///path/to/study.db)"


def _check_is_a_study_database(path: str) -> None:
    """Refuse, in one line, a file a reader cannot take for a study: empty, or not SQLite at all."""
    with open(path, "rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    if not header:
        raise AutopeftError(
            f"study.storage: {path} is empty (0 bytes): no study was ever written to it; run `autopeft run` "
            f"to create the study there, or {_ANOTHER_FILE}"
        )
    if header != _SQLITE_HEADER:
        raise AutopeftError(f"study.storage: {path} is not an SQLite database; {_ANOTHER_FILE}")


def _read_only_storage(path: str, heartbeat_seconds: int, engine_kwargs: dict[str, Any]) -> RDBStorage:
    """The SQLite study at ``path``, opened so that nothing is written: ``mode=ro``, or
    ``immutable=1`` when that fails (a WAL database on read-only media has no shared-memory file)."""
    _check_is_a_study_database(path)
    try:
        try:
            storage = _rdb(_read_only_url(path, immutable=False), heartbeat_seconds, engine_kwargs, RDBStorage)
            storage.get_all_studies()  # mode=ro connects lazily: fail here, not in the middle of a command
            return storage
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
            return _rdb(_read_only_url(path, immutable=True), heartbeat_seconds, engine_kwargs, RDBStorage)
    except sqlalchemy.exc.OperationalError as exc:
        # A database without Optuna's tables: Optuna creates them, which a read-only connection cannot.
        if "readonly database" in str(exc):
            raise AutopeftError(
                f"study.storage: {path} is an SQLite database without a study in it (no Optuna tables); "
                f"run `autopeft run` to create the study there, or {_ANOTHER_FILE}"
            ) from None
        raise


def open_failure(url: str, exc: BaseException) -> AutopeftError:
    """One line for a storage that failed to open: what is wrong with it and what to do, the
    password masked. SQLite's errors are worded for its C API ("unable to open database file");
    this looks at the file and its folder to say which it is."""
    shown = mask_url(url)
    scheme = url.partition("://")[0].partition("+")[0].lower()
    if isinstance(exc, ImportError):
        missing = next((e.name for e in _chain(exc) if isinstance(e, ImportError) and e.name), None)
        got = f" (no module named {missing!r})" if missing else ""
        if scheme in ("postgresql", "postgres"):
            fix = 'pip install "autopeft[postgres]" (psycopg 3)'
        elif scheme in ("mysql", "mariadb"):
            fix = (
                "pip install mysqlclient for mysql://, or pip install pymysql and write mysql+pymysql:// "
                "(autopeft is tested on SQLite and PostgreSQL)"
            )
        else:
            fix = f"pip install a {scheme} driver SQLAlchemy supports (autopeft is tested on SQLite and PostgreSQL)"
        return AutopeftError(f"study.storage: no database driver for {shown} is installed{got}; {fix}")
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError):
        return AutopeftError(
            f"study.storage: {shown} names no database SQLAlchemy knows ({scheme!r}); use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, journal:///path/study.log or grpc://host:port"
        )
    path = sqlite_path(url) if scheme == "sqlite" else None
    driver = _driver_error(next((e for e in _chain(exc) if isinstance(e, sqlalchemy.exc.DBAPIError)), exc))
    if path is not None:
        return AutopeftError(_sqlite_failure(path, driver))
    if scheme == "sqlite":
        return AutopeftError(f"study.storage: cannot open {shown} ({driver}); check the path in the URL")
    return AutopeftError(f"study.storage: cannot open {shown} ({driver}); check the URL, server and credentials")


def check_sqlite_folder(url: str) -> None:
    """Refuse, before anything loads, an SQLite URL for writing whose folder is missing or read-only.

    Raises:
        AutopeftError: the folder, what is wrong with it, and what to do.
    """
    path = sqlite_path(url)
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise AutopeftError(_sqlite_failure(path, "unable to open database file"))


def _sqlite_failure(path: str, driver: str) -> str:
    file = Path(path)
    folder = file.parent
    if "file is not a database" in driver:
        return (
            f"study.storage: {path} is not an SQLite database ({driver}); {_ANOTHER_FILE}, "
            "or move the file away to create a new study there"
        )
    if not folder.is_dir():
        return (
            f"study.storage: the folder {folder} does not exist, so SQLite cannot create {file.name} in it; "
            "create the folder, or fix the path (sqlite:///relative/path.db, sqlite:////absolute/path.db)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"study.storage: the folder {folder} is read-only: SQLite writes the study database and its "
            f"-wal and -shm files there ({driver}); run from a copy in a writable folder, or point --storage "
            "at one (commands that only read, such as `autopeft trials`, work on a read-only folder)"
        )
    if file.exists() and not os.access(file, os.W_OK):
        return (
            f"study.storage: {path} is read-only ({driver}); make it writable (chmod u+w) or run from a copy "
            "(commands that only read, such as `autopeft trials`, work on a read-only file)"
        )
    return f"study.storage: SQLite cannot open {path} ({driver}); check the path, and that its folder can be written"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, nearest first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 20:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _sqlite_synchronous_normal(connection: Any, _record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")
