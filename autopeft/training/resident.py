"""The base model kept resident: lent to one trial at a time, and given back exactly as it was.

A deep copy of the base for every trial costs the model's size again in memory (28 GB for a 7B model
in fp32) and seconds of setup, and cannot be made of a quantized model at all. Instead each trial's
method applies to the base itself, and :meth:`BaseLender.lend` undoes afterwards whatever a method
may have done to it, whichever plugin it is:

- the module tree: peft and the adapter plugin swap submodules for wrappers and set attributes;
  every module's own attributes, and its submodule, parameter, buffer and hook tables, are put back;
- the model configuration's attributes (peft and gradient checkpointing set flags there);
- ``requires_grad`` of every base tensor;
- the values of the base tensors the trial trains (unfreeze, BitFit, the task head): copied after
  ``apply`` and before training, written back afterwards. Only what the method trains is copied,
  a budget's worth of parameters, not the model.

A method may not change a frozen base tensor in place (PiSSA-style initialisations do: they declare
:attr:`~autopeft.methods.PeftMethod.modifies_base` and get a copy of their own). An undeclared change
is caught where it shows (a tensor whose storage was replaced, or whose autograd version moved),
named in :attr:`BaseLender.changed` and raised as :class:`BaseChanged`; the caller then loads the
base again. (A copy into ``tensor.data`` moves neither; the conformance suite,
:mod:`autopeft.testing`, compares every byte of the base before and after a trial.)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["BaseLender", "BaseChanged", "base_fingerprint"]


class BaseChanged(Exception):
    """A trial changed a frozen base tensor in place: the base no longer is the pristine model."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(f"{len(names)} frozen base tensor(s) changed in place, e.g. {names[0]!r}")


def _copied(state: dict[str, Any]) -> dict[str, Any]:
    """A module's ``__dict__`` with its tables (submodules, parameters, buffers, hooks) copied, so
    that a method adding to a table changes the module's live table, not this record of it."""
    return {k: copy.copy(v) if isinstance(v, dict) else v for k, v in state.items()}  # OrderedDicts stay so


def _restore_into(obj: Any, cls: type, state: dict[str, Any]) -> None:
    obj.__class__ = cls
    obj.__dict__.clear()
    obj.__dict__.update(_copied(state))


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name (shared tensors under their first name)."""
    return dict(model.named_parameters()) | dict(model.named_buffers())


def base_fingerprint(model: nn.Module) -> dict[str, str]:
    """A hash of every tensor of ``model`` by name: equal fingerprints mean bit-identical weights.
    For tests and checks, not the trial path: it reads every byte of the model."""
    import hashlib

    found = {}
    for name, tensor in _tensors(model).items():
        data = tensor.detach().cpu().contiguous()
        found[name] = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest() + str(data.dtype)
    return found


class BaseLender:
    """Lends the resident base model to one trial at a time; see the module's docstring."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self._modules = list(base.modules())
        self._states = [(type(m), _copied(m.__dict__)) for m in self._modules]
        config = getattr(base, "config", None)
        self._config = (config, type(config), dict(config.__dict__)) if config is not None else None
        self._tensors = _tensors(base)
        self._flags = {name: t.requires_grad for name, t in self._tensors.items()}
        self._marks = self._stamp()
        #: Frozen base tensors the last trial changed in place (empty when it gave the base back intact).
        self.changed: list[str] = []

    def _stamp(self) -> dict[str, tuple[int, int]]:
        """Where each base tensor's data lives and its autograd version: what an in-place change moves."""
        return {name: (t.data_ptr(), t._version) for name, t in self._tensors.items()}

    @contextlib.contextmanager
    def lend(self, apply: Callable[[nn.Module], nn.Module]) -> Iterator[nn.Module]:
        """``apply(base)`` (a method's ``apply`` on the base, frozen), yielded to train; afterwards
        the base is as it was before, whatever happened in between.

        Raises:
            BaseChanged: on the way out, when a frozen base tensor was changed in place (when the
                trial raised, its own error goes on and only :attr:`changed` says so).
        """
        trained: dict[str, torch.Tensor] = {}
        try:
            self.base.requires_grad_(False)
            model = apply(self.base)
            # What the trial will train of the base itself, copied before the first step changes it.
            trained = {n: t.detach().clone() for n, t in self._tensors.items() if t.requires_grad}
            yield model
        finally:
            self._give_back(trained)
            marks = self._stamp()
            self.changed = [n for n, mark in marks.items() if n not in trained and mark != self._marks[n]]
            self._marks = marks
        if self.changed:
            raise BaseChanged(self.changed)

    def _give_back(self, trained: dict[str, torch.Tensor]) -> None:
        for module, (cls, state) in zip(self._modules, self._states):
            _restore_into(module, cls, state)
        if self._config is not None:
            _restore_into(*self._config)
        with torch.no_grad():
            for name, tensor in self._tensors.items():
                if name in trained:
                    tensor.data = trained[name]  # the original values, dtype and device (a trial may upcast)
                    tensor.grad = None
                tensor.requires_grad_(self._flags[name])
