"""The shape of the code, checked: no import cycles in the core, plugins use the public surface only,
and the study file is resolved against the plugins once per command."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

CORE = ROOT / "autopeft"
#: Modules a plugin (built-in or third-party) may import: the plugin author's API.
PUBLIC = {
    "autopeft",
    "autopeft.tasks",
    "autopeft.methods",
    "autopeft.peft_backed",
    "autopeft.blocks",
    "autopeft.budget",
    "autopeft.errors",
    "autopeft.testing",
}


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


def _graph() -> dict[str, set[str]]:
    modules = {f"autopeft.{p.stem}": p for p in CORE.glob("*.py") if p.stem not in ("__init__", "__main__")}
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
    assert "autopeft.workbench" in graph and graph["autopeft.train"]  # the graph is read, not empty
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


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
    lines = len((CORE / "objective.py").read_text().splitlines())
    assert lines <= 150, lines
    users = sorted(n for n, deps in _graph().items() if "autopeft.objective" in deps)
    assert users == ["autopeft.study"], users


def _calls(name: str) -> list[str]:
    """Where ``name(...)`` is called in the core."""
    found = []
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                found.append(f"{path.stem}:{node.lineno}")
    return found


def test_the_task_and_the_plugins_are_resolved_in_one_place() -> None:
    # The study file's task is resolved by resolve_study only; the command boundary calls it once.
    assert [c.split(":")[0] for c in _calls("with_task")] == ["plugins"]
    # A plugin manager is built where a command starts without a study to resolve (plugins, load_model,
    # init's model count) and, by default, in resolve_study.
    assert sorted(c.split(":")[0] for c in _calls("get_plugin_manager")) == ["cli", "export", "init_study", "plugins"]
