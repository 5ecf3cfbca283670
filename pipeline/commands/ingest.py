"""`returnrisk ingest`: map a real export (UCI Online Retail I/II) into the canonical tables.

With `--from-params` it produces the raw tables from whichever source params.yaml `data.source` names
(the generator or the UCI reader), so one DVC stage serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

TRUTH_README = """# No ground truth for real data

This folder is the generator's ground truth (true return probabilities, archetypes). The raw tables
were ingested from a real export (source: {source}), which has no hidden truth: it is empty on purpose.
Evaluation on real data uses the recorded returns only.
"""


def read_export(path: Path) -> Any:
    """The export as a DataFrame; CSV id columns are read as text so codes keep leading zeros."""
    import pandas as pd

    from pipeline.io import TableFileError, read_any
    from pipeline.sources.uci import NAMINGS, UCIFormatError, detect_naming

    if not path.is_file():
        raise TableFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls"):
        raise TableFileError(f"{path}: Excel files are not read; save the sheet as CSV or Parquet first")
    if suffix != ".csv":
        return read_any(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
        naming = NAMINGS[detect_naming(header)]
    except UCIFormatError as exc:
        raise TableFileError(f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise TableFileError(f"{path}: not a readable csv file ({type(exc).__name__}: {exc})") from exc
    text_cols = {naming[c]: "str" for c in ("invoice", "stock_code", "customer", "description", "country")}
    try:
        return pd.read_csv(path, dtype=text_cols, keep_default_na=False, na_values=[""], low_memory=False)
    except Exception as exc:  # noqa: BLE001
        raise TableFileError(f"{path}: not a readable csv file ({type(exc).__name__}: {exc})") from exc


def write_tables(tables: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    """Write each table as <table>.parquet + meta.json atomically; remove stale contract table files.

    Stale files matter: switching data.source from generated to real data must not leave the
    generator's reviews.parquet (or a <table>.csv twin) to be read as part of the new data.
    """
    from pipeline.contract import FILE_SUFFIXES, META_FILE, TABLE_ORDER
    from pipeline.io import write_json, write_parquet

    out.mkdir(parents=True, exist_ok=True)
    written = [write_parquet(tables[name], out / f"{name}.parquet") for name in TABLE_ORDER if name in tables]
    for name in TABLE_ORDER:
        for suffix in FILE_SUFFIXES:
            p = out / f"{name}{suffix}"
            if p.is_file() and p not in written:
                p.unlink()
    written.append(write_json(meta, out / META_FILE))
    return written


def ingest_uci(path: Path, out: Path, report_path: Path | None = None) -> dict[str, Any]:
    """Read an Online Retail export, map it, write the tables, meta.json and (optionally) the report."""
    from pipeline.io import TableFileError, write_json
    from pipeline.sources.uci import SOURCE, UCIFormatError, map_online_retail

    df = read_export(path)
    try:
        tables, report = map_online_retail(df)
    except UCIFormatError as exc:
        raise TableFileError(f"{path}: {exc}") from exc
    if report["rows"]["order_lines"] == 0:
        raise TableFileError(
            f"{path}: no order lines left after mapping {report['input_rows']} rows "
            f"(excluded by reason: {report['rows']['excluded']}); nothing to write"
        )
    report["input_file"] = str(path)
    meta = {
        "cutoff": report["cutoff"],
        "source": SOURCE,
        "column_naming": report["column_naming"],
        "input_file": path.name,
        "rows": report["tables"],
    }
    write_tables(tables, meta, out)
    if report_path is not None:
        write_json(report, report_path)
    return report


def ingest_from_params(
    params: dict[str, Any], out: Path, truth: Path, report_path: Path | None = None
) -> dict[str, Any]:
    """Produce the raw tables from params.yaml `data.source`: the generator, or the UCI reader.

    For real data the truth folder is emptied of generator files and holds only a README saying why.
    """
    from pipeline.config import project_root
    from pipeline.io import atomic_path, write_json

    data = params.get("data") or {}
    source = data.get("source", "generated")
    if source == "generated":
        from pipeline.generator import generate, options_from, write_generated

        g = dict(params.get("generate") or {})
        generated = generate(
            n_customers=int(g["n_customers"]),
            n_products=int(g["n_products"]),
            months=int(g["months"]),
            seed=int(params["seed"]),
            start=str(g.get("start", "2024-01-01")),
            **options_from(g),
        )
        write_generated(generated, out, truth)
        note = truth / "README.md"  # left by an earlier real-data ingest: no longer true
        if note.is_file() and note.read_text(encoding="utf-8").startswith("# No ground truth"):
            note.unlink()
        report = {"source": "generated", "tables": {k: len(v) for k, v in generated.tables.items()}}
        if report_path is not None:
            write_json(report, report_path)
        return report
    if source == "uci-online-retail":
        if not data.get("uci_path"):
            raise typer.BadParameter(
                "params.yaml: data.uci_path is required when data.source is uci-online-retail"
            )
        path = Path(data["uci_path"])
        path = path if path.is_absolute() else project_root() / path
        report = ingest_uci(path, out, report_path)
        truth.mkdir(parents=True, exist_ok=True)
        for stale in truth.glob("*.parquet"):
            stale.unlink()
        with atomic_path(truth / "README.md") as tmp:
            tmp.write_text(TRUTH_README.format(source=source), encoding="utf-8")
        return report
    raise typer.BadParameter(
        f"params.yaml: data.source is {source!r}; expected 'generated' or 'uci-online-retail'"
    )


def _print_report(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if report.get("source") != "uci-online-retail":
        console.print(
            f"[green]wrote[/green] {out}: " + ", ".join(f"{k} {v:,}" for k, v in report["tables"].items())
        )
        return
    rows = report["rows"]
    t = Table(title=f"ingest {report.get('input_file', '')} -> {out}")
    t.add_column("input rows by outcome")
    t.add_column("rows", justify="right")
    t.add_row("order lines", f"{rows['order_lines']:,}")
    t.add_row("cancellations matched to purchases", f"{rows['matched_cancellations']:,}")
    for reason, n in rows["excluded"].items():
        t.add_row(f"excluded: {reason}", f"{n:,}")
    t.add_row("[bold]input rows[/bold]", f"[bold]{report['input_rows']:,}[/bold]")
    console.print(t)
    c = report["cancellations"]
    console.print(
        f"cancellations: {c['rows_fully_matched']:,} fully, {c['rows_partially_matched']:,} partly, "
        f"{c['rows_unmatched']:,} not matched; units {c['units_matched']:,} matched / {c['units_unmatched']:,} "
        f"unmatched -> {c['return_rows']:,} return rows"
    )
    console.print("tables: " + ", ".join(f"{k} {v:,}" for k, v in report["tables"].items()))
    console.print(
        "products per category: " + ", ".join(f"{k} {v}" for k, v in report["products_per_category"].items())
    )
    ok = "[green]yes[/green]" if report["reconciles"] else "[red]NO[/red]"
    console.print(f"rows reconcile (input = mapped + excluded): {ok}; cutoff {report['cutoff']}")


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        path: Path | None = typer.Argument(
            None, help="The export file (.parquet or .csv; Online Retail or Online Retail II column names)."
        ),
        source: str = typer.Option("uci-online-retail", "--source", help="Which reader: uci-online-retail."),
        out: Path | None = typer.Option(
            None, "--out", help="Folder for the canonical tables (default: params.yaml paths.raw)."
        ),
        report: Path | None = typer.Option(None, "--report", help="Write the ingest report (JSON) here."),
        from_params: bool = typer.Option(
            False,
            "--from-params",
            help="Ignore PATH/--source; produce the tables from params.yaml data.source.",
        ),
        truth: Path | None = typer.Option(
            None,
            "--truth",
            help="With --from-params: the ground-truth folder (default: params.yaml paths.truth).",
        ),
    ) -> None:
        """Map a real export into the canonical tables (+ meta.json), counting every excluded row.

        Example: returnrisk ingest --source uci-online-retail online_retail.parquet --out /tmp/raw --report /tmp/ingest.json

        Cancellations become returns matched to earlier purchases of the same customer and product (oldest first, partial quantities, dated at the cancellation). Rules: docs/uci-online-retail.md.

        Pipeline mode: returnrisk ingest --from-params --out data/raw --truth data/truth
        """
        from rich.console import Console

        from pipeline.config import load_params, path_of
        from pipeline.io import TableFileError
        from pipeline.sources import SOURCES

        params = load_params()
        out_dir = out or path_of("raw", params)
        console = Console(stderr=True)
        try:
            with console.status("ingesting ..."):
                if from_params:
                    result = ingest_from_params(params, out_dir, truth or path_of("truth", params), report)
                else:
                    if source not in SOURCES:
                        raise typer.BadParameter(f"--source {source!r}: expected one of {list(SOURCES)}")
                    if path is None:
                        raise typer.BadParameter("PATH is required (or use --from-params)")
                    result = ingest_uci(path, out_dir, report)
        except TableFileError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        _print_report(result, out_dir)
