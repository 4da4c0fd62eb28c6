"""The resident base model: trials apply their methods to it and give it back bit-identical, with no
copy per trial; frozen weights in bf16 with fp32 trained parameters; a quantized base's one-line
error on a machine without a CUDA GPU; devices and memory readings mocked where this machine has none."""

from __future__ import annotations

import dataclasses
import sys

import optuna
import pytest
import torch
from conftest import DATA, workbench_for, write_study

from autopeft import ConfigError, Fidelity, PluginError, load_config
from autopeft.cli.command import main
from autopeft.training.models import placement
from autopeft.training.resident import BaseLender, base_fingerprint
from autopeft.training.workbench import peak_rss_mb, pick_device, quantized_misfits

METHODS = ["lora", "ia3", "unfreeze", "bitfit", "adapter", "prompt", "adalora", "eva"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, minilm_available):
    folder = tmp_path_factory.mktemp("resident")
    path = write_study(
        folder,
        data={"max_train_examples": 16, "max_eval_examples": 8},
        train={"batch_size": 8, "precision": "fp32"},
        search={"methods": METHODS},
    )
    return workbench_for(load_config(path))


def _sampled(bench, n: int) -> list[tuple[str, dict]]:
    """``n`` configurations drawn through each method's own ``suggest``, the methods in turn."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found = []
    for i in range(n):
        name = METHODS[i % len(METHODS)]
        trial = study.ask()
        found.append((name, bench.enabled[name].suggest(trial, bench.ctx, bench.options[name], bench.budget)))
        study.tell(trial, 0.0)
    return found


def test_twenty_trials_of_every_method_give_the_base_back_bit_identical(bench) -> None:
    before = base_fingerprint(bench.base)
    base_id = id(bench.base)
    for i, (name, config) in enumerate(_sampled(bench, 20)):
        bench.fit(name, config, learning_rate=1e-2, seed=i, fidelity=Fidelity(steps=2))
        assert not any(p.requires_grad for p in bench.base.parameters()), name
    assert id(bench.base) == base_id  # never reloaded, never copied
    assert base_fingerprint(bench.base) == before


@pytest.mark.parametrize("method", ["lora", "unfreeze", "adapter"])
def test_a_trial_on_the_resident_base_trains_what_one_on_a_copy_does(bench, monkeypatch, method) -> None:
    """The lender changes where a trial trains, not what it learns: the same seed gives the same
    metric and losses as on a private copy of the base (the path of a method that modifies_base)."""
    name, config = next((n, c) for n, c in _sampled(bench, 8) if n == method)

    def fit() -> tuple[float, list[float]]:
        losses: list[float] = []
        result = bench.fit(name, config, learning_rate=1e-2, seed=3, on_loss=lambda s, v: losses.append(v))
        return result.metric, losses

    resident, again = fit(), fit()
    monkeypatch.setattr(type(bench.enabled[name]), "modifies_base", True)
    copied = fit()
    assert resident == again == copied


def test_a_method_that_changes_a_frozen_weight_fails_its_trial_and_the_base_is_reloaded(bench, monkeypatch) -> None:
    lora = bench.enabled["lora"]
    real = type(lora).apply
    before = base_fingerprint(bench.base)

    def careless(self, model, ctx, config):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            model.get_submodule(f"{ctx.blocks[0].path}.attention.output.dense").weight.add_(1.0)
        return real(self, model, ctx, config)

    monkeypatch.setattr(type(lora), "apply", careless)
    config = next(c for n, c in _sampled(bench, 8) if n == "lora")
    with pytest.raises(PluginError, match=r"changed the frozen base weight .*attention\.output\.dense\.weight"):
        bench.fit("lora", config, learning_rate=1e-2, seed=0, fidelity=Fidelity(steps=1))
    monkeypatch.setattr(type(lora), "apply", real)
    assert base_fingerprint(bench.base) == before  # loaded again from the checkpoint, with the same head
    bench.fit("lora", config, learning_rate=1e-2, seed=0, fidelity=Fidelity(steps=1))


def test_the_lender_undoes_new_modules_attributes_hooks_and_the_config() -> None:
    from autopeft.testing import tiny_bert

    base = tiny_bert().requires_grad_(False)
    before = base_fingerprint(base)
    modules = dict(base.named_modules())
    lender = BaseLender(base)
    use_cache = base.config.use_cache

    def meddle(model):  # type: ignore[no-untyped-def]
        model.bert.pooler = torch.nn.Identity()
        model.classifier.register_forward_hook(lambda *a: None)
        model.autopeft_note = "trial"
        model.config.use_cache = not model.config.use_cache
        model.classifier.weight.requires_grad_(True)
        return model

    with lender.lend(meddle) as model:
        with torch.no_grad():
            model.classifier.weight.mul_(3.0)  # trained: restored from the copy taken after apply
    assert dict(base.named_modules()).keys() == modules.keys() and base.bert.pooler is modules["bert.pooler"]
    assert not base.classifier._forward_hooks and not hasattr(base, "autopeft_note")
    assert base.config.use_cache is use_cache and not base.classifier.weight.requires_grad
    assert base_fingerprint(base) == before and lender.changed == []
    base.classifier.register_forward_hook(lambda *a: None).remove()  # the tables are what torch made them


def test_a_bf16_base_holds_half_the_memory_and_trains_fp32_parameters(tmp_path, minilm_available) -> None:
    path = write_study(
        tmp_path,
        model={"dtype": "bf16"},
        data={"max_train_examples": 16, "max_eval_examples": 8},
        train={"batch_size": 8},
        search={"methods": ["lora", "unfreeze"]},
    )
    bench = workbench_for(load_config(path))
    assert {p.dtype for p in bench.base.parameters()} == {torch.bfloat16}
    assert bench.config.train.precision == "bf16"  # frozen bf16 weights compute in bf16
    before = base_fingerprint(bench.base)
    trained: list[set[torch.dtype]] = []
    for name, config in [
        ("lora", {"ranks": [4, 4], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}),
        ("unfreeze", {"blocks": [False, True], "part": "norm"}),
    ]:
        result = bench.fit(
            name,
            config,
            learning_rate=1e-2,
            seed=0,
            on_trained=lambda model, _: trained.append({p.dtype for p in model.parameters() if p.requires_grad}),
        )
        assert result.metric == result.metric  # a number, not NaN
    assert trained == [{torch.float32}, {torch.float32}]
    assert base_fingerprint(bench.base) == before  # the unfrozen norms are bf16 again, with their values


def test_a_precision_other_than_the_bases_is_one_line(tmp_path, minilm_available, capsys) -> None:
    path = write_study(tmp_path, model={"dtype": "bf16"}, train={"precision": "fp32"})
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.precision" in err and "bf16" in err


@pytest.mark.parametrize(
    "model,expected",
    [
        ({"dtype": "fp16"}, "fp16 needs a CUDA GPU"),
        ({"quantization": "nf4"}, "needs a CUDA GPU (bitsandbytes)"),
    ],
)
def test_what_needs_a_cuda_gpu_is_one_line_on_a_machine_without(
    tmp_path, minilm_available, capsys, monkeypatch, model, expected
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_study(tmp_path, model=model)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "tiny.db").exists() or "COMPLETE" not in err


def test_placement_asks_transformers_for_the_dtype_quantization_and_device_map(monkeypatch) -> None:
    from autopeft.config import ModelSection

    section = ModelSection(name="m")
    assert placement(section, torch.device("cpu")) == {"dtype": torch.float32}
    assert placement(dataclasses.replace(section, dtype="auto"), torch.device("cpu")) == {"dtype": "auto"}
    assert placement(dataclasses.replace(section, device_map="auto"), torch.device("cuda"))["device_map"] == "auto"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        placement(dataclasses.replace(section, quantization="int8"), torch.device("cpu"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # a GPU, but no bitsandbytes
    with pytest.raises(ConfigError, match=r"autopeft\[qlora\]"):
        placement(dataclasses.replace(section, quantization="nf4"), torch.device("cuda", 0))


def test_methods_that_cannot_train_on_a_quantized_base_are_left_out_with_a_reason(bench) -> None:
    misfits = quantized_misfits(bench.enabled, "nf4")
    assert sorted(misfits) == ["adapter", "bitfit", "unfreeze"]
    assert all("quantized (nf4) base" in why for why in misfits.values())


def test_mps_is_chosen_where_there_is_one_and_falls_back_saying_so(monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps" and pick_device("mps").type == "mps"
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("mps", said.append).type == "cpu" and "'mps'" in said[0]


def test_peak_memory_reads_the_high_water_mark_on_linux_and_bytes_on_macos(monkeypatch) -> None:
    import resource
    from pathlib import Path

    status = Path("/proc/self/status").read_text()
    hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    assert abs(peak_rss_mb() - hwm / 1024) < 64  # MiB: this process's own peak, read twice

    class Usage:
        ru_maxrss = 2 * 2**20

    def no_proc(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("no /proc here")

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(sys, "platform", "darwin")
    assert peak_rss_mb() == 2.0  # ru_maxrss is bytes on macOS
    monkeypatch.setattr(sys, "platform", "freebsd14")
    assert peak_rss_mb() == 2048.0  # KiB elsewhere


def _random_lm_study(folder, **model) -> object:
    """A causal-LM study on a random tiny Llama saved beside it (Rotten Tomatoes text)."""
    import pandas as pd

    from autopeft.testing import save_random_causal_lm

    texts = pd.read_parquet(DATA / "rotten_tomatoes_train.parquet")["text"].head(500).tolist()
    model_dir = save_random_causal_lm(folder / "model", texts, {"vocab_size": 400})
    return write_study(
        folder,
        study={"n_trials": 3},
        model={"name": str(model_dir), "overrides": {}, **model},
        task={"type": "causal-lm", "metric": "perplexity"},
        data={"max_train_examples": 32, "max_eval_examples": 16, "packing": True},
        train={"batch_size": 4, "gradient_accumulation_steps": 2},
        search={"methods": ["lora", "unfreeze", "bitfit"]},
    )


def test_a_bf16_language_model_study_runs_to_the_end(tmp_path) -> None:
    from autopeft import run_study

    study = run_study(_random_lm_study(tmp_path, dtype="bf16"), quiet=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(t.value == t.value and t.value > 1 for t in done)  # perplexities
    assert {t.user_attrs["method"] for t in done} <= {"lora", "unfreeze"}  # no biases in Llama: BitFit left out


@pytest.mark.gpu
def test_an_nf4_base_trains_lora_and_is_given_back(tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: bitsandbytes quantizes on the device (benchmarks/gpu_check.sh runs this)")
    pytest.importorskip("bitsandbytes", reason="pip install 'autopeft[qlora]'")
    bench = workbench_for(load_config(_random_lm_study(tmp_path, quantization="nf4")))
    assert "unfreeze" in bench.skipped and "lora" in bench.methods
    before = base_fingerprint(bench.base)
    config = {"ranks": [4, 4, 4], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}
    for seed in range(3):
        result = bench.fit("lora", config, learning_rate=1e-2, seed=seed)
        assert result.metric == result.metric
    assert base_fingerprint(bench.base) == before
