"""`returnrisk featurize`: the featurize stage (validated tables -> one feature row per order line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

FEATURES_FILE = "features.parquet"


def table_inputs(folder: Path) -> dict[str, Any]:
    """Each contract table in `folder`: Parquet files by path (DuckDB scans them), CSV read into pandas."""
    from pipeline.contract import TABLES
    from pipeline.io import find_table_file, read_any

    out: dict[str, Any] = {}
    for name in TABLES:
        f = find_table_file(folder, name)
        if f is not None:
            out[name] = f if f.suffix.lower() == ".parquet" else read_any(f)
    return out


def size_priors_report(tables: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The data's ordered-size moments (and cross-type correlation) next to featurize.size_moments, so a
    shop running on the generated data's priors sees it (features.size.compare_moments)."""
    import duckdb
    import pyarrow.parquet as pq

    from features import size
    from features.engine import FeaturizeParams
    from features.sql import quote

    p = FeaturizeParams.from_params(params)
    needed = {
        "orders": ("order_id", "customer_id"),
        "order_lines": ("order_id", "product_id", "size"),
        "products": ("product_id", "size_type"),
    }
    for name, cols in needed.items():
        data = tables.get(name)
        have = (
            [] if data is None else data.columns if not isinstance(data, Path) else pq.read_schema(data).names
        )
        if any(c not in have for c in cols):
            return size.compare_moments([], p)  # no sizes in this data: nothing to compare
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET threads = {int(p.threads)}")
        for name in needed:
            data = tables[name]
            if isinstance(data, Path):
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({quote(str(data))})")
            else:
                con.register(name, data)
        rows = con.execute(size.measured_moments_sql("order_lines", "products", "orders")).fetchall()
    finally:
        con.close()
    return size.compare_moments(rows, p)


def run_featurize(
    validated: Path, out: Path, report_path: Path | None, params: dict[str, Any]
) -> dict[str, Any]:
    """Featurize `validated` into out/features.parquet (atomically); write and return the report."""
    import tempfile
    import time

    from features.build import featurize_to_parquet
    from pipeline.io import atomic_path, read_meta, write_json

    meta = read_meta(validated)
    if "cutoff" not in meta:
        raise ValueError(f"{validated / 'meta.json'}: no 'cutoff' (the data's end, needed for labels)")
    tables = table_inputs(validated)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featurize-spill-") as spill:
        section = dict(params.get("featurize") or {})
        section.setdefault("temp_directory", spill)
        run_params = {"featurize": section, "labels": params.get("labels") or {}}
        with atomic_path(out / FEATURES_FILE) as tmp:
            report = featurize_to_parquet(tables, meta["cutoff"], tmp, run_params)
    report["params"].pop("temp_directory", None)
    t0 = time.perf_counter()
    report["size_priors"] = size_priors_report(tables, params)
    report["timings_s"]["size_priors_s"] = round(time.perf_counter() - t0, 3)
    report["wall_s"] = round(time.perf_counter() - started, 3)
    report["cutoff"] = meta["cutoff"]
    report["source"] = meta.get("source")
    report["output"] = str(out / FEATURES_FILE)
    if report_path is not None:
        write_json(report, report_path)
    return report


def register(app: typer.Typer) -> None:
    @app.command("featurize")
    def featurize(
        validated: Path = typer.Argument(
            None, help="Folder of validated tables + meta.json (default: paths.validated)."
        ),
        out: Path = typer.Option(
            None, "--out", help="Output folder for features.parquet (default: paths.features)."
        ),
        report: Path = typer.Option(
            None, "--report", help="Where to write the JSON report (default: paths.metrics/featurize.json)."
        ),
    ) -> None:
        """Compute point-in-time features: one row per order line, every feature as of its order's time.

        Families: size vs kept history, category, price, shipping, past returns, review sentiment,
        basket/bracketing (docs/features.md). Optional inputs that are missing (reviews, sizes,
        coordinates...) disable exactly the features that need them; the report lists them.
        """
        from rich.console import Console
        from rich.table import Table

        from pipeline.config import load_params, path_of

        console = Console()
        params = load_params()
        validated = validated or path_of("validated", params)
        out = out or path_of("features", params)
        report = report or path_of("metrics", params) / "featurize.json"
        with console.status(
            f"featurizing {validated} (DuckDB, {params.get('featurize', {}).get('threads', 2)} threads)"
        ):
            rep = run_featurize(Path(validated), Path(out), Path(report), params)
        t = Table(title=f"featurize: {rep['rows']:,} order lines -> {rep['output']}")
        t.add_column("step")
        t.add_column("seconds", justify="right")
        for k, v in rep["timings_s"].items():
            t.add_row(k, f"{v:.2f}")
        t.add_row("total", f"{rep['wall_s']:.2f}")
        console.print(t)
        console.print(f"{rep['n_features']} features; returned rate {rep.get('returned_rate')}")
        for name, miss in rep["skipped_features"].items():
            console.print(f"  [yellow]skipped[/yellow] {name}: missing {', '.join(miss)}")
        for warning in rep["size_priors"]["warnings"]:
            console.print(f"  [yellow]warning[/yellow] {warning}")
        console.print(f"report: {report}")
