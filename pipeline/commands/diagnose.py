"""`returnrisk diagnose`: the diagnose stage (features + validated tables -> abnormal products, plot, metrics).

Reads the feature table (labels, features) and the validated order lines (size, colour) and products
(category, description), computes each line's product-agnostic expected return probability, tests every
product / product x size / product x colour cell against it (models/diagnostics.py), and writes the
cells, the flagged ones for people, a plot and DVC metrics (with recall and false discovery share
against the generator's hidden product truth when it exists).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see models/train.py: before LightGBM loads

FEATURES_FILE = "features.parquet"
TRUTH_FILE = "products_truth.parquet"
CELLS_FILE = "cells.parquet"
FLAGGED_FILE = "flagged_cells.csv"
PRODUCTS_FILE = "flagged_products.csv"
EXPECTED_FILE = "expected.parquet"
PLOT_FILE = "cells.png"
PLOT_DATA_FILE = "top_flagged.csv"


def diagnostic_lines(frame, order_lines, window_days: int | None):
    """The diagnosed lines: mature labels (in the last `window_days` mature days when set), with size
    and colour from the validated order lines. Returns (frame rows kept as a boolean mask, lines)."""
    import numpy as np
    import pandas as pd

    mature = frame["label_mature"].fillna(False).astype(bool).to_numpy()
    if not mature.any():
        raise ValueError("feature table: no line has a mature label; nothing to diagnose")
    usable = mature.copy()
    if window_days is not None:
        ts = pd.to_datetime(frame["order_ts"])
        end = ts[mature].max().normalize() + pd.Timedelta(days=1)
        usable &= (ts >= end - pd.Timedelta(days=int(window_days))).to_numpy()
    lines = frame.loc[usable, ["line_id", "product_id", "order_ts", "returned"]].copy()
    extra = [c for c in ("size", "color") if c in order_lines.columns]
    if extra:
        ol = order_lines[["line_id", *extra]].drop_duplicates("line_id")
        lines = lines.merge(ol, on="line_id", how="left", validate="one_to_one")
    for c in ("size", "color"):
        if c not in lines.columns:
            lines[c] = pd.Series(pd.NA, index=lines.index, dtype="string")
    return np.asarray(usable), lines.reset_index(drop=True)


def run_diagnose(
    features: Path,
    validated: Path,
    truth: Path | None,
    out: Path,
    plots: Path,
    metrics_file: Path,
    params: dict[str, Any],
    *,
    progress=None,
) -> dict[str, float]:
    """Run the stage; returns the metrics written."""
    import pandas as pd

    from models import diagnostics as D
    from models.train import specs_from_registry
    from pipeline.io import TableFileError, find_table_file, read_any, write_csv, write_json, write_parquet

    say = progress or (lambda _m: None)
    p = D.DiagnoseParams.from_params(params)
    seed = int(params.get("seed", 0))
    ffile = Path(features) / FEATURES_FILE if Path(features).is_dir() else Path(features)
    if not ffile.is_file():
        raise FileNotFoundError(f"{ffile}: feature table not found (run the featurize stage first)")
    say(f"reading {ffile}")
    frame = pd.read_parquet(ffile)
    missing = [c for c in ("line_id", "product_id", "order_ts", "returned", "label_mature") if c not in frame]
    if missing:
        raise ValueError(f"{ffile}: missing column(s) {missing} (rule: feature table, docs/architecture.md)")
    olf = find_table_file(validated, "order_lines")
    if olf is None:
        raise TableFileError(f"{validated}: no order_lines.parquet or order_lines.csv (run validate first)")
    order_lines = read_any(olf)
    order_lines = order_lines[[c for c in ("line_id", "size", "color") if c in order_lines.columns]]

    usable, lines = diagnostic_lines(frame, order_lines, p.window_days)
    specs = D.expectation_specs([s for s in specs_from_registry(frame) if s.name in frame.columns])
    p_exp = D.cross_fitted_expectation(frame, usable, specs, p, seed, progress=say)
    lines["p_expected"] = p_exp[usable]

    say("testing cells")
    cells = D.diagnose_cells(lines, p)
    products = D.flagged_products(cells)
    pf = find_table_file(validated, "products")
    if pf is not None:
        info = read_any(pf)
        info = info[[c for c in ("product_id", "category", "description") if c in info.columns]]
        products = products.merge(info, on="product_id", how="left")
        if "category" in info.columns:
            cells = cells.merge(info[["product_id", "category"]], on="product_id", how="left")

    metrics = D.summary_metrics(cells, lines)
    metrics["n_expectation_features"] = float(len(specs))
    tfile = Path(truth) / TRUTH_FILE if truth is not None and Path(truth).is_dir() else truth
    if tfile is not None and Path(tfile).is_file():
        pt = pd.read_parquet(tfile, columns=["product_id", "size_bias", "quality"])
        metrics.update(D.evaluate_against_truth(cells, pt, p.quality_threshold, p.min_lines))

    out = Path(out)
    write_parquet(cells, out / CELLS_FILE)
    flagged = cells[cells["flagged"]].copy()
    flagged.insert(1, "cell", D.cell_label(flagged).to_numpy())
    write_csv(flagged, out / FLAGGED_FILE)
    write_csv(products, out / PRODUCTS_FILE)
    write_parquet(lines[["line_id", "product_id", "returned", "p_expected"]], out / EXPECTED_FILE)
    top = flagged.sort_values("excess", ascending=False).head(30)
    write_csv(
        pd.DataFrame({"cell": top["cell"], "excess_returns": top["excess"].round(2)}),
        Path(plots) / PLOT_DATA_FILE,
        escape=False,
    )
    plot_cells(cells, p, Path(plots) / PLOT_FILE)
    write_json(metrics, metrics_file)
    return metrics


def plot_cells(cells, p, path: Path) -> Path:
    """A volcano plot per level: observed/expected ratio against -log10 p, flagged cells in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.io import atomic_path

    levels = [lv for lv in p.levels if (cells["level"] == lv).any()]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4.2), dpi=100, squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        c = cells[(cells["level"] == level) & cells["tested"]]
        x = np.log2(np.clip(c["ratio"].to_numpy(dtype=float), 1 / 16, 16))
        y = -np.log10(np.clip(c["pvalue"].to_numpy(dtype=float), 1e-30, 1))
        f = c["flagged"].to_numpy(dtype=bool)
        ax.scatter(x[~f], y[~f], s=6, c="grey", alpha=0.5, label="not flagged")
        ax.scatter(x[f], y[f], s=10, c="crimson", label=f"flagged ({int(f.sum())})")
        ax.axvline(0, c="k", lw=0.6)
        ax.set_xlabel("log2(observed / expected returns)")
        ax.set_ylabel("-log10 p")
        ax.set_title(f"{level.replace('_', ' x ')}: {len(c)} tested cells")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Abnormal return rates (Benjamini-Hochberg FDR {p.alpha})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def register(app: typer.Typer) -> None:
    @app.command("diagnose")
    def diagnose(
        features: Path = typer.Option(None, help="Feature table folder (or file); default paths.features."),
        validated: Path = typer.Option(
            None, help="Validated tables (sizes, colours); default paths.validated."
        ),
        truth: Path = typer.Option(
            None, help="Generator truth folder (recall / false discovery metrics); default paths.truth."
        ),
        out: Path = typer.Option(None, help="Output folder; default paths.diagnose."),
        plots: Path = typer.Option(None, help="Plot folder; default <paths.plots>/diagnose."),
        metrics: Path = typer.Option(None, help="Metrics JSON; default <paths.metrics>/diagnose.json."),
    ) -> None:
        """List products, product x size and product x colour cells that are returned abnormally often
        against what a product-agnostic model expects for exactly those lines (customers, prices,
        baskets, delivery), with a Poisson-binomial test per cell and Benjamini-Hochberg correction.

        Writes cells.parquet (every cell), flagged_cells.csv and flagged_products.csv (for people),
        expected.parquet (each line's expected probability), a volcano plot, and metrics; on generated
        data also the recall of products with a hidden size bias or low quality and the false discovery
        share. Knobs: params.yaml `diagnose:`; method: models/diagnostics.py."""
        from rich.console import Console
        from rich.table import Table

        from pipeline.config import load_params, path_of

        console = Console(stderr=True)
        params = load_params()
        features = features or path_of("features", params)
        validated = validated or path_of("validated", params)
        truth = truth or path_of("truth", params)
        out = out or path_of("diagnose", params)
        plots = plots or path_of("plots", params) / "diagnose"
        metrics = metrics or path_of("metrics", params) / "diagnose.json"
        with console.status("diagnosing") as status:
            m = run_diagnose(
                features,
                validated,
                truth,
                out,
                plots,
                metrics,
                params,
                progress=lambda msg: status.update(f"[bold]{msg}"),
            )
        table = Table(title="abnormal return rates")
        for c in ("level", "cells", "tested", "flagged"):
            table.add_column(c, justify="right" if c != "level" else "left")
        for level in ("product", "product_size", "product_color"):
            if f"{level}.n_cells" in m:
                table.add_row(
                    level, *(f"{int(m[f'{level}.{k}']):,}" for k in ("n_cells", "n_tested", "n_flagged"))
                )
        console.print(table)
        console.print(
            f"observed / expected returns overall: {m['observed_over_expected']:.3f} "
            f"({int(m['observed_returns']):,} / {m['expected_returns']:,.0f})"
        )
        if "recall" in m:
            console.print(
                f"against the hidden truth: recall {m['recall']:.3f} (testable {m['recall_testable']:.3f}), "
                f"false discovery share {m['false_discovery_share']:.3f} "
                f"({int(m['n_flagged_products'])} products flagged, {int(m['n_abnormal'])} abnormal)"
            )
        console.print(f"written to {out}")
