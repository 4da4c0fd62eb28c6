"""Every built-in method passes the conformance suite a third-party method runs."""

from __future__ import annotations

from autopeft.testing import MethodConformance
from autopeft_plugins.adapter import Adapter
from autopeft_plugins.bitfit import BitFit
from autopeft_plugins.ia3 import IA3
from autopeft_plugins.lora import Lora
from autopeft_plugins.prompt import PromptTuning
from autopeft_plugins.unfreeze import Unfreeze


class TestLora(MethodConformance):
    method = Lora()


class TestDoRA(MethodConformance):
    method = Lora()
    options = {"variants": ["dora"]}


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
