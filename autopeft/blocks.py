"""Generic discovery of a model's repeated transformer blocks and their linear sub-modules.

Nothing here knows a model family by name. A *stack* is a ``ModuleList`` whose children are all of
one class, hold linear layers and hold an attention module, and that sits in no other stack (MoE
experts sit inside a block); a seq2seq model has two, encoder then decoder, and its blocks are
numbered through both. Inside a block, each linear layer is put in a *group*
(``query``, ``key``, ``value``, ``qkv``, ``attn_output``, ``mlp``) from the conventional words in its
path, so ``attention.self.query`` (BERT), ``self_attn.q_proj`` (Llama) and ``attn.c_attn`` (GPT-2)
all land where a user expects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Block",
    "ModelContext",
    "build_context",
    "discover_blocks",
    "head_module_names",
    "is_linear",
    "trainable_per_block",
    "GROUPS",
]

GROUPS = ("query", "key", "value", "qkv", "attn_output", "mlp")

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_LEAF_GROUPS = [  # checked in order against the last path component of an attention linear
    ("qkv", re.compile(r"^(qkv|c_attn|query_key_value|wqkv|qkv_proj)$", re.IGNORECASE)),
    ("query", re.compile(r"^(q|query|q_proj|q_lin)$", re.IGNORECASE)),
    ("key", re.compile(r"^(k|key|k_proj|k_lin)$", re.IGNORECASE)),
    ("value", re.compile(r"^(v|value|v_proj|v_lin)$", re.IGNORECASE)),
]


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' GPT-2 style ``Conv1D`` (a transposed linear)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module, read from its weight's shape only."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    rows, cols = module.weight.shape  # type: ignore[misc]  # Conv1D stores (in, out)
    return int(rows), int(cols)


def _group_of(relative_path: str) -> str:
    """The group of a linear from its path inside the block; attention linears that are not
    query/key/value projections are the attention output."""
    if not _ATTENTION.search(relative_path):
        return "mlp"
    leaf = relative_path.rsplit(".", 1)[-1]
    return next((group for group, pattern in _LEAF_GROUPS if pattern.match(leaf)), "attn_output")


@dataclass(frozen=True)
class Block:
    """One repeated transformer block, described by shapes only (no tensors are kept).

    Attributes:
        index: position among all blocks, 0 = closest to the embeddings (a seq2seq model's decoder
            blocks follow its encoder blocks).
        path: the block's module path in the model, e.g. ``bert.encoder.layer.3``.
        linears: relative path of each linear sub-module -> (in_features, out_features).
        groups: group name -> relative paths of the linears in it.
        norms: relative paths of normalisation modules (any class whose name contains ``Norm``).
        params: relative parameter name -> number of elements, for every parameter in the block.
    """

    index: int
    path: str
    linears: dict[str, tuple[int, int]]
    groups: dict[str, list[str]]
    norms: list[str] = field(repr=False)
    params: dict[str, int] = field(repr=False)
    stack: str = ""  # the ModuleList holding the block, e.g. ``encoder.block`` of T5

    def params_of(self, modules: list[str]) -> list[str]:
        """Relative names of the parameters owned by the given sub-modules."""
        owners = set(modules)
        return [n for n in self.params if n.rpartition(".")[0] in owners]

    def sublayer(self, name: str) -> tuple[str, str] | None:
        """(entry, exit) linears of the ``"attention"`` or ``"mlp"`` sub-layer, or None.

        The entry reads the block's hidden states (query/qkv projection, or the MLP's up/gate
        projection); the exit writes back to them (attention output, MLP down projection). Found
        from shapes, so it holds for BERT's ``output.dense`` and Llama's ``down_proj`` alike. Bottleneck
        adapters and IA3 attach here.
        """
        entries = self.groups.get("query") or self.groups.get("qkv") or []
        if not entries:
            return None
        hidden = self.linears[entries[0]][0]
        if name == "attention":
            exits = [p for p in self.groups.get("attn_output", []) if self.linears[p][1] == hidden]
        else:
            entries = [p for p in self.groups.get("mlp", []) if self.linears[p][0] == hidden]
            exits = [p for p in self.groups.get("mlp", []) if self.linears[p][1] == hidden]
        return (entries[0], exits[-1]) if entries and exits else None


@dataclass(frozen=True)
class ModelContext:
    """What a method plugin knows about the model: its blocks, its task head and its size.

    Method plugins receive this instead of the model so they never parse module paths themselves.
    """

    blocks: list[Block]
    head: list[str]
    head_params: int
    total_params: int
    embedding_dim: int = 0  # width of the input embeddings, which prompt tuning prepends to
    skeleton: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)


def _stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's block stacks in module order (see the module docstring)."""
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) == 1 and any(is_linear(m) for m in module[0].modules()):
            candidates.append((name, module))
    outer = [(n, m) for n, m in candidates if not any(n.startswith(f"{o}.") for o, _ in candidates)]
    attention = [(n, m) for n, m in outer if any(_ATTENTION.search(sub) for sub, _ in m[0].named_modules())]
    if attention:
        return attention
    # No attention anywhere (an MLP stack, say): the longest list of identical blocks.
    longest = max((len(m) for _, m in outer), default=0)
    return [next((n, m) for n, m in outer if len(m) == longest)] if outer else []


