"""`returnrisk flag`: the flag stage (validated tables + customer-blind expectations -> abuse tiers).

Reads the validated tables and the data cutoff, asks the customer-blind model for every line's return
probability (from the feature table), scores every customer (models/abuse.py), lets confirmed reviewer
decisions override, writes customer_scores.parquet + flagged_customers.parquet, and, when the generator's
hidden archetypes exist, evaluation metrics (DVC metrics JSON + an MLflow run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

SCORES_FILE = "customer_scores.parquet"
FLAGGED_FILE = "flagged_customers.parquet"
RUN_FILE = "run.json"
TRUTH_FILE = "customers_truth.parquet"
BLIND_DIR = "customer_blind"
FEATURES_FILE = "features.parquet"
DECISIONS_FILE = "decisions.db"
EXPERIMENT = "returnrisk"
TABLES = ("customers", "orders", "order_lines", "returns", "products")
SCORE_COLUMNS = ["customer_id", "abuse_score", "tier", "abuse_type", "recommended_action"]


def _read_tables(folder: Path) -> dict[str, Any]:
    from pipeline.io import TableFileError, find_table_file, read_any

    out = {}
    for name in TABLES:
        f = find_table_file(folder, name)
        if f is None:
            raise TableFileError(f"{folder}: no {name}.parquet or {name}.csv (run the validate stage first)")
        out[name] = read_any(f)
    return out


def blind_expectations(model_dir: Path, features: Path):
    """line_id, p_return from the customer-blind model on every row of the feature table."""
    import pandas as pd

    from models.artifact import ReturnModel

    blind = model_dir / BLIND_DIR
    if not (blind / "model.json").is_file():
        raise FileNotFoundError(
            f"{blind}: no customer-blind model (run the train stage), or pass --expectation product-rate"
        )
    model = ReturnModel.load(blind)
    ffile = features / FEATURES_FILE if features.is_dir() else features
    if not ffile.is_file():
        raise FileNotFoundError(f"{ffile}: feature table not found (run the featurize stage first)")
    frame = pd.read_parquet(ffile, columns=["line_id", *model.features])
    return pd.DataFrame({"line_id": frame["line_id"], "p_return": model.predict_proba(frame)})


def run_flag(
    validated: Path,
    features: Path,
    model: Path,
    decisions: Path,
    truth: Path,
    out: Path,
    metrics: Path,
    params: dict[str, Any],
    *,
    expectation: str = "model",
    log_mlflow: bool = True,
    progress=None,
) -> dict[str, Any]:
    """Run the stage; returns the metrics written (evaluation metrics only when truth exists)."""
    import pandas as pd

    from models.abuse import FlagParams, apply_decisions, evaluate, line_frame, review_queue, score_customers
    from pipeline.io import read_meta, write_json, write_parquet

    say = progress or (lambda _m: None)
    p = FlagParams.from_params(params)
    say(f"reading {validated}")
    t = _read_tables(Path(validated))
    cutoff = pd.Timestamp(read_meta(validated)["cutoff"])
    if expectation == "model":
        say(f"customer-blind expectations from {Path(model) / BLIND_DIR}")
        expected = blind_expectations(Path(model), Path(features))
    elif expectation == "product-rate":
        expected = None
    else:
        raise ValueError(f"--expectation {expectation!r}: use 'model' or 'product-rate'")
    say("building the per-line history")
    lf = line_frame(t["orders"], t["order_lines"], t["returns"], t["products"], expected, cutoff, p)
    say("scoring every customer")
    scores = score_customers(lf, p, customers=t["customers"]["customer_id"])

    from pipeline.review.store import current_decisions

    db = Path(decisions) if Path(decisions).suffix == ".db" else Path(decisions) / DECISIONS_FILE
    dec = current_decisions(db)
    scores = apply_decisions(scores, dec, lf, p)

    queue = review_queue(scores)
    write_parquet(queue[SCORE_COLUMNS].reset_index(drop=True), Path(out) / SCORES_FILE)
    flagged = queue[queue["tier"] != "none"].drop(columns=["is_bracketer"], errors="ignore")
    for col in flagged.columns:  # list-valued helper columns are for the reason sentences only
        if flagged[col].map(lambda v: isinstance(v, list)).any():
            flagged = flagged.drop(columns=col)
    write_parquet(flagged.reset_index(drop=True), Path(out) / FLAGGED_FILE)

    m: dict[str, Any] = {
        "n_customers": len(scores),
        "n_flagged": int((scores["tier"] != "none").sum()),
        **{f"n_{t}": int((scores["tier"] == t).sum()) for t in ("watch", "review", "restrict")},
        "n_suppressed_by_decision": int(scores["suppressed"].sum()),
        "n_lines_without_expectation": int(lf.attrs.get("n_missing_expected", 0)),
    }
    truth_file = Path(truth) / TRUTH_FILE if truth else None
    if truth_file is not None and truth_file.is_file():
        say(f"evaluating against {truth_file}")
        m.update(evaluate(scores, pd.read_parquet(truth_file), p))
    write_json(m, metrics)
    run = {"expectation": lf.attrs.get("expectation"), "cutoff": str(cutoff), "mlflow_run_id": None}
    if log_mlflow:
        say("logging to MLflow")
        run["mlflow_run_id"] = _log_mlflow(m, p, run, Path(out))
    write_json(run, Path(out) / RUN_FILE)
    return m


def _log_mlflow(m: dict[str, Any], p: Any, run: dict[str, Any], out: Path) -> str:
    import dataclasses

    import mlflow

    from pipeline.config import configure_mlflow

    configure_mlflow()
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="flag") as r:
        mlflow.set_tags({"stage": "flag", "expectation": str(run["expectation"]), "cutoff": run["cutoff"]})
        flat = {
            f"flag.{k}": (",".join(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(p).items()
        }
        mlflow.log_params(flat)
        mlflow.log_metrics({f"flag.{k}": float(v) for k, v in m.items() if isinstance(v, int | float)})
        return r.info.run_id


def register(app: typer.Typer) -> None:
    @app.command("flag")
    def flag(
        validated: Path = typer.Option(None, help="Validated tables folder [default: paths.validated]."),
        features: Path = typer.Option(None, help="Feature table folder [default: paths.features]."),
        model: Path = typer.Option(None, help="Model folder holding customer_blind/ [default: paths.model]."),
        decisions: Path = typer.Option(None, help="Reviewer decisions folder [default: paths.decisions]."),
        truth: Path = typer.Option(
            None, help="Generator truth folder, for evaluation [default: paths.truth]."
        ),
        out: Path = typer.Option(None, help="Output folder [default: paths.flags]."),
        metrics: Path = typer.Option(None, help="Metrics JSON [default: paths.metrics/flag.json]."),
        expectation: str = typer.Option(
            "model",
            help="Expected returns from the customer-blind 'model', or 'product-rate' (other customers' "
            "return rate of each product; no model needed).",
        ),
        no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log an MLflow run."),
    ) -> None:
        """Score every customer for return abuse as of the data cutoff and write the flagged customers.

        Tiers watch/review/restrict come from abuse_score (params.yaml `flag:`); bracketers and honest
        high-returners are typed separately and never escalated past watch. Writes
        customer_scores.parquet (every customer), flagged_customers.parquet (tier != none, evidence and
        reason sentences), run.json, and the metrics JSON (with precision@k, recall and the naive
        return-rate baseline when the generator's truth exists).
        """
        from rich.console import Console

        from pipeline.config import load_params, path_of

        console = Console(stderr=True)
        params = load_params()
        validated = validated or path_of("validated", params)
        out = out or path_of("flags", params)
        m = run_flag(
            validated,
            features or path_of("features", params),
            model or path_of("model", params),
            decisions or path_of("decisions", params),
            truth or path_of("truth", params),
            out,
            metrics or path_of("metrics", params) / "flag.json",
            params,
            expectation=expectation,
            log_mlflow=not no_mlflow,
            progress=lambda msg: console.log(msg),
        )
        shown = [
            "n_flagged",
            "n_review",
            "n_restrict",
            "precision_at_k",
            "recall_review_restrict",
            "misflag_share",
        ]
        shown += ["naive_precision_at_k"]
        console.print(", ".join(f"{k}={m[k]:.3g}" for k in shown if k in m))
        console.print(f"wrote {Path(out) / FLAGGED_FILE} and {Path(out) / SCORES_FILE}")
