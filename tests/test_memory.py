"""Memory options: every trial's model and optimizer freed before the next, gradient checkpointing,
and the device choice with its CPU fallback."""

from __future__ import annotations

import copy
import gc
import random

import pytest
import torch
from conftest import workbench_for, write_study

from autopeft import load_config
from autopeft.blocks import build_context
from autopeft.config import TrainSection
from autopeft.data import Split, TaskData
from autopeft.tasks import EvalSettings
from autopeft.testing import tiny_bert, tiny_llama
from autopeft.training.train import train
from autopeft.training.workbench import pick_device
from autopeft_plugins.lora import Lora
from autopeft_plugins.tasks import SequenceClassification


def _live_tensor_bytes() -> int:
    """Bytes held by every tensor Python can still reach (parameters, gradients, optimizer state)."""
    gc.collect()
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        except Exception:  # objects that only look like tensors
            continue
    return total


def test_each_trials_model_and_optimizer_are_freed_before_the_next(tmp_path, minilm_available) -> None:
    config = load_config(write_study(tmp_path, data={"max_train_examples": 32, "max_eval_examples": 16}))
    bench = workbench_for(config)
    lora = {"ranks": [8, 8], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0}
    model_bytes = sum(p.numel() * p.element_size() for p in bench.base.parameters())
    during: list[int] = []

    before = _live_tensor_bytes()
    for seed in (0, 1):
        bench.fit(
            "lora", lora, learning_rate=1e-3, seed=seed, on_trained=lambda model, _: during.append(_live_tensor_bytes())
        )
        after = _live_tensor_bytes()
        # while trained, no copy of the model was alive: only the adapter, its gradients and AdamW's
        # state (the resident base is lent to the trial, autopeft.training.resident)
        assert 0 < during[-1] - before < 0.1 * model_bytes, (before, during[-1], model_bytes)
        # afterwards they are gone too: nothing grows trial after trial
        assert after - before < 0.02 * model_bytes, (before, after, model_bytes)


def _split(n: int, seed: int = 0) -> Split:
    rng = random.Random(seed)
    features, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        features.append({"input_ids": [3 + label] + [rng.randrange(5, 100) for _ in range(rng.randrange(3, 12))]})
        labels.append(label)
    return Split(features, labels)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_bert])
def test_gradient_checkpointing_trains_the_same_weights(factory) -> None:
    """Recomputing activations changes memory, not results: same weights with and without it."""
    torch.manual_seed(0)
    base = factory().requires_grad_(False)
    base.config.hidden_dropout_prob = base.config.attention_probs_dropout_prob = 0.0
    lora = {"ranks": [4, 4, 4], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0}
    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(1)  # the same LoRA initialisation both times
        model = Lora().apply(copy.deepcopy(base), build_context(base), lora)
        if hasattr(model.base_model.model, "bert"):  # no dropout either way: the two runs must match
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        settings = TrainSection(epochs=1, batch_size=8, precision="fp32", gradient_checkpointing=checkpointing)
        data = TaskData(_split(24), _split(8, 1), None, [0, 1], 0)
        evaluation = EvalSettings(0, 64, torch.device("cpu"), "fp32")
        train(
            model,
            SequenceClassification(),
            data,
            settings,
            evaluation,
            learning_rate=1e-2,
            metric="accuracy",
            seed=0,
        )
        assert model.get_base_model().is_activation_checkpointing is checkpointing
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    assert not torch.equal(weights[0], torch.zeros_like(weights[0]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_device_choice_falls_back_to_the_cpu(monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("cuda", said.append).type == "cpu"
    assert said and "no such device is visible" in said[0] and "'cuda'" in said[0]
    assert pick_device("auto", said.append).type == "cpu" and len(said) == 1  # auto falls back silently
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda" and pick_device("cpu").type == "cpu"


def test_memory_stays_flat_over_twenty_trials(tmp_path, minilm_available) -> None:
    """Twenty trials of three methods on one resident base: the tensors alive after each are the
    same, and the process's resident memory stops growing once the allocator has warmed up."""
    from pathlib import Path

    from autopeft.training.train import Fidelity

    config = load_config(
        write_study(
            tmp_path,
            data={"max_train_examples": 32, "max_eval_examples": 16},
            search={"methods": ["lora", "bitfit", "unfreeze"]},
        )
    )
    bench = workbench_for(config)
    configs = [
        ("lora", {"ranks": [8, 8], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0}),
        ("bitfit", {"blocks": [True, True]}),
        ("unfreeze", {"blocks": [False, True], "part": "attention"}),
    ]

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    tensors, rss = [], []
    for i in range(20):
        name, trial_config = configs[i % 3]
        bench.fit(name, trial_config, learning_rate=1e-3, seed=i, fidelity=Fidelity(steps=2))
        tensors.append(_live_tensor_bytes())
        rss.append(rss_mb())
    assert max(tensors) - min(tensors) < 2**20, tensors  # what is alive between trials does not grow
    assert max(rss[5:]) - rss[5] < 64, rss  # MiB: released between trials, not accumulated
