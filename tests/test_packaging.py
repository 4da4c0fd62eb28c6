"""The wheel installs `autopeft` and `autopeft_plugins` only: no top-level `plugins` package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_wheel_contents(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy, so no build/ folder is left in (or reused from) the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("autopeft", "plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("autopeft-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "autopeft",
        "autopeft_plugins",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert "autopeft_plugins/lora.py" in names and "autopeft/hookspecs.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "autopeft = autopeft.cli.command:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert (
        "License-Expression: Apache-2.0" in metadata and "Classifier: Programming Language :: Python :: 3" in metadata
    )
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "Requires-Dist: numpy" in metadata  # imported by the token cache: declared, not borrowed from torch


def test_version_is_one_line(capsys) -> None:
    import pytest

    from autopeft import __version__
    from autopeft.cli.command import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"autopeft {__version__}"


def test_every_public_name_resolves_and_the_cli_does_not_import_torch() -> None:
    import subprocess
    import sys

    import autopeft

    for name in autopeft.__all__:
        assert getattr(autopeft, name) is not None, name
    # Reading a study (`trials`, `pareto`, `report`, `dashboard`) must not pay for torch, transformers, peft.
    code = (
        "import sys, autopeft.cli.command, autopeft.search.study, autopeft.outputs.report; "
        "print(sorted({'torch', 'peft', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
