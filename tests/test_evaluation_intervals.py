"""Adaptive ECE, weighted ECE, the ECE noise floor and customer-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    adaptive_calibration_error,
    binary_metrics,
    bootstrap_intervals,
    cluster_bootstrap_weights,
    ece_noise_floor,
    equal_mass_bin_index,
    expected_calibration_error,
)


def test_adaptive_ece_by_hand():
    # two equal-mass bins: {0.1, 0.2} mean 0.15 vs observed 0.5; {0.3, 0.4} mean 0.35 vs observed 0.5
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert adaptive_calibration_error(y, p, bins=2) == pytest.approx((2 * 0.35 + 2 * 0.15) / 4)
    # equal-width bins of 0.5 put all four in one bin: |0.5 - 0.25|
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.25)


def test_equal_mass_bins_never_split_ties():
    p = np.array([0.2] * 7 + [0.9] * 3)
    idx = equal_mass_bin_index(p, 5)
    assert len(set(idx[:7])) == 1 and len(set(idx[7:])) == 1 and idx[0] != idx[-1]
    y = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    # constant score: one bin, |mean y - p|
    assert adaptive_calibration_error(y, np.full(10, 0.3), bins=15) == pytest.approx(0.0)
    assert adaptive_calibration_error(y, np.full(10, 0.5), bins=15) == pytest.approx(0.2)


def test_weighted_ece_equals_ece_of_repeated_lines():
    rng = np.random.default_rng(0)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(float)
    w = rng.integers(0, 4, 300)
    rep = np.repeat(np.arange(300), w)
    assert expected_calibration_error(y, p, bins=10, weights=w) == pytest.approx(
        expected_calibration_error(y[rep], p[rep], bins=10)
    )


def test_binary_metrics_has_both_ece_columns():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.1, 0.8, 0.3, 0.6, 0.9])
    m = binary_metrics(y, p, ece_bins=2)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p, bins=2))
    assert m["ece_adaptive"] == pytest.approx(adaptive_calibration_error(y, p, bins=2))


def test_noise_floor_of_a_constant_matches_the_binomial_mean_absolute_deviation():
    n = 10_000
    floor = ece_noise_floor(np.full(n, 0.5), bins=15, n_sim=400, seed=1)
    assert floor == pytest.approx(np.sqrt(0.25 / n) * np.sqrt(2 / np.pi), rel=0.1)
    # a calibrated scorer's measured ECE is of the order of its floor, not 0
    rng = np.random.default_rng(2)
    p = rng.beta(2, 5, n)
    y = (rng.random(n) < p).astype(float)
    assert 0.3 < expected_calibration_error(y, p) / ece_noise_floor(p, n_sim=100) < 3


def test_cluster_bootstrap_keeps_a_customers_lines_together():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    w = cluster_bootstrap_weights(groups, n_boot=50, seed=0)
    assert w.shape == (50, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
    # three groups drawn per resample
    assert np.all(w[:, 0] + w[:, 3] + w[:, 4] == 3)
    np.testing.assert_array_equal(w, cluster_bootstrap_weights(groups, n_boot=50, seed=0))


def _scored(n=20_000, seed=3):
    rng = np.random.default_rng(seed)
    customers = rng.integers(0, n // 5, n)
    p = rng.beta(2, 5, n)
    y = (rng.random(n) < p).astype(float)
    return y, p, customers


def test_intervals_separate_a_real_calibration_gap_from_noise():
    y, p, customers = _scored()
    miscal = np.clip(p * 1.3, 0, 0.999)  # over-predicts by 30 %
    rng = np.random.default_rng(9)
    p_noisy = np.clip(p + rng.normal(0, 0.002, len(p)), 1e-4, 1)  # calibrated, a hair of noise
    r = bootstrap_intervals(
        y, {"model": p, "bad": miscal, "twin": p_noisy}, customers, n_boot=100, seed=0, bins=15
    )
    assert r["diff.bad.ece.hi"] < 0 and r["diff.bad.ece.p_better"] == 1.0
    assert r["diff.bad.log_loss.hi"] < 0
    assert r["diff.twin.ece.lo"] < 0 < r["diff.twin.ece.hi"]  # inside the noise
    for key in ("model", "bad"):
        assert r[f"{key}.log_loss.lo"] <= r[f"{key}.log_loss"] <= r[f"{key}.log_loss.hi"]
        assert r[f"{key}.ece"] == pytest.approx(
            expected_calibration_error(y, {"model": p, "bad": miscal}[key])
        )


def test_identical_scorers_differ_by_exactly_zero():
    y, p, customers = _scored(n=2000)
    r = bootstrap_intervals(y, {"model": p, "copy": p.copy()}, customers, n_boot=20, seed=0)
    assert r["diff.copy.ece"] == 0 and r["diff.copy.ece.lo"] == 0 and r["diff.copy.ece.hi"] == 0


def test_bad_bootstrap_arguments_are_refused():
    y, p, customers = _scored(n=200)
    with pytest.raises(ValueError, match="reference"):
        bootstrap_intervals(y, {"blind": p}, customers)
    with pytest.raises(ValueError, match="bootstrap metrics"):
        bootstrap_intervals(y, {"model": p}, customers, metrics=("brier",))


def test_resampled_roc_auc_and_pr_auc_equal_sklearn_with_sample_weights():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from models.evaluation import RANK_CHUNK, _weighted_rank_metrics

    rng = np.random.default_rng(4)
    n = 3000
    p = np.round(rng.random(n), 2)  # many ties: thresholds are the distinct scores
    y = (rng.random(n) < p).astype(np.float64)
    customers = rng.integers(0, 400, n)
    w = cluster_bootstrap_weights(customers, RANK_CHUNK + 5, seed=1)  # > one block; zero weights included
    assert (w == 0).any()
    auc, ap = _weighted_rank_metrics(y, p, w)
    for b in range(len(w)):
        assert auc[b] == pytest.approx(roc_auc_score(y, p, sample_weight=w[b]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y, p, sample_weight=w[b]), abs=1e-12)


def test_intervals_of_ranking_metrics_are_paired_and_higher_is_better():
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, p, customers = _scored()
    rng = np.random.default_rng(2)
    blurred = np.clip(p + rng.normal(0, 0.15, len(p)), 1e-4, 0.9999)  # ranks worse
    r = bootstrap_intervals(
        y, {"model": p, "blurred": blurred, "copy": p.copy()}, customers, n_boot=60, seed=0,
        metrics=("roc_auc", "pr_auc"),
    )  # fmt: skip
    assert r["model.roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert r["blurred.pr_auc"] == pytest.approx(average_precision_score(y, blurred), abs=1e-12)
    for m in ("roc_auc", "pr_auc"):
        assert r[f"diff.blurred.{m}"] > 0 and r[f"diff.blurred.{m}.lo"] > 0  # the model is better
        assert r[f"diff.blurred.{m}.p_better"] == 1.0  # higher is better for ranking metrics
        assert r[f"diff.copy.{m}"] == r[f"diff.copy.{m}.lo"] == r[f"diff.copy.{m}.hi"] == 0
        assert r[f"model.{m}.lo"] <= r[f"model.{m}"] <= r[f"model.{m}.hi"]


def test_ranking_intervals_need_both_classes():
    y, p, customers = _scored(n=200)
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_intervals(np.zeros_like(y), {"model": p}, customers, metrics=("roc_auc",))
