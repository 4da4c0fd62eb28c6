"""What autopeft needs from Optuna's samplers and studies beyond Optuna's public API.

The storage side (:mod:`autopeft.storage`: the outage wrapper around ``RDBStorage``'s methods and the
one-transaction ``set_user_attrs``) relies on Optuna internals too. Optuna is pinned below 6, and
``tests/test_optuna_adapter.py`` fails by name when an upgrade moves any of it, instead of letting the
behaviour change quietly.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

__all__ = ["TrialSeededRandomSampler", "TrialSeededTPESampler", "reseed", "storage_url"]


def storage_url(study: optuna.Study) -> str:
    """The URL of a study's RDB storage (Optuna wraps it in a cache), or ``''`` for other storages."""
    storage = getattr(study, "_storage", None)
    return str(getattr(getattr(storage, "_backend", storage), "url", ""))


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
