"""Beta and blend calibration, weighted fits, recency weights, selection by log loss + ECE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.artifact import ReturnModel
from models.calibration import (
    Calibrator,
    choose_and_fit,
    compare_methods,
    fit_beta,
    fit_blend,
    fit_calibrator,
    fit_isotonic,
    fit_platt,
    recency_weights,
    select_method,
)


def _beta_truth(n=40000, seed=0, a=0.6, b=1.8, c=0.3):
    """Labels drawn from a beta map of the raw scores: the tails bend differently (not a sigmoid of raw)."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(-1.0, 1.5, n)
    s = 1 / (1 + np.exp(-raw))
    p = 1 / (1 + np.exp(-(a * np.log(s) - b * np.log(1 - s) + c)))
    return raw, (rng.random(n) < p).astype(float), p


def test_beta_recovers_its_parameters_and_beats_platt_when_the_tails_differ():
    raw, y, p_true = _beta_truth()
    cal = fit_beta(raw, y)
    assert cal.a == pytest.approx(0.6, abs=0.08)
    assert cal.b == pytest.approx(1.8, abs=0.15)
    assert cal.c == pytest.approx(0.3, abs=0.15)
    err_beta = np.abs(cal.apply(raw) - p_true).mean()
    err_platt = np.abs(fit_platt(raw, y).apply(raw) - p_true).mean()
    assert err_beta < 0.5 * err_platt


def test_beta_with_unit_slopes_is_the_identity_and_stays_finite_in_the_tails():
    cal = Calibrator("beta", a=1.0, b=1.0, c=0.0)
    raw = np.array([-800.0, -30.0, -2.0, 0.0, 2.0, 30.0, 800.0])
    p = cal.apply(raw)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p[1:-1], np.clip(1 / (1 + np.exp(-raw[1:-1])), 1e-6, 1 - 1e-6), atol=1e-12)


def test_beta_is_monotone_even_when_a_fitted_slope_would_be_negative():
    # labels that fall as the score rises in the upper tail: an unconstrained fit gives b < 0
    rng = np.random.default_rng(5)
    raw = rng.normal(0, 2, 20000)
    p = np.where(raw < 1, 1 / (1 + np.exp(-raw)), 0.7)
    y = (rng.random(len(raw)) < p).astype(float)
    cal = fit_beta(raw, y)
    assert cal.a >= 0 and cal.b >= 0
    assert np.all(np.diff(cal.apply(np.sort(raw))) >= -1e-12)


def test_blend_is_the_mean_of_platt_and_isotonic():
    raw, y, _ = _beta_truth(n=5000, seed=1)
    blend = fit_blend(raw, y)
    expected = 0.5 * fit_platt(raw, y).apply(raw) + 0.5 * fit_isotonic(raw, y).apply(raw)
    # atol: each part of `expected` was clipped into [1e-6, 1 - 1e-6] on its own
    np.testing.assert_allclose(blend.apply(raw), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["beta", "blend"])
