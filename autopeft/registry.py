"""Loading plugins, and the one place core code calls hooks (a typed facade, as tox does).

Built-in methods are ordinary plugin modules listed in :data:`BUILTIN_PLUGINS`; third-party
plugins come from the entry-point group ``autopeft``. Two environment variables mirror pytest:

* ``AUTOPEFT_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points (built-ins only);
* ``AUTOPEFT_BLOCK_PLUGINS=name,other`` blocks plugins by name (entry-point or built-in name);
* ``AUTOPEFT_PLUGINS=name,other`` is an allow-list: only these entry points load (built-ins always
  do), so a shared machine's installed packages cannot add code to a study unnoticed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, replace
from typing import Any, cast

import pluggy

import autopeft.hookspecs as hookspecs
from autopeft.config import StudyConfig, with_task
from autopeft.errors import ConfigError, PluginError, first_line
from autopeft.methods import PeftMethod
from autopeft.tasks import Task

__all__ = [
    "BUILTIN_PLUGINS",
    "MethodInfo",
    "get_plugin_manager",
    "registered_methods",
    "registered_tasks",
    "ResolvedStudy",
    "resolve_study",
    "TaskInfo",
    "resolve_model",
]

BUILTIN_PLUGINS = (
    "autopeft_plugins.lora",
    "autopeft_plugins.unfreeze",
    "autopeft_plugins.bitfit",
    "autopeft_plugins.ia3",
    "autopeft_plugins.prompt",
    "autopeft_plugins.adapter",
    "autopeft_plugins.adalora",
    "autopeft_plugins.eva",
    "autopeft_plugins.offline_models",
    "autopeft_plugins.tasks",
    "autopeft_plugins.instruction",
)


@dataclass(frozen=True)
class MethodInfo:
    """A registered method and where it came from."""

    method: PeftMethod
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class TaskInfo:
    """A registered task and where it came from."""

    task: Task
    plugin: str
    distribution: str
    version: str


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__("autopeft")
        self.distributions: dict[str, importlib.metadata.Distribution] = {}


def _block_list() -> set[str]:
    return {n.strip() for n in os.environ.get("AUTOPEFT_BLOCK_PLUGINS", "").split(",") if n.strip()}


def get_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-ins and (unless disabled) the installed entry points.

    Raises:
        PluginError: a plugin fails to import, or implements a hook that does not exist or with
            arguments the spec does not have.
    """
    if autoload is None:
        autoload = os.environ.get("AUTOPEFT_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    pm = _PluginManager()
    pm.add_hookspecs(hookspecs)
    for name in _block_list():
        pm.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        short = module_name.rsplit(".", 1)[-1]
        if not pm.is_blocked(short):
            pm.register(importlib.import_module(module_name), name=short)
    if autoload:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {name!r} implements an unknown hook ({first_line(exc)}); "
            f"fix the hook name or block it with AUTOPEFT_BLOCK_PLUGINS={name}"
        ) from None
    return pm


def _allow_list() -> set[str] | None:
    value = os.environ.get("AUTOPEFT_PLUGINS")
    return None if value is None else {n.strip() for n in value.split(",") if n.strip()}


def _load_entry_points(pm: _PluginManager) -> None:
    allowed = _allow_list()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != "autopeft" or pm.is_blocked(ep.name) or pm.get_plugin(ep.name):
                continue
            if allowed is not None and ep.name not in allowed:
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from {dist.metadata['name']} does not match the hook spec "
                    f"({first_line(exc)}); upgrade it or block it with AUTOPEFT_BLOCK_PLUGINS={ep.name}"
                ) from None
            except Exception as exc:  # any import-time failure of foreign code
                raise PluginError(
                    f"plugin {ep.name!r} from {dist.metadata['name']} failed to load "
                    f"({type(exc).__name__}: {first_line(exc)}); reinstall it or block it with "
                    f"AUTOPEFT_BLOCK_PLUGINS={ep.name}"
                ) from None
            pm.distributions[ep.name] = dist


def _provenance(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str, str]:
    name = pm.get_name(plugin) or repr(plugin)
    dist = getattr(pm, "distributions", {}).get(name)
    if dist is not None:
        return name, dist.metadata["name"], dist.version
    from autopeft._version import __version__

    return name, "autopeft", __version__


