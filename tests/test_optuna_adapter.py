"""What autopeft reaches into Optuna for (beyond its public API) is still there: an Optuna upgrade
that moves it fails here, by name, instead of changing behaviour quietly."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import RDBStorage

from autopeft.optuna_adapter import TrialSeededRandomSampler, TrialSeededTPESampler, reseed, storage_url
from autopeft.storage import _PRIVATE_CALLED, _OutageTolerantStorage, open_storage


@pytest.mark.parametrize("name", [*_PRIVATE_CALLED, "_set_trial_attr_without_commit"])
def test_the_private_rdb_storage_methods_autopeft_wraps_exist(name: str) -> None:
    assert callable(getattr(RDBStorage, name, None)), f"optuna.storages.RDBStorage.{name} is gone"
    if name in _PRIVATE_CALLED:
        assert name in vars(_OutageTolerantStorage)  # ...and every one of them rides out an outage


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
