"""Evaluation metrics worked by hand, curves, and the cost-based threshold against brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evaluation import (
    CostModel,
    binary_metrics,
    calibration_points,
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    expected_saving,
    gains_points,
    lift_at,
    roc_points,
)

COSTS = CostModel(return_cost=10.0, intervention_cost=1.0, intervention_effect=0.5)


def test_ece_by_hand():
    # bins of width 0.5: [0.1, 0.2] -> mean 0.15, observed 0.5; [0.9] -> 0.9 vs 1
    y = np.array([0, 1, 1])
    p = np.array([0.1, 0.2, 0.9])
    assert expected_calibration_error(y, p, bins=2) == pytest.approx((2 * 0.35 + 1 * 0.1) / 3)


def test_lift_by_hand():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])  # base rate 0.2
    p = np.linspace(1, 0, 10)  # line 0 is the top 10 %
    assert lift_at(y, p, 0.10) == pytest.approx(1.0 / 0.2)
    assert lift_at(y, p, 0.20) == pytest.approx(0.5 / 0.2)


def test_metrics_of_a_perfect_and_a_constant_score():
    y = np.array([0, 0, 1, 1])
    perfect = binary_metrics(y, np.array([0.01, 0.02, 0.98, 0.99]))
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0
    const = binary_metrics(y, np.full(4, 0.5))
    assert const["roc_auc"] == 0.5
    assert const["log_loss"] == pytest.approx(np.log(2))
    assert const["brier"] == pytest.approx(0.25)
    assert const["ece"] == pytest.approx(0.0)


def test_empty_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="empty"):
        binary_metrics(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="equally long"):
        binary_metrics(np.array([0, 1]), np.array([0.5]))


def test_curves_span_the_unit_square():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    roc = roc_points(y, p)
    assert roc["tpr"].iloc[0] >= 0 and roc["tpr"].iloc[-1] == 1.0
    assert roc["tpr"].is_monotonic_increasing
    gains = gains_points(y, p)
    assert gains["share_of_returns"].iloc[0] == 0 and gains["share_of_returns"].iloc[-1] == pytest.approx(1)
    cal = calibration_points(y, p, bins=10)
    assert cal["lines"].sum() == 500


def _brute_force_best_cost(y, p, costs):
    best = costs.expected_cost(y, np.zeros(len(y), bool))
    for t in np.unique(p):
        best = min(best, costs.expected_cost(y, p >= t))
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 120))
def test_threshold_minimises_cost_like_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)  # ties on purpose
    y = (rng.random(n) < p).astype(float)
    t = choose_threshold(y, p, COSTS, candidates=10_000)
    assert costs_at(y, p, t) == pytest.approx(_brute_force_best_cost(y, p, COSTS))


def costs_at(y, p, t):
    return COSTS.expected_cost(y, p >= t)


def test_threshold_near_the_break_even_probability_when_calibrated():
    # acting pays when p * effect * return_cost > intervention_cost, i.e. p > 0.2 here
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert choose_threshold(y, p, COSTS) == pytest.approx(0.2, abs=0.02)


def test_expected_saving_by_hand():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.1, 0.05])
    s = expected_saving(y, p, 0.5, COSTS)
    # no action: 2 returns * 10 = 20; acting on lines 0, 1: 2 * 1 + 1 * 0.5 * 10 + line 2's return 10 = 17
    assert s["cost_no_action"] == 20 and s["cost_with_threshold"] == 17 and s["saving"] == 3
    assert s["share_acted"] == 0.5


def test_bad_costs_are_refused():
    with pytest.raises(ValueError, match="intervention_effect"):
        CostModel(10, 1, 1.5)


def _preds(n=400, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype("int8")
    return pd.DataFrame(
        {
            "line_id": np.arange(n),
            "split": np.where(np.arange(n) < n // 2, "val", "test"),
            "returned": y,
            "p_model": p,
            "p_blind": np.clip(p + rng.normal(0, 0.3, n), 0.01, 0.99),
            "p_logreg": np.clip(p + rng.normal(0, 0.2, n), 0.01, 0.99),
            "p_rate": y[: n // 2].mean(),
        }
    ), p


def test_evaluate_predictions_keys_and_oracle_gap():
    preds, p = _preds()
    oracle = pd.Series(p, index=preds["line_id"])
    m, curves = evaluate_predictions(preds, COSTS, oracle=oracle)
    for scorer in ("model", "blind", "logreg", "rate", "oracle"):
        for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_5", "lift_10"):
            assert f"{scorer}.{k}" in m
    assert m["oracle_gap"] == pytest.approx(0.0), "p_model is the oracle here"
    assert m["model_beats.blind"] == 1.0
    assert set(curves) == {"roc", "pr", "calibration", "gains"}
    assert "rate" not in curves["roc"]
    assert m["expected_saving_test"] >= 0 or m["share_acted_test"] > 0


def test_oracle_missing_lines_are_an_error():
    preds, p = _preds()
    with pytest.raises(ValueError, match="no true probability"):
        evaluate_predictions(preds, COSTS, oracle=pd.Series(p[:10], index=np.arange(10)))
