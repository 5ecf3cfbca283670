"""`returnrisk validate`: check the raw tables against the data contract; write clean tables and rejects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def read_table_folder(folder: Path) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Every contract table found in `folder` (as read, no coercion), table -> file, and ignored files.

    A table whose only file has another extension, or that has both a .parquet and a .csv file, is a
    table-level error: guessing which file was meant could validate the wrong data.
    """
    from pipeline.contract import FILE_SUFFIXES, META_FILE, TABLES
    from pipeline.io import TableFileError, read_raw_table, table_files

    if not folder.is_dir():
        raise TableFileError(f"{folder}: not a folder; expected one file per table (<table>.parquet or .csv)")
    tables: dict[str, Any] = {}
    sources: dict[str, str] = {}
    used: set[Path] = {folder / META_FILE}
    for name in TABLES:
        files = table_files(folder, name)
        used.update(files)
        usable = [f for f in files if f.suffix.lower() in FILE_SUFFIXES]
        if len(usable) > 1:
            raise TableFileError(
                f"{usable[0]}: table {name!r} has {len(usable)} files ({', '.join(f.name for f in usable)}); "
                "rule: exactly one file per table"
            )
        if not usable:
            if files:
                raise TableFileError(
                    f"{files[0]}: not a Parquet or CSV file; rule: table {name!r} is read from "
                    f"{name}.parquet or {name}.csv"
                )
            continue
        tables[name] = read_raw_table(usable[0])
        sources[name] = str(usable[0])
    ignored = sorted(p.name for p in folder.iterdir() if p.is_file() and p not in used)
    return tables, sources, ignored


def _print_report(console: Any, report: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"validation: {out}")
    for h in ("table", "rows in", "rows out", "rejected", "of which cascaded"):
        t.add_column(h, justify="right" if h != "table" else "left")
    for name, r in report["tables"].items():
        t.add_row(name, f"{r['rows_in']:,}", f"{r['rows_out']:,}", f"{r['rejected']:,}", f"{r['cascaded']:,}")
    console.print(t)
    for name, r in report["tables"].items():
        for rule, n in r["rejected_by_rule"].items():
            console.print(f"  [yellow]rejected[/yellow] {n:,} {name} rows: {rule}")
    missing = report["missing_optional_tables"] + report["missing_optional_columns"]
    if missing or report["empty_optional_columns"]:
        console.print(
            "[bold]optional data absent:[/bold] "
            + ", ".join(missing + [f"{c} (empty)" for c in report["empty_optional_columns"]])
        )
    for family, why in report["disabled_features"].items():
        console.print(f"  feature family [bold]{family}[/bold] disabled (needs {', '.join(why)})")
    for family, fallback in report["fallback_features"].items():
        console.print(f"  feature family [bold]{family}[/bold] uses {fallback}")
    for fk in report["unchecked_foreign_keys"]:
        console.print(f"  foreign key not checked: {fk}")
    if report.get("ignored_files"):
        console.print(f"  files not in the contract, ignored: {', '.join(report['ignored_files'])}")


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        raw_dir: Path = typer.Argument(
            None, help="Folder of raw tables + meta.json [default: params paths.raw]."
        ),
        out: Path = typer.Option(
            None, "--out", help="Folder for validated tables [default: paths.validated]."
        ),
        report_path: Path = typer.Option(
            None,
            "--report",
            help="Validation report JSON, a DVC metric [default: paths.metrics/validation.json].",
        ),
        strict: bool = typer.Option(
            False, "--strict", help="Exit 1 if any row is rejected (outputs still written)."
        ),
        params_file: Path = typer.Option(None, "--params", help="params.yaml to read `validate:` from."),
    ) -> None:
        """Validate the canonical tables against the data contract (docs/data-contract.md).

        Table-level problems (unreadable file, missing required table or column, a column of the wrong
        kind) stop with one message naming file, column and rule (exit 2). Bad rows are quarantined to
        OUT/rejects/<table>.parquet (+ .csv for spreadsheets) with the rule that failed; the rest is
        written to OUT/<table>.parquet with meta.json, and every reject is counted in the report.
        """
        from rich.console import Console

        from pipeline.config import load_params, path_of
        from pipeline.io import TableFileError, atomic_dir, read_meta, write_csv, write_json, write_parquet
        from pipeline.validation import ContractError, validate_tables

        console = Console(stderr=True)
        params = load_params(params_file)
        raw_dir = raw_dir or path_of("raw", params)
        out = out or path_of("validated", params)
        report_path = report_path or path_of("metrics", params) / "validation.json"
        try:
            meta = read_meta(raw_dir)
            with console.status(f"reading {raw_dir}"):
                tables, sources, ignored = read_table_folder(Path(raw_dir))
            with console.status("validating"):
                result = validate_tables(tables, meta, params.get("validate", {}), sources=sources)
        except (ContractError, TableFileError) as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from exc
        result.report["ignored_files"] = ignored
        with atomic_dir(out) as tmp:
            for name, df in result.clean.items():
                write_parquet(df, tmp / f"{name}.parquet")
            for name, rej in result.rejects.items():
                write_parquet(_parquet_safe(rej), tmp / "rejects" / f"{name}.parquet")
                write_csv(rej, tmp / "rejects" / f"{name}.csv")
            validated_meta = {
                **meta,
                "validation": {
                    "id_type": result.report["id_type"],
                    "missing_optional": result.report["missing_optional_tables"]
                    + result.report["missing_optional_columns"],
                    "empty_optional_columns": result.report["empty_optional_columns"],
                    "disabled_features": sorted(result.report["disabled_features"]),
                },
            }
            write_json(validated_meta, tmp / "meta.json")
        write_json(result.report, report_path)
        _print_report(console, result.report, Path(out))
        if strict and result.n_rejected:
            console.print(f"[red]--strict:[/red] {result.n_rejected:,} rows rejected (see {out}/rejects)")
            raise typer.Exit(1)


def _parquet_safe(df: Any) -> Any:
    """Rejects keep the values as read; an object column of mixed Python types is written as text."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype("str")
    return out
