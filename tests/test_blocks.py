"""Block discovery from the module tree, on tiny models of several families."""

from __future__ import annotations

import pytest
import torch
import transformers
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


def _tiny(config_class, model_class, **kwargs):
    return model_class(config_class(vocab_size=100, **kwargs))


FAMILIES = {  # family -> (tiny model factory, block path prefix, number of blocks, expected groups of block 0)
    "roberta": (
        lambda: _tiny(
            transformers.RobertaConfig,
            transformers.RobertaForSequenceClassification,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        "roberta.encoder.layer",
        2,
        {
            "query": ["attention.self.query"],
            "key": ["attention.self.key"],
            "value": ["attention.self.value"],
            "attn_output": ["attention.output.dense"],
            "mlp": ["intermediate.dense", "output.dense"],
        },
    ),
    "distilbert": (
        lambda: _tiny(
            transformers.DistilBertConfig,
            transformers.DistilBertForSequenceClassification,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
        ),
        "distilbert.transformer.layer",
        2,
        {
            "query": ["attention.q_lin"],
            "key": ["attention.k_lin"],
            "value": ["attention.v_lin"],
            "attn_output": ["attention.out_lin"],
            "mlp": ["ffn.lin1", "ffn.lin2"],
        },
    ),
    "qwen2": (
        lambda: _tiny(
            transformers.Qwen2Config,
            transformers.Qwen2ForCausalLM,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
        ),
        "model.layers",
        2,
        {
            "query": ["self_attn.q_proj"],
            "key": ["self_attn.k_proj"],
            "value": ["self_attn.v_proj"],
            "attn_output": ["self_attn.o_proj"],
            "mlp": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"],
        },
    ),
    "mistral": (
        lambda: _tiny(
            transformers.MistralConfig,
            transformers.MistralForSequenceClassification,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
        ),
        "model.layers",
        3,
        {
            "query": ["self_attn.q_proj"],
            "key": ["self_attn.k_proj"],
            "value": ["self_attn.v_proj"],
            "attn_output": ["self_attn.o_proj"],
            "mlp": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"],
        },
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_and_groups_across_families(family: str) -> None:
    factory, prefix, count, expected = FAMILIES[family]
    blocks = discover_blocks(factory())
    assert [b.path for b in blocks] == [f"{prefix}.{i}" for i in range(count)]
    assert {g: sorted(paths) for g, paths in blocks[0].groups.items()} == expected
    assert blocks[0].sublayer("attention") is not None and blocks[0].sublayer("mlp") is not None


def test_seq2seq_encoder_and_decoder_are_separate_stacks() -> None:
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4
    )
    model = transformers.T5ForConditionalGeneration(config)
    blocks = discover_blocks(model)
    assert [b.stack for b in blocks] == ["encoder.block"] * 2 + ["decoder.block"] * 3
    assert [b.path for b in blocks] == [f"encoder.block.{i}" for i in range(2)] + [
        f"decoder.block.{i}" for i in range(3)
    ]
    assert [b.index for b in blocks] == list(range(5))
    encoder, decoder = blocks[0].groups, blocks[2].groups
    assert encoder["query"] == ["layer.0.SelfAttention.q"]
    assert encoder["attn_output"] == ["layer.0.SelfAttention.o"]
    assert sorted(encoder["mlp"]) == ["layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wo"]
    # the decoder's cross-attention is attention too: its projections join the same groups
    assert decoder["query"] == ["layer.0.SelfAttention.q", "layer.1.EncDecAttention.q"]
    assert decoder["attn_output"] == ["layer.0.SelfAttention.o", "layer.1.EncDecAttention.o"]
    assert sorted(decoder["mlp"]) == ["layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wo"]


class _Expert(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)


class _MoeBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Linear(8, 24)
        self.experts = torch.nn.ModuleList(_Expert() for _ in range(8))  # longer than the stack


class _MoeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_MoeBlock() for _ in range(3))


def test_lists_nested_in_a_block_are_not_stacks() -> None:
    """An MoE block holds a ModuleList of identical experts, longer than the stack: the blocks, not
    the experts, are found."""
    blocks = discover_blocks(_MoeModel())
    assert [b.path for b in blocks] == ["layers.0", "layers.1", "layers.2"]
    assert blocks[0].groups["mlp"][0] == "experts.0.up"


def test_without_attention_the_longest_list_is_the_stack() -> None:
    model = torch.nn.Module()
    model.short = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(2))
    model.long = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(2, 2)) for _ in range(4))
    assert [b.path for b in discover_blocks(model)] == [f"long.{i}" for i in range(4)]
