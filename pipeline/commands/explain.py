"""`returnrisk explain`: global SHAP explanations of the served model and reason codes for recent lines.

Thin I/O edge: reads the feature table and the model folder, calls models.explain, writes
`line_reasons.parquet`, importance tables, plots (PNG + DVC plot data) and `explain.json` metrics,
and logs the plots to MLflow (into the training run when `run.json` names it).
"""

from __future__ import annotations

from pathlib import Path

import typer

PREDICTIONS_FILES = ("predictions.parquet", "predictions_val_test.parquet")
LINE_REASONS = "line_reasons.parquet"


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain(
        features: Path = typer.Option(
            None, help="Folder holding features.parquet (default: params paths.features)."
        ),
        model: Path = typer.Option(
            None, help="Model folder (booster.txt + model.json; default: paths.model)."
        ),
        out: Path = typer.Option(
            None, help="Output folder for line_reasons.parquet and tables (paths.explain)."
        ),
        plots: Path = typer.Option(
            None, help="Folder for plots; written under <plots>/explain (paths.plots)."
        ),
        metrics: Path = typer.Option(
            None, help="Metrics JSON to write (default: paths.metrics/explain.json)."
        ),
        tables: Path = typer.Option(
            None, help="Validated tables (paths.validated): size labels and countries for the sentences."
        ),
        truth: Path = typer.Option(
            None, help="Generator truth folder (paths.truth); the size-reason metric is skipped when absent."
        ),
        mlflow_log: bool = typer.Option(
            True, "--mlflow/--no-mlflow", help="Log plots and metrics to MLflow."
        ),
    ) -> None:
        """Explain the champion model on the test window: SHAP plots, importance by family, reason codes.

        Reason codes (top-k contributions toward a return, grouped per reason, in words) are written for
        every line from the start of the test window on (test window and any newer, not yet mature lines)
        to <out>/line_reasons.parquet for the reviewer app. Settings: params.yaml `explain:`.
        """
        from pipeline.config import load_params, path_of

        params = load_params()
        cfg = params.get("explain", {})
        run_explain(
            features=features or path_of("features", params),
            model_dir=model or path_of("model", params),
            out=out or path_of("explain", params),
            plots=(plots or path_of("plots", params)) / "explain",
            metrics=metrics or path_of("metrics", params) / "explain.json",
            truth=truth if truth is not None else path_of("truth", params),
            tables=tables if tables is not None else path_of("validated", params),
            cfg=cfg,
            seed=int(params.get("seed", 0)),
            mlflow_log=mlflow_log,
        )


def _test_start(frame, model_dir: Path):
    """Start of the test window: the earliest test line of the training run's predictions file.

    Falls back to the last `explain.window_days` days of mature labels when no predictions file exists.
    """
    import pandas as pd

    from pipeline.io import read_any

    for name in PREDICTIONS_FILES:
        p = model_dir / name
        if p.is_file():
            pred = read_any(p)
            if {"line_id", "split"} <= set(pred.columns):
                ids = pred.loc[pred["split"] == "test", "line_id"]
                ts = frame.loc[frame["line_id"].isin(ids), "order_ts"]
                if len(ts):
                    return pd.Timestamp(ts.min()), f"{p} (split == test)"
    return None, None


