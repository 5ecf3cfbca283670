"""Base-rate shrinkage toward the long-run rate, and the rolling-origin backtest that chooses it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_model_train import CFG, SPECS, synthetic_features  # same folder: pytest puts it on sys.path

from models.artifact import ReturnModel
from models.calibration import (
    BacktestFold,
    Calibrator,
    backtest,
    backtest_choice,
    fit_from_config,
    fit_platt,
    shift_toward_rate,
)
from models.train import SplitConfig, assign_splits, long_run_rate, train_return_model


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _window(rng, n, intercept):
    raw = rng.normal(-1.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(raw + intercept)))).astype(float)
    return raw, y


def test_shift_is_a_log_odds_offset_that_keeps_the_ranking_and_round_trips(tmp_path):
    raw = np.linspace(-6, 3, 200)
    base = Calibrator("blend", weight=0.5, parts=(Calibrator("platt", a=0.9, b=-0.2), Calibrator("platt")))
    shifted = base.with_shift(0.4)
    np.testing.assert_allclose(_logit(shifted.apply(raw)), _logit(base.apply(raw)) + 0.4, atol=1e-9)
    assert np.all(np.diff(shifted.apply(raw)) > 0)
    assert "shift" not in base.to_json()  # models saved before the shift read back unchanged
    back = Calibrator.from_json(json.loads(json.dumps(shifted.to_json())))
    assert back == shifted
    with pytest.raises(ValueError, match="shift must be a finite number"):
        Calibrator.from_json({"method": "platt", "a": 1.0, "b": 0.0, "shift": float("nan")})


def test_shrinkage_moves_the_window_mean_toward_the_long_run_rate_in_log_odds():
    rng = np.random.default_rng(0)
    raw, y = _window(rng, 40000, -1.0)
    cal = fit_platt(raw, y)
    assert shift_toward_rate(cal, raw, y, 0.5, 0.0) is cal
    full = shift_toward_rate(cal, raw, y, 0.5, 1.0)
    half = shift_toward_rate(cal, raw, y, 0.5, 0.5)
    assert full.apply(raw).mean() == pytest.approx(0.5, abs=1e-6)
    halfway = 1 / (1 + np.exp(-(_logit(y.mean()) + _logit(0.5)) / 2))
    assert half.apply(raw).mean() == pytest.approx(halfway, abs=1e-6)
    assert 0 < half.shift < full.shift  # the window's rate (~0.3) is below 0.5: shifted up, half as far
    assert (full.a, full.b) == (cal.a, cal.b)
    # weights: the target is the weighted window rate moved toward the long-run one
    w = np.where(np.arange(len(y)) % 2 == 0, 3.0, 1.0)
    weighted = shift_toward_rate(cal, raw, y, 0.5, 1.0, w)
    assert np.average(weighted.apply(raw), weights=w) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        shift_toward_rate(cal, raw, y, 0.5, 1.5)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        shift_toward_rate(cal, raw, y, 0.0, 0.5)


def test_config_shrinkage_needs_a_long_run_rate_and_a_valid_value():
    rng = np.random.default_rng(1)
    raw, y = _window(rng, 2000, -1.0)
    cfg = {"calibration": "platt", "calibration_rate_shrinkage": 0.5}
    with pytest.raises(ValueError, match="needs the long-run return rate"):
        fit_from_config(raw, y, None, cfg, 0)
    with pytest.raises(ValueError, match="calibration_rate_shrinkage must be a number"):
        fit_from_config(raw, y, None, {**cfg, "calibration_rate_shrinkage": 2}, 0, long_run_rate=0.3)
    cal, info = fit_from_config(raw, y, None, cfg, 0, long_run_rate=0.3)
    assert info["calibration_shift"] == cal.shift
    target = 1 / (1 + np.exp(-(_logit(y.mean()) + _logit(0.3)) / 2))
    assert cal.apply(raw).mean() == pytest.approx(target, abs=1e-6)
    plain, plain_info = fit_from_config(raw, y, None, {"calibration": "platt"}, 0)
    assert plain.shift == 0.0 and "calibration_shift" not in plain_info


def _folds(intercepts, n=20000, seed=0):
    """Windows whose true intercepts are given; each fold calibrates on window k and scores window k + 1."""
    rng = np.random.default_rng(seed)
    windows = [_window(rng, n, c) for c in intercepts]
    folds = []
    for k in range(1, len(windows) - 1):
        history = np.concatenate([w[1] for w in windows[: k + 1]])
        folds.append(BacktestFold(f"w{k}", *windows[k], *windows[k + 1], long_run_rate=float(history.mean())))
    return folds


CONFIGS = {f"s{s:g}": {"calibration_rate_shrinkage": s} for s in (0.0, 0.5, 1.0)}


def test_backtest_picks_full_shrinkage_when_the_base_rate_swings_back():
    # seasonality around a fixed rate: every window's offset is undone by the next one
    folds = _folds([-1.0 + 0.4 * (-1) ** k for k in range(10)])
    rows = backtest(folds, CONFIGS, {"calibration": "platt"}, seed=0)
    assert len(rows) == len(folds) * len(CONFIGS)
    best, means = backtest_choice(rows, "logloss+ece")
    assert best == "s1"
    assert means["s1"] < means["s0.5"] < means["s0"]


def test_backtest_picks_no_shrinkage_when_the_base_rate_drifts_on():
    # a persistent trend: the next window is like the last one, the long-run rate lags behind
    folds = _folds([-2.0 + 0.15 * k for k in range(10)])
    rows = backtest(folds, CONFIGS, {"calibration": "platt"}, seed=0)
    best, means = backtest_choice(rows, "logloss")
    assert best == "s0"
    assert means["s0"] < means["s0.5"] < means["s1"]


def test_backtest_choice_breaks_ties_toward_the_first_config_and_refuses_bad_input():
    rows = [
        {"config": "a", "log_loss": 0.3, "ece": 0.01},
        {"config": "b", "log_loss": 0.3, "ece": 0.01},
    ]
    assert backtest_choice(rows)[0] == "a"
    with pytest.raises(ValueError, match="not one of"):
        backtest_choice(rows, "auc")
    with pytest.raises(ValueError, match="at least one fold"):
        backtest([], CONFIGS, {}, 0)


def test_training_shrinks_toward_the_rate_of_training_and_validation_lines(tmp_path):
    df, _ = synthetic_features(n=6000, seed=1)
    split = assign_splits(df["order_ts"], df["label_mature"], SplitConfig(test_days=60, val_days=60))
    rate = long_run_rate(df, split)
    known = split.isin(["train", "val"])
    assert rate == pytest.approx(df.loc[known, "returned"].mean())
    cfg = {**CFG, "calibration": "platt"}
    plain = train_return_model(df, split, SPECS, cfg, seed=42)
    shrunk = train_return_model(df, split, SPECS, {**cfg, "calibration_rate_shrinkage": 1.0}, seed=42)
    va = (split == "val").to_numpy()
    y_val = df.loc[va, "returned"].to_numpy(dtype=float)
    assert shrunk.model.predict_proba(df.loc[va]).mean() == pytest.approx(rate, abs=1e-6)
    assert plain.model.predict_proba(df.loc[va]).mean() == pytest.approx(y_val.mean(), abs=2e-3)
    assert shrunk.info["calibration_long_run_rate"] == pytest.approx(rate)
    assert shrunk.model.calibrator.a == plain.model.calibrator.a  # same map, only the offset added
    shrunk.model.save(tmp_path)
    back = ReturnModel.load(tmp_path)
    np.testing.assert_allclose(back.predict_proba(df.loc[va]), shrunk.model.predict_proba(df.loc[va]))


def test_backtest_origins_never_reach_the_test_window():
    from models.calibration import backtest_splits
    from models.train import window_bounds

    ts = pd.Series(pd.date_range("2024-01-01", "2024-12-31", freq="6h"))
    mature = pd.Series(ts < pd.Timestamp("2024-12-01"))
    cfg = {"split": {"test_days": 60, "val_days": 60}}
    test_start = window_bounds(ts, mature, SplitConfig(60, 60))["test_start"]
    splits = backtest_splits(ts, mature, cfg, folds=10, step_days=30, min_train_days=60)
    assert 3 <= len(splits) < 10  # stops when an origin has under 60 training days
    ends = []
    for _, s in splits:
        assert ts[s != ""].max() < test_start
        tr, va, nx = ts[s == "train"], ts[s == "val"], ts[s == "test"]
        assert tr.max() < va.min() and va.max() < nx.min()
        ends.append(nx.max())
    assert ends == sorted(ends, reverse=True)
