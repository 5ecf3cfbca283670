"""`returnrisk diagnose`: the diagnose stage (features + validated tables -> abnormal products, plot, metrics).

Reads the feature table (labels, features) and the validated order lines (size, colour), products
(category, description), returns (reason codes) and reviews (fit mentions, ratings), computes each line's
product-agnostic expected return probability, tests every product / product x size / product x colour cell
against it and, per product, its returns by reason (models/diagnostics.py), and writes the cells, the
flagged ones for people with a finding and an action, a short report, a plot and DVC metrics (with recall
and false discovery share against the generator's hidden product truth when it exists).
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
REPORT_FILE = "report.md"


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


def return_reasons(validated: Path, lines):
    """Each diagnosed line's return reason (its first return event's; NA when kept, when the returns table
    has no reason column, or when the reason is missing)."""
    import pandas as pd

    from pipeline.io import find_table_file, read_any

    none = pd.Series(pd.NA, index=lines.index, dtype="string")
    rf = find_table_file(validated, "returns")
    if rf is None:
        return none
    returns = read_any(rf)
    if "reason" not in returns.columns or "line_id" not in returns.columns:
        return none
    if "return_ts" in returns.columns:
        returns = returns.sort_values("return_ts", kind="stable")
    first = returns.drop_duplicates("line_id").set_index("line_id")["reason"].astype("string")
    reason = pd.Series(first.reindex(lines["line_id"]).to_numpy(), index=lines.index, dtype="string")
    return reason.where(lines["returned"].to_numpy() > 0)


def diagnosed_reviews(validated: Path, lines, info, p):
    """The reviews of the diagnosed products posted from the diagnosed window's first order on, marked by
    models.diagnostics.review_marks (None when there is no reviews table)."""
    import pandas as pd

    from models.diagnostics import review_marks
    from pipeline.io import find_table_file, read_any

    rf = find_table_file(validated, "reviews")
    if rf is None:
        return None
    rv = read_any(rf)
    if "product_id" not in rv.columns:
        return None
    if "review_ts" in rv.columns:
        rv = rv[pd.to_datetime(rv["review_ts"]) >= pd.to_datetime(lines["order_ts"]).min()]
    rv = rv[rv["product_id"].isin(lines["product_id"].unique())]
    if info is not None and "category" in info.columns:
        rv = rv.merge(info[["product_id", "category"]], on="product_id", how="left")
    return review_marks(rv.reset_index(drop=True), p.negative_rating)


def report(cells, metrics: dict, p) -> str:
    """A short Markdown summary: what was tested, what was found (by finding), recall when known."""
    lines = ["# Product diagnostics", ""]
    lines.append(
        f"{int(metrics['n_lines']):,} diagnosed lines; observed / expected returns overall "
        f"{metrics['observed_over_expected']:.3f}. Benjamini-Hochberg at {p.alpha} within each level."
    )
    lines.append("")
    for level in ("product", "product_size", "product_color"):
        if f"{level}.n_cells" in metrics:
            lines.append(
                f"- {level.replace('_', ' x ')}: {int(metrics[f'{level}.n_cells']):,} cells, "
                f"{int(metrics[f'{level}.n_tested']):,} tested, {int(metrics[f'{level}.n_flagged']):,} flagged"
            )
    lines.append("")
    if metrics.get("reason_tests_run"):
        tests = ", ".join(f"{k} ({'/'.join(v)})" for k, v in p.reason_tests.items())
        rev = "with review evidence" if metrics.get("reviews_used") else "without reviews (none in the data)"
        lines.append(f"Reason tests per product: {tests}, {rev}.")
    else:
        lines.append(
            "Reason tests skipped: the returns carry no reason codes, so only the return-rate tests ran "
            "(findings are typed 'excess returns')."
        )
    lines += ["", "| finding | products | action |", "|---|---:|---|"]
    from models.diagnostics import FINDINGS

    for t, (words, action) in FINDINGS.items():
        lines.append(f"| {words} | {int(metrics.get(f'findings.{t}', 0)):,} | {action} |")
    if "recall" in metrics:
        lines += [
            "",
            f"Against the generator's hidden truth: recall {metrics['recall']:.3f} "
            f"(testable {metrics['recall_testable']:.3f}), false discovery share "
            f"{metrics['false_discovery_share']:.3f} ({int(metrics['n_flagged_products'])} products flagged, "
            f"{int(metrics['n_abnormal'])} abnormal).",
            "",
            "| finding | typed recall | typed recall (testable) | flagged | without that defect |",
            "|---|---:|---:|---:|---:|",
        ]
        for t, (words, _a) in FINDINGS.items():
            lines.append(
                f"| {words} | {metrics[f'{t}.recall']:.3f} | {metrics[f'{t}.recall_testable']:.3f} | "
                f"{int(metrics[f'{t}.n_flagged'])} | {metrics[f'{t}.false_share']:.3f} |"
            )
    return "\n".join(lines) + "\n"


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
    from pipeline.io import (
        TableFileError,
        atomic_path,
        find_table_file,
        read_any,
        write_csv,
        write_json,
        write_parquet,
    )

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

    info = None
    pf = find_table_file(validated, "products")
    if pf is not None:
        info = read_any(pf)
        info = info[[c for c in ("product_id", "category", "description") if c in info.columns]]
        if "category" in info.columns:
            lines = lines.merge(info[["product_id", "category"]], on="product_id", how="left")
    lines["reason"] = return_reasons(validated, lines)
    reviews = None
    if D.has_reasons(lines) and p.use_reviews:
        reviews = diagnosed_reviews(validated, lines, info, p)

    say("testing cells")
    cells = D.diagnose_cells(lines, p, reviews)
    products = D.flagged_products(cells)
    if info is not None:
        products = products.merge(info, on="product_id", how="left")
        if "category" in info.columns:
            cells = cells.merge(info[["product_id", "category"]], on="product_id", how="left")

    metrics = D.summary_metrics(cells, lines)
    metrics["n_expectation_features"] = float(len(specs))
    metrics["n_reviews"] = float(len(reviews)) if reviews is not None else 0.0
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
    write_parquet(lines[["line_id", "product_id", "returned", "p_expected", "reason"]], out / EXPECTED_FILE)
    with atomic_path(out / REPORT_FILE) as tmp:
        tmp.write_text(report(cells, metrics, p), encoding="utf-8")
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
    """A volcano plot per level: observed/expected ratio against -log10 p; flagged tests coloured by their
    finding (the product panel also holds the reason tests: runs small / runs large / quality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from models.diagnostics import FINDINGS, RATE_TEST
    from pipeline.io import atomic_path

    colours = {
        "runs_small": "tab:blue",
        "runs_large": "tab:orange",
        "quality": "tab:purple",
        RATE_TEST: "crimson",
    }
    tests = cells["test"].astype(str) if "test" in cells.columns else None
    levels = [lv for lv in p.levels if (cells["level"] == lv).any()]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4.2), dpi=100, squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        sel = (cells["level"] == level) & cells["tested"]
        c = cells[sel]
        t = tests[sel] if tests is not None else None
        x = np.log2(np.clip(c["ratio"].to_numpy(dtype=float), 1 / 16, 16))
        y = -np.log10(np.clip(c["pvalue"].to_numpy(dtype=float), 1e-30, 1))
        f = c["flagged"].to_numpy(dtype=bool)
        ax.scatter(x[~f], y[~f], s=6, c="grey", alpha=0.5, label="not flagged")
        for name, colour in colours.items():
            m = f & ((t == name).to_numpy() if t is not None else name == RATE_TEST)
            if m.any():
                ax.scatter(x[m], y[m], s=10, c=colour, label=f"{FINDINGS[name][0]} ({int(m.sum())})")
        ax.axvline(0, c="k", lw=0.6)
        ax.set_xlabel("log2(observed / expected)")
        ax.set_ylabel("-log10 p")
        ax.set_title(f"{level.replace('_', ' x ')}: {len(c)} tests", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Abnormal returns: rate and reason tests (Benjamini-Hochberg FDR {p.alpha})", fontsize=10)
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

        When the returns carry reason codes, each product also gets reason tests (too-small, too-large,
        quality returns, plus fit mentions and negative ratings in its reviews, against its category's
        share among other products), and every flagged product is typed: runs small, runs large,
        quality or description, excess returns, with a recommended action. Without reason codes (UCI)
        only the rate tests run and the report says so.

        Writes cells.parquet (every test), flagged_cells.csv and flagged_products.csv (for people),
        report.md, expected.parquet (each line's expected probability), a volcano plot, and metrics; on
        generated data also the recall (overall and by finding) of products with a hidden size bias or low
        quality and the false discovery share. Knobs: params.yaml `diagnose:`; method:
        models/diagnostics.py."""
        from rich.console import Console
        from rich.table import Table

        from models.diagnostics import FINDINGS
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
        if m["reason_tests_run"]:
            console.print(
                "findings (products): "
                + ", ".join(f"{words} {int(m[f'findings.{t}'])}" for t, (words, _a) in FINDINGS.items())
            )
        else:
            console.print("reason tests skipped: the returns carry no reason codes (rate tests only)")
        if "recall" in m:
            console.print(
                f"against the hidden truth: recall {m['recall']:.3f} (testable {m['recall_testable']:.3f}), "
                f"false discovery share {m['false_discovery_share']:.3f} "
                f"({int(m['n_flagged_products'])} products flagged, {int(m['n_abnormal'])} abnormal); "
                "typed recall: "
                + ", ".join(f"{words} {m[f'{t}.recall']:.3f}" for t, (words, _a) in FINDINGS.items())
            )
        console.print(f"written to {out}")
