"""notebooks/quickstart.ipynb runs top to bottom on the bundled model (fast configuration), so the
walkthrough can never rot: every cell executes, the merge adds no nonzero, the plots render."""

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SQFT_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("SQFT_NOTEBOOK_WORK", str(tmp_path / "run"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    assert "new nonzeros after the merge: 0" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # loss, sparsity, and the four report plots
    verify = json.loads((tmp_path / "run" / "openvino" / "verify.json").read_text())
    assert verify["ok"] and verify["new_nonzeros"] == 0 and verify["int4_mismatch"] == []
    assert os.path.isfile(tmp_path / "run" / "report" / "index.html")
