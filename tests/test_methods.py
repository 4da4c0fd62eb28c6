"""Every built-in method passes the conformance suite a third-party method runs."""

from __future__ import annotations

from autopeft.testing import MethodConformance
from autopeft_plugins.adalora import AdaLora
from autopeft_plugins.adapter import Adapter
from autopeft_plugins.bitfit import BitFit
from autopeft_plugins.eva import EvaLora
from autopeft_plugins.ia3 import IA3
from autopeft_plugins.lora import Lora
from autopeft_plugins.prompt import PromptTuning
from autopeft_plugins.unfreeze import Unfreeze


class TestLora(MethodConformance):
    method = Lora()


class TestDoRA(MethodConformance):
    method = Lora()
    options = {"variants": ["dora"]}


class TestAdaLora(MethodConformance):
    method = AdaLora()
    n_samples = 3  # three choices a parameter: fewer samples cover them


class TestEvaLora(MethodConformance):
    method = EvaLora()
    n_samples = 3  # LoRA's sampling, which TestLora covers; here the data-driven initialisation
    # Ranks up to 8: on the tiny models' hidden size of 32 and a few random tokens, EVA's incremental
    # SVD takes hundreds of passes to converge at rank 16 (7 s an initialisation against 0.8 s at 8).
    options = {"r": [2, 4, 8]}


class TestUnfreeze(MethodConformance):
    method = Unfreeze()


class TestBitFit(MethodConformance):
    method = BitFit()


class TestIA3(MethodConformance):
    method = IA3()


class TestPromptTuning(MethodConformance):
    method = PromptTuning()


class TestSerialAdapter(MethodConformance):
    method = Adapter()
    options = {"placement": ["serial"], "sublayers": ["attention+mlp"]}


class TestParallelAdapter(MethodConformance):
    method = Adapter()
    options = {"placement": ["parallel"], "sublayers": ["attention+mlp"]}


def test_lora_rank_per_block_through_rank_pattern() -> None:
    import copy

    import torch

    from autopeft import build_context
    from autopeft.testing import tiny_bert

    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    ctx = build_context(base)
    config = {"ranks": [4, 0, 8], "alpha": 2, "targets": "query+value", "variant": "rslora", "dropout": 0.0}
    peft_config = Lora().peft_config(ctx, config)
    assert peft_config.r == 4 and peft_config.use_rslora  # the most common rank; the others are patterns
    assert peft_config.rank_pattern == {
        "bert.encoder.layer.2.attention.self.query": 8,
        "bert.encoder.layer.2.attention.self.value": 8,
    }
    model = Lora().apply(copy.deepcopy(base), ctx, config)
    layers = model.base_model.model.bert.encoder.layer
    assert layers[0].attention.self.query.r["default"] == 4 and layers[2].attention.self.value.r["default"] == 8
    assert layers[2].attention.self.value.lora_alpha["default"] == 16
    assert not hasattr(layers[1].attention.self.query, "r")  # rank 0: block left out


def test_unmatched_peft_pattern_keys_and_targets_are_errors(monkeypatch) -> None:
    import copy

    import pytest
    from peft import get_peft_model

    from autopeft import PluginError, build_context
    from autopeft.peft_backed import verify_targets
    from autopeft.testing import tiny_bert

    base = tiny_bert().requires_grad_(False)
    ctx = build_context(base)
    config = {"ranks": [4, 4, 8], "alpha": 1, "targets": "query", "variant": "lora", "dropout": 0.0}
    lora_config = Lora().peft_config(ctx, config)
    wrapped = get_peft_model(copy.deepcopy(base), lora_config)
    verify_targets(wrapped, list(lora_config.target_modules), lora_config.rank_pattern)  # all matched
    with pytest.raises(PluginError, match="pattern key 'encoder.layer.7.attention.self.query' matched no"):
        verify_targets(wrapped, [], {"encoder.layer.7.attention.self.query": 8})
    with pytest.raises(PluginError, match="adapted no module named 'bert.encoder.layer.9.attention.self.query'"):
        verify_targets(wrapped, ["bert.encoder.layer.9.attention.self.query"], {})
    # peft would silently use the default rank for a pattern key that does not match: apply refuses.
    original = Lora.peft_config

    def typo(self, ctx, config):
        made = original(self, ctx, config)
        made.rank_pattern = {}
        made.alpha_pattern = {}
        return made

    monkeypatch.setattr(Lora, "peft_config", typo)
    with pytest.raises(PluginError, match="got rank 4, expected 8"):
        Lora().apply(copy.deepcopy(base), ctx, config)


