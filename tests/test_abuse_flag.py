"""The flag stage end to end on the small generated dataset: outputs, metrics, decisions, MLflow, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.commands.flag import FLAGGED_FILE, RUN_FILE, SCORES_FILE, blind_expectations, run_flag
from pipeline.config import load_params

K = 15  # the small dataset has ~1,500 customers and ~30 abusers


def _params(**flag) -> dict:
    params = json.loads(json.dumps(load_params()))
    params["flag"] = {**params.get("flag", {}), "review_capacity_k": K, **flag}
    return params


def _run(small_generated, tmp_path: Path, decisions: Path | None = None, **kw) -> dict:
    return run_flag(
        small_generated.raw,  # the generator writes contract tables + meta.json: valid input as is
        tmp_path / "features",
        tmp_path / "model",
        decisions or tmp_path / "decisions",
        small_generated.truth,
        tmp_path / "flags",
        tmp_path / "metrics" / "flag.json",
        _params(),
        expectation="product-rate",
        log_mlflow=kw.pop("log_mlflow", False),
        **kw,
    )


@pytest.fixture(scope="module")
def flagged(small_generated, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flag")
    m = _run(small_generated, tmp)
    return tmp, m


def test_outputs_cover_every_customer_and_flagged_have_evidence(small_generated, flagged):
    tmp, m = flagged
    customers = pd.read_parquet(small_generated.raw / "customers.parquet")
    scores = pd.read_parquet(tmp / "flags" / SCORES_FILE)
    assert set(scores["customer_id"]) == set(customers["customer_id"])
    assert list(scores.columns[:4]) == ["customer_id", "abuse_score", "tier", "abuse_type"]
    assert scores["abuse_score"].between(0, 1).all()
    fl = pd.read_parquet(tmp / "flags" / FLAGGED_FILE)
    assert len(fl) == m["n_flagged"] > 0 and (fl["tier"] != "none").all()
    for col in ("n_orders", "n_items", "n_returned", "expected_returns", "excess_returns", "excess_pvalue",
                "bracketing_share", "wardrobing_returns", "claim_ratio", "return_value", "net_value",
                "recommended_action", "reasons"):  # fmt: skip
        assert col in fl.columns, col
    assert fl["reasons"].str.startswith("Returned ").all()
    assert set(fl["abuse_type"]) <= {
        "serial_returner",
        "wardrober",
        "bracketer",
        "claim_abuser",
        "honest_high_returner",
    }
    # queue order: restrict first, then review, then watch; by score within a tier
    rank = fl["tier"].map({"restrict": 0, "review": 1, "watch": 2})
    assert rank.is_monotonic_increasing


def test_metrics_against_archetypes_beat_the_naive_rule(flagged):
    tmp, m = flagged
    on_disk = json.loads((tmp / "metrics" / "flag.json").read_text())
    assert on_disk == pytest.approx(m)
    assert m["n_abusers"] > 10 and m["k"] == K
    assert m["precision_at_k"] >= 0.8
    assert m["precision_at_k"] > m["naive_precision_at_k"]
    assert m["misflag_share"] <= 0.05
    assert json.loads((tmp / "flags" / RUN_FILE).read_text())["expectation"] == "product_rate"


def test_confirmed_legitimate_customers_are_not_reflagged(small_generated, flagged, tmp_path):
    from pipeline.review.store import DecisionStore, init_db

    tmp, _ = flagged
    fl = pd.read_parquet(tmp / "flags" / FLAGGED_FILE)
    top = fl[fl["tier"].isin(["review", "restrict"])]["customer_id"].tolist()[:2]
    db = init_db(tmp_path / "decisions" / "decisions.db")
    store = DecisionStore.open(db)
    store.record(int(top[0]), "legitimate", "called the customer", "tester")
    store.record(int(top[1]), "abuse", "confirmed", "tester")
    m = _run(small_generated, tmp_path, decisions=tmp_path / "decisions")
    scores = pd.read_parquet(tmp_path / "flags" / SCORES_FILE).set_index("customer_id")
    assert scores.loc[top[0], "tier"] == "none"  # decided after every return in the data: same evidence
    assert scores.loc[top[1], "tier"] in ("review", "restrict")
    assert m["n_suppressed_by_decision"] == 1 and m["n_confirmed_abuse"] == 1
    assert m["confirmed_abuse_recall_review_restrict"] == 1.0


def test_blind_model_expectations_come_from_the_saved_model(tmp_path):
    import lightgbm as lgb

    from models.artifact import ReturnModel
    from models.calibration import Calibrator

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"price": rng.uniform(5, 200, 400), "cat": rng.choice(["a", "b"], 400)})
    y = (rng.random(400) < np.where(X["cat"] == "a", 0.6, 0.1)).astype(int)
    enc = np.c_[X["price"], (X["cat"] == "b").astype(float)]
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4}, lgb.Dataset(enc, y), 10)
    model = ReturnModel(booster, ["price", "cat"], {"cat": ["a", "b"]}, Calibrator("identity"))
    model.save(tmp_path / "model" / "customer_blind")
    feats = X.assign(line_id=np.arange(400) + 1, customer_id=7)
    (tmp_path / "features").mkdir()
    feats.to_parquet(tmp_path / "features" / "features.parquet")
    exp = blind_expectations(tmp_path / "model", tmp_path / "features")
    assert list(exp["line_id"]) == list(feats["line_id"])
    np.testing.assert_allclose(exp["p_return"], model.predict_proba(X))
    assert exp.loc[X["cat"] == "a", "p_return"].mean() > exp.loc[X["cat"] == "b", "p_return"].mean()


def test_missing_blind_model_is_a_clear_error(small_generated, tmp_path):
    with pytest.raises(FileNotFoundError, match="customer_blind.*product-rate"):
        run_flag(
            small_generated.raw, tmp_path / "f", tmp_path / "model", tmp_path / "d", small_generated.truth,
            tmp_path / "out", tmp_path / "m.json", _params(), expectation="model", log_mlflow=False,
        )  # fmt: skip


def test_without_truth_only_counts_are_written(small_generated, tmp_path):
    m = run_flag(
        small_generated.raw, tmp_path / "f", tmp_path / "model", tmp_path / "d", tmp_path / "no-truth",
        tmp_path / "out", tmp_path / "m.json", _params(), expectation="product-rate", log_mlflow=False,
    )  # fmt: skip
    assert "precision_at_k" not in m and m["n_flagged"] > 0


def test_cli_logs_an_mlflow_run(small_generated, tmp_path, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "flags"
    res = CliRunner().invoke(
        app,
        ["flag", "--validated", str(small_generated.raw), "--truth", str(small_generated.truth), "--out", str(out),
         "--metrics", str(tmp_path / "flag.json"), "--decisions", str(tmp_path / "d"), "--expectation", "product-rate"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    run_id = json.loads((out / RUN_FILE).read_text())["mlflow_run_id"]
    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.metrics["flag.precision_at_k"] == pytest.approx(
        json.loads((tmp_path / "flag.json").read_text())["precision_at_k"]
    )
    assert run.data.params["flag.review_threshold"] == str(load_params()["flag"]["review_threshold"])


def test_cli_help_names_the_outputs():
    from typer.testing import CliRunner

    from pipeline.cli import app

    res = CliRunner().invoke(app, ["flag", "--help"])
    assert res.exit_code == 0 and "flagged_customers.parquet" in res.output


def test_bad_expectation_name(small_generated, tmp_path):
    shutil.copytree(small_generated.raw, tmp_path / "raw")
    with pytest.raises(ValueError, match="--expectation 'oracle'"):
        run_flag(
            tmp_path / "raw", tmp_path / "f", tmp_path / "model", tmp_path / "d", tmp_path / "t",
            tmp_path / "out", tmp_path / "m.json", _params(), expectation="oracle", log_mlflow=False,
        )  # fmt: skip