def run_explain(
    *,
    features: Path,
    model_dir: Path,
    out: Path,
    plots: Path,
    metrics: Path,
    truth: Path | None,
    cfg: dict,
    tables: Path | None = None,
    seed: int,
    mlflow_log: bool,
) -> dict:
    """The explain stage; returns the metrics dict it wrote."""
    import time

    import numpy as np
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    from models import explain as E
    from models import reasons as R
    from models.artifact import ReturnModel
    from pipeline.io import read_any, write_csv, write_json, write_parquet

    console = Console()
    features = Path(features)
    table = features / "features.parquet" if features.is_dir() else features
    if not table.is_file():
        raise typer.BadParameter(f"{table}: feature table not found (run `returnrisk featurize` first)")
    frame = read_any(table)
    served = ReturnModel.load(model_dir)
    k = int(cfg.get("k", 3))
    window_days = int(cfg.get("window_days", 60))

    start, source = _test_start(frame, Path(model_dir))
    ts = pd.to_datetime(frame["order_ts"])
    if start is None:
        mature = frame["label_mature"].fillna(False).astype(bool) if "label_mature" in frame else ts.notna()
        end = ts[mature].max() if mature.any() else ts.max()
        start = end.normalize() - pd.Timedelta(days=window_days - 1)
        source = f"last {window_days} mature days (no predictions file in {model_dir})"
    recent = _with_context(frame.loc[(ts >= start).to_numpy()].reset_index(drop=True), tables)
    test = recent["label_mature"].fillna(False).astype(bool).to_numpy() if "label_mature" in recent else None
    console.print(f"explain: {len(recent):,} lines from {start:%Y-%m-%d} on; test window from {source}")

    # reason codes for every recent line (timed: the figure the speed goal is about)
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("TreeSHAP reason codes", total=len(recent))
        reasons = E.explain_lines(
            served,
            recent,
            k=k,
            batch_size=int(cfg.get("batch_size", E.DEFAULT_BATCH)),
            num_threads=int(cfg.get("num_threads", 0)),
            progress=lambda n: bar.advance(task, n),
            method=str(cfg.get("treeshap", "auto")),
        )
    seconds = time.perf_counter() - t0
    keep = [c for c in ("line_id", "order_id", "customer_id", "order_ts") if c in recent]
    line_reasons = pd.concat([recent[keep].reset_index(drop=True), reasons.drop(columns=["line_id"])], axis=1)
    write_parquet(line_reasons, Path(out) / LINE_REASONS)

    # global explanations on the test window (mature lines of it)
    test_frame = recent.loc[test] if test is not None and test.any() else recent
    contrib = E.compute_contributions(
        served,
        test_frame,
        num_threads=int(cfg.get("num_threads", 0)),
        method=str(cfg.get("treeshap", "auto")),
    )
    family_of = _family_of(served.features)
    glob = E.global_importance(contrib, served.features, family_of)
    fam = E.family_importance(contrib, served.features, family_of)
    write_csv(glob, Path(out) / "global_importance.csv", escape=False)
    write_csv(fam, Path(out) / "family_importance.csv", escape=False)
    Path(plots).mkdir(parents=True, exist_ok=True)
    write_csv(glob[["feature", "mean_abs_shap"]], Path(plots) / "importance.csv", escape=False)
    write_csv(fam[["family", "mean_abs_shap"]], Path(plots) / "family_importance.csv", escape=False)
    pngs = _plots(served, test_frame, contrib, glob, Path(plots), cfg, seed)

    m: dict = {
        "n_lines_explained": len(recent),
        "n_test_lines": len(test_frame),
        "lines_per_second": len(recent) / seconds if seconds > 0 else None,
        "share_lines_without_reason": float(reasons["reason_1_code"].isna().mean()) if len(reasons) else None,
        "additivity_max_abs_error": float(
            np.abs(contrib.sum(axis=1) - served.predict_raw(test_frame)).max() if len(test_frame) else 0.0
        ),
        "top_family": str(fam.iloc[0]["family"]) if len(fam) else None,
        "treeshap_tables_used": int(
            cfg.get("treeshap", "auto") != "lightgbm" and E._tables_for(served.booster) is not None
        ),
        "speed_goal_lines_per_s": float(cfg.get("speed_goal_lines_per_s", 20000)),
    }
    for _, row in fam.iterrows():
        m[f"family_share.{row['family']}"] = float(row["share"])
    m.update(_size_reason_share(line_reasons, truth, k, R))
    write_json(m, metrics)
    console.print(
        f"explain: {len(recent):,} lines in {seconds:.1f} s ({m['lines_per_second'] or 0:,.0f} lines/s); "
        f"size reason in top {k} for {m.get('size_reason_top3_share', 'n/a')} of size-mismatch lines"
    )
    if mlflow_log:
        _log_mlflow(Path(model_dir), Path(out), m, pngs, console)
    return m


def _with_context(frame, tables: Path | None):
    """Add the sentence context the feature table lacks: size label, size type, countries (when available).

    Context only: these columns are never model features; missing tables leave them out.
    """
    from pipeline.io import find_table_file, read_any

    if tables is None or not Path(tables).is_dir():
        return frame

    def table(name, cols):
        p = find_table_file(tables, name)
        if p is None:
            return None
        df = read_any(p)
        return df[[c for c in cols if c in df.columns]] if cols[0] in df.columns else None

    out = frame
    lines = table("order_lines", ["line_id", "size"])
    if lines is not None and "size" in lines and "size" not in out:
        out = out.merge(lines, on="line_id", how="left")
    products = table("products", ["product_id", "size_type"])
    if products is not None and "size_type" in products and "product_id" in out and "size_type" not in out:
        out = out.merge(products, on="product_id", how="left")
    orders = table("orders", ["order_id", "ship_country", "warehouse_id"])
    if orders is not None and "order_id" in out and "ship_country" not in out:
        warehouses = table("warehouses", ["warehouse_id", "country"])
        if warehouses is not None and "warehouse_id" in orders:
            orders = orders.merge(
                warehouses.rename(columns={"country": "warehouse_country"}), on="warehouse_id", how="left"
            )
        out = out.merge(orders.drop(columns=["warehouse_id"], errors="ignore"), on="order_id", how="left")
    return out


