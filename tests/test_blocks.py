"""Block discovery from the module tree, on tiny models of several families."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from autopeft import build_context, discover_blocks
from autopeft.testing import tiny_bert, tiny_llama


def test_bert_style_blocks_and_groups() -> None:
    blocks = discover_blocks(tiny_bert())
    assert [b.path for b in blocks] == [f"bert.encoder.layer.{i}" for i in range(3)]
    groups = blocks[0].groups
    assert groups["query"] == ["attention.self.query"]
    assert groups["key"] == ["attention.self.key"]
    assert groups["value"] == ["attention.self.value"]
    assert groups["attn_output"] == ["attention.output.dense"]
    assert sorted(groups["mlp"]) == ["intermediate.dense", "output.dense"]
    assert blocks[0].linears["intermediate.dense"] == (32, 64)
    assert "attention.output.LayerNorm" in blocks[0].norms


def test_llama_style_blocks_and_groups() -> None:
    blocks = discover_blocks(tiny_llama())
    assert [b.path for b in blocks] == [f"model.layers.{i}" for i in range(3)]
    groups = blocks[1].groups
    assert groups["query"] == ["self_attn.q_proj"]
    assert groups["key"] == ["self_attn.k_proj"]
    assert groups["value"] == ["self_attn.v_proj"]
    assert groups["attn_output"] == ["self_attn.o_proj"]
    assert sorted(groups["mlp"]) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert blocks[1].linears["self_attn.k_proj"] == (32, 16)  # grouped-query attention: 2 kv heads of 8
    assert sorted(blocks[1].norms) == ["input_layernorm", "post_attention_layernorm"]


def test_gpt2_fused_attention_is_a_qkv_group() -> None:
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64))
    blocks = discover_blocks(model)
    assert [b.path for b in blocks] == ["transformer.h.0", "transformer.h.1"]
    assert blocks[0].groups["qkv"] == ["attn.c_attn"]
    assert blocks[0].groups["attn_output"] == ["attn.c_proj"]
    assert sorted(blocks[0].groups["mlp"]) == ["mlp.c_fc", "mlp.c_proj"]
    assert blocks[0].linears["attn.c_attn"] == (32, 96)


@pytest.mark.parametrize("factory,head", [(tiny_bert, ["classifier"]), (tiny_llama, ["score"])])
def test_context_finds_head_and_totals(factory, head) -> None:
    model = factory()
    ctx = build_context(model)
    assert ctx.head == head
    assert ctx.head_params == sum(p.numel() for p in model.get_submodule(head[0]).parameters())
    assert ctx.total_params == sum(p.numel() for p in model.parameters())
    skeleton = ctx.skeleton()
    assert all(p.device.type == "meta" for p in skeleton.parameters())


def test_model_without_blocks_is_an_error() -> None:
    with pytest.raises(ValueError, match="no repeated blocks"):
        discover_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
