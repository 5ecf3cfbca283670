"""Out-of-time split, LightGBM training, determinism and baselines on a synthetic feature table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.train import (
    FeatureSpec,
    SplitConfig,
    assign_splits,
    check_specs,
    train_all,
    window_bounds,
)

SPECS = [
    FeatureSpec("category", True, False),
    FeatureSpec("unit_price", False, False),
    FeatureSpec("customer_return_rate", False, True),
    FeatureSpec("n_lines", False, False),
]

CFG = {
    "split": {"test_days": 60, "val_days": 60},
    "min_category_count": 5,
    "num_boost_round": 300,
    "early_stopping_rounds": 20,
    "lgbm": {
        "learning_rate": 0.1,
        "num_leaves": 15,
        "max_depth": 5,
        "min_data_in_leaf": 50,
        "num_threads": 1,
    },
    "calibration": "auto",
    "calibration_folds": 3,
    "logreg": {"C": 1.0, "max_iter": 500, "min_frequency": 5},
    "cost": {"return_cost": 12.0, "intervention_cost": 0.5, "intervention_effect": 0.25},
    "champion": {"metric": "roc_auc", "min_delta": 0.0},
}


def synthetic_features(n: int = 12000, seed: int = 0, days: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    """A feature table shaped like features.parquet, with known true return probabilities.

    The return probability depends on the category, the price and (non-linearly) on the customer's
    history, so the customer-blind model and the logistic regression are measurably worse.
    """
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.uniform(0, days, n)), unit="D")
    cat = rng.choice(["dresses", "shoes", "electronics", "toys"], n, p=[0.4, 0.3, 0.2, 0.1])
    price = rng.lognormal(3.0, 0.7, n)
    hist = rng.beta(2, 5, n)
    hist[rng.random(n) < 0.1] = np.nan
    h = np.nan_to_num(hist, nan=0.3)
    logit = (
        -1.2
        + 0.9 * (cat == "dresses")
        + 0.5 * (cat == "shoes")
        - 1.0 * (cat == "electronics")
        + 1.2 * (np.log(price) - 3) * (cat == "shoes")
        + 2.5 * (h > 0.4)
        - 1.0 * (h < 0.1)
    )
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype("int8")
    cutoff = ts.max()
    df = pd.DataFrame(
        {
            "line_id": np.arange(n, dtype=np.int64),
            "order_id": np.arange(n, dtype=np.int64) // 2,
            "customer_id": rng.integers(0, 1500, n),
            "product_id": rng.integers(0, 200, n),
            "order_ts": ts,
            "category": pd.Series(cat, dtype="str"),
            "unit_price": price,
            "customer_return_rate": hist,
            "n_lines": rng.integers(1, 5, n),
            "returned": y,
            "label_mature": (ts + pd.Timedelta(days=30)) <= cutoff,
        }
    )
    return df, p


@pytest.fixture(scope="module")
def synth():
    return synthetic_features()


@pytest.fixture(scope="module")
def trained(synth):
    df, _ = synth
    return train_all(df, SPECS, CFG, seed=42)


def test_windows_are_relative_to_the_last_mature_day():
    ts = pd.Series(pd.date_range("2024-01-01", periods=200, freq="D"))
    mature = ts <= pd.Timestamp("2024-06-18")  # last mature order day
    b = window_bounds(ts, mature, SplitConfig(test_days=30, val_days=20))
    assert b["end"] == pd.Timestamp("2024-06-19")
    assert b["test_start"] == pd.Timestamp("2024-05-20")
    assert b["val_start"] == pd.Timestamp("2024-04-30")
    split = assign_splits(ts, mature, SplitConfig(test_days=30, val_days=20))
    assert (split == "test").sum() == 30 and (split == "val").sum() == 20
    assert (split[~mature] == "").all(), "immature labels are never used"
    assert split[ts < pd.Timestamp("2024-04-30")].eq("train").all()


def test_absolute_windows_override_relative_ones():
    ts = pd.Series(pd.date_range("2024-01-01", periods=100, freq="D"))
    mature = pd.Series(True, index=ts.index)
    split = assign_splits(ts, mature, SplitConfig(val_start="2024-02-01", test_start="2024-03-01"))
    assert split[ts < "2024-02-01"].eq("train").all()
    assert split[(ts >= "2024-02-01") & (ts < "2024-03-01")].eq("val").all()
    assert split[ts >= "2024-03-01"].eq("test").all()


def test_windows_out_of_order_are_rejected():
    ts = pd.Series(pd.date_range("2024-01-01", periods=50, freq="D"))
    with pytest.raises(ValueError, match="out of order"):
        window_bounds(ts, pd.Series(True, index=ts.index), SplitConfig(test_days=40, val_days=40))
    with pytest.raises(ValueError, match="mature"):
        window_bounds(ts, pd.Series(False, index=ts.index), SplitConfig())


def test_protected_keys_and_missing_columns_are_refused(synth):
    df, _ = synth
    with pytest.raises(ValueError, match="protected"):
        check_specs([FeatureSpec("customer_gender", True, True)], df.assign(customer_gender="f"))
    with pytest.raises(ValueError, match="may not be features"):
        check_specs([FeatureSpec("returned", False, False)], df)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['nope'\]"):
        check_specs([FeatureSpec("nope", False, False)], df)


def test_model_beats_baselines_and_nears_the_oracle(synth, trained):
    df, p_true = synth
    preds = trained.predictions
    test = preds[preds["split"] == "test"]
    from sklearn.metrics import roc_auc_score

    oracle = roc_auc_score(test["returned"], p_true[test["line_id"].to_numpy()])
    s = trained.summary
    assert s["test.model.roc_auc"] > s["test.blind.roc_auc"]
    assert s["test.model.roc_auc"] > s["test.logreg.roc_auc"]
    assert s["test.model.log_loss"] < s["test.blind.log_loss"]
    assert oracle - s["test.model.roc_auc"] < 0.03
    assert set(preds["split"]) == {"val", "test"}
    assert preds["line_id"].isin(df.loc[df["label_mature"], "line_id"]).all()
    assert preds[["p_model", "p_blind", "p_logreg"]].apply(lambda c: c.between(0, 1).all()).all()


def test_blind_model_uses_no_customer_history(trained):
    assert "customer_return_rate" not in trained.blind.features
    assert trained.model.features == [s.name for s in SPECS]
    assert trained.blind.metadata["uses_customer_history"] is False


def test_threshold_is_chosen_and_stored(trained):
    assert trained.model.threshold is not None and 0 < trained.model.threshold < 1
    assert trained.summary["threshold"] == trained.model.threshold


def test_same_seed_same_data_gives_identical_models(synth, trained):
    df, _ = synth
    again = train_all(df, SPECS, CFG, seed=42)
    assert again.model.booster.model_to_string() == trained.model.booster.model_to_string()
    pd.testing.assert_frame_equal(again.predictions, trained.predictions)
    assert again.summary["test.model.roc_auc"] == trained.summary["test.model.roc_auc"]


def test_empty_window_is_a_clear_error(synth):
    df, _ = synth
    cfg = {**CFG, "split": {"val_start": "2024-06-01", "test_start": "2024-07-01"}}
    gap = df[(df["order_ts"] < "2024-06-01") | (df["order_ts"] >= "2024-07-01")]
    with pytest.raises(ValueError, match="the val window is empty"):
        train_all(gap, SPECS, cfg, seed=1)