def _family_of(features: list[str]) -> dict[str, str]:
    """Feature -> family from the registry (unknown features: 'other')."""
    try:
        from features.registry import FEATURES
    except ImportError:
        return {}
    fam = {s.name: s.family for s in FEATURES}
    return {f: fam.get(f, "other") for f in features}


def _size_reason_share(line_reasons, truth: Path | None, k: int, R) -> dict:
    """Share of lines whose hidden main cause is a size mismatch that have a size reason in their top k.

    Generated data only: skipped (with a note in the metrics) when the truth file is absent.
    """
    import numpy as np
    import pandas as pd

    p = Path(truth) / "lines_truth.parquet" if truth else None
    if p is None or not p.is_file():
        return {"size_reason_top3_share_note": "skipped: no generator truth (real data)"}
    t = pd.read_parquet(p, columns=["line_id", "main_cause"])
    joined = line_reasons.merge(t, on="line_id", how="inner")
    size = joined[joined["main_cause"] == "size_mismatch"]
    codes = [f"reason_{j + 1}_code" for j in range(k)]
    hit = np.zeros(len(size), dtype=bool)
    for c in codes:
        hit |= size[c].isin(R.SIZE_REASONS).to_numpy()
    first = size[codes[0]].isin(R.SIZE_REASONS).to_numpy()
    return {
        "size_mismatch_lines": len(size),
        "size_reason_top3_share": float(hit.mean()) if len(size) else None,
        "size_reason_first_share": float(first.mean()) if len(size) else None,
    }


def _plots(served, frame, contrib, glob, folder: Path, cfg: dict, seed: int) -> list[Path]:
    """Beeswarm, mean-|SHAP| bar and dependence plots (PNG) on a seeded sample of the test window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import shap

    n = len(frame)
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, int(cfg.get("plot_sample", 5000))), replace=False))
    X = served.encode(frame.iloc[sample])
    S = contrib[sample, :-1]
    names = list(served.features)
    out = []

    plt.figure()
    shap.summary_plot(S, X, feature_names=names, show=False, max_display=20, rng=np.random.default_rng(seed))
    plt.title("SHAP values (log-odds) per feature, test window")
    out.append(_save(plt, folder / "shap_beeswarm.png"))

    plt.figure()
    shap.summary_plot(S, X, feature_names=names, plot_type="bar", show=False, max_display=20)
    plt.title("Mean |SHAP| (log-odds), test window")
    out.append(_save(plt, folder / "shap_bar.png"))

    for feat in glob["feature"].head(int(cfg.get("dependence_top", 4))):
        j = names.index(feat)
        fig, ax = plt.subplots(figsize=(6, 4))
        x = X[:, j]
        ax.scatter(x, S[:, j], s=4, alpha=0.4)
        if feat in served.categorical:
            levels = served.categorical[feat]
            shown = sorted(set(np.unique(x[~np.isnan(x)]).astype(int)))[:30]
            ax.set_xticks(shown, [levels[i] for i in shown], rotation=60, fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(feat)
        ax.set_ylabel("SHAP value (log-odds)")
        ax.set_title(f"Dependence: {feat}")
        out.append(_save(plt, folder / "dependence" / f"{feat}.png"))
    return out


def _save(plt, path: Path) -> Path:
    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        plt.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close("all")
    return path


def _log_mlflow(model_dir: Path, out: Path, metrics: dict, pngs: list[Path], console) -> None:
    """Log plots, tables and metrics to the training run named in run.json, else to a new run."""
    import json

    import mlflow

    from pipeline.config import REGISTERED_MODEL_NAME, configure_mlflow
    from pipeline.io import write_json

    configure_mlflow()
    run_id = None
    run_file = model_dir / "run.json"
    if run_file.is_file():
        run_id = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
    try:
        ctx = mlflow.start_run(run_id=run_id) if run_id else None
    except Exception as exc:  # noqa: BLE001 - a run from another store: log to a fresh one instead
        console.print(f"[yellow]explain: training run {run_id} not in this MLflow store ({exc}); new run[/]")
        ctx = None
    if ctx is None:
        mlflow.set_experiment(REGISTERED_MODEL_NAME)
        ctx = mlflow.start_run(run_name="explain")
    with ctx as run:
        mlflow.log_metrics(
            {f"explain.{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        )
        for p in pngs:
            mlflow.log_artifact(str(p), artifact_path="explain")
        for name in ("global_importance.csv", "family_importance.csv"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name), artifact_path="explain")
        write_json({"run_id": run.info.run_id}, out / "mlflow_run.json")
