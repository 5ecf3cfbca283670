"""Results table: the model vs its baselines on one out-of-time test window, and the top features by mean |SHAP|.

`python -m benchmarks.real_data` runs ingest -> validate -> featurize -> train (the same code the DVC stages
call, params.yaml for every knob, MLflow off) on the UCI Online Retail export (data.uci_path) into a work
folder, then prints one `name value unit` line per figure and the markdown tables recorded in BENCHMARKS.md.
`--source generated --rows N` does the same on about N generated lines; `--from-outputs` skips the run and
reads what `dvc repro` / `dvc exp run -S data.source=uci-online-retail` wrote (paths.model, paths.features).

Metrics come from `models.evaluation.evaluate_predictions` on the train stage's predictions.parquet, i.e.
exactly what the evaluate stage writes to metrics/evaluate.json; mean |SHAP| is TreeSHAP of the served
model over every mature test line, as the explain stage's global importance. Noise: 95 % intervals from
`--boot` resamples of test customers (`models.evaluation.bootstrap_intervals`, paired across scorers) of every
metric and of each model - scorer difference (ROC AUC, PR AUC, log loss, ECE), the ECE
a perfectly calibrated scorer with the same predictions would show (`ece_noise_floor`), and the adaptive
(equal-mass bins) ECE beside the equal-width one (params evaluate.ece_bins, the headline definition).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see models/train.py: before LightGBM loads

SCORERS = (
    ("model", "LightGBM, all features (the model)"),
    ("blind", "customer-blind LightGBM"),
    ("logreg", "logistic regression, same features"),
    ("rate", "rate baseline (training return rate)"),
    ("oracle", "oracle (generator's true probability)"),
)
COLUMNS = (("roc_auc", "ROC AUC", True), ("pr_auc", "PR AUC", True), ("log_loss", "log loss", False),
           ("ece", "ECE", False))  # fmt: skip


def run_pipeline(params: dict[str, Any], work: Path, say, *, train: bool = True) -> dict[str, float]:
    """ingest (data.source) -> validate -> featurize [-> train] into `work`; returns wall seconds per stage."""
    from pipeline.cli import app
    from pipeline.commands.featurize import run_featurize
    from pipeline.commands.ingest import ingest_from_params
    from pipeline.commands.train import run_train

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    say(f"ingest ({params['data']['source']})")
    ingest_from_params(params, work / "raw", work / "truth", work / "metrics" / "ingest.json")
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    say("validate")
    app(
        ["validate", str(work / "raw"), "--out", str(work / "validated"), "--report",
         str(work / "metrics" / "validation.json")],
        standalone_mode=False,
    )  # fmt: skip
    seconds["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    say("featurize")
    run_featurize(work / "validated", work / "features", work / "metrics" / "featurize.json", params)
    seconds["featurize"] = time.perf_counter() - t
    if not train:
        return seconds
    t = time.perf_counter()
    say("train (model, customer-blind model, logistic regression)")
    run_train(work / "features", work / "model", params, log_mlflow=False, progress=say)
    seconds["train"] = time.perf_counter() - t
    return seconds


def noise(preds, oracle, bins: int, n_boot: int, seed: int) -> dict[str, float]:
    """Customer-bootstrap intervals of ECE, adaptive ECE, log loss, ROC AUC, PR AUC (and model - scorer), ECE floors."""
    import numpy as np

    from models.evaluation import SCORE_COLUMNS, bootstrap_intervals, ece_noise_floor

    test = preds[preds["split"] == "test"]
    scores = {k: test[c].to_numpy(dtype=np.float64) for k, c in SCORE_COLUMNS.items() if c in test}
    if oracle is not None:
        scores["oracle"] = test["line_id"].map(oracle).to_numpy(dtype=np.float64)
    groups = test["customer_id"] if "customer_id" in test else test["order_id"]
    out = bootstrap_intervals(
        test["returned"].to_numpy(dtype=np.float64), scores, groups.to_numpy(), bins=bins, n_boot=n_boot,
        seed=seed,
    )  # fmt: skip
    for key, p in scores.items():
        out[f"{key}.ece_floor"] = ece_noise_floor(p, bins=bins, n_sim=n_boot, seed=seed)
    return out


def results(
    model_dir: Path, features: Path, truth: Path | None, params: dict[str, Any], top: int, n_boot: int = 200
):
    """(metrics of every scorer on the test window, top features by mean |SHAP|, test window bounds)."""
    import json

    import pandas as pd

    from models import explain as E
    from models.artifact import MODEL_FILE, ReturnModel
    from models.evaluation import CostModel, evaluate_predictions
    from pipeline.commands.evaluate import read_oracle
    from pipeline.commands.train import PREDICTIONS_FILE, SUMMARY_FILE, features_file

    preds = pd.read_parquet(model_dir / PREDICTIONS_FILE)
    spec = json.loads((model_dir / MODEL_FILE).read_text(encoding="utf-8"))
    oracle = read_oracle(truth)
    bins = int(params.get("evaluate", {}).get("ece_bins", 15))
    metrics, _ = evaluate_predictions(
        preds,
        CostModel.from_params(params["train"]["cost"]),
        threshold=spec.get("threshold"),
        oracle=oracle,
        ece_bins=bins,
    )
    if n_boot > 0:
        metrics.update(
            {f"noise.{k}": v for k, v in noise(preds, oracle, bins, n_boot, int(params["seed"])).items()}
        )
    summary = json.loads((model_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    model = ReturnModel.load(model_dir)
    test_ids = preds.loc[preds["split"] == "test", "line_id"]
    frame = pd.read_parquet(features_file(features), columns=["line_id", *model.features])
    rows = frame[frame["line_id"].isin(set(test_ids))]
    contrib = E.compute_contributions(
        model, rows, num_threads=int(params.get("explain", {}).get("num_threads", 0))
    )
    from features.registry import FEATURES

    family = {f.name: f.family for f in FEATURES}
    imp = E.global_importance(contrib, model.features, family).head(top)
    return metrics, imp, summary.get("windows", {}), summary


def _ci(metrics: dict[str, float], key: str) -> str:
    lo, hi = metrics.get(f"{key}.lo"), metrics.get(f"{key}.hi")
    return "" if lo is None else f"{lo:.4f} to {hi:.4f}"


def _diff(metrics: dict[str, float], key: str) -> str:
    d = metrics.get(key)
    if d is None:
        return ""
    return f"{d:+.4f} ({metrics[key + '.lo']:+.4f} to {metrics[key + '.hi']:+.4f})"


def _verdict(metrics: dict[str, float], key: str, col: str, higher: bool) -> str | None:
    """'better' / 'worse' with ', inside the noise' when the bootstrap interval of the difference holds 0."""
    a, b = metrics[f"model.{col}"], metrics[f"{key}.{col}"]
    if a != a or b != b:
        return None
    word = "better" if (a > b) == higher else "worse"
    d = f"noise.diff.{key}.{col}"
    if d in metrics:
        word += (
            " (inside the noise)" if metrics[d + ".lo"] <= 0 <= metrics[d + ".hi"] else " (beyond the noise)"
        )
    return word


def markdown(metrics: dict[str, float], imp, windows: dict[str, str], title: str) -> str:
    """The tables recorded in BENCHMARKS.md / README."""
    noisy = "noise.model.ece.lo" in metrics
    cols = [c[1] for c in COLUMNS] + ["ECE, equal-mass bins"]
    if noisy:
        cols += ["ECE 95 % CI", "ECE if perfectly calibrated"]
    lines = [
        f"**{title}**: test window {windows.get('test_start', '?')} to {windows.get('end', '?')} (exclusive), "
        f"{int(metrics['n_test']):,} lines, return rate {metrics['test_return_rate']:.2%}.",
        "",
        "| scorer | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for key, label in SCORERS:
        if f"{key}.roc_auc" not in metrics:
            continue
        cells = []
        for col in [c[0] for c in COLUMNS] + ["ece_adaptive"]:
            v = metrics[f"{key}.{col}"]
            cells.append("n/a" if v != v else f"{v:.4f}")
        if noisy:
            cells += [
                _ci(metrics, f"noise.{key}.ece"),
                f"{metrics[f'noise.{key}.ece_floor']:.4f}",
            ]
        name = f"**{label}**" if key == "model" else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if noisy:  # the paired differences: is the model's lead beyond the noise?
        lines += [
            "",
            "| model - scorer (95 % CI, customer bootstrap) | " + " | ".join(c[1] for c in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for key, label in SCORERS:
            if key == "model" or f"noise.diff.{key}.ece" not in metrics:
                continue
            cells = [_diff(metrics, f"noise.diff.{key}.{col}") or "n/a" for col, _, _ in COLUMNS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    beats = []
    for key, label in SCORERS:
        if key in ("model", "oracle") or f"{key}.roc_auc" not in metrics:
            continue
        parts = [(name, _verdict(metrics, key, col, higher)) for col, name, higher in COLUMNS]
        won = [f"{n} {v}" for n, v in parts if v is not None]
        beats.append(f"{label}: {', '.join(won)}")
    lines += ["", "The model vs each baseline: " + "; ".join(beats) + ".", ""]
    lines += ["| rank | feature | family | mean abs SHAP (log-odds) | share |", "|---:|---|---|---:|---:|"]
    for i, r in enumerate(imp.itertuples(index=False), 1):
        lines.append(f"| {i} | `{r.feature}` | {r.family} | {r.mean_abs_shap:.4f} | {r.share:.1%} |")
    return "\n".join(lines)


def figures(metrics: dict[str, float], imp, seconds: dict[str, float]) -> list[str]:
    out = [
        f"test_lines {int(metrics['n_test'])} lines",
        f"test_return_rate {metrics['test_return_rate']:.4f} share",
    ]
    for key, _ in SCORERS:
        for col in [c[0] for c in COLUMNS] + ["ece_adaptive"]:
            if f"{key}.{col}" in metrics:
                out.append(f"{key}_{col} {metrics[f'{key}.{col}']:.4f} {col}")
        for suffix, unit in (("ece.lo", "ece"), ("ece.hi", "ece"), ("ece_floor", "ece")):
            if f"noise.{key}.{suffix}" in metrics:
                out.append(f"{key}_{suffix.replace('.', '_')} {metrics[f'noise.{key}.{suffix}']:.4f} {unit}")
        for col, _, _ in COLUMNS:
            d = f"noise.diff.{key}.{col}"
            if d in metrics:
                out.append(f"model_minus_{key}_{col} {metrics[d]:.4f} {col}")
                out.append(f"model_minus_{key}_{col}_lo {metrics[d + '.lo']:.4f} {col}")
                out.append(f"model_minus_{key}_{col}_hi {metrics[d + '.hi']:.4f} {col}")
    for i, r in enumerate(imp.itertuples(index=False), 1):
        out.append(f"shap_top{i}_{r.feature} {r.mean_abs_shap:.4f} log-odds")
    out += [f"{stage}_seconds {s:.1f} s" for stage, s in seconds.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import load_params, path_of

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="uci-online-retail", choices=("uci-online-retail", "generated"))
    ap.add_argument("--path", type=Path, help="UCI export (default params.yaml data.uci_path)")
    ap.add_argument(
        "--rows", type=int, default=0, help="generated: about N order lines (0: params.yaml sizes)"
    )
    ap.add_argument("--work", type=Path, help="keep the pipeline outputs here (default: a temporary folder)")
    ap.add_argument(
        "--from-outputs", action="store_true", help="read paths.model / paths.features; run nothing"
    )
    ap.add_argument("--seed", type=int, help="override params.yaml seed (generator and training)")
    ap.add_argument("--top", type=int, default=10, help="top features by mean |SHAP|")
    ap.add_argument(
        "--boot", type=int, default=200, help="customer-bootstrap resamples for the ECE intervals (0: none)"
    )
    ap.add_argument("--format", default="both", choices=("lines", "markdown", "both"))
    args = ap.parse_args(argv)

    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in load_params().items()}
    if args.seed is not None:
        params["seed"] = args.seed
    say = (lambda m: print(f"# {m}", flush=True)) if args.format != "lines" else (lambda m: None)
    seconds: dict[str, float] = {}
    if args.from_outputs:
        model_dir, features, truth = (
            path_of("model", params),
            path_of("features", params),
            path_of("truth", params),
        )
        source = str(params["data"].get("source", "generated"))
        tmp = None
    else:
        params["data"] = {**params.get("data", {}), "source": args.source}
        if args.path is not None:
            params["data"]["uci_path"] = str(args.path.resolve())
        if args.source == "generated" and args.rows:
            from benchmarks.generate import sizes_for

            params["generate"] = {**params["generate"], **sizes_for(args.rows)}
        tmp = None if args.work else tempfile.TemporaryDirectory(prefix="real-data-")
        work = Path(args.work or tmp.name)
        seconds = run_pipeline(params, work, say)
        model_dir, features, truth, source = work / "model", work / "features", work / "truth", args.source
    try:
        t = time.perf_counter()
        say("test-window metrics and TreeSHAP importance")
        metrics, imp, windows, summary = results(model_dir, features, truth, params, args.top, args.boot)
        seconds["results"] = time.perf_counter() - t
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.format in ("lines", "both"):
        print("\n".join(figures(metrics, imp, seconds)))
    if args.format in ("markdown", "both"):
        print()
        cal = (
            f"calibration: model {summary.get('model.calibration')}, blind {summary.get('blind.calibration')}"
        )
        print(markdown(metrics, imp, windows, f"data.source = {source}, {cal}"))


if __name__ == "__main__":
    main()
