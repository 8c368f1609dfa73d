"""The teaching notebooks: each ``notebooks/NN_name.py`` (jupytext percent script, the source of
truth) is paired with ``NN_name.ipynb`` (outputs stripped), and the .ipynb runs end to end in a
Jupyter kernel at the notebooks' small sizes (``KVLAB_NOTEBOOK_QUICK=1``)."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_seven_notebooks():
    assert [p.stem[:2] for p in SCRIPTS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_is_paired_and_stripped(script):
    import jupytext
    import nbformat

    source = jupytext.read(script)
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    cells = [(c.cell_type, c.source) for c in notebook.cells]
    assert cells == [(c.cell_type, c.source) for c in source.cells], \
        f"{script.name} and its .ipynb differ: run `jupytext --to ipynb {script.relative_to(ROOT)}`"
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in notebook.cells if c.cell_type == "code"), f"{script.stem}.ipynb keeps outputs"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(script, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("KVLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))          # the checkout's kvlab, installed or not
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs)          # it printed its findings
