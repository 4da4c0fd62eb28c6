"""Everything autopeft needs from Optuna beyond its public API, in one module.

No other module touches an underscored Optuna name. Each use here has a public-API fallback that
is slower or less exact but correct, and ``tests/test_optuna_adapter.py`` checks every private name
by name: an Optuna upgrade that moves one fails there, loudly, instead of changing behaviour
quietly. (Optuna is pinned below 6 for that reason; the fallbacks keep a newer one working.)
"""

from __future__ import annotations

import weakref
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "RDB_PRIVATE_CALLED",
    "TrialSeededRandomSampler",
    "TrialSeededTPESampler",
    "fail_running_trial",
    "remember_storage",
    "reseed",
    "set_user_attrs",
    "storage_of",
    "storage_url",
]

#: The private ``RDBStorage`` methods Optuna's own storage cache calls directly; the outage wrapper
#: of :mod:`autopeft.storage.backends` must retry them as it retries the public ones.
RDB_PRIVATE_CALLED = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
)

#: The storage each study was opened on (by :func:`autopeft.search.study.open_study`): a study does not
#: expose it publicly, and artifacts and retries need it.
_STORAGES: weakref.WeakKeyDictionary[optuna.Study, BaseStorage] = weakref.WeakKeyDictionary()


def remember_storage(study: optuna.Study, storage: BaseStorage) -> None:
    """Keep ``storage`` as the one ``study`` was opened on."""
    _STORAGES[study] = storage


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` was opened on: the one :func:`remember_storage` kept, else Optuna's own
    (private) reference, for studies autopeft did not open."""
    found = _STORAGES.get(study)
    return found if found is not None else study._storage


def storage_url(study: optuna.Study) -> str:
    """The URL of a study's RDB storage, or ``''`` for other storages."""
    storage = storage_of(study)
    return str(getattr(getattr(storage, "_backend", storage), "url", ""))


def fail_running_trial(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Mark another process's running ``trial`` failed: the failed trial when this call made the
    change, None when another process (or Optuna's heartbeat check) already had.

    Several processes may notice the same dead trial at once; only the one whose write changed it
    may queue its retry. The storage's ``set_trial_state_values`` says so by trial id; the public
    fallback, ``study.tell``, raises when the trial is already finished.
    """
    trial_id = getattr(trial, "_trial_id", None)
    try:
        if trial_id is not None:
            storage = storage_of(study)
            changed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return storage.get_trial(trial_id) if changed else None
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):  # already finished
        return None
    return study.get_trials(deepcopy=False)[trial.number]


def _batched_writer(trial: optuna.Trial) -> tuple[RDBStorage, Any] | None:
    """(RDB storage, its per-attribute statement) of ``trial``, or None where the private API is absent."""
    backend = getattr(trial.storage, "_backend", trial.storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if not isinstance(backend, RDBStorage) or write is None or getattr(trial, "_cached_frozen_trial", None) is None:
        return None
    return backend, write


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction.

    ``Trial.set_user_attr`` opens a session and commits for each attribute, and a trial records
    about twenty: batching them is a third of the driver's time per trial on SQLite
    (``benchmarks/bench_driver.py``). This reuses the RDB storage's own per-attribute statement,
    falling back to one public call per attribute for other storages or another Optuna.
    """
    found = _batched_writer(trial)
    if found is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    backend, write = found
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    def write_all() -> None:
        with _create_scoped_session(backend.scoped_session, True) as session:
            for key, value in attrs.items():
                write(session, models.TrialUserAttributeModel, trial._trial_id, key, value)

    retrying = getattr(backend, "call_retrying", None)  # autopeft's outage wrapper rides out a lost server
    if retrying is not None:
        retrying("set_user_attrs", write_all)
    else:
        write_all()
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.user_attrs reads, as set_user_attr keeps it


def reseed(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Seed ``sampler``'s random state (and that of the random sampler TPE starts with) to ``seed``.

    Optuna's public ``reseed_rng`` draws a fresh random seed; autopeft needs a chosen one.
    """
    sampler._rng.rng.seed(seed)  # type: ignore[attr-defined]
    inner = getattr(sampler, "_random_sampler", None)
    if inner is not None:
        inner._rng.rng.seed(seed)


class _TrialSeeded:
    """A sampler whose draws for trial ``n`` are seeded with ``seed + n``.

    Two processes on one study (two ``autopeft run``, or workers with one seed) get different trial
    numbers from the database, so they never draw the same configurations in lockstep; a lone run is
    still reproducible, since its trial ``n`` is always seeded the same.
    """

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed, **kwargs)  # type: ignore[call-arg]
        self._trial_seed_base = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reseed(self, (self._trial_seed_base + trial.number) % 2**32)  # type: ignore[arg-type]
        super().before_trial(study, trial)  # type: ignore[misc]


class TrialSeededTPESampler(_TrialSeeded, optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler`, seeded per trial (see :class:`_TrialSeeded`)."""


class TrialSeededRandomSampler(_TrialSeeded, optuna.samplers.RandomSampler):
    """:class:`optuna.samplers.RandomSampler`, seeded per trial (see :class:`_TrialSeeded`)."""
