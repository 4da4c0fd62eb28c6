"""examples/notebook.ipynb, executed cell by cell on a real Jupyter kernel (nbclient), as a user
would run it: load a DataFrame, tune, plot, export, reload with plain peft."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import ROOT


def test_the_example_notebook_runs_on_a_jupyter_kernel(tmp_path: Path, minilm_available) -> None:
    import nbformat
    from nbclient import NotebookClient

    (tmp_path / "studies").symlink_to(ROOT / "studies")  # the notebook reads ../studies/data
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(ROOT / "examples" / "notebook.ipynb", folder)
    notebook = nbformat.read(folder / "notebook.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "plain peft: accuracy" in text
    shown = [o for o in outputs if o.output_type == "display_data" and "application/vnd.plotly.v1+json" in o.data]
    assert shown, "result.plot() shows its figures inline"
    lines = [o for o in outputs if o.output_type == "stream" and o.name == "stderr" and "[trial" in o.get("text", "")]
    assert not lines, "a notebook run shows one widget line, not a line per trial"
    assert (folder / "notebook-run" / "best" / "adapter_model.safetensors").is_file()
