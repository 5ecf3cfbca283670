"""`returnrisk review`: the reviewer web app (queue, customer evidence, decisions); `review init` makes its DB."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

HELP = (
    "Start the reviewer web app: a queue of flagged customers, their evidence and order timeline, and "
    "decisions (confirm abuse / legitimate / needs more information) stored in the decisions database."
    "\n\nBound to 127.0.0.1 unless --host says otherwise. Every page needs the access token: set "
    "RETURNRISK_REVIEW_TOKEN, or a random one is generated and printed with the address to open."
    "\n\nThe decisions database must exist: create it once with `returnrisk review init` (or pass --init)."
)


def register(app: typer.Typer) -> None:
    review_app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)

    @review_app.callback(invoke_without_command=True)
    def serve(
        ctx: typer.Context,
        host: str = typer.Option(
            "127.0.0.1", help="Interface to bind; keep the loopback default unless you must."
        ),
        port: int = typer.Option(8765, help="TCP port."),
        flags: Path = typer.Option(
            None, help="Folder with flagged_customers.parquet (default: paths.flags)."
        ),
        validated: Path = typer.Option(None, help="Validated tables folder (default: paths.validated)."),
        explain: Path = typer.Option(None, help="Folder with line_reasons.parquet (default: paths.explain)."),
        db: Path = typer.Option(None, help="Decisions database (default: paths.decisions/decisions.db)."),
        init: bool = typer.Option(
            False, "--init", help="Create the decisions database first if it is missing."
        ),
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        import uvicorn

        from pipeline.config import path_of
        from pipeline.review.app import TOKEN_ENV, create_app, new_token
        from pipeline.review.data import ReviewDataError
        from pipeline.review.store import StoreError, default_db_path, init_db

        console = Console()
        db = db or default_db_path()
        try:
            if init and not db.exists():
                init_db(db)
                console.print(f"created decisions database {db}")
            env_token = os.environ.get(TOKEN_ENV, "")
            token = env_token or new_token()
            with console.status("loading the flagged customers and their order history ..."):
                web = create_app(
                    flags_dir=flags or path_of("flags"),
                    validated_dir=validated or path_of("validated"),
                    explain_dir=explain or path_of("explain"),
                    db_path=db,
                    token=token,
                )
        except (StoreError, ReviewDataError, ValueError) as exc:
            console.print(
                f"[red]cannot start the review app:[/red] {escape(str(exc))}", markup=True, highlight=False
            )
            raise typer.Exit(2) from exc
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            console.print(f"[yellow]warning: serving on {host}, reachable from other machines[/yellow]")
        shown = f"[{host}]" if ":" in host else host
        if env_token:
            console.print(f"Open http://{shown}:{port}/?token=<the token in ${TOKEN_ENV}>", markup=False)
        else:
            console.print(
                f"Open http://{shown}:{port}/?token={token}", soft_wrap=True, highlight=False, markup=False
            )
        console.print(f"decisions: {db}   (Ctrl+C stops)")
        uvicorn.run(web, host=host, port=port, log_level="warning")

    @review_app.command("init")
    def init_cmd(
        db: Path = typer.Option(
            None, help="Decisions database to create (default: paths.decisions/decisions.db)."
        ),
    ) -> None:
        """Create the decisions database (no-op when a valid one exists; refuses a corrupt file)."""
        from pipeline.review.store import StoreError, default_db_path, init_db

        db = db or default_db_path()
        existed = db.exists()
        try:
            init_db(db)
        except StoreError as exc:
            Console().print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
        Console().print(f"{'decisions database already present and valid' if existed else 'created'}: {db}")

    app.add_typer(review_app, name="review")