def test_new_methods_round_trip_through_json_and_the_model_artifact(method, tmp_path):
    import lightgbm as lgb

    raw, y, _ = _beta_truth(n=3000, seed=2)
    cal = fit_calibrator(method, raw, y)
    again = Calibrator.from_json(cal.to_json())
    np.testing.assert_array_equal(again.apply(raw), cal.apply(raw))
    # through ReturnModel.save/load (model.json), as the served model stores it
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 4, "min_data_in_leaf": 20},
        lgb.Dataset(X, label=(X[:, 0] + rng.normal(size=400) > 0).astype(float)),
        num_boost_round=5,
    )
    frame = pd.DataFrame(X, columns=["f0", "f1"])
    model = ReturnModel(booster=booster, features=["f0", "f1"], categorical={}, calibrator=cal, metadata={})
    loaded = ReturnModel.load(model.save(tmp_path / "m"))
    assert loaded.calibrator == cal
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_bad_blend_json_is_refused():
    part = {"method": "platt", "a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="two parts"):
        Calibrator.from_json({"method": "blend", "weight": 1.5, "parts": [part, part]})
    with pytest.raises(ValueError, match="two parts"):
        Calibrator.from_json({"method": "blend", "weight": 0.5, "parts": [part]})


def test_weighted_fit_equals_a_fit_on_repeated_lines():
    raw, y, _ = _beta_truth(n=3000, seed=3)
    w = np.random.default_rng(3).integers(1, 4, len(raw)).astype(float)
    rep_raw, rep_y = np.repeat(raw, w.astype(int)), np.repeat(y, w.astype(int))
    for method in ("platt", "beta"):
        a, b = fit_calibrator(method, raw, y, w), fit_calibrator(method, rep_raw, rep_y)
        np.testing.assert_allclose(a.apply(raw), b.apply(raw), atol=2e-4)
    np.testing.assert_allclose(
        fit_isotonic(raw, y, w).apply(raw), fit_isotonic(rep_raw, rep_y).apply(raw), atol=1e-9
    )


def test_recency_weights_halve_every_half_life():
    ts = pd.to_datetime(["2025-01-31 00:00", "2025-01-16 00:00", "2025-01-01 00:00", "2025-01-31 12:00"])
    w = recency_weights(ts, 15.0)
    np.testing.assert_allclose(w, [0.5 ** (0.5 / 15), 0.5 ** (15.5 / 15), 0.5 ** (30.5 / 15), 1.0])
    assert recency_weights(ts, None) is None
    with pytest.raises(ValueError, match="half-life"):
        recency_weights(ts, 0)
    with pytest.raises(ValueError, match="order_ts"):
        recency_weights(None, 10.0)


def test_recency_weighting_follows_a_drifting_base_rate():
    # the return rate doubles across the window: the recency-weighted fit predicts nearer the late rate
    rng = np.random.default_rng(4)
    n = 20000
    t = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.uniform(0, 60, n), unit="D")
    day = (t - t.min()).days.to_numpy()
    raw = rng.normal(-1.5, 1.0, n)
    p = 1 / (1 + np.exp(-(raw + np.log(1 + day / 60))))
    y = (rng.random(n) < p).astype(float)
    late = day >= 50
    plain = fit_platt(raw, y).apply(raw[late]).mean()
    recent = fit_platt(raw, y, recency_weights(t, 10.0)).apply(raw[late]).mean()
    assert abs(recent - y[late].mean()) < abs(plain - y[late].mean())


def test_compare_methods_reports_log_loss_and_ece_for_each_candidate():
    raw, y, _ = _beta_truth(n=6000, seed=6)
    scores = compare_methods(raw, y, methods=("platt", "beta"), seed=0)
    assert set(scores) == {"platt", "platt.ece", "beta", "beta.ece"}
    assert scores["beta"] < scores["platt"]  # the truth is a beta map


def test_select_method_by_log_loss_or_log_loss_plus_ece():
    scores = {"platt": 0.400, "platt.ece": 0.010, "beta": 0.399, "beta.ece": 0.020}
    assert select_method(scores, ("platt", "beta"), "logloss") == "beta"
    assert select_method(scores, ("platt", "beta"), "logloss+ece") == "platt"
    tie = {"platt": 0.4, "platt.ece": 0.01, "beta": 0.4, "beta.ece": 0.01}
    assert select_method(tie, ("platt", "beta"), "logloss+ece") == "platt"  # ties: the simpler
    with pytest.raises(ValueError, match="not one of"):
        select_method(scores, ("platt",), "auc")


def test_auto_picks_beta_among_candidates_when_the_truth_is_beta():
    raw, y, _ = _beta_truth(n=20000, seed=7)
    cal, scores = choose_and_fit(raw, y, candidates=("platt", "beta", "isotonic"), select="logloss+ece")
    assert cal.method == "beta" and set(scores) >= {"platt", "beta", "isotonic"}
    with pytest.raises(ValueError, match="candidates"):
        choose_and_fit(raw, y, candidates=("platt", "magic"))


def test_default_candidates_keep_the_ranking_isotonic_ties_lines():
    """Why params train.calibration_candidates leaves isotonic out: its flat steps tie lines."""
    from sklearn.metrics import average_precision_score

    raw, y, _ = _beta_truth(n=20000, seed=8)
    ap_raw = average_precision_score(y, raw)
    for method in ("platt", "beta", "blend"):
        p = fit_calibrator(method, raw, y).apply(raw)
        assert len(np.unique(p)) == len(np.unique(raw))  # strictly increasing: no new ties
        assert average_precision_score(y, p) == pytest.approx(ap_raw, abs=1e-12)
    p_iso = fit_isotonic(raw, y).apply(raw)
    assert len(np.unique(p_iso)) < len(np.unique(raw)) / 10
    assert average_precision_score(y, p_iso) < ap_raw
