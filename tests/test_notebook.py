"""examples/which_loss.ipynb: committed without outputs, and executed end to end on the ipykernel
kernel as a user's Jupyter would run it (capped by LOSSBENCH_SMOKE=1, as CI runs every command)."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "which_loss.ipynb"


def test_the_notebook_is_committed_with_its_outputs_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "pip install" in code[0].source  # runs on Colab: it installs lossbench first


def _outputs(cell):
    return {kind for out in cell.outputs for kind in out.get("data", {})}


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_and_shows_the_table_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_SMOKE", "1")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    by_source = {c.source.splitlines()[0]: c for c in code}
    table = next(c for s, c in by_source.items() if s.startswith("table = lb.compare"))
    html = "".join(o["data"]["text/html"] for o in table.outputs if "text/html" in o.get("data", {}))
    assert "<table" in html and "gce" in html and "sce" in html
    rates = next(c for s, c in by_source.items() if s.startswith("pictures[-1]"))
    assert "image/png" in _outputs(rates)
    memorisation = next(c for c in code if "flipped_memorised" in c.source)
    assert "image/png" in _outputs(memorisation)
    # the study's 18 runs are on disk, where `lossbench compare` finds them too
    assert len(list((tmp_path / "outputs" / "multirun").rglob("metrics.json"))) == 18
