"""Every notebook in notebooks/ runs top to bottom, offline, in a kernel of this interpreter (nbclient)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the notebook kernels: offline, a ``python3`` kernelspec that runs this interpreter (found
    first on JUPYTER_PATH, so a user's or the system's ``python3`` kernel cannot stand in), and one demo-data
    cache shared by the notebooks of this run instead of the user's ``~/.cache/medfusion``."""
    root = tmp_path_factory.mktemp("notebook_kernels")
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return {
        "JUPYTER_PATH": str(root / "jupyter"),
        "MEDFUSION_CACHE": str(root / "medfusion_cache"),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def failed_cell(nb: nbformat.NotebookNode) -> int | None:
    """The index of the first code cell with an error output (as Jupyter numbers cells, from 0)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return index
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile run dirs land in pytest's tmp_path
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as users get it
    # A shared CI runner is often busier than its core count: OpenMP threads that spin while waiting then slow
    # torch down several-fold. Waiting passively changes no result.
    if "OMP_WAIT_POLICY" not in os.environ:
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")

    nb = nbformat.read(path, as_version=4)
    before = sorted(path.parent.iterdir())
    # in the notebook's own directory, as Jupyter runs it (they find configs/ from there)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as raised:
        error = raised  # reported outside the handler, so pytest does not print it a second time as the context
    if error is not None:
        pytest.fail(f"{path.name}, cell {failed_cell(nb)}: {ANSI.sub('', str(error))}", pytrace=False)
    assert sorted(path.parent.iterdir()) == before, "the notebook wrote files next to itself: use a temporary dir"