def _registered(pm: pluggy.PluginManager, hook: str, kind: type, what: str) -> dict[str, tuple[Any, str, str, str]]:
    """name -> (object, plugin, distribution, version) of everything registered through ``hook``.

    Each implementation is called on its own (not through ``pm.hook``) so that every registration
    is attributed to its plugin, for `autopeft plugins` and for duplicate-name errors.
    """
    found: dict[str, tuple[Any, str, str, str]] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        plugin, dist, version = _provenance(pm, impl.plugin)

        def register(obj: Any, _plugin: str = plugin, _dist: str = dist, _version: str = version) -> None:
            if not isinstance(obj, kind):
                raise PluginError(
                    f"plugin {_plugin!r} registered {obj!r}, which is not a {kind.__name__}; "
                    f"subclass autopeft.{kind.__name__} and register an instance"
                )
            name: str = cast(Any, obj).name
            if name in found:
                raise PluginError(
                    f"{what} {name!r} is registered by both {found[name][1]!r} and "
                    f"{_plugin!r}; uninstall one or block it with AUTOPEFT_BLOCK_PLUGINS"
                )
            found[name] = (obj, _plugin, _dist, _version)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # foreign code: an abstract class instantiated, a typo, a failed import
            raise PluginError(
                f"plugin {plugin!r} from {dist} failed in {hook} ({type(exc).__name__}: {first_line(exc)}); "
                f"fix or upgrade it, or block it with AUTOPEFT_BLOCK_PLUGINS={plugin}"
            ) from None
    return found


def registered_methods(pm: pluggy.PluginManager) -> dict[str, MethodInfo]:
    """Every method registered through ``register_methods``, by name.

    Raises:
        PluginError: two plugins register the same name, or a plugin registers a non-method.
    """
    return {name: MethodInfo(*info) for name, info in _registered(pm, "register_methods", PeftMethod, "method").items()}


def registered_tasks(pm: pluggy.PluginManager) -> dict[str, TaskInfo]:
    """Every task registered through ``register_tasks``, by name.

    Raises:
        PluginError: two plugins register the same name, or a plugin registers a non-task.
    """
    return {name: TaskInfo(*info) for name, info in _registered(pm, "register_tasks", Task, "task").items()}


@dataclass(frozen=True)
class ResolvedStudy:
    """A study file with what its plugins decide: resolved once, where a command starts, and passed down.

    The task plugin decides the default metric and the direction of the study; the plugin manager
    decides which methods exist. Resolving them in one place means every later step sees the same
    answers, and loads the plugins once.
    """

    #: The study file, its task's metric and direction filled in.
    config: StudyConfig
    task: Task
    pm: pluggy.PluginManager
    #: What Python hands over that no study file holds (:func:`autopeft.tune`): a loaded model and its
    #: tokenizer, trained on in place of loading ``[model] name``; and the user's own training
    #: function (:class:`autopeft.training.user_fit.FitFunction`), called in place of autopeft's loop.
    loaded: tuple[Any, Any] | None = None
    fit: Any = None

    def with_config(self, config: StudyConfig) -> ResolvedStudy:
        """The same study, plugins and Python hand-overs, with ``config`` (e.g. at ``[final]``'s fidelity)."""
        return replace(self, config=config)

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the study's objectives: the metric as its task says (accuracy up,
        perplexity down), the trainable parameters down."""
        metric = self.config.task.direction
        return ["minimize" if o == "trainable_params" else metric for o in self.config.objectives]


def resolve_study(config: StudyConfig, pm: pluggy.PluginManager | None = None) -> ResolvedStudy:
    """Resolve ``config``'s task and metric against the installed plugins (``pm``: the default manager).

    Raises:
        ConfigError: ``[task] type`` is not a registered task, or ``metric`` not one of its metrics.
        PluginError: a plugin fails to load or register.
    """
    pm = pm or get_plugin_manager()
    tasks = {name: info.task for name, info in registered_tasks(pm).items()}
    config = with_task(config, tasks)
    return ResolvedStudy(config, tasks[config.task.type], pm, fit=import_fit(config.train.fit))


def import_fit(name: str | None) -> Any:
    """The training function ``[train] fit`` names ("module:function"), imported; None for none.

    Raises:
        ConfigError: it cannot be imported, or is not callable.
    """
    if name is None:
        return None
    module_name, _, attribute = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:  # foreign code: any import-time failure
        raise ConfigError(
            "train.fit",
            f"cannot import {name!r} ({type(exc).__name__}: {first_line(exc)})",
            "make its module importable where the study runs (pip install -e, or PYTHONPATH)",
        ) from None
    if not callable(found):
        raise ConfigError("train.fit", f"{name!r} is a {type(found).__name__}, not a function", "name a function")
    return found


def resolve_model(pm: pluggy.PluginManager, name: str, offline: bool) -> str | None:
    """Ask the ``resolve_model`` plugins for a local directory for ``name``."""
    path = pm.hook.resolve_model(name=name, offline=offline)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise PluginError(f"a resolve_model plugin returned {path!r} for {name!r}; it must return a path or None")
    return None if path is None else os.fspath(path)
