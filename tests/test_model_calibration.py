"""Calibration: Platt and isotonic fit, JSON round trip, measured choice between them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calibration import Calibrator, choose_and_fit, compare_methods, fit_isotonic, fit_platt


def _miscalibrated(n=20000, seed=0, scale=2.5, shift=0.7):
    """Raw scores whose sigmoid is over-confident and shifted: the true log-odds are (raw - shift)/scale."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-0.8, 1.0, n)
    raw = true_logit * scale + shift
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    return raw, y


def test_platt_recovers_the_linear_map():
    raw, y = _miscalibrated()
    cal = fit_platt(raw, y)
    assert cal.a == pytest.approx(1 / 2.5, rel=0.08)
    assert cal.b == pytest.approx(-0.7 / 2.5, abs=0.08)


def test_isotonic_is_monotone_and_matches_sklearn():
    from sklearn.isotonic import IsotonicRegression

    raw, y = _miscalibrated(n=3000)
    cal = fit_isotonic(raw, y)
    assert np.all(np.diff(cal.y) >= 0)
    probe = np.linspace(raw.min() - 1, raw.max() + 1, 500)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(raw, y).predict(probe)
    np.testing.assert_allclose(cal.apply(probe), np.clip(ref, 1e-6, 1 - 1e-6), atol=1e-12)


@pytest.mark.parametrize("method", ["platt", "isotonic", "identity"])
def test_json_round_trip(method):
    raw, y = _miscalibrated(n=2000)
    cal = {"platt": fit_platt, "isotonic": fit_isotonic}.get(method, lambda r, t: Calibrator("identity"))(
        raw, y
    )
    again = Calibrator.from_json(cal.to_json())
    np.testing.assert_array_equal(again.apply(raw), cal.apply(raw))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        Calibrator.from_json({"method": "magic"})


def test_auto_prefers_platt_when_the_truth_is_a_sigmoid():
    raw, y = _miscalibrated(n=4000, seed=1)
    scores = compare_methods(raw, y, folds=5, seed=0)
    assert scores["platt"] < scores["isotonic"]
    cal, _ = choose_and_fit(raw, y, method="auto")
    assert cal.method == "platt"


def test_auto_prefers_isotonic_when_the_map_is_a_step():
    rng = np.random.default_rng(2)
    raw = rng.normal(0, 2, 20000)
    p = np.where(raw > 1.0, 0.8, 0.1)  # not a sigmoid of raw: a step
    y = (rng.random(len(raw)) < p).astype(float)
    cal, scores = choose_and_fit(raw, y, method="auto")
    assert cal.method == "isotonic" and scores["isotonic"] < scores["platt"]


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="both classes"):
        compare_methods(np.zeros(100), np.zeros(100))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=50))
def test_calibrated_probabilities_stay_strictly_inside_0_1(values):
    raw, y = _miscalibrated(n=500, seed=3)
    for cal in (fit_platt(raw, y), fit_isotonic(raw, y), Calibrator("identity")):
        p = cal.apply(np.array(values))
        assert np.all((p > 0) & (p < 1))
