"""The documentation site: it builds with ``mkdocs build --strict`` (a broken link or anchor, or a page
left out of the navigation, fails it), and the examples it marks as tested run.

A fenced code block right after a ``<!-- test: ... -->`` line is one of those: the example plugin on
docs/plugins.md (registered through a plugin manager, counted on a tiny model, and put through the
conformance suite the page tells authors to run) and the examples on docs/python-api.md (run on a
tiny study in place of the quickstart's). The code is read from the pages, never copied here, so a
documented example that stops working fails this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, write_study

import autopeft
from autopeft import build_context, get_plugin_manager, registered_methods, trainable_numel
from autopeft.testing import MethodConformance, tiny_bert

DOCS = ROOT / "docs"
_TESTED = re.compile(r"^<!-- test:[^\n]*-->\n```(\w+)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _tested_blocks(page: str, language: str = "python") -> list[str]:
    """The code of each ``language`` block of ``docs/<page>`` that a ``<!-- test: ... -->`` line marks."""
    return [m.group(2) for m in _TESTED.finditer((DOCS / page).read_text(encoding="utf-8")) if m.group(1) == language]


@pytest.fixture
def one_torch_thread():
    """Torch on one thread while a test trains tiny models: their steps gain nothing from more, and
    lose several times over when another process shares the cores (OpenMP threads spin waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _nav_pages(nav: list) -> list[str]:
    """Every page the ``nav`` of mkdocs.yml lists, at any depth."""
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_strictly_and_its_nav_lists_every_page(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = _nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, "every page in docs/ is in the nav of mkdocs.yml, and only those"
    assert len(pages) == len(set(pages))
    assert config["theme"]["font"] is False  # no Google fonts fetched when the site is read
    assert {"search", "mkdocstrings"} == {next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]}

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    for page in pages:
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), page
    # The API reference is rendered from the docstrings, not left as ``::: name`` lines.
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    assert 'id="autopeft.search.study.run_study"' in api and ":::" not in api
    plugins = (site / "plugins" / "index.html").read_text(encoding="utf-8")
    assert 'id="autopeft.hookspecs.register_methods"' in plugins and 'id="autopeft.methods.PeftMethod"' in plugins


def test_the_python_api_reference_covers_every_exported_name() -> None:
    # Each name of autopeft.__all__ is rendered on the Python API page or, for the plugin author's
    # names, with its module on the plugin page.
    referenced = set(re.findall(r"^::: ([\w.]+)", (DOCS / "python-api.md").read_text(encoding="utf-8"), re.MULTILINE))
    plugin_modules = set(re.findall(r"^::: ([\w.]+)", (DOCS / "plugins.md").read_text(encoding="utf-8"), re.MULTILINE))
    assert plugin_modules == {m for m in autopeft.PLUGIN_API if m != "autopeft"} | {"autopeft.hookspecs"}
    missing = []
    for name in autopeft.__all__:
        if name == "__version__":
            continue
        where = autopeft._WHERE.get(name, "autopeft.hookspecs")
        if f"{where}.{name}" not in referenced and where not in plugin_modules:
            missing.append(f"{where}.{name}")
    assert not missing, missing


def _example_plugin() -> types.ModuleType:
    """The example method plugin of docs/plugins.md, as the module ``autopeft_lntuning``."""
    blocks = _tested_blocks("plugins.md")
    assert len(blocks) == 2, "the example plugin and its conformance test"
    module = types.ModuleType("autopeft_lntuning")
    exec(compile(blocks[0], str(DOCS / "plugins.md"), "exec"), module.__dict__)
    return module


def test_the_example_plugin_registers_and_counts_exactly() -> None:
    module = _example_plugin()
    pm = get_plugin_manager(autoload=False)
    pm.register(module, name="lntuning")
    pm.check_pending()  # its hook's name and arguments match the specification
    methods = registered_methods(pm)
    assert methods["lntuning"].plugin == "lntuning" and "lora" in methods
    method = methods["lntuning"].method
    model = tiny_bert().requires_grad_(False)
    ctx = build_context(model)
    smallest, largest = method.smallest(ctx, {}), method.largest(ctx, {})
    assert 0 < method.count_trainable(ctx, smallest) < method.count_trainable(ctx, largest)
    trained = method.apply(model, ctx, largest)
    assert trainable_numel(trained) == method.count_trainable(ctx, largest)


def _documented_conformance() -> type[MethodConformance]:
    """The conformance test class of docs/plugins.md, its ``from autopeft_lntuning import LNTuning``
    resolved to the page's example plugin (only while the class is made)."""
    conformance = _tested_blocks("plugins.md")[1]
    saved = sys.modules.get("autopeft_lntuning")
    sys.modules["autopeft_lntuning"] = _example_plugin()
    try:
        namespace: dict = {}
        exec(compile(conformance, str(DOCS / "plugins.md"), "exec"), namespace)
    finally:
        if saved is None:
            del sys.modules["autopeft_lntuning"]
        else:
            sys.modules["autopeft_lntuning"] = saved
    (suite,) = [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, MethodConformance) and v is not MethodConformance
    ]
    return suite


@pytest.mark.usefixtures("one_torch_thread")
class TestTheDocumentedConformanceSuite(_documented_conformance()):  # type: ignore[misc]
    """The suite the plugin page tells authors to run, run on the page's example plugin."""


@pytest.mark.usefixtures("one_torch_thread")
def test_the_python_api_examples_run(tmp_path: Path, monkeypatch, minilm_available) -> None:
    blocks = _tested_blocks("python-api.md")
    assert len(blocks) == 2, "searching and reading the results; training one configuration"
    study = write_study(
        tmp_path, final={"seeds": 2, "top": 1}, data={"max_train_examples": 32, "max_eval_examples": 16}
    )
    monkeypatch.chdir(tmp_path)  # the example exports into out/best
    namespace: dict = {}
    for code in blocks:
        assert "studies/quickstart.toml" in code
        code = code.replace("studies/quickstart-pareto.toml", str(study)).replace("studies/quickstart.toml", str(study))
        exec(compile(code, str(DOCS / "python-api.md"), "exec"), namespace)
    assert namespace["best"].user_attrs["trainable_params"] > 0
    assert namespace["chosen"] is not None and namespace["records"]
    assert (tmp_path / "out" / "best").is_dir() and not namespace["model"].training
    assert namespace["plan"] and namespace["result"].metric is not None
    assert namespace["short"].stopped_at in (None, 5)
