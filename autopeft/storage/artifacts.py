"""Trained weights kept as Optuna artifacts, so the trials a user may export need no retraining.

A trial's weights are what its method's ``save`` writes (a peft adapter folder, or
``trained.safetensors``); each file becomes one artifact of the trial, under its own file name, in
the store ``[study] artifacts`` names (:mod:`autopeft.storage.artifact_stores`: a folder or a bucket). Optuna
records the artifact's metadata in the trial's system attributes, so the study database says which
trials have weights, and optuna-dashboard lists and serves them.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from autopeft.config import StudyConfig
from autopeft.errors import AutopeftError, ConfigError
from autopeft.storage.artifact_stores import open_artifact_store
from autopeft.storage.optuna_adapter import storage_of
from autopeft.storage.results import metric_sign, pareto_front

if TYPE_CHECKING:  # Optuna's store protocol lives in a private module: named for the type checker only
    from optuna.artifacts._protocol import ArtifactStore

__all__ = [
    "SAVED_NOTHING",
    "check_writable",
    "artifact_store",
    "keep_weights",
    "keep_if_wanted",
    "fetch_weights",
    "fetch_refit_weights",
    "median_seed",
    "on_front",
    "plain_name",
    "scratch_folder",
]

# A file name with no folder part: what a method's save writes, and all an export may create.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")


def plain_name(name: object) -> bool:
    """Whether ``name`` is a plain file name: no folder, no ``..``, no absolute path, no control
    character. Names read from a study database or an earlier export must be, before they are
    joined onto a folder: whoever can write to a shared study could otherwise write anywhere."""
    return isinstance(name, str) and _PLAIN.fullmatch(name) is not None and ".." not in name


def artifact_store(config: StudyConfig, create: bool = True) -> ArtifactStore | None:
    """The study's artifact store (a folder created on first use, or a bucket); without ``create``,
    None when the folder is not there (commands that only read a study create nothing)."""
    if config.artifacts_bucket:
        return open_artifact_store(config.artifacts_bucket)
    if create:
        config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    elif not config.artifacts_dir.is_dir():
        return None
    return open_artifact_store(config.artifacts_dir)


def on_front(study: optuna.Study, metric: float, n: int, budget: int | None = None) -> bool:
    """Whether a trial with ``metric`` and ``n`` trainable parameters joins the front of the
    feasible trials finished so far (a tie with a front point does not: the earlier one stays)."""
    sign = metric_sign(study)
    return not any(
        t.values is not None and sign * t.values[0] >= sign * metric and t.user_attrs["trainable_params"] <= n
        for t in pareto_front(study, budget=budget)
    )


def keep_weights(
    config: StudyConfig, trial: optuna.Trial | optuna.Study, save: Callable[[Path], None]
) -> list[tuple[str, str]]:
    """Upload every file ``save(directory)`` writes as an artifact of ``trial`` (or of the study, for
    the weights ``refit`` trains after the search); (artifact id, file name) of each.

    ``save`` writes into a temporary folder inside the artifact folder (beside the study file when the
    store is a bucket), never the system's.
    """
    store = artifact_store(config)
    assert store is not None
    with tempfile.TemporaryDirectory(prefix=".autopeft-weights-", dir=scratch_folder(config)) as tmp:
        save(Path(tmp))
        return [
            (upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=trial), f.name)
            for f in sorted(Path(tmp).iterdir())
            if f.is_file()
        ]


def scratch_folder(config: StudyConfig) -> Path:
    """Where weights pass through on their way to or from the store: the artifact folder, or beside
    the study file when the store is a bucket; never the system's temporary folder."""
    return config.path.parent if config.artifacts_bucket else config.artifacts_dir


#: Why a trial's weights were not kept when its method's ``save`` wrote nothing: retraining would not help.
SAVED_NOTHING = "its method's save() wrote no file (a bug in the method's plugin)"


