"""The wheel installs `autopeft` and `autopeft_plugins` only: no top-level `plugins` package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_wheel_contents(tmp_path: Path) -> None:
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
            str(ROOT),
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
    assert "autopeft = autopeft.cli:main" in entry_points
