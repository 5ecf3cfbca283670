"""`returnrisk evaluate`: the evaluate stage (predictions -> DVC metrics, plot data, PNGs, MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

TRUTH_FILE = "lines_truth.parquet"


def read_oracle(truth: Path | None):
    """line_id -> true return probability from the generator's truth folder, or None when absent."""
    import pandas as pd

    if truth is None:
        return None
    f = Path(truth) / TRUTH_FILE if Path(truth).is_dir() else Path(truth)
    if not f.is_file():
        return None
    t = pd.read_parquet(f, columns=["line_id", "true_return_prob"])
    return pd.Series(t["true_return_prob"].to_numpy(), index=t["line_id"].to_numpy())


def run_evaluate(
    model_dir: Path,
    truth: Path | None,
    metrics_file: Path,
    plots_dir: Path,
    params: dict[str, Any],
    *,
    log_mlflow: bool = True,
) -> dict[str, float]:
    """Evaluate the model and baselines on the test window; write metrics JSON, plot CSVs and PNGs."""
    import json

    import pandas as pd

    from models.artifact import MODEL_FILE
    from models.evaluation import CostModel, curve_frames, evaluate_predictions, plot_curves
    from pipeline.commands.train import PREDICTIONS_FILE, RUN_FILE
    from pipeline.io import write_csv, write_json

    model_dir = Path(model_dir)
    preds_file = model_dir / PREDICTIONS_FILE
    if not preds_file.is_file():
        raise FileNotFoundError(f"{preds_file}: missing (run the train stage first)")
    preds = pd.read_parquet(preds_file)
    spec = json.loads((model_dir / MODEL_FILE).read_text(encoding="utf-8"))
    costs = CostModel.from_params(params["train"]["cost"])
    ece_bins = int(params.get("evaluate", {}).get("ece_bins", 15))
    metrics, curves = evaluate_predictions(
        preds, costs, threshold=spec.get("threshold"), oracle=read_oracle(truth), ece_bins=ece_bins
    )
    write_json(metrics, metrics_file)
    plots_dir = Path(plots_dir)
    for key, df in curve_frames(curves).items():
        write_csv(df, plots_dir / f"{key}.csv", escape=False)
    pngs = plot_curves(curves, plots_dir)
    if log_mlflow and (model_dir / RUN_FILE).is_file():
        from models.tracking import log_to_run, read_run_record

        run_id = read_run_record(model_dir / RUN_FILE)["run_id"]
        metrics["_mlflow_logged"] = float(log_to_run(run_id, metrics, pngs, artifact_path="evaluate"))
    return metrics


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        model: Path = typer.Option(None, help="Model folder written by `train`; default paths.model."),
        truth: Path = typer.Option(None, help="Generator truth folder (oracle AUC); default paths.truth."),
        metrics: Path = typer.Option(
            None, help="Metrics JSON to write; default <paths.metrics>/evaluate.json."
        ),
        plots: Path = typer.Option(None, help="Plot folder to write; default <paths.plots>/evaluate."),
        mlflow: bool = typer.Option(
            True, "--mlflow/--no-mlflow", help="Add metrics and plots to the train run."
        ),
    ) -> None:
        """Evaluate the model against its baselines on the test window (DVC metrics and plots).

        Measures the model and every baseline (training return rate, logistic regression, customer-blind
        LightGBM, and on generated data the oracle) on the test window: ROC AUC, PR AUC, log loss, Brier,
        expected calibration error, lift at top 5/10 %; the cost-based threshold and its expected saving
        on test. Writes DVC metrics (flat keys like model.roc_auc) and plot data (ROC, PR, calibration,
        gains) plus PNGs, and adds them to the MLflow run of the model (run.json)."""
        from rich.console import Console
        from rich.table import Table

        from pipeline.config import load_params, path_of

        console = Console()
        params = load_params()
        model = model or path_of("model", params)
        truth = truth or path_of("truth", params)
        metrics = metrics or path_of("metrics", params) / "evaluate.json"
        plots = plots or path_of("plots", params) / "evaluate"
        m = run_evaluate(model, truth, metrics, plots, params, log_mlflow=mlflow)
        table = Table(title="test window")
        cols = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_10")
        table.add_column("scorer")
        for c in cols:
            table.add_column(c, justify="right")
        for scorer in ("model", "blind", "logreg", "rate", "oracle"):
            if f"{scorer}.roc_auc" in m:
                table.add_row(scorer, *(f"{m[f'{scorer}.{c}']:.4f}" for c in cols))
        console.print(table)
        console.print(
            f"threshold {m['threshold']:.4f}: acts on {m['share_acted_test']:.1%} of test lines, "
            f"expected saving {m['expected_saving_test']:.0f} ({m['expected_saving_test_per_line']:.3f} per line)"
        )
        if "oracle_gap" in m:
            console.print(f"oracle AUC gap {m['oracle_gap']:.4f}")
        console.print(f"metrics: {metrics}   plots: {plots}")
