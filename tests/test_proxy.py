"""The zero-cost proxy: block scores from one gradient pass, their shape and determinism, the ranks
they allocate, the configuration they queue, and how well they rank a study's trials."""

from __future__ import annotations

import optuna
import pytest
import torch
from conftest import workbench_for, write_study

from autopeft import load_config, run_study
from autopeft.search.proxy import PROXY_ATTR, configuration_score, proxy_correlation, proxy_ranks, proxy_scores


@pytest.fixture(scope="module")
def bench(tmp_path_factory, minilm_available):
    folder = tmp_path_factory.mktemp("proxy")
    return workbench_for(load_config(write_study(folder, data={"max_train_examples": 48}, train={"batch_size": 8})))


def test_scores_have_one_value_per_block_and_group_and_repeat(bench) -> None:
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in bench.base.named_parameters()}
    first, again = proxy_scores(bench, n_batches=3), proxy_scores(bench, n_batches=3)
    assert first == again and first.batches == 3
    assert len(first.blocks) == len(bench.ctx.blocks) == 2 and sum(first.blocks) == pytest.approx(1.0)
    assert set(first.groups) == {"query", "key", "value", "attn_output", "mlp"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in first.groups.values())
    for i, block in enumerate(first.blocks):
        assert block == pytest.approx(sum(v[i] for v in first.groups.values()))
    for name, p in bench.base.named_parameters():  # the base model is left as it was
        assert p.requires_grad == before[name][0] and torch.equal(p, before[name][1]) and p.grad is None


def test_ranks_follow_the_scores_at_the_default_size() -> None:
    assert proxy_ranks([0.1, 0.1, 0.2, 0.6], [4, 8, 16], 8) == [4, 4, 8, 16]
    assert sum(proxy_ranks([0.7, 0.1, 0.1, 0.1], [4, 8, 16], 8)) <= 32
    assert proxy_ranks([0.25] * 4, [4, 8, 16], 8) == [8, 8, 8, 8]


def test_configuration_score_weights_blocks_by_where_the_parameters_sit() -> None:
    assert configuration_score([0, 100], [0.2, 0.8]) == pytest.approx(0.8)
    assert configuration_score([50, 50], [0.2, 0.8]) == pytest.approx(0.5)
    assert configuration_score([0, 0], [0.2, 0.8]) == 0.0


def test_correlation_is_spearman_over_complete_trials_and_sign_corrected() -> None:
    for direction, sign in (("maximize", 1), ("minimize", -1)):
        study = optuna.create_study(direction=direction)
        study.set_user_attr(PROXY_ATTR, {"blocks": [0.1, 0.9], "groups": {}, "batches": 1})
        for top_share, value in ((0.0, 0.5), (0.5, 0.6), (1.0, 0.7), (0.25, 0.4)):
            attrs = {"trainable_params": 10, "block_params": [round(100 * (1 - top_share)), round(100 * top_share)]}
            study.add_trial(optuna.trial.create_trial(value=sign * value, user_attrs=attrs))
        rho, n = proxy_correlation(study)
        assert n == 4 and rho == pytest.approx(0.8)
    assert proxy_correlation(optuna.create_study()) is None


def test_a_new_study_queues_the_proxy_choice_after_the_default(tmp_path, minilm_available, monkeypatch) -> None:
    from autopeft import Workbench
    from autopeft.training.train import TrainResult

    def fit(self, method, config, **unused):  # instant: only the queue and the records matter here
        return TrainResult(0.6, 0.01, 0.01, 10, 1, 1)

    monkeypatch.setattr(Workbench, "fit", fit)
    path = write_study(tmp_path, study={"n_trials": 3}, search={"methods": ["lora"]}, model={"overrides": {}})
    study = run_study(path, quiet=True)
    default, _, proxy = study.trials[:3]  # the second is the default at a higher rate (the rate ladder)
    assert default.user_attrs.get("warm_start") and not default.user_attrs.get("proxy")
    assert proxy.user_attrs.get("proxy") and proxy.params["lora.targets"] == default.params["lora.targets"]
    ranks = [proxy.params[f"lora.r[{i}]"] for i in range(6)]
    scores = study.user_attrs[PROXY_ATTR]["blocks"]
    assert len(scores) == 6 and ranks == proxy_ranks(scores, [2, 4, 8, 16], 8) and ranks != [8] * 6
    (tmp_path / "off").mkdir()
    disabled = write_study(tmp_path / "off", search={"methods": ["lora"], "proxy": False})
    assert PROXY_ATTR not in run_study(disabled, n_trials=1, quiet=True).user_attrs
    (tmp_path / "short").mkdir()  # two trials: the default at its two rates; no room for the proxy's choice
    short = run_study(write_study(tmp_path / "short", study={"n_trials": 2}, search={"methods": ["lora"]}), quiet=True)
    assert [t.state for t in short.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # nothing left waiting
    assert all(t.user_attrs.get("warm_start") for t in short.trials) and PROXY_ATTR not in short.user_attrs
