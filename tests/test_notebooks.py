"""Every notebook in notebooks/ executes top to bottom on the small generated data, so none can rot.

Each runs with its working folder set to the small project (a params.yaml whose paths point at data the
`small_project` fixture produced), exactly as a data scientist runs it from the project folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    import nbformat

    if not NOTEBOOKS:
        pytest.skip("no notebooks in notebooks/")
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs (clear them before committing)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, small_project, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if not (small_project.path("features") / "features.parquet").is_file():
        pytest.skip(
            f"no feature table under {small_project.path('features')}: the small pipeline produced no data"
        )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_project.tracking_uri)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(small_project.root)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def test_exploration_notebook_on_real_data(small_project, shared_data, tmp_path, monkeypatch):
    """1.0-exploration repeats its rates on the UCI export when data.uci_path points at one."""
    import nbformat
    import yaml
    from nbclient import NotebookClient

    export = shared_data / "uci_online_retail" / "online_retail_2010-12_2011-12.parquet"
    if not export.is_file():
        pytest.skip(f"{export} is absent")
    params = {**small_project.params, "data": {**small_project.params["data"], "uci_path": str(export)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(
        Path(__file__).resolve().parents[1] / "notebooks" / "1.0-exploration.ipynb", as_version=4
    )
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "UCI: " in text and "real-data section skipped" not in text
