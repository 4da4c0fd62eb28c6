"""The plugin system: loading, blocking, contract checks, and a real third-party distribution."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, write_study

import autopeft.hookspecs as hookspecs
from autopeft import PeftMethod, PluginError, get_plugin_manager, hookimpl, registered_methods, run_study
from autopeft.registry import resolve_model
from autopeft.testing import MethodConformance

HOOKS = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "autopeft_spec")]
THIRDPARTY = Path(__file__).parent / "thirdparty" / "autopeft-lntuning"
VERA = Path(__file__).parent / "thirdparty" / "autopeft-vera"
LORAPLUS = Path(__file__).parent / "thirdparty" / "autopeft-loraplus"


def test_every_hook_has_a_test_and_a_heading_on_the_plugin_page() -> None:
    # As in datasette: a hook added without a test named after it or a documented heading fails here.
    tests = Path(__file__).read_text()
    page = (ROOT / "docs" / "plugins.md").read_text()
    assert HOOKS == ["register_methods", "register_tasks", "resolve_model"]
    for hook in HOOKS:
        assert f"def test_hook_{hook}" in tests, hook
        assert re.search(rf"^#+ `?{hook}\(", page, re.MULTILINE), f"docs/plugins.md lacks a heading for {hook}"


def test_hook_register_methods() -> None:
    methods = registered_methods(get_plugin_manager(autoload=False))
    assert {"lora", "unfreeze", "bitfit"} <= set(methods)
    assert methods["lora"].distribution == "autopeft" and methods["lora"].plugin == "lora"
    assert all(isinstance(info.method, PeftMethod) for info in methods.values())


def test_hook_register_tasks() -> None:
    """The built-in tasks come through the hook; tests/test_tasks.py registers a third-party one."""
    from autopeft import Task, registered_tasks

    tasks = registered_tasks(get_plugin_manager(autoload=False))
    assert set(tasks) == {"sequence-classification", "token-classification", "causal-lm", "instruction"}
    assert all(isinstance(info.task, Task) for info in tasks.values())
    assert {name: info.plugin for name, info in tasks.items()} == {
        "sequence-classification": "tasks",
        "token-classification": "tasks",
        "causal-lm": "tasks",
        "instruction": "instruction",
    }
    assert tasks["causal-lm"].distribution == tasks["instruction"].distribution == "autopeft"


def test_hook_resolve_model(monkeypatch) -> None:
    pm = get_plugin_manager(autoload=False)
    path = resolve_model(pm, "sentence-transformers/all-MiniLM-L6-v2", offline=True)
    assert path is not None and (Path(path) / "config.json").is_file()
    assert resolve_model(pm, "sentence-transformers/all-MiniLM-L6-v2", offline=False) is None
    assert resolve_model(pm, "someone/unknown-model", offline=True) is None


def test_duplicate_method_names_both_plugins() -> None:
    class Twin:
        @hookimpl
        def register_methods(self, register):
            from autopeft_plugins.lora import Lora

            register(Lora())

    pm = get_plugin_manager(autoload=False)
    pm.register(Twin(), name="twin")
    with pytest.raises(PluginError, match="'lora' is registered by both 'lora' and 'twin'"):
        registered_methods(pm)


def test_registering_a_non_method_is_an_error() -> None:
    class Wrong:
        @hookimpl
        def register_methods(self, register):
            register("lora")

    pm = get_plugin_manager(autoload=False)
    pm.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="not a PeftMethod"):
        registered_methods(pm)


def test_blocking_a_builtin_by_name(monkeypatch) -> None:
    monkeypatch.setenv("AUTOPEFT_BLOCK_PLUGINS", "bitfit, unfreeze")
    assert set(registered_methods(get_plugin_manager(autoload=False))) == {
        "lora",
        "ia3",
        "prompt",
        "adapter",
        "adalora",
        "eva",
    }


def _install(tmp_path: Path, project: Path) -> Path:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def lntuning_site(tmp_path_factory) -> Path:
    """The example third-party plugin, pip-installed as its own distribution into a folder."""
    return _install(tmp_path_factory.mktemp("lntuning"), THIRDPARTY)


def _cli(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "autopeft", *args], capture_output=True, text=True, env=environ)


def test_third_party_plugin_is_listed(lntuning_site: Path) -> None:
    result = _cli(["plugins"], lntuning_site)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("lntuning"))
    assert "autopeft-lntuning 0.3.0" in line
    assert "lora" in result.stdout and "autopeft 0.1.0" in result.stdout
    tasks = result.stdout.split("tasks:\n")[1].splitlines()
    assert [t.split()[0] for t in tasks] == [
        "causal-lm",
        "instruction",
        "sequence-classification",
        "token-classification",
    ]


def test_autoload_off_and_block_hide_the_third_party_plugin(lntuning_site: Path) -> None:
    assert "lntuning" not in _cli(["plugins"], lntuning_site, AUTOPEFT_DISABLE_PLUGIN_AUTOLOAD="1").stdout
    assert "lntuning" not in _cli(["plugins"], lntuning_site, AUTOPEFT_BLOCK_PLUGINS="lntuning").stdout


def test_allow_list_loads_only_the_named_entry_points(lntuning_site: Path) -> None:
    assert "lntuning" not in _cli(["plugins"], lntuning_site, AUTOPEFT_PLUGINS="").stdout
    assert "lntuning" not in _cli(["plugins"], lntuning_site, AUTOPEFT_PLUGINS="other").stdout
    allowed = _cli(["plugins"], lntuning_site, AUTOPEFT_PLUGINS="lntuning, other").stdout
    assert "lntuning" in allowed and "lora" in allowed  # built-ins always load


def test_third_party_method_is_searched(lntuning_site: Path, tmp_path: Path, monkeypatch, minilm_available) -> None:
    monkeypatch.syspath_prepend(str(lntuning_site))
    path = write_study(
        tmp_path,
        study={"n_trials": 2},
        data={"max_train_examples": 32, "max_eval_examples": 32},
        search={"methods": ["lntuning"]},
    )
    study = run_study(path, quiet=True)
    assert [t.user_attrs["method"] for t in study.trials] == ["lntuning", "lntuning"]
    assert all(t.user_attrs["trainable_params"] > 0 and t.value is not None for t in study.trials)


class TestThirdPartyConformance(MethodConformance):
    """The third-party method passes the same conformance suite as the built-ins."""

    @pytest.fixture(autouse=True)
    def _method(self, lntuning_site: Path, monkeypatch) -> None:
        monkeypatch.syspath_prepend(str(lntuning_site))
        import autopeft_lntuning

        type(self).method = autopeft_lntuning.LNTuning()


@pytest.fixture(scope="module")
def method_sites(tmp_path_factory) -> list[Path]:
    """The VeRA and LoRA+ example distributions, each pip-installed into its own folder."""
    return [_install(tmp_path_factory.mktemp(p.name), p) for p in (VERA, LORAPLUS)]


class TestVeraConformance(MethodConformance):
    """A peft method that autopeft does not ship, as a third party would add it."""

    @pytest.fixture(autouse=True)
    def _method(self, method_sites: list[Path], monkeypatch) -> None:
        monkeypatch.syspath_prepend(str(method_sites[0]))
        import autopeft_vera

        type(self).method = autopeft_vera.Vera()


class TestLoraPlusConformance(MethodConformance):
    """A method that brings its own optimizer through the optimizer hook."""

    @pytest.fixture(autouse=True)
    def _method(self, method_sites: list[Path], monkeypatch) -> None:
        monkeypatch.syspath_prepend(str(method_sites[1]))
        import autopeft_loraplus

        type(self).method = autopeft_loraplus.LoraPlus()


def test_third_party_vera_and_loraplus_are_searched_with_their_optimizer(
    method_sites: list[Path], tmp_path: Path, monkeypatch, minilm_available
) -> None:
    for site in method_sites:
        monkeypatch.syspath_prepend(str(site))
    import autopeft_loraplus

    ratios: list[float] = []
    real = autopeft_loraplus.LoraPlus.optimizer

    def recording(self, model, config, learning_rate, weight_decay):  # type: ignore[no-untyped-def]
        optimizer = real(self, model, config, learning_rate, weight_decay)
        rates = sorted({group["lr"] for group in optimizer.param_groups if group["params"]})
        ratios.append(rates[-1] / rates[0])
        return optimizer

    monkeypatch.setattr(autopeft_loraplus.LoraPlus, "optimizer", recording)
    path = write_study(
        tmp_path,
        study={"n_trials": 4, "sampler": "random"},
        data={"max_train_examples": 32, "max_eval_examples": 32},
        search={"methods": ["vera", "loraplus"]},
    )
    study = run_study(path, quiet=True)
    trials = {t.user_attrs["method"]: t for t in study.trials}
    assert set(trials) == {"vera", "loraplus"}  # both warm starts ran, through the entry points
    assert all(t.value is not None and t.user_attrs["trainable_params"] > 0 for t in study.trials)
    plugin = registered_methods(get_plugin_manager())
    assert plugin["vera"].distribution == "autopeft-vera" and plugin["loraplus"].distribution == "autopeft-loraplus"
    loraplus = [t for t in study.trials if t.user_attrs["method"] == "loraplus"]
    assert len(ratios) == len(loraplus)  # every LoRA+ trial trained with the plugin's optimizer
    for ratio, trial in zip(ratios, loraplus):
        assert ratio == pytest.approx(trial.params["loraplus.ratio"])  # B's rate is ratio x A's


def _broken_plugin(tmp_path: Path, body: str) -> Path:
    project = tmp_path / "broken"
    (project / "autopeft_broken").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "autopeft-broken"
        version = "1.0"
        [project.entry-points.autopeft]
        broken = "autopeft_broken"
    """)
    )
    (project / "autopeft_broken" / "__init__.py").write_text(textwrap.dedent(body))
    return _install(tmp_path, project)


@pytest.mark.parametrize(
    "body,expected",
    [
        (
            "from autopeft import hookimpl\n@hookimpl\ndef register_method(register):\n    pass\n",
            "implements an unknown hook",
        ),
        (
            "from autopeft import hookimpl\n@hookimpl\ndef register_methods(register, extra):\n    pass\n",
            "does not match the hook spec",
        ),
        ("raise RuntimeError('boom')\n", "failed to load (RuntimeError: boom)"),
    ],
)
def test_broken_plugin_fails_loudly_with_exit_2(tmp_path: Path, body: str, expected: str) -> None:
    site = _broken_plugin(tmp_path, body)
    result = _cli(["plugins"], site)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "broken" in lines[0], lines
    assert "AUTOPEFT_BLOCK_PLUGINS" in lines[0]
    assert _cli(["plugins"], site, AUTOPEFT_BLOCK_PLUGINS="broken").returncode == 0