def keep_if_wanted(
    config: StudyConfig,
    trial: optuna.Trial,
    metric: float,
    n: int,
    budget: int,
    save: Callable[[Path], None],
    candidate: bool = False,
) -> str | None:
    """Keep ``trial``'s weights when ``[study] keep_weights`` says so (``front``: when its ``metric``
    and size ``n`` join the front under ``budget``), or when it is a ``candidate`` for the answer (a
    race's final training: scored on the test split if chosen, and exported), unless the policy is
    ``none``; why they could not be kept, or None.

    A full or lost disk does not fail the trial: its result stands, its weights can be retrained, and
    ``weights_not_kept`` says why.
    """
    policy = config.study.keep_weights
    wanted = policy == "all" or candidate and policy != "none"
    if not (wanted or policy == "front" and on_front(trial.study, metric, n, budget)):
        return None
    try:
        kept = keep_weights(config, trial, save)
    except OSError as exc:
        where = exc.filename or config.artifacts_bucket or config.artifacts_dir
        why = f"{exc.strerror or type(exc).__name__} ({where})"
        trial.set_user_attr("weights_not_kept", why)
        return why
    if not kept:  # a plugin bug: say so now, not first at export
        trial.set_user_attr("weights_not_kept", SAVED_NOTHING)
        return SAVED_NOTHING
    return None


def median_seed(record: dict[str, Any]) -> str:
    """The seed of a refit record whose validation value is the median (the lower one of an even
    count): its weights stand for the configuration, not its luckiest seed."""
    ranked = sorted(zip(record["values"], record["seeds"]))
    return str(ranked[(len(ranked) - 1) // 2][1])


def fetch_refit_weights(store: ArtifactStore | None, record: dict[str, Any], directory: Path) -> str | None:
    """Download the weights ``autopeft refit`` kept for its median seed (:func:`median_seed`) into
    ``directory``; that seed, or None when none were kept or a file is gone.

    Raises:
        AutopeftError: the record names a file or artifact that is not a plain file name.
    """
    seed = median_seed(record)
    files = (record.get("weights") or {}).get(seed)
    if not files or store is None:
        return None
    for artifact_id, filename in files:
        if not (plain_name(artifact_id) and plain_name(filename)):
            raise AutopeftError(
                f"export: the study database names refit weights {filename!r} ({artifact_id!r}), not plain file "
                "names; refusing to write outside the export folder (check who writes to this study's database)"
            )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for artifact_id, filename in files:
            download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(directory / filename))
    except ArtifactNotFound:
        for _, filename in files:
            (directory / filename).unlink(missing_ok=True)
        return None
    return seed


def fetch_weights(store: ArtifactStore | None, study: optuna.Study, trial: FrozenTrial, directory: Path) -> bool:
    """Download ``trial``'s kept weights into ``directory``; False when it has none or a file is gone.

    Raises:
        AutopeftError: the study database names a file or artifact that is not a plain name (a
            tampered or foreign database); nothing is written.
    """
    metas = get_all_artifact_meta(trial, storage=storage_of(study))
    if not metas or store is None:
        return False
    for meta in metas:
        for what, name in (("file name", meta.filename), ("artifact id", meta.artifact_id)):
            if not plain_name(name):
                raise AutopeftError(
                    f"export: the study database gives trial {trial.number}'s weights the {what} {name!r}, which "
                    "is not a plain file name; refusing to write outside the export folder (check who writes "
                    "to this study's database)"
                )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for meta in metas:
            target = str(directory / meta.filename)
            download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=target)
    except ArtifactNotFound:  # the store was moved or cleaned: the caller retrains
        for meta in metas:
            (directory / meta.filename).unlink(missing_ok=True)
        return False
    return True


def check_writable(config: StudyConfig) -> None:
    """Fail now, not after trials were trained, when the artifact store cannot be written.

    Raises:
        ConfigError: naming the folder and the reason.
    """
    if config.study.keep_weights == "none":
        return
    if config.artifacts_bucket:
        _check_bucket(config)
        return
    folder = config.artifacts_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".autopeft-write-check-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            "study.artifacts",
            f"cannot write to {folder} ({exc.strerror or type(exc).__name__})",
            'point it at a writable folder, or set keep_weights = "none"',
        ) from None


def _check_bucket(config: StudyConfig) -> None:
    """Write and remove one small object under the bucket URL's prefix: missing credentials, a
    missing bucket or a refused write show now, in one line, not as weights silently not kept."""
    url, store = config.artifacts_bucket, artifact_store(config)
    assert store is not None
    probe = f".autopeft-write-check-{os.getpid()}"
    try:
        store.write(probe, io.BytesIO(b"ok"))
        store.remove(probe)
    except OSError as exc:
        raise ConfigError(
            "study.artifacts",
            f"cannot write to {url} ({exc.strerror})",
            'check the bucket and the credentials in this environment, or set keep_weights = "none"',
        ) from None
