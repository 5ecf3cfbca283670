"""The explain stage end to end on the small generated data: features -> model -> reasons, plots, metrics."""

from __future__ import annotations

import json

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def trained(small_generated, tmp_path_factory):
    """Feature table and a small served model (saved like the train stage does) on the small data."""
    from features.build import build_features
    from models.train import SplitConfig, assign_splits, specs_from_registry, train_return_model
    from pipeline.config import load_params
    from pipeline.contract import TABLE_ORDER
    from pipeline.io import find_table_file, read_any, read_meta, write_parquet

    root = tmp_path_factory.mktemp("explain_stage")
    params = load_params()
    tables = {t: read_any(p) for t in TABLE_ORDER if (p := find_table_file(small_generated.raw, t))}
    frame, _ = build_features(tables, pd.Timestamp(read_meta(small_generated.raw)["cutoff"]), params)
    write_parquet(frame, root / "features" / "features.parquet")
    split = assign_splits(frame["order_ts"], frame["label_mature"], SplitConfig(test_days=60, val_days=60))
    cfg = dict(params["train"])
    cfg.update(num_boost_round=150, early_stopping_rounds=20, calibration="platt")
    cfg["lgbm"] = {
        **cfg["lgbm"],
        "num_leaves": 7,
        "max_depth": 3,
        "learning_rate": 0.1,
        "min_data_in_leaf": 40,
    }
    model = train_return_model(frame, split, specs_from_registry(frame), cfg, 7).model
    model.save(root / "model")
    keep = split.isin(["val", "test"]).to_numpy()
    write_parquet(
        pd.DataFrame({"line_id": frame["line_id"][keep], "split": split[keep]}),
        root / "model" / "predictions.parquet",
    )
    return root, frame, split


def test_explain_stage_writes_reasons_plots_metrics(trained, small_generated, monkeypatch):
    from pipeline.commands.explain import run_explain

    root, frame, split = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    cfg = {"k": 3, "plot_sample": 800, "dependence_top": 2, "num_threads": 1, "batch_size": 2000}
    m = run_explain(
        features=root / "features",
        model_dir=root / "model",
        out=root / "explain",
        plots=root / "plots" / "explain",
        metrics=root / "metrics" / "explain.json",
        truth=small_generated.truth,
        cfg=cfg,
        seed=1,
        mlflow_log=True,
        tables=small_generated.raw,
    )
    lr = pd.read_parquet(root / "explain" / "line_reasons.parquet")
    test_start = frame.loc[(split == "test").to_numpy(), "order_ts"].min()
    assert len(lr) == int((frame["order_ts"] >= test_start).sum())  # test window and newer lines
    for c in ("line_id", "order_id", "customer_id", "return_probability", "reason_1", "reason_2", "reason_3"):
        assert c in lr.columns
    assert lr["reason_1"].notna().all()
    assert lr["return_probability"].between(0, 1).all()
    # sentences carry real size labels joined from the validated tables
    size_first = lr[lr["reason_1_code"] == "size"]
    assert (
        size_first["reason_1"].str.match(r"^(Size \S+ is|This customer has|This product runs|Ordered)").all()
    )
    assert m["additivity_max_abs_error"] < 1e-6
    assert m["size_mismatch_lines"] > 0
    assert m["size_reason_top3_share"] >= 0.8, m  # the goal, on the small data too
    assert json.loads((root / "metrics" / "explain.json").read_text()) == json.loads(json.dumps(m))
    fam = pd.read_csv(root / "explain" / "family_importance.csv")
    assert set(fam["family"]) <= {
        "size",
        "category",
        "price",
        "shipping",
        "past_returns",
        "sentiment",
        "basket",
    }
    assert fam["share"].sum() == pytest.approx(1.0)
    plots = root / "plots" / "explain"
    for name in ("shap_beeswarm.png", "shap_bar.png", "importance.csv", "family_importance.csv"):
        assert (plots / name).stat().st_size > 0
    assert len(list((plots / "dependence").glob("*.png"))) == 2
    assert json.loads((root / "explain" / "mlflow_run.json").read_text())["run_id"]


def test_sentence_context_columns_are_never_model_features():
    """Size labels and countries only word the sentences; the model must not see them."""
    from features.registry import FEATURES

    assert not {"size", "size_type", "ship_country", "warehouse_country"} & {f.name for f in FEATURES}
