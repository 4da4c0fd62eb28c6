"""The plugin contract of autopeft: every hook a plugin may implement, and nothing else.

Hooks are empty, typed functions; pluggy checks each implementation's argument names against them.
Core code never calls ``pm.hook.*`` directly: it goes through :mod:`autopeft.registry`, which checks
what the hooks return.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from autopeft.methods import PeftMethod
    from autopeft.tasks import Task

__all__ = ["hookspec", "hookimpl", "register_methods", "register_tasks", "resolve_model"]

hookspec = pluggy.HookspecMarker("autopeft")
hookimpl = pluggy.HookimplMarker("autopeft")


@hookspec
def register_methods(register: Callable[[PeftMethod], None]) -> None:
    """Register PEFT methods the search may choose from.

    Args:
        register: call it once per method with a :class:`~autopeft.PeftMethod` instance. A name
            already registered by another plugin is an error that names both plugins.
    """


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks a study file may name in ``[task] type``.

    Args:
        register: call it once per task with a :class:`~autopeft.Task` instance. A name already
            registered by another plugin is an error that names both plugins.
    """


@hookspec(firstresult=True)
def resolve_model(name: str, offline: bool) -> str | None:
    """Map a model name from a study file to a local directory, e.g. an offline copy.

    A plugin may build the directory on first use (``offline_models`` de-quantizes a GGUF file once
    and caches the result), so later calls must be fast.

    Args:
        name: the ``[model] name`` of the study (a hub id or a path).
        offline: True when the Hugging Face hub is unreachable or ``HF_HUB_OFFLINE`` is set.

    Returns:
        A local directory holding the model, or None to leave the name to the next plugin
        and finally to ``from_pretrained``.
    """
