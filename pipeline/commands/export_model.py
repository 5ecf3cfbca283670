"""`returnrisk export-model`: copy a registered model out of MLflow into a plain folder."""

from __future__ import annotations

from pathlib import Path

import typer


def export_model(model_uri: str, out: Path) -> Path:
    """Write booster.txt + model.json of `model_uri` into `out`, replacing it only when complete.

    The files are downloaded and loaded (proving they are a usable model) in a temporary folder
    beside `out`, which is then renamed over `out`: an interrupted export leaves the old folder.
    """
    import os
    import shutil
    import tempfile

    from models.artifact import BOOSTER_FILE, MODEL_FILE, ReturnModel
    from models.tracking import download_return_model
    from pipeline.config import configure_mlflow

    configure_mlflow()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as dl:
            src = download_return_model(model_uri, Path(dl))
            target = staging / "model"
            target.mkdir()
            for name in (BOOSTER_FILE, MODEL_FILE):
                shutil.copy2(src / name, target / name)
        ReturnModel.load(target)  # fails loudly on a broken download
        _write_source(model_uri, target / "source.json")  # read by `returnrisk score` (model_version)
        old = None
        if out.exists():
            old = staging / "previous"
            os.replace(out, old)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_source(model_uri: str, path: Path) -> None:
    """source.json: the URI exported and, for a registry URI, the model name and version it resolved to."""
    from pipeline.io import write_json

    rec: dict[str, str | None] = {"model_uri": model_uri, "model_name": None, "model_version": None}
    if model_uri.startswith("models:/"):
        from mlflow import MlflowClient

        rest = model_uri[len("models:/") :]
        name, _, ref = rest.partition("@") if "@" in rest else rest.partition("/")
        rec["model_name"] = name
        if "@" in rest:
            rec["model_version"] = str(MlflowClient().get_model_version_by_alias(name, ref).version)
        elif ref.isdigit():
            rec["model_version"] = ref
    write_json(rec, path)


def register(app: typer.Typer) -> None:
    @app.command("export-model")
    def export_model_cmd(
        model: str = typer.Option(
            "models:/returnrisk@champion",
            help="MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...).",
        ),
        out: Path = typer.Option(..., help="Folder to write booster.txt and model.json into (replaced)."),
    ) -> None:
        """Export a registered model to a plain folder that scores without MLflow.

        Writes a LightGBM text booster + model.json (features,
        categorical levels, calibration and threshold), so a checkout service can score without an MLflow
        server: `ReturnModel.load(folder).predict_proba(features_df)` or `returnrisk score --model folder`."""
        from rich.console import Console

        from models.artifact import ReturnModel

        path = export_model(model, out)
        m = ReturnModel.load(path)
        Console().print(
            f"exported {model} -> {path}: {len(m.features)} features, calibration {m.calibrator.method}, "
            f"threshold {m.threshold}"
        )
