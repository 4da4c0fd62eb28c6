"""autopeft: the best parameter-efficient fine-tuning configuration under a parameter budget.

The public API. Plugins import :data:`hookimpl` and :class:`PeftMethod` from here. Names load on
first use (PEP 562), so ``autopeft trials`` or ``autopeft report`` do not pay for importing torch,
transformers and peft.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autopeft._version import __version__
from autopeft.hookspecs import hookimpl

#: The modules a plugin, built-in or third-party, may import: the plugin author's API. Their paths are
#: stable; every other module may move between releases. ``tests/test_architecture.py`` checks that the
#: built-in plugins and the test suite's third-party plugins import nothing else.
PLUGIN_API = (
    "autopeft",
    "autopeft.tasks",
    "autopeft.methods",
    "autopeft.peft_backed",
    "autopeft.blocks",
    "autopeft.budget",
    "autopeft.errors",
    "autopeft.testing",
)

_WHERE = {
    "tune": "autopeft.api.tune",
    "TuneResult": "autopeft.api.result",
    "FitError": "autopeft.errors",
    "resolve_study": "autopeft.registry",
    "ResolvedStudy": "autopeft.registry",
    "Workbench": "autopeft.training.workbench",
    "TrainResult": "autopeft.training.train",
    "Fidelity": "autopeft.training.train",
    "Split": "autopeft.data",
    "EvalSettings": "autopeft.tasks",
    "GenerationSettings": "autopeft.tasks",
    "AutopeftError": "autopeft.errors",
    "Block": "autopeft.blocks",
    "BudgetError": "autopeft.errors",
    "ConfigError": "autopeft.errors",
    "DataError": "autopeft.errors",
    "Interrupted": "autopeft.errors",
    "ModelContext": "autopeft.blocks",
    "ModelError": "autopeft.errors",
    "PeftBackedMethod": "autopeft.peft_backed",
    "PeftMethod": "autopeft.methods",
    "PluginError": "autopeft.errors",
    "StudyConfig": "autopeft.config",
    "Task": "autopeft.tasks",
    "best_trial": "autopeft.storage.results",
    "build_context": "autopeft.blocks",
    "confirm_front": "autopeft.outputs.confirm",
    "refit": "autopeft.outputs.confirm",
    "winner": "autopeft.storage.results",
    "discover_blocks": "autopeft.blocks",
    "export": "autopeft.outputs.export",
    "get_plugin_manager": "autopeft.registry",
    "load_config": "autopeft.config",
    "load_model": "autopeft.outputs.export",
    "make_plan": "autopeft.search.plan",
    "open_study": "autopeft.search.study",
    "pareto_front": "autopeft.storage.results",
    "parse_budget": "autopeft.budget",
    "registered_methods": "autopeft.registry",
    "registered_tasks": "autopeft.registry",
    "run_study": "autopeft.search.study",
    "run_workers": "autopeft.search.workers",
    "suggest_sizes": "autopeft.budget",
    "trainable_numel": "autopeft.methods",
}

__all__ = [
    "__version__",
    "PLUGIN_API",
    "hookimpl",
    "tune",
    "TuneResult",
    "FitError",
    "resolve_study",
    "ResolvedStudy",
    "Workbench",
    "TrainResult",
    "Fidelity",
    "Split",
    "EvalSettings",
    "GenerationSettings",
    "AutopeftError",
    "Block",
    "BudgetError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "ModelContext",
    "ModelError",
    "PeftBackedMethod",
    "PeftMethod",
    "PluginError",
    "StudyConfig",
    "Task",
    "best_trial",
    "build_context",
    "confirm_front",
    "refit",
    "winner",
    "discover_blocks",
    "export",
    "get_plugin_manager",
    "load_config",
    "load_model",
    "make_plan",
    "open_study",
    "pareto_front",
    "parse_budget",
    "registered_methods",
    "registered_tasks",
    "run_study",
    "run_workers",
    "suggest_sizes",
    "trainable_numel",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'autopeft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from autopeft.api.result import TuneResult
    from autopeft.api.tune import tune
    from autopeft.blocks import Block, ModelContext, build_context, discover_blocks
    from autopeft.budget import parse_budget, suggest_sizes
    from autopeft.config import StudyConfig, load_config
    from autopeft.data import Split
    from autopeft.errors import AutopeftError, BudgetError, ConfigError, DataError, FitError, ModelError, PluginError
    from autopeft.methods import PeftMethod, trainable_numel
    from autopeft.outputs.confirm import confirm_front
    from autopeft.outputs.export import export, load_model
    from autopeft.peft_backed import PeftBackedMethod
    from autopeft.registry import ResolvedStudy, get_plugin_manager, registered_methods, registered_tasks, resolve_study
    from autopeft.search.plan import make_plan
    from autopeft.search.study import open_study, run_study
    from autopeft.storage.results import best_trial, pareto_front
    from autopeft.tasks import EvalSettings, Task
    from autopeft.training.train import Fidelity, TrainResult
    from autopeft.training.workbench import Workbench
