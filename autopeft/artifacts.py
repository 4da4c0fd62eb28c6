"""Trained weights kept as Optuna artifacts, so the trials a user may export need no retraining.

A trial's weights are what its method's ``save`` writes (a peft adapter folder, or
``trained.safetensors``); each file becomes one artifact of the trial, under its own file name, in
a :class:`~optuna.artifacts.FileSystemArtifactStore`. Optuna records the artifact's metadata in the
trial's system attributes, so the study database says which trials have weights, and
optuna-dashboard lists and serves them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from autopeft.config import StudyConfig
from autopeft.results import metric_sign, pareto_front

__all__ = ["artifact_store", "keep_weights", "fetch_weights", "on_front"]


def artifact_store(config: StudyConfig) -> FileSystemArtifactStore:
    """The study's artifact store (created on first use)."""
    config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(config.artifacts_dir)


def on_front(study: optuna.Study, metric: float, n: int) -> bool:
    """Whether a trial with ``metric`` and ``n`` trainable parameters joins the front of the
    feasible trials finished so far (a tie with a front point does not: the earlier one stays)."""
    sign = metric_sign(study)
    return not any(
        t.values is not None and sign * t.values[0] >= sign * metric and t.user_attrs["trainable_params"] <= n
        for t in pareto_front(study)
    )


def keep_weights(store: FileSystemArtifactStore, trial: optuna.Trial, save: Callable[[Path], None]) -> list[str]:
    """Upload every file ``save(directory)`` writes as an artifact of ``trial``; their artifact ids."""
    with tempfile.TemporaryDirectory(prefix="autopeft-weights-") as tmp:
        save(Path(tmp))
        return [
            upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=trial)
            for f in sorted(Path(tmp).iterdir())
            if f.is_file()
        ]


def fetch_weights(store: FileSystemArtifactStore, study: optuna.Study, trial: FrozenTrial, directory: Path) -> bool:
    """Download ``trial``'s kept weights into ``directory``; False when it has none or a file is gone."""
    metas = get_all_artifact_meta(trial, storage=study._storage)
    if not metas:
        return False
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
