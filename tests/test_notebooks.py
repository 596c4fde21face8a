"""Every notebook in notebooks/ runs top to bottom against a real finished run and draws its figures."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest
import yaml
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from dubline.flows.localize import localize_catalogue

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def finished_run(media, tmp_path_factory, prefect_harness) -> Path:
    """A real run of the two-shot clip dubbed into French, stages in-process."""
    folder = tmp_path_factory.mktemp("notebook_run")
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(
        [{"title_id": "portraits", "video": str(media["two_shots"]), "dubs": {"fr": str(media["dub_fr"])}}]))
    summary = localize_catalogue(catalogue=str(catalogue), out=str(folder / "run"), executor="local")
    assert summary["titles"]["portraits"]["status"] == "done"
    return folder / "run"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_a_finished_run(path, finished_run, monkeypatch):
    monkeypatch.setenv("DUBLINE_RUN", str(finished_run))
    notebook = nbformat.read(path, as_version=4)
    # One extra cell, in memory only: which Python the kernel really runs.
    notebook.cells.append(new_code_cell("import sys; print(sys.prefix)"))
    NotebookClient(notebook, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(path.parent)}}).execute()

    assert notebook.cells[-1].outputs[0]["text"].strip() == sys.prefix  # the venv's interpreter
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # The stage table names the run's title, language and status.
    tables = [output.data["text/html"] for output in outputs if "text/html" in output.get("data", {})]
    assert any("<td>portraits</td><td>fr</td>" in table and "<td>done</td>" in table for table in tables)
    # Coefficient curves, dub audio, frames before/after: real drawings, not blank canvases.
    figures = [cv2.imdecode(np.frombuffer(base64.b64decode(output.data["image/png"]), np.uint8), cv2.IMREAD_COLOR)
               for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 3
    # Share of strongly coloured pixels: 0 on empty axes (black, white, grey), ~1 % with the
    # coloured curves drawn, most of the picture on the figure of decoded video frames.
    coloured = [float((cv2.cvtColor(figure, cv2.COLOR_BGR2HSV)[..., 1] > 100).mean()) for figure in figures]
    assert min(coloured) > 0.003 and max(coloured) > 0.2, coloured
