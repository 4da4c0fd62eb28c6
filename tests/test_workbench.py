"""The workbench: one fit at any fidelity, stopped by its caller, with the method's per-step hook;
and a command that resolves its study file and plugins once."""

from __future__ import annotations

import pytest
from conftest import workbench_for, write_study

from autopeft import Fidelity, load_config, run_study

LORA = {"ranks": [4, 4], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, minilm_available):
    folder = tmp_path_factory.mktemp("bench")
    path = write_study(folder, data={"max_train_examples": 32, "max_eval_examples": 16}, train={"batch_size": 8})
    return workbench_for(load_config(path))


def test_a_fit_is_repeatable_with_its_seed(bench) -> None:
    first = bench.fit("lora", LORA, learning_rate=3e-3, seed=0, fidelity=Fidelity(steps=2))
    again = bench.fit(bench.enabled["lora"], LORA, learning_rate=3e-3, seed=0, fidelity=Fidelity(steps=2))
    assert first.steps == 2 and first.metric == again.metric and first.train_tokens == again.train_tokens


def test_the_caller_stops_a_fit_where_it_reports(bench) -> None:
    kept, seen = [], []

    def stop_at_two(step: int, value: float) -> bool:
        seen.append(step)
        return step == 2

    result = bench.fit(
        "lora",
        LORA,
        learning_rate=3e-3,
        seed=0,
        fidelity=Fidelity(steps=6, report_at=(1, 2, 4)),
        on_report=stop_at_two,
        test=True,
        on_trained=lambda model, r: kept.append(r),
    )
    assert seen == [1, 2] and result.stopped_at == 2 and result.steps == 2 and result.total_steps == 6
    assert not kept and result.test_metric is None  # a stopped fit is neither kept nor tested


def test_a_methods_step_hook_runs_after_every_update(bench, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    method = bench.enabled["lora"]
    monkeypatch.setattr(type(method), "on_step", lambda self, model, step, total: calls.append((step, total)))
    bench.fit("lora", LORA, learning_rate=3e-3, seed=0, fidelity=Fidelity(steps=3))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_a_run_resolves_its_study_and_plugins_once(tmp_path, monkeypatch, minilm_available) -> None:
    import autopeft.registry

    calls: dict[str, int] = {"get_plugin_manager": 0, "resolve_study": 0}
    for name in calls:
        real = getattr(autopeft.registry, name)

        def counted(*args, _name=name, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(autopeft.registry, name, counted)
    path = write_study(tmp_path, study={"n_trials": 2}, data={"max_train_examples": 16, "max_eval_examples": 16})
    study = run_study(path, quiet=True)
    assert len(study.trials) == 2
    assert calls == {"get_plugin_manager": 1, "resolve_study": 1}  # once, where the command starts


def test_a_fit_initialises_from_training_batches_and_records_what_adalora_kept(bench, monkeypatch) -> None:
    from autopeft_plugins.adalora import AdaLora
    from autopeft_plugins.eva import EvaLora

    seen: list[int] = []
    real = EvaLora.initialize

    def initialize(self, model, batches):  # type: ignore[no-untyped-def]
        seen.extend(len(b["input_ids"]) for b in batches)
        real(self, model, batches)

    monkeypatch.setattr(EvaLora, "initialize", initialize)
    eva = bench.fit(EvaLora(), LORA, learning_rate=3e-3, seed=0, fidelity=Fidelity(steps=2))
    assert seen == [8, 8, 8, 8]  # the whole 32-example split: fewer than the 8 batches asked for
    assert eva.trained_count is None and "trained_count" not in eva.measurements()

    config = {"init_r": 4, "target_r": 1, "targets": "query+value"}
    result = bench.fit(AdaLora(), config, learning_rate=3e-3, seed=0, fidelity=Fidelity(steps=8))
    full = AdaLora().count_trainable(bench.ctx, config)
    assert result.trained_count is not None and result.trained_count < full
    assert result.measurements()["trained_count"] == result.trained_count
