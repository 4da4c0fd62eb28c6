"""Frozen-prefix caching: which prefix is frozen, exact forward and gradients, reuse across trials."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import workbench_for, write_study

from autopeft import load_config, run_study
from autopeft.data import batches
from autopeft.training.prefix_cache import PrefixCache, block_modules
from autopeft.training.workbench import Workbench

LORA = {"alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.1}


@pytest.fixture(scope="module")
def objective(tmp_path_factory, minilm_available) -> Workbench:
    folder = tmp_path_factory.mktemp("prefix")
    path = write_study(
        folder,
        model={"overrides": {"num_hidden_layers": 3}},
        search={"methods": ["lora", "unfreeze", "bitfit", "ia3", "prompt"]},
        train={"prefix_cache": True},
    )
    return workbench_for(load_config(path))


def _applied(objective: Workbench, name: str, config: dict) -> torch.nn.Module:
    model = objective.enabled[name].apply(copy.deepcopy(objective.base).requires_grad_(False), objective.ctx, config)
    with torch.no_grad():  # move every trained weight off its initial value (LoRA's B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def _probe(objective: Workbench, size: int = 4) -> dict[str, torch.Tensor]:
    batch = next(batches(objective.data.train, size, objective.data.pad_token_id))
    batch.pop("labels")
    return batch


@pytest.mark.parametrize(
    ("name", "config", "expected"),
    [
        ("lora", {**LORA, "ranks": [0, 0, 8]}, 2),
        ("lora", {**LORA, "ranks": [0, 8, 8]}, 1),
        ("lora", {**LORA, "ranks": [8, 0, 0]}, 0),
        ("unfreeze", {"part": "norms", "blocks": [0, 0, 1]}, 2),  # the last block always runs
        ("bitfit", {"blocks": [0, 1, 0]}, 1),
        ("ia3", {"blocks": [0, 0, 1], "feedforward": True}, 2),
        ("prompt", {"tokens": 4}, 0),  # the prompt is trained and changes every block's input
    ],
)
def test_the_usable_prefix_is_measured_on_the_trial_model(objective, name, config, expected) -> None:
    model = _applied(objective, name, config)
    assert objective.prefix.usable_blocks(model, _probe(objective)) == expected


def test_a_frozen_prefix_that_changes_the_input_is_not_cached(objective) -> None:
    model = _applied(objective, "lora", {**LORA, "ranks": [0, 0, 8]})
    with torch.no_grad():  # frozen, untrainable, but not the base model's weights any more
        model.get_input_embeddings().weight.mul_(1.5)
    assert objective.prefix.usable_blocks(model, _probe(objective)) == 0


@pytest.mark.parametrize("ranks", [[0, 0, 8], [0, 8, 8]])
def test_cached_forward_and_gradients_equal_the_full_model(objective, ranks) -> None:
    model = _applied(objective, "lora", {**LORA, "ranks": ranks})
    probe = _probe(objective)
    k = objective.prefix.usable_blocks(model, probe)
    objective.prefix.fill(model, k, [objective.data.train], objective.data.pad_token_id, 16)
    model.eval()  # no dropout: both paths must compute the same function

    def logits_and_grads(cached: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with objective.prefix.attached(model, k) if cached else torch.enable_grad():
            logits = model(**probe).logits
        logits.square().sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    full, cached = logits_and_grads(False), logits_and_grads(True)
    torch.testing.assert_close(cached[0], full[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(cached[1], full[1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    after = model(**probe).logits  # the patches are gone: the full model runs again
    torch.testing.assert_close(after, full[0])


def test_states_are_computed_once_and_the_oldest_prefix_is_dropped(objective) -> None:
    cache = PrefixCache(objective.base, objective.ctx)
    model = _applied(objective, "lora", {**LORA, "ranks": [0, 0, 8]})
    splits = [objective.data.train, objective.data.validation]
    pad = objective.data.pad_token_id
    assert cache.fill(model, 2, splits, pad, 32) == len({str(f) for s in splits for f in s.features})
    assert cache.fill(model, 2, splits, pad, 32) == 0  # a later trial with the same prefix
    cache.max_bytes = 1
    assert cache.fill(model, 1, splits, pad, 32) > 0
    assert list(cache._states) == [1]  # over the limit: only the newest prefix stays


def test_a_deeper_prefix_is_computed_from_a_cached_shallower_one(objective) -> None:
    model = _applied(objective, "lora", {**LORA, "ranks": [0, 0, 8]})
    split, pad = objective.data.validation, objective.data.pad_token_id
    direct, stepwise = PrefixCache(objective.base, objective.ctx), PrefixCache(objective.base, objective.ctx)
    direct.fill(model, 2, [split], pad, 32)
    stepwise.fill(model, 1, [split], pad, 32)
    calls = []
    linear = next(m for m in block_modules(model, objective.ctx)[0].modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda *args: calls.append(1))
    stepwise.fill(model, 2, [split], pad, 32)
    handle.remove()
    assert calls == []  # block 0 did not run: block 1's input came from the cache
    assert direct._states[2].keys() == stepwise._states[2].keys()
    for key, state in direct._states[2].items():
        torch.testing.assert_close(stepwise._states[2][key], state, rtol=1e-4, atol=1e-5)


def test_a_study_with_the_cache_records_cached_blocks(tmp_path, minilm_available) -> None:
    path = write_study(
        tmp_path,
        model={"overrides": {"num_hidden_layers": 3}},
        search={"methods": ["unfreeze"]},
        train={"prefix_cache": True},
        study={"n_trials": 3, "seed": 1},
    )
    study = run_study(load_config(path), quiet=True)
    trials = [t for t in study.trials if "train_seconds" in t.user_attrs]
    assert len(trials) == 3
    for t in trials:  # unfreezing: the lowest unfrozen block decides the cached prefix
        blocks = t.user_attrs["block_params"]
        first = next(i for i, n in enumerate(blocks) if n)
        assert t.user_attrs["cached_blocks"] == min(first, 2)
        assert 0 <= t.value <= 1


def test_a_decoder_language_models_prefix_is_cached_exactly() -> None:
    """Nothing assumes an encoder: Llama blocks take rotary position embeddings and a causal mask as
    keyword arguments, which pass through while the cached hidden states are injected."""
    import random

    import transformers

    from autopeft.blocks import build_context
    from autopeft.data import Split
    from autopeft_plugins.lora import Lora

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    base = transformers.LlamaForCausalLM(config).requires_grad_(False)
    ctx = build_context(base, new_head=False)
    rng = random.Random(0)
    ids = [[rng.randrange(1, 64) for _ in range(rng.randrange(4, 10))] for _ in range(6)]
    split = Split([{"input_ids": x} for x in ids], [list(x) for x in ids])
    model = Lora().apply(copy.deepcopy(base), ctx, {**LORA, "ranks": [0, 0, 8], "dropout": 0.0})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    probe = next(batches(split, 6, 0))
    probe.pop("labels")
    cache = PrefixCache(base, ctx)
    k = cache.usable_blocks(model, probe)
    assert k == 2
    cache.fill(model, k, [split], 0, 4)
    model.eval()
    full = model(**probe).logits
    with cache.attached(model, k):
        cached = model(**probe).logits
    mask = probe["attention_mask"].bool()
    torch.testing.assert_close(cached[mask], full[mask], rtol=1e-4, atol=1e-5)
