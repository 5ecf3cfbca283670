"""`returnrisk generate`: write the synthetic order history (tables + meta.json) and its ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        out: Path = typer.Option(
            ..., "--out", help="Folder for the canonical tables (<table>.parquet + meta.json)."
        ),
        truth: Path = typer.Option(
            ..., "--truth", help="Folder for the ground truth (never read as features)."
        ),
        params: Path = typer.Option(
            Path("params.yaml"), "--params", help="params.yaml with `seed` and `generate:`."
        ),
        n_customers: int | None = typer.Option(
            None, "--n-customers", min=1, help="Override generate.n_customers."
        ),
        n_products: int | None = typer.Option(
            None, "--n-products", min=11, help="Override generate.n_products."
        ),
        months: int | None = typer.Option(None, "--months", min=1, max=120, help="Override generate.months."),
        start: str | None = typer.Option(None, "--start", help="Override generate.start (ISO date)."),
        seed: int | None = typer.Option(None, "--seed", help="Override the shared seed."),
        orders_per_customer: float | None = typer.Option(
            None, "--orders-per-customer", min=0.0, help="Override generate.orders_per_customer."
        ),
    ) -> None:
        """Generate a seeded synthetic order history with hidden return causes and write it atomically.

        Reads `seed` and the `generate:` section of params.yaml; options given here override them.
        Prints rows per table and the return rate.
        """
        import time

        from rich.console import Console
        from rich.table import Table

        from pipeline.config import load_params
        from pipeline.generator import generate, options_from, return_rate, write_generated

        console = Console()
        cfg = load_params(params)
        g = dict(cfg.get("generate") or {})
        overrides = {
            "n_customers": n_customers,
            "n_products": n_products,
            "months": months,
            "start": start,
            "orders_per_customer": orders_per_customer,
        }
        g.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("n_customers", "n_products", "months") if k not in g]
        if missing:
            raise typer.BadParameter(
                f"{params}: generate.{missing[0]} is not set (and no --{missing[0].replace('_', '-')} given)"
            )
        run_seed = int(seed if seed is not None else cfg.get("seed", 0))
        t = time.perf_counter()
        with console.status("generating order history..."):
            data = generate(
                n_customers=int(g["n_customers"]),
                n_products=int(g["n_products"]),
                months=int(g["months"]),
                seed=run_seed,
                start=str(g.get("start", "2024-01-01")),
                **options_from(g),
            )
        gen_s = time.perf_counter() - t
        with console.status(f"writing Parquet to {out} and {truth}..."):
            write_generated(data, out, truth)
        table = Table(title=f"generated (seed {run_seed}, cutoff {data.meta['cutoff']})")
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, df in data.tables.items():
            table.add_row(name, f"{len(df):,}")
        console.print(table)
        console.print(
            f"return rate {return_rate(data):.1%} of order lines; generated in {gen_s:.1f}s, "
            f"total {time.perf_counter() - t:.1f}s -> {out}, truth -> {truth}"
        )