def test_adapter_saved_format_is_documented_safetensors(tmp_path) -> None:
    import copy
    import json

    from safetensors import safe_open

    from autopeft import build_context
    from autopeft.testing import tiny_llama

    base = tiny_llama().requires_grad_(False)
    ctx = build_context(base)
    config = {"placement": "parallel", "sublayers": "attention+mlp", "sizes": [0, 4, 8]}
    model = Adapter().apply(copy.deepcopy(base), ctx, config)
    Adapter().save(model, tmp_path)
    with safe_open(str(tmp_path / "trained.safetensors"), "pt") as f:
        meta, names = f.metadata(), set(f.keys())
    assert meta["method"] == "adapter" and json.loads(meta["config"]) == config
    assert "model.layers.2.mlp.down_proj.adapter.down.weight" in names
    assert "model.layers.1.self_attn.o_proj.adapter.up.bias" in names and "score.weight" in names
    assert not any(n.startswith("model.layers.0.") for n in names)  # size 0: block left out


def test_adalora_trains_at_its_initial_rank_and_records_what_pruning_left() -> None:
    # The budget is the count at init_r; after one training, the schedule (set on the first step for
    # the steps this fit runs) has pruned every linear's triplets to target_r on average, and
    # trained_count says how many parameters are left carrying the update.
    import copy

    import torch

    from autopeft import build_context
    from autopeft.methods import trainable_numel
    from autopeft.testing import tiny_bert

    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    ctx = build_context(base)
    method = AdaLora()
    config = {"init_r": 8, "target_r": 2, "targets": "query+value"}
    model = method.apply(copy.deepcopy(base), ctx, config)
    linears = 2 * len(ctx.blocks)  # query and value of every block, 32 x 32 each
    assert (
        method.count_trainable(ctx, config) == trainable_numel(model) == ctx.head_params + linears * 8 * (32 + 32 + 1)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    total = 30
    g = torch.Generator().manual_seed(0)
    for step in range(1, total + 1):
        batch = {
            "input_ids": torch.randint(1, 100, (8, 12), generator=g),
            "labels": torch.randint(0, 2, (8,), generator=g),
        }
        model(**batch).loss.backward()
        optimizer.step()
        method.on_step(model, step, total)
        optimizer.zero_grad()
    schedule = model.peft_config["default"]
    assert (schedule.total_step, schedule.tinit, schedule.tfinal) == (total, 3, 6)
    kept = sum(int((m.lora_E["default"] != 0).sum()) for m in model.modules() if hasattr(m, "lora_E"))
    assert kept == linears * 2  # target_r on average
    assert method.trained_count(model) == ctx.head_params + linears * 2 * (32 + 32 + 1)


def test_eva_starts_lora_from_the_singular_vectors_of_the_layer_inputs() -> None:
    import copy

    import torch

    from autopeft import build_context
    from autopeft.methods import trainable_numel
    from autopeft.testing import tiny_bert

    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    ctx = build_context(base)
    method = EvaLora()
    config = {"ranks": [4, 0, 8], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}
    model = method.apply(copy.deepcopy(base), ctx, config)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(1, 100, (8, 12), generator=g),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
        }
        | {"labels": torch.tensor([0, 1] * 4)}
        for _ in range(4)
    ]
    method.initialize(model, batches)
    assert trainable_numel(model) == method.count_trainable(ctx, config)  # rho = 1: ranks unchanged
    query = model.base_model.model.bert.encoder.layer[2].attention.self.query
    a = query.lora_A["default"].weight
    assert a.shape == (8, 32)
    torch.testing.assert_close(a @ a.T, torch.eye(8), atol=1e-4, rtol=0)  # orthonormal directions, not noise
    assert torch.count_nonzero(query.lora_B["default"].weight) == 0  # still starts as the base model
