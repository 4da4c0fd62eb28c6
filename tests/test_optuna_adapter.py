"""What autopeft reaches into Optuna for (beyond its public API) is still there: an Optuna upgrade
that moves it fails here, by name, instead of changing behaviour quietly. The public-API fallbacks
of :mod:`autopeft.storage.optuna_adapter` are tested here too, so a newer Optuna still works."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import RDBStorage

from autopeft.storage.backends import _OutageTolerantStorage, open_storage
from autopeft.storage.optuna_adapter import (
    RDB_PRIVATE_CALLED,
    TrialSeededRandomSampler,
    TrialSeededTPESampler,
    fail_running_trial,
    remember_storage,
    reseed,
    set_user_attrs,
    storage_of,
    storage_url,
)

# The tests ask for trials outside Study.optimize on storages with heartbeats, which Optuna warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.mark.parametrize("name", [*RDB_PRIVATE_CALLED, "_set_trial_attr_without_commit"])
def test_the_private_rdb_storage_methods_autopeft_wraps_exist(name: str) -> None:
    assert callable(getattr(RDBStorage, name, None)), f"optuna.storages.RDBStorage.{name} is gone"
    if name in RDB_PRIVATE_CALLED:
        assert name in vars(_OutageTolerantStorage)  # ...and every one of them rides out an outage


def test_the_private_names_the_adapter_reads_exist(tmp_path) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    assert callable(_create_scoped_session) and hasattr(models, "TrialUserAttributeModel")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}", 30))
    trial = study.ask()
    assert isinstance(study._storage._backend, RDBStorage), "Optuna no longer wraps its RDB storage in a cache"
    assert isinstance(trial._cached_frozen_trial, optuna.trial.FrozenTrial), "Trial._cached_frozen_trial is gone"
    assert isinstance(study.trials[0]._trial_id, int), "FrozenTrial._trial_id is gone"
    tpe = optuna.samplers.TPESampler(seed=0)
    assert hasattr(tpe._rng, "rng") and hasattr(tpe._random_sampler._rng, "rng"), "sampler random state moved"


def test_storage_of_is_the_storage_the_study_was_opened_on(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", 30)
    study = optuna.create_study(storage=storage)
    assert storage_of(study) is not storage  # not remembered: Optuna's own (its cache around the RDB)
    remember_storage(study, storage)
    assert storage_of(study) is storage


@pytest.mark.parametrize("public", [False, True], ids=["private", "public-fallback"])
def test_failing_a_running_trial_says_whether_this_call_did(tmp_path, public: bool) -> None:
    from types import SimpleNamespace

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}", 30))
    number = study.ask().number
    running = study.trials[number] if not public else SimpleNamespace(number=number)  # no _trial_id: tell()
    failed = fail_running_trial(study, running)
    assert failed is not None and failed.state == optuna.trial.TrialState.FAIL and failed.number == number
    assert fail_running_trial(study, running) is None  # another process already had: no second retry
    assert study.trials[number].state == optuna.trial.TrialState.FAIL


def test_set_user_attrs_falls_back_to_one_public_call_each(tmp_path, monkeypatch) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}", 30))
    trial = study.ask()
    calls = []
    from autopeft.storage import optuna_adapter

    assert optuna_adapter._batched_writer(trial) is not None  # this Optuna has the private statement...
    monkeypatch.setattr(optuna_adapter, "_batched_writer", lambda trial: None)  # ...a newer one may not
    real = optuna.Trial.set_user_attr
    monkeypatch.setattr(optuna.Trial, "set_user_attr", lambda self, k, v: calls.append(k) or real(self, k, v))
    set_user_attrs(trial, {"a": 1, "b": 2})
    assert calls == ["a", "b"] and study.trials[0].user_attrs == {"a": 1, "b": 2}


def test_the_cached_storage_calls_only_methods_the_outage_wrapper_covers() -> None:
    import inspect
    import re

    from optuna.storages import _cached_storage

    called = set(re.findall(r"_backend\.(\w+)", inspect.getsource(_cached_storage)))
    uncovered = {n for n in called if n not in vars(_OutageTolerantStorage) and not n.startswith("get_heartbeat")}
    assert not uncovered, f"Optuna's cache calls RDB storage methods that a server outage would kill: {uncovered}"


@pytest.mark.parametrize("cls", [TrialSeededTPESampler, TrialSeededRandomSampler])
def test_reseeding_makes_draws_repeatable(cls) -> None:
    sampler = cls(seed=7)
    draws = []
    for _ in range(2):
        reseed(sampler, 123)
        study = optuna.create_study(sampler=sampler)
        trial = study.ask()
        draws.append(trial.suggest_float("x", 0.0, 1.0))
    assert draws[0] == draws[1]


def test_storage_url_reads_through_optunas_cache(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(url, 30))
    assert storage_url(study) == url
