"""`returnrisk summary`: the headline results of the last `dvc repro` and where everything is."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import load_params, path_of, tracking_uri

# (metrics file, key, label) in the order a reader wants them; missing keys are skipped.
HEADLINES: tuple[tuple[str, str, str], ...] = (
    ("evaluate.json", "model.roc_auc", "model ROC AUC (test window)"),
    ("evaluate.json", "oracle.roc_auc", "oracle ROC AUC (generator's true probabilities)"),
    ("evaluate.json", "oracle_gap", "gap to the oracle"),
    ("evaluate.json", "blind.roc_auc", "customer-blind LightGBM ROC AUC"),
    ("evaluate.json", "logreg.roc_auc", "logistic regression ROC AUC"),
    ("evaluate.json", "model.log_loss", "model log loss"),
    ("evaluate.json", "model.ece", "model expected calibration error"),
    ("evaluate.json", "threshold", "cost-based decision threshold"),
    ("evaluate.json", "expected_saving_test", "expected saving on the test window"),
    ("explain.json", "size_reason_top3_share", "size-mismatch lines with a size reason in the top 3"),
    ("explain.json", "lines_per_second", "explained lines per second"),
    ("flag.json", "precision_at_k", "abuse precision at review capacity k"),
    ("flag.json", "naive_precision_at_k", "naive 'return rate above X' precision at k"),
    ("flag.json", "recall_review_restrict", "abuser recall in review+restrict"),
    ("flag.json", "misflag_share", "flagged honest/bracketers typed as abusers"),
    ("flag.json", "n_flagged", "customers flagged"),
    ("validation.json", "rejected", "rows rejected by validation"),
)


def _fmt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 100 else f"{value:.4g}"


def register(app: typer.Typer) -> None:
    @app.command("summary")
    def summary() -> None:
        """Print the headline metrics of the last run and where its outputs, plots and MLflow runs are."""
        console = Console()
        params = load_params()
        metrics_dir = path_of("metrics", params)
        loaded: dict[str, dict] = {}
        for f in sorted(metrics_dir.glob("*.json")) if metrics_dir.exists() else []:
            loaded[f.name] = json.loads(f.read_text(encoding="utf-8"))
        headline = Table(title="Headline metrics (full list: .venv/bin/dvc metrics show --json)")
        headline.add_column("metric")
        headline.add_column("value", justify="right")
        headline.add_column("file")
        for file, key, label in HEADLINES:
            if key in loaded.get(file, {}):
                headline.add_row(label, _fmt(loaded[file][key]), f"{metrics_dir.name}/{file}")
        if headline.row_count:
            console.print(headline)
        where = Table(title="Outputs")
        where.add_column("what")
        where.add_column("where")
        for key in params["paths"]:
            p = path_of(key, params)
            where.add_row(key, f"{Path(p)}{'' if p.exists() else '  (not produced yet)'}")
        console.print(where)
        console.print(
            "Metrics: .venv/bin/dvc metrics show   Plots: .venv/bin/dvc plots show (HTML in dvc_plots/)"
        )
        console.print(f"MLflow:  make mlflow-ui   (store {tracking_uri()}, then open http://127.0.0.1:5000)")
        console.print("Review flagged customers: .venv/bin/returnrisk review --init   (see README)")
