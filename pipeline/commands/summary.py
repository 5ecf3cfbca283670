"""`returnrisk summary`: where the results of the last `dvc repro` are."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import load_params, path_of, tracking_uri


def register(app: typer.Typer) -> None:
    @app.command("summary")
    def summary() -> None:
        """Print where the last run's metrics, outputs and MLflow runs are."""
        console = Console()
        params = load_params()
        table = Table(title="returnrisk: results of the last `dvc repro`")
        table.add_column("what")
        table.add_column("where")
        for key in params["paths"]:
            p = path_of(key, params)
            table.add_row(key, f"{p}{'' if p.exists() else '  (not produced yet)'}")
        console.print(table)
        metrics_dir = path_of("metrics", params)
        for f in sorted(metrics_dir.glob("*.json")) if metrics_dir.exists() else []:
            data = json.loads(f.read_text())
            flat = {k: v for k, v in data.items() if isinstance(v, int | float)}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(flat.items())[:8])
            console.print(f"[bold]{f.name}[/bold]: {shown}")
        console.print("Metrics:  .venv/bin/dvc metrics show     Plots: .venv/bin/dvc plots show")
        console.print(f"MLflow:   make mlflow-ui   (store {tracking_uri()}, http://127.0.0.1:5000)")
