"""Shared fixtures: a small generated dataset written once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SMALL = dict(n_customers=1500, n_products=300, months=12, seed=7)


@dataclass
class SmallData:
    raw: Path  # canonical tables + meta.json
    truth: Path  # ground truth


@pytest.fixture(scope="session")
def small_generated(tmp_path_factory) -> SmallData:
    """A small seeded generated dataset (tables + truth) on disk; read-only for tests (copy to modify)."""
    from pipeline.generator import generate, write_generated

    root = tmp_path_factory.mktemp("small")
    data = generate(**SMALL)
    write_generated(data, root / "raw", root / "truth")
    return SmallData(root / "raw", root / "truth")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip saying why."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only present beside the dev checkout)")
    return SHARED_DATA


@dataclass
class SmallProject:
    """The small generated data run through validate, featurize, train and evaluate (no DVC)."""

    root: Path  # holds a params.yaml whose paths point into this folder (notebooks run here)
    params: dict
    tracking_uri: str  # the temporary MLflow store the train run was logged to

    def path(self, key: str) -> Path:
        return Path(self.params["paths"][key])


@pytest.fixture(scope="session")
def small_project(small_generated, tmp_path_factory) -> SmallProject:
    """Stages on the small data, the way `dvc repro` chains them; MLflow goes to a temporary SQLite store."""
    import os
    import shutil

    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.commands.evaluate import run_evaluate
    from pipeline.commands.featurize import run_featurize
    from pipeline.commands.train import run_train
    from pipeline.config import load_params

    root = tmp_path_factory.mktemp("project")
    params = dict(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    paths = {k: str(root / v) for k, v in params["paths"].items()}
    paths["raw"], paths["truth"] = str(small_generated.raw), str(small_generated.truth)
    params["paths"] = paths
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    val = CliRunner().invoke(
        app,
        [
            "validate",
            paths["raw"],
            "--out",
            paths["validated"],
            "--report",
            f"{paths['metrics']}/validation.json",
        ],
    )
    assert val.exit_code == 0, val.output
    run_featurize(
        Path(paths["validated"]), Path(paths["features"]), Path(paths["metrics"]) / "featurize.json", params
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        run_train(Path(paths["features"]), Path(paths["model"]), params)
        run_evaluate(
            Path(paths["model"]),
            Path(paths["truth"]),
            Path(paths["metrics"]) / "evaluate.json",
            Path(paths["plots"]) / "evaluate",
            params,
        )
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    return SmallProject(root, params, uri)
