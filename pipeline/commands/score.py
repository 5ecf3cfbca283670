"""`returnrisk score` (batch scoring for checkout services) and `returnrisk score-sample` (the score stage's export).

Exit codes of `score`: 0 ok; 1 rows were rejected and --strict was given (the output is still written);
2 usage or table-level error (missing table/column, unreadable file, unusable model): nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # LightGBM threads must not spin on a shared machine

EXIT_OK, EXIT_REJECTS, EXIT_USAGE = 0, 1, 2
EXPORT_DIR, HISTORY_DIR = "export", "history"


def sample_window(
    model_dir: Path | None, meta: dict[str, Any], days: int, end: str | None
) -> tuple[Any, Any]:
    """[start, end) of the sample export: `days` days ending at the model's test-window end ("test"),
    the data cutoff ("cutoff") or an ISO date."""
    import json

    import pandas as pd

    from models.artifact import MODEL_FILE

    end = end or "test"
    if end == "test":
        spec = json.loads((Path(model_dir) / MODEL_FILE).read_text(encoding="utf-8")) if model_dir else {}
        stop = (spec.get("metadata") or {}).get("windows", {}).get("end")
        if stop is None:
            raise ValueError(
                f"{model_dir}: model.json has no metadata.windows.end; pass --end cutoff or a date"
            )
        stop_ts = pd.Timestamp(stop)
    elif end == "cutoff":
        stop_ts = pd.Timestamp(meta["cutoff"])
    else:
        stop_ts = pd.Timestamp(end)
    return stop_ts - pd.Timedelta(days=int(days)), stop_ts


def run_score_sample(validated: Path, out: Path, start: Any, end: Any) -> dict[str, int]:
    """Write out/export (the window's orders, lines, new customers and products) and out/history (the rest
    as known at the window's end, with meta.json) atomically; returns row counts."""
    import pandas as pd

    from pipeline.io import atomic_dir, read_meta, write_json
    from pipeline.scoring import cut_sample, read_tables

    tables = read_tables(Path(validated))
    meta = dict(read_meta(validated))
    history, export = cut_sample(tables, pd.Timestamp(start), pd.Timestamp(end))
    with atomic_dir(out) as tmp:
        for sub, data in ((EXPORT_DIR, export), (HISTORY_DIR, history)):
            (tmp / sub).mkdir()
            for name, df in data.items():
                df.to_parquet(tmp / sub / f"{name}.parquet", index=False)
        meta.update(
            {"cutoff": pd.Timestamp(end).isoformat(), "sample_start": pd.Timestamp(start).isoformat()}
        )
        write_json(meta, tmp / HISTORY_DIR / "meta.json")
    return {f"export.{k}": len(v) for k, v in export.items()} | {
        f"history.{k}": len(v) for k, v in history.items()
    }


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        export: Path = typer.Argument(
            ...,
            help="Export folder: orders + order_lines (.parquet or .csv, data-contract columns), "
            "optionally customers/products for new ones.",
        ),
        out: Path = typer.Option(
            ..., "--out", help="Scored file (.parquet or .csv); rejects go beside it as <name>.rejects.<ext>."
        ),
        model: str = typer.Option(
            "models:/returnrisk@champion",
            help="MLflow model URI, or a folder from `returnrisk export-model`.",
        ),
        history: Path = typer.Option(None, help="Validated history tables (default paths.validated)."),
        flags: Path = typer.Option(
            None, help="Abuse flags folder or customer_scores.parquet (default paths.flags)."
        ),
        no_flags: bool = typer.Option(
            False, "--no-flags", help="Do not read abuse flags (tier/type 'unknown')."
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 if any row was rejected."),
        reasons: int = typer.Option(None, help="Reasons per line (default score.reasons; 0 = none, faster)."),
        chunk_lines: int = typer.Option(None, help="Order lines per chunk (default score.chunk_lines)."),
        scored_at: str = typer.Option(
            None,
            help="Timestamp written as scored_at: ISO, or 'cutoff' (the history's meta.json cutoff: "
            "reproducible output). Default now, UTC.",
        ),
        as_of: str = typer.Option(None, help="Orders dated after this are rejected (default scored_at)."),
        metrics: Path = typer.Option(None, help="Also write the run summary as JSON here."),
        state: Path = typer.Option(
            None,
            help="History state folder (features/state.py): the history's aggregates as of its cutoff, "
            "loaded when it matches the history's content, else built and saved there. Without it the run "
            "builds one in memory (as of the export's first order).",
        ),
    ) -> None:
        """Score a batch export of new orders: per order line the calibrated return probability, a risk band
        from the model's cost-based threshold (high >= threshold, medium >= score.medium_share x threshold),
        the customer's abuse tier and type, the top reasons in words, model name and version, scored_at.
        Rows breaking the data contract go to the rejects file with the rule; the rest is scored.
        Exit codes: 0 ok, 1 rejects under --strict, 2 usage or table-level error."""
        import dataclasses

        import pandas as pd
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from pipeline.config import load_params, path_of
        from pipeline.io import TableFileError, write_json
        from pipeline.scoring import (
            Abuse,
            ScoreSettings,
            ScoringError,
            export_files,
            load_or_build_state,
            n_lines_hint,
            read_tables,
            resolve_model,
            score_export,
        )
        from pipeline.validation import ContractError

        console = Console(stderr=True)
        try:
            params = load_params()
            settings = ScoreSettings.from_params(params.get("score"))
            if reasons is not None:
                settings = dataclasses.replace(settings, reasons=int(reasons))
            if chunk_lines is not None:
                settings = dataclasses.replace(settings, chunk_lines=int(chunk_lines))
            hist_dir = history or path_of("validated", params)
            if not Path(hist_dir).is_dir():
                raise ScoringError(f"{hist_dir}: history folder not found (run dvc repro, or pass --history)")
            if scored_at == "cutoff":
                from pipeline.io import read_meta

                scored_at = str(read_meta(hist_dir)["cutoff"])
            abuse = Abuse.load(None if no_flags else (flags or path_of("flags", params)))
            served, name, version = resolve_model(model)
            hist = read_tables(Path(hist_dir))
            history_state = None
            if state is not None:
                history_state, built = load_or_build_state(state, Path(hist_dir), hist, params)
                console.print(
                    f"history state {'built' if built else 'loaded'}: {state} (as of {history_state.as_of})",
                    soft_wrap=True,
                    markup=False,
                )
            total = n_lines_hint(export_files(export)["order_lines"])
            with Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("lines", total=total)
                result = score_export(
                    export,
                    hist,
                    served,
                    out,
                    abuse=abuse,
                    settings=settings,
                    params=params,
                    model_name=name,
                    model_version=version,
                    scored_at=pd.Timestamp(scored_at) if scored_at else None,
                    as_of=pd.Timestamp(as_of) if as_of else None,
                    progress=lambda n: bar.advance(task, n),
                    state=history_state,
                )
        except (ScoringError, ContractError, TableFileError, FileNotFoundError, ValueError) as exc:
            console.print(f"score: {exc}", soft_wrap=True, markup=False, style="red")
            raise typer.Exit(EXIT_USAGE) from exc
        for note in result.notes:
            console.print(f"note: {note}", soft_wrap=True, markup=False, style="yellow")
        if metrics is not None:
            write_json(result.to_json(), metrics)
        Console().print(result.summary_line(), soft_wrap=True, markup=False)
        if strict and result.n_rejected:
            console.print(f"[red]--strict: {result.n_rejected} rejected rows (see {result.rejects})")
            raise typer.Exit(EXIT_REJECTS)

    @app.command("score-sample")
    def score_sample(
        out: Path = typer.Option(..., "--out", help="Folder to write export/ and history/ into (replaced)."),
        validated: Path = typer.Option(None, help="Validated tables (default paths.validated)."),
        model: Path = typer.Option(
            None, help="Model folder whose test window ends the sample (default paths.model)."
        ),
        days: int = typer.Option(None, help="Days of orders in the sample (default score.sample_days)."),
        end: str = typer.Option(
            None,
            help="Sample end: test (model's test-window end), cutoff, or an ISO date "
            "(default score.sample_end).",
        ),
    ) -> None:
        """Cut a sample checkout export from the validated tables: the orders of the last `days` days before
        `end` (with their lines and the customers/products first seen in them) -> out/export, and the history
        as known at `end` -> out/history. `returnrisk score out/export --history out/history` then scores them
        the way a checkout service would; the score stage does exactly that."""
        from rich.console import Console

        from pipeline.config import load_params, path_of
        from pipeline.io import read_meta

        params = load_params()
        cfg = params.get("score") or {}
        validated = validated or path_of("validated", params)
        model = model or path_of("model", params)
        start, stop = sample_window(
            model,
            read_meta(validated),
            days or int(cfg.get("sample_days", 7)),
            end or cfg.get("sample_end", "test"),
        )
        counts = run_score_sample(Path(validated), out, start, stop)
        Console().print(
            f"sample {start:%Y-%m-%d %H:%M} .. {stop:%Y-%m-%d %H:%M}: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" -> {out}"
        )
