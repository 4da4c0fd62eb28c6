"""Frozen-prefix activation caching: the hidden states entering block k, computed once per worker.

When no trainable parameter sits below block k (LoRA with rank 0 on the lower blocks, unfreezing or
BitFit of the top blocks), every epoch and every later trial would recompute the same embeddings and
the same k frozen blocks. :class:`PrefixCache` computes the hidden states entering block k once per
example, with the frozen blocks in eval mode (no dropout), and while a trial trains it lets blocks
below k pass their input through and hands block k the cached states instead.

Nothing here knows a model family: the blocks come from :func:`autopeft.blocks.discover_blocks`, and
which prefix is frozen is *measured* on the trial's own model: the input of block k must not depend on
any trainable parameter (autograd says so) and must equal the base model's (which catches a method
that changes the input without training anything below block k). Examples are keyed by their token
ids, so one cache serves the train and validation splits, and duplicated texts share one entry.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from autopeft.blocks import ModelContext
from autopeft.data import Split, batches

__all__ = ["PrefixCache", "block_modules"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted hidden states are captured."""


def block_modules(model: nn.Module, ctx: ModelContext) -> list[nn.Module]:
    """The blocks of ``model`` in stack order, also when a peft wrapper prefixes their paths."""
    by_name = dict(model.named_modules())
    found = []
    for block in ctx.blocks:
        name = next((n for n in by_name if n == block.path or n.endswith("." + block.path)), None)
        if name is None:
            raise ValueError(f"block {block.path!r} not found in {type(model).__name__}")
        found.append(by_name[name])
    return found


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _key(batch: dict[str, torch.Tensor], row: int, length: int) -> bytes:
    """An example's identity: its token ids (and token types), which decide its prefix states."""
    parts = [batch[k][row, :length] for k in sorted(batch) if k not in ("attention_mask", "labels")]
    return b"|".join(p.to(torch.int32).numpy().tobytes() for p in parts)


