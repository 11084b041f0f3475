"""notebooks/analysis.ipynb runs top to bottom (nbclient, the venv's python3 kernel) on a store
produced by a real short sweep, and shows coverage, the main table and two figures."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from report_real_sweep import real_store

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_executes_on_a_real_store(tmp_path_factory, monkeypatch):
    root = real_store(tmp_path_factory)
    monkeypatch.setenv("SDS_STORE", str(root))  # the notebook reads the store path from here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" with argv "python": jupyter_client runs it as sys.executable (the venv's).
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)
    assert f"store: {root}" in text and f"python: {sys.executable}" in text
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "✓✓✓" in html  # the coverage matrix
    assert "12 of 12 parts done" in text
    assert "iqm" in html and "v2_full" in html  # the main table, every statistic
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # learning curves and ID vs OOD