def discover_blocks(model: nn.Module) -> list[Block]:
    """Find the repeated transformer blocks of any model from its module tree.

    Raises:
        ValueError: when the model has no ``ModuleList`` of identical blocks with linear layers.
    """
    stacks = _stacks(model)
    if not stacks:
        raise ValueError(f"no repeated blocks with linear layers found in {type(model).__name__}")
    blocks: list[Block] = []
    for path, stack in stacks:
        for position, block in enumerate(stack):
            linears = {n: _linear_shape(m) for n, m in block.named_modules() if n and is_linear(m)}
            groups: dict[str, list[str]] = {}
            for rel in linears:
                groups.setdefault(_group_of(rel), []).append(rel)
            norms = [n for n, m in block.named_modules() if n and "Norm" in type(m).__name__]
            params = {n: p.numel() for n, p in block.named_parameters()}
            blocks.append(Block(len(blocks), f"{path}.{position}", linears, groups, norms, params, path))
    return blocks


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules outside the pretrained backbone that own parameters: the task head.

    Uses transformers' own ``base_model_prefix`` (``bert``, ``model``, ``transformer``...), so the
    head is found the same way for every family: ``classifier`` for BERT, ``score`` for Llama.
    """
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children() if name != prefix and any(True for _ in child.parameters())]


def build_context(model: nn.Module, new_head: bool = True) -> ModelContext:
    """Describe ``model`` for method plugins, with a factory for weightless copies of it.

    ``new_head``: whether the task gave the model a new head that methods must train; a language
    model's pretrained head (tied to its embeddings) is no head in this sense.
    """
    head = head_module_names(model) if new_head else []
    head_params = sum(p.numel() for h in head for p in model.get_submodule(h).parameters())
    total = sum(p.numel() for p in model.parameters())
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    width = int(embeddings.weight.shape[1]) if isinstance(embeddings, nn.Embedding) else 0
    return ModelContext(discover_blocks(model), head, head_params, total, width, _skeleton_factory(model))


def trainable_per_block(model: nn.Module, ctx: ModelContext) -> list[int]:
    """Trainable parameters inside each block of ``model`` (after a method was applied).

    Read from parameter names, so it holds for any method: peft's wrappers add a prefix
    (``base_model.model.``) and suffixes, never remove the block's path.
    """
    counts = [0] * len(ctx.blocks)
    patterns = [re.compile(rf"(^|\.){re.escape(b.path)}\.") for b in ctx.blocks]
    for name, p in model.named_parameters():
        if p.requires_grad:
            for i, pattern in enumerate(patterns):
                if pattern.search(name):
                    counts[i] += p.numel()
                    break
    return counts


def _skeleton_factory(model: nn.Module) -> Callable[[], nn.Module] | None:
    """A function building the same architecture on the meta device: shapes, no memory, no init."""
    config = getattr(model, "config", None)
    from_config = getattr(type(model), "_from_config", None)
    if config is None or from_config is None:
        return None

    def build() -> nn.Module:
        with torch.device("meta"):
            return from_config(config)

    return build
