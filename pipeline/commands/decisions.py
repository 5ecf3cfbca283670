"""`returnrisk decisions`: export or list reviewer decisions from the decisions database."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def register(app: typer.Typer) -> None:
    dec_app = typer.Typer(help="Reviewer decisions (see `returnrisk review`).", no_args_is_help=True)

    @dec_app.command("export")
    def export(
        out: Path = typer.Option(..., "--out", help="CSV file to write (atomically)."),
        db: Path = typer.Option(None, help="Decisions database (default: paths.decisions/decisions.db)."),
        latest: bool = typer.Option(False, "--latest", help="Only each customer's current decision."),
    ) -> None:
        """Write decisions as CSV for spreadsheets; text starting with = + - @ is neutralised with a quote."""
        from pipeline.io import write_csv
        from pipeline.review.store import DecisionStore, StoreError, default_db_path

        db = db or default_db_path()
        try:
            frame = DecisionStore.open(db).frame(latest_only=latest)
        except StoreError as exc:
            Console().print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
        write_csv(frame, out)
        Console().print(f"wrote {len(frame)} decision(s) to {out}")

    @dec_app.command("show")
    def show(
        db: Path = typer.Option(None, help="Decisions database (default: paths.decisions/decisions.db)."),
        limit: int = typer.Option(20, help="How many of the newest decisions to list."),
    ) -> None:
        """List the newest decisions."""
        from pipeline.review.store import DecisionStore, StoreError, default_db_path

        db = db or default_db_path()
        try:
            frame = DecisionStore.open(db).frame()
        except StoreError as exc:
            Console().print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
        table = Table(title=f"{len(frame)} decision(s) in {db}")
        for col in frame.columns:
            table.add_column(col)
        for rec in frame.tail(limit).iloc[::-1].itertuples(index=False):
            table.add_row(*(str(v) for v in rec))
        Console().print(table)

    app.add_typer(dec_app, name="decisions")