class PrefixCache:
    """Hidden states entering block k of the frozen base model, per example, for each k in use.

    One per worker, beside the pristine ``base`` model. ``max_bytes`` bounds the memory; the least
    recently used k is dropped first.
    """

    def __init__(self, base: nn.Module, ctx: ModelContext, max_bytes: int = 2 * 2**30) -> None:
        self.base, self.ctx, self.max_bytes = base, ctx, max_bytes
        self._states: OrderedDict[int, dict[bytes, torch.Tensor]] = OrderedDict()
        self._tuple_output = False  # whether blocks return (hidden, ...) rather than hidden
        self._pristine: dict[int, torch.Tensor] = {}  # block k's input for the probe, from the untouched base
        self._pristine_probe: dict[str, torch.Tensor] = {}

    def remember_base(self, probe: dict[str, torch.Tensor]) -> None:
        """Capture the block inputs of the untouched base for ``probe`` (what :meth:`usable_blocks`
        is later given), in one pass. Trials apply their methods to the resident base itself
        (:mod:`autopeft.training.resident`), so once one runs there is no untouched base to compare with."""
        captured: list[torch.Tensor] = []

        def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(_hidden_of(args, kwargs).detach().cpu())

        handles = [b.register_forward_pre_hook(grab, with_kwargs=True) for b in block_modules(self.base, self.ctx)]
        was_training = self.base.training
        try:
            self.base.eval()
            with torch.inference_mode():
                self.base(**probe)
        finally:
            self.base.train(was_training)
            for handle in handles:
                handle.remove()
        self._pristine = dict(enumerate(captured))
        self._pristine_probe = {n: t.cpu() for n, t in probe.items()}

    def usable_blocks(self, model: nn.Module, probe: dict[str, torch.Tensor]) -> int:
        """How many leading blocks of ``model`` the cache may stand in for: the largest k whose
        block-k input depends on no trainable parameter (autograd says so) and equals the base
        model's for ``probe`` (one small batch without labels, on the model's device); 0 if none.
        The last block always runs, since the cache holds block inputs.
        """
        if len({b.stack for b in self.ctx.blocks}) > 1:
            return 0  # a decoder stack's input is not the encoder stack's output: no single prefix
        blocks = block_modules(model, self.ctx)
        depends: list[bool] = []

        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            depends.append(_hidden_of(args, kwargs).requires_grad)
            if depends[-1]:
                raise _Stop

        handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
        was_training = model.training
        try:
            model.eval()
            with contextlib.suppress(_Stop):
                model(**probe)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
        k = sum(1 for d in depends if not d) - 1  # blocks below k must not feed a trainable parameter either
        if k < 1:
            return 0
        mine = self._capture(model, k, probe).cpu()
        remembered = probe.keys() == self._pristine_probe.keys() and all(
            torch.equal(t.cpu(), self._pristine_probe[n]) for n, t in probe.items()
        )
        theirs = self._pristine[k] if remembered else self._capture(self.base, k, probe).cpu()
        same = mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=1e-3, atol=1e-3)
        return k if same else 0

    def _capture(self, model: nn.Module, k: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hidden states entering block k for a padded batch, in eval mode, without grad."""
        captured: list[torch.Tensor] = []

        def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(_hidden_of(args, kwargs).detach())
            raise _Stop

        def note_format(_module: nn.Module, _args: tuple, output: Any) -> None:
            self._tuple_output = isinstance(output, tuple)

        blocks = block_modules(model, self.ctx)
        handles = [blocks[k].register_forward_pre_hook(grab, with_kwargs=True)]
        if "forward" not in vars(blocks[0]):  # a block :meth:`attached` skips says nothing of the format
            handles.append(blocks[0].register_forward_hook(note_format))
        was_training = model.training
        try:
            model.eval()
            with torch.inference_mode(), contextlib.suppress(_Stop):
                model(**batch)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
        return captured[0]

    def fill(self, model: nn.Module, k: int, splits: list[Split], pad_token_id: int, batch_size: int) -> int:
        """Compute the block-k inputs of every example of ``splits`` not cached yet; return how many.

        ``model`` must pass :meth:`usable_blocks` for at least k: its prefix computes what the base
        model's does, on the device it already sits on (under the caller's autocast, if any). Where
        a shallower prefix is cached for a batch, only the blocks between the two run.
        """
        states = self._states.setdefault(k, {})
        self._states.move_to_end(k)
        device = next(model.parameters()).device
        added = 0
        for split in splits:
            order = sorted(range(len(split)), key=lambda i: len(split.features[i]["input_ids"]))
            for batch in batches(split, batch_size, pad_token_id, order=order):
                batch.pop("labels")
                lengths = batch["attention_mask"].sum(1).tolist()
                keys = [_key(batch, row, n) for row, n in enumerate(lengths)]
                if all(key in states for key in keys):
                    continue
                lower = max((j for j in self._states if j < k and all(x in self._states[j] for x in keys)), default=0)
                with self.attached(model, lower) if lower else contextlib.nullcontext():
                    hidden = self._capture(model, k, {n: t.to(device) for n, t in batch.items()}).cpu()
                for row, (key, n) in enumerate(zip(keys, lengths)):
                    if key not in states:
                        states[key] = hidden[row, :n].to(torch.float32, copy=True)
                        added += 1
        self._evict()
        return added

    def _evict(self) -> None:
        def size(states: dict[bytes, torch.Tensor]) -> int:
            return sum(t.numel() * t.element_size() for t in states.values())

        while len(self._states) > 1 and sum(size(s) for s in self._states.values()) > self.max_bytes:
            self._states.popitem(last=False)

    @contextlib.contextmanager
    def attached(self, model: nn.Module, k: int) -> Iterator[None]:
        """While inside, ``model`` skips its first k blocks and reads their output from the cache.

        Every example the model sees must have been :meth:`fill`-ed. The embeddings still run (a
        lookup); their output is replaced at block k.
        """
        states = self._states[k]
        blocks = block_modules(model, self.ctx)
        current: dict[str, torch.Tensor] = {}

        def remember_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            current.clear()
            current.update({n: t for n, t in kwargs.items() if isinstance(t, torch.Tensor)})

        def inject(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = _hidden_of(args, kwargs)
            cpu = {n: t.cpu() for n, t in current.items()}
            lengths = cpu["attention_mask"].sum(1).tolist()
            rows = [states[_key(cpu, row, n)] for row, n in enumerate(lengths)]
            cached = torch.zeros(hidden.shape, dtype=hidden.dtype)  # the block's own dtype (a bf16 base)
            for row, state in enumerate(rows):
                cached[row, : len(state)] = state
            return _with_hidden(args, kwargs, cached.to(hidden.device, non_blocking=True))

        def skip(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return (hidden_states,) if self._tuple_output else hidden_states

        handles = [
            model.register_forward_pre_hook(remember_inputs, with_kwargs=True),
            blocks[k].register_forward_pre_hook(inject, with_kwargs=True),
        ]
        for block in blocks[:k]:
            block.forward = skip  # an instance attribute: the class's forward comes back on delete
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for block in blocks[:k]:
                del block.forward
