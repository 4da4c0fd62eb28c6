"""The base class of methods that peft implements: build a ``PeftConfig``, and let peft do the rest.

peft matches ``target_modules`` entries and ``rank_pattern``/``alpha_pattern`` keys against module
names and silently ignores entries that match nothing, so a typo or a model with other module
names would quietly train less than was counted. :func:`verify_targets` turns that into an error.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from pathlib import Path
from typing import Any

from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from autopeft.blocks import ModelContext
from autopeft.errors import PluginError
from autopeft.methods import PeftMethod

__all__ = ["PeftBackedMethod", "verify_targets", "ADAPTER_FILE"]

#: The weights file of a standard peft adapter folder (beside ``adapter_config.json``).
ADAPTER_FILE = "adapter_model.safetensors"
_WRAPPED_PREFIX = re.compile(r"^base_model\.model\.")


def _tuner_layers(model: PeftModel) -> list[str]:
    """Names (relative to the original model) of the modules peft wrapped with an adapter layer."""
    return [_WRAPPED_PREFIX.sub("", n) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def verify_targets(model: PeftModel, targets: list[str], patterns: dict[str, Any]) -> None:
    """Fail unless every target path and every pattern key matched at least one adapted module.

    Args:
        model: what ``get_peft_model`` returned.
        targets: the ``target_modules`` list that was asked for (full or trailing module paths).
        patterns: ``rank_pattern``/``alpha_pattern`` entries, matched the way peft matches them.

    Raises:
        PluginError: naming the first entry that matched nothing.
    """
    layers = _tuner_layers(model)
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in layers):
            raise PluginError(f"peft adapted no module named {target!r}; the method's target paths are wrong")
    for key in patterns:
        if not any(re.match(rf"(.*\.)?({key})$", name) for name in layers):
            raise PluginError(f"peft pattern key {key!r} matched no adapted module; it would have been ignored")


class PeftBackedMethod(PeftMethod):
    """A method peft implements. Subclasses turn a configuration into a ``PeftConfig``.

    ``apply`` calls ``get_peft_model`` and checks with :func:`verify_targets` that everything
    targeted was adapted; ``save`` writes a standard peft adapter folder, which
    ``PeftModel.from_pretrained`` loads.
    """

    @abstractmethod
    def peft_config(self, ctx: ModelContext, config: dict[str, Any]) -> PeftConfig:
        """The peft configuration for ``config``; the task head goes in ``modules_to_save``."""

    def apply(self, model: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        peft_config = self.peft_config(ctx, config)
        targets = list(getattr(peft_config, "target_modules", None) or [])
        patterns = {
            **(getattr(peft_config, "rank_pattern", None) or {}),
            **(getattr(peft_config, "alpha_pattern", None) or {}),
        }
        wrapped = get_peft_model(model, peft_config)
        verify_targets(wrapped, targets, patterns)
        return wrapped

    def save(self, model: nn.Module, directory: Path) -> None:
        if not isinstance(model, PeftModel):
            raise PluginError(f"{self.name}.save expects the PeftModel that {self.name}.apply returned")
        model.save_pretrained(str(directory), safe_serialization=True)

    def load(self, model: nn.Module, directory: Path) -> nn.Module:
        result: Any = set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))
        # peft loads a soft prompt's "prompt_embeddings" itself, then reports the key as unexpected.
        unexpected = [k for k in result.unexpected_keys if k != "prompt_embeddings"]
        if unexpected:
            raise PluginError(f"adapter in {directory} has keys this model lacks: {unexpected[:3]}")
        return model
