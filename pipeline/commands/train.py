"""`returnrisk train`: the train stage (read features -> train -> write model, predictions, MLflow run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see models/train.py: before LightGBM loads

FEATURES_FILE = "features.parquet"
PREDICTIONS_FILE = "predictions.parquet"
RUN_FILE = "run.json"
BLIND_DIR = "customer_blind"
SUMMARY_FILE = "train_summary.json"
FEATURE_LIST_FILE = "features.json"


def features_file(path: Path) -> Path:
    """features.parquet inside a folder, or the file itself."""
    p = Path(path)
    f = p / FEATURES_FILE if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{f}: feature table not found (run the featurize stage first)")
    return f


def train_config(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml `train:` plus `calibration_ece_bins` = `evaluate.ece_bins` (dvc.yaml's train stage depends on it).

    One bin count for the ECE that selects the calibrator and the ECE the evaluate stage reports; an explicit
    `train.calibration_ece_bins` that disagrees with `evaluate.ece_bins` is refused rather than silently ignored.
    """
    cfg = dict(params["train"])
    bins = params.get("evaluate", {}).get("ece_bins")
    if bins is None:
        return cfg
    if cfg.get("calibration_ece_bins", bins) != bins:
        raise ValueError(
            f"params.yaml: train.calibration_ece_bins ({cfg['calibration_ece_bins']}) differs from "
            f"evaluate.ece_bins ({bins}); leave train.calibration_ece_bins out (it is read from evaluate)"
        )
    cfg["calibration_ece_bins"] = bins
    return cfg


def run_train(
    features: Path,
    out: Path,
    params: dict[str, Any],
    *,
    log_mlflow: bool = True,
    specs: list | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train and write everything the later stages need into `out`; returns the run summary."""
    import pandas as pd

    from models.evaluation import CostModel, binary_metrics, evaluate_predictions, plot_curves
    from models.train import specs_from_registry, train_all
    from pipeline.config import CHAMPION_ALIAS, REGISTERED_MODEL_NAME, project_root
    from pipeline.io import write_json, write_parquet

    say = progress or (lambda _m: None)
    cfg = train_config(params)
    seed = int(params["seed"])
    ffile = features_file(features)
    say(f"reading {ffile}")
    frame = pd.read_parquet(ffile)
    specs = specs if specs is not None else specs_from_registry(frame)
    result = train_all(frame, specs, cfg, seed, progress=say)

    out = Path(out)
    say(f"writing the model to {out}")
    result.model.save(out)
    result.blind.save(out / BLIND_DIR)
    write_parquet(result.predictions, out / PREDICTIONS_FILE)
    feature_list = [
        {"name": s.name, "categorical": s.categorical, "uses_customer_history": s.uses_customer_history}
        for s in specs
    ]
    write_json(feature_list, out / FEATURE_LIST_FILE)
    summary = dict(result.summary)
    summary["windows"] = result.windows
    write_json(summary, out / SUMMARY_FILE)
    if not log_mlflow:
        return summary

    say("logging the run to MLflow")
    import tempfile

    from models.tracking import (
        ChampionRule,
        dvc_lock_hashes,
        file_md5,
        git_commit,
        log_training_run,
        write_run_record,
    )

    costs = CostModel.from_params(cfg["cost"])
    ece_bins = int(cfg.get("calibration_ece_bins", 15))
    metrics, curves = evaluate_predictions(
        result.predictions, costs, threshold=result.model.threshold, ece_bins=ece_bins
    )
    metrics.update({k: v for k, v in result.summary.items() if isinstance(v, int | float)})
    rule = ChampionRule(**cfg.get("champion", {}))
    test_mask = (result.predictions["split"] == "test").to_numpy()
    test_ids = set(result.predictions.loc[test_mask, "line_id"])
    test_rows = frame[frame["line_id"].isin(test_ids)]
    y_test = test_rows["returned"].to_numpy()

    def score(model) -> float:
        return binary_metrics(y_test, model.predict_proba(test_rows), ece_bins=ece_bins)[rule.metric]

    root = project_root()
    tags = {
        **git_commit(root),
        **dvc_lock_hashes(root, {"features": str(params["paths"]["features"])}),
        "data.features_file_md5": file_md5(ffile),
        "features": ",".join(s.name for s in specs)[:5000],
        "n_features": str(len(specs)),
        "calibration": result.model.calibrator.method,
        "windows": str(result.windows),
    }
    params_logged = {"seed": seed, "labels": params.get("labels", {}), "train": cfg}
    with tempfile.TemporaryDirectory() as tmp:
        pngs = plot_curves(curves, Path(tmp) / "plots")
        served = result.model.save(Path(tmp) / "model")  # only booster.txt + model.json go to MLflow
        record = log_training_run(
            model_dir=served,
            model=result.model,
            example_frame=test_rows,
            params=params_logged,
            metrics=metrics,
            tags=tags,
            artifacts={
                "features": out / FEATURE_LIST_FILE,
                "summary": out / SUMMARY_FILE,
                **{p.stem: p for p in pngs},
            },
            rule=rule,
            new_value=float(metrics[f"model.{rule.metric}"]),
            score=score,
            name=REGISTERED_MODEL_NAME,
            alias=CHAMPION_ALIAS,
        )
    write_run_record(record, out / RUN_FILE)
    summary["mlflow"] = record.to_json()
    return summary


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        features: Path = typer.Option(None, help="Feature table folder (or file); default paths.features."),
        out: Path = typer.Option(None, help="Output folder for the model; default paths.model."),
        mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the run and register the model."),
    ) -> None:
        """Train the return model out of time, with its baselines, and register it in MLflow.

        LightGBM with early stopping on the validation window,
        calibration fitted there, a customer-blind LightGBM and a logistic-regression baseline, a
        cost-based decision threshold; write the model, its predictions on validation and test, and the
        MLflow run id (run.json); register `returnrisk` and move the champion alias if it wins.
        Windows, hyperparameters and costs: params.yaml `train:`."""
        from rich.console import Console

        from pipeline.config import load_params, path_of

        console = Console(stderr=True)
        params = load_params()
        features = features or path_of("features", params)
        out = out or path_of("model", params)
        with console.status("training") as status:
            summary = run_train(
                features, out, params, log_mlflow=mlflow, progress=lambda m: status.update(f"[bold]{m}")
            )
        console.print(
            f"train: {summary['n_train']} / {summary['n_val']} / {summary['n_test']} lines "
            f"(train/val/test), best iteration {summary['model.best_iteration']}, "
            f"test AUC {summary['test.model.roc_auc']:.4f} (blind {summary['test.blind.roc_auc']:.4f}, "
            f"logreg {summary['test.logreg.roc_auc']:.4f}), threshold {summary['threshold']:.4f}"
        )
        if "mlflow" in summary:
            m = summary["mlflow"]
            console.print(
                f"MLflow run {m['run_id']}: {m['model_name']} v{m['model_version']}; "
                f"champion {'moved' if m['champion_moved'] else 'kept'} ({m['champion_reason']})"
            )
        console.print(f"model written to {out}")
