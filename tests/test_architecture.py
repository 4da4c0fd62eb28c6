"""The shape of the code, checked: layers that import only downward, no import cycles in the core,
plugins use the plugin author's API only, and the study file is resolved against the plugins once per
command."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest
from conftest import ROOT

import autopeft

CORE = ROOT / "autopeft"
#: Modules a plugin (built-in or third-party) may import: the plugin author's API, as the package lists it.
PUBLIC = set(autopeft.PLUGIN_API)
#: The layers, bottom first: a module may import its own layer and those below it, never one above.
#: ``autopeft.testing`` stays at its documented path in the ground folder, but its conformance suites
#: run fits, so it sits above training.
LAYERS = ("ground", "storage", "training", "integrations", "testing", "search", "outputs", "api", "cli")


def _layer(module: str) -> str:
    """The layer of a core module: its folder under ``autopeft/``, else the ground (``autopeft.testing`` apart)."""
    if module == "autopeft.testing":
        return "testing"
    folder = module.split(".")[1] if module.count(".") >= 1 else ""
    return folder if folder in LAYERS else "ground"


def _imports(path: Path, package: str = "autopeft") -> set[str]:
    """The ``package`` modules ``path`` imports when it runs, at any depth (function-level imports
    included), leaving out ``if TYPE_CHECKING:`` blocks, which never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package or node.module.startswith(f"{package}."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == package or a.name.startswith(f"{package}.")}
    return found


def _modules() -> dict[str, Path]:
    """Every core module by its dotted name, packages' ``__init__`` included; the facade and ``__main__`` left out."""
    found = {}
    for path in CORE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if name not in ("autopeft", "autopeft.__main__"):
            found[name] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_has_no_import_cycles() -> None:
    graph = _graph()
    assert "autopeft.training.workbench" in graph and graph["autopeft.training.train"]  # the graph is read, not empty
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import in ``graph`` of a module in a higher layer than the importer's."""
    return [
        f"{module} ({_layer(module)}) imports {dep} ({_layer(dep)})"
        for module, deps in sorted(graph.items())
        for dep in sorted(deps)
        if LAYERS.index(_layer(dep)) > LAYERS.index(_layer(module))
    ]


def test_layers_import_only_downward() -> None:
    graph = _graph()
    assert {_layer(m) for m in graph} == set(LAYERS)  # every layer has modules: the folders are read
    upward = _upward(graph)
    assert not upward, "\n".join(upward)


def test_the_layer_check_finds_an_upward_import() -> None:
    assert _layer("autopeft.config") == "ground" and _layer("autopeft.search.study") == "search"
    assert _layer("autopeft.testing") == "testing" and _layer("autopeft.cli.command") == "cli"
    graph = {"autopeft.config": {"autopeft.storage.artifact_stores"}, "autopeft.search.plan": {"autopeft.testing"}}
    assert _upward(graph) == ["autopeft.config (ground) imports autopeft.storage.artifact_stores (storage)"]


def test_no_core_module_imports_the_facade() -> None:
    # The facade sits above every module it re-exports: a module importing it (for __version__, say)
    # would climb up, and import the facade while the facade is importing it.
    climbing = sorted(name for name, path in _modules().items() if "autopeft" in _imports(path))
    assert not climbing, climbing


def test_the_plugin_authors_api_imports_from_its_documented_paths() -> None:
    # Third-party plugins import these by name (the plugin docs do); they must never move.
    assert autopeft.PLUGIN_API[0] == "autopeft" and len(PUBLIC) == 8
    for name in PUBLIC:
        module = importlib.import_module(name)
        assert module.__name__ == name and getattr(module, "__all__", None), name
    from autopeft.methods import PeftMethod, trainable_numel  # noqa: F401  (as the plugin docs import them)
    from autopeft.peft_backed import PeftBackedMethod  # noqa: F401
    from autopeft.tasks import EvalSettings, Task  # noqa: F401
    from autopeft.testing import MethodConformance, TaskConformance  # noqa: F401


def test_a_facade_name_is_its_object_whatever_was_imported_before() -> None:
    # Importing a submodule sets it as an attribute of its package, which the lazy facade never sees:
    # a function named like a module of autopeft/ (``export`` was both) became the module once that
    # module was imported. Import every module first, then resolve every name.
    for info in pkgutil.walk_packages(autopeft.__path__, "autopeft."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    assert autopeft.load_model and callable(autopeft.export) and not isinstance(autopeft.export, types.ModuleType)
    submodules = {info.name for info in pkgutil.iter_modules(autopeft.__path__)}
    assert not submodules & set(autopeft.__all__), "a facade name shadows (or is shadowed by) a module"
    for name, where in autopeft._WHERE.items():
        assert getattr(autopeft, name) is getattr(importlib.import_module(where), name), name


@pytest.mark.parametrize("name", sorted(autopeft._WHERE))
def test_every_facade_name_is_exported(name: str) -> None:
    assert name in autopeft.__all__


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_plugins_import_only_the_public_surface() -> None:
    plugin_files = [*(ROOT / "plugins").glob("*.py"), *(ROOT / "tests" / "thirdparty").rglob("src/**/*.py")]
    assert len(plugin_files) > 8
    for path in plugin_files:
        private = _imports(path) - PUBLIC
        assert not private, f"{path.relative_to(ROOT)} imports {sorted(private)}, which plugins may not rely on"


def test_the_objective_is_thin_and_few_modules_reach_into_it() -> None:
    lines = len((CORE / "search" / "objective.py").read_text().splitlines())
    assert lines <= 150, lines
    users = sorted(n for n, deps in _graph().items() if "autopeft.search.objective" in deps)
    assert users == ["autopeft.search.study"], users


def _calls(name: str) -> list[str]:
    """Where ``name(...)`` is called in the core."""
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                found.append(f"{module.removeprefix('autopeft.')}:{node.lineno}")
    return found


def test_the_task_and_the_plugins_are_resolved_in_one_place() -> None:
    # The study file's task is resolved by resolve_study only; the command boundary calls it once.
    assert [c.split(":")[0] for c in _calls("with_task")] == ["registry"]
    # A plugin manager is built where a command starts without a study to resolve (plugins, load_model,
    # init's model count, tune's task before its study exists) and, by default, in resolve_study.
    managers = sorted(c.split(":")[0] for c in _calls("get_plugin_manager"))
    assert managers == ["api.tune", "cli.init", "cli.service_commands", "outputs.export", "registry"], managers
