"""autopeft: the best parameter-efficient fine-tuning configuration under a parameter budget.

The public API. Plugins import :data:`hookimpl` and :class:`PeftMethod` from here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from autopeft.blocks import Block, ModelContext, build_context, discover_blocks
from autopeft.budget import parse_budget, suggest_sizes
from autopeft.config import StudyConfig, load_config
from autopeft.confirm import confirm_front
from autopeft.errors import AutopeftError, BudgetError, ConfigError, DataError, ModelError, PluginError
from autopeft.export import export, load_model
from autopeft.hookspecs import hookimpl
from autopeft.methods import PeftMethod, trainable_numel
from autopeft.peft_backed import PeftBackedMethod
from autopeft.plan import make_plan
from autopeft.plugins import get_plugin_manager, registered_methods
from autopeft.study import best_trial, open_study, pareto_front, run_study

__all__ = [
    "__version__",
    "AutopeftError",
    "Block",
    "BudgetError",
    "ConfigError",
    "DataError",
    "ModelContext",
    "ModelError",
    "PeftBackedMethod",
    "PeftMethod",
    "PluginError",
    "StudyConfig",
    "best_trial",
    "build_context",
    "confirm_front",
    "discover_blocks",
    "export",
    "get_plugin_manager",
    "hookimpl",
    "load_config",
    "load_model",
    "make_plan",
    "open_study",
    "pareto_front",
    "parse_budget",
    "registered_methods",
    "run_study",
    "suggest_sizes",
    "trainable_numel",
]
