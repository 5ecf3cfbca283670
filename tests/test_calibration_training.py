"""The training code's calibration step: candidates, selection rule and recency weights from the config."""

from __future__ import annotations

import numpy as np
from test_model_train import CFG, SPECS, synthetic_features  # same folder: pytest puts it on sys.path

from models.calibration import recency_weights
from models.train import SPLITS, SplitConfig, assign_splits, train_return_model


def _fit(cfg_extra: dict):
    df, _ = synthetic_features(n=6000, seed=1)
    split = assign_splits(df["order_ts"], df["label_mature"], SplitConfig(test_days=60, val_days=60))
    assert set(split.unique()) >= set(SPLITS)
    return df, split, train_return_model(df, split, SPECS, {**CFG, **cfg_extra}, seed=42)


def test_candidates_and_selection_come_from_the_config():
    _, _, fit = _fit({"calibration_candidates": ["platt", "beta"], "calibration_select": "logloss+ece"})
    assert fit.model.calibrator.method in ("platt", "beta")
    keys = {k for k in fit.info if k.startswith("calibration_cv_")}
    assert keys == {
        "calibration_cv_logloss_platt",
        "calibration_cv_ece_platt",
        "calibration_cv_logloss_beta",
        "calibration_cv_ece_beta",
    }
    lp, lb = fit.info["calibration_cv_logloss_platt"], fit.info["calibration_cv_logloss_beta"]
    ep, eb = fit.info["calibration_cv_ece_platt"], fit.info["calibration_cv_ece_beta"]
    assert fit.model.calibrator.method == ("platt" if lp + ep <= lb + eb else "beta")


def test_a_fixed_method_is_used_as_named():
    _, _, fit = _fit({"calibration": "blend"})
    assert fit.model.calibrator.method == "blend"
    assert not any(k.startswith("calibration_cv_") for k in fit.info)


def test_recency_half_life_changes_the_fit_and_only_uses_validation_lines():
    df, split, plain = _fit({"calibration": "platt"})
    _, _, recent = _fit({"calibration": "platt", "calibration_half_life_days": 10})
    assert recent.model.calibrator != plain.model.calibrator
    # same booster: the calibrator is the only difference, fitted on validation lines with their weights
    va = (split == "val").to_numpy()
    raw = plain.model.predict_raw(df.loc[va])
    np.testing.assert_allclose(recent.model.predict_raw(df.loc[va]), raw)
    from models.calibration import fit_platt

    expected = fit_platt(
        raw, df.loc[va, "returned"].to_numpy(), recency_weights(df.loc[va, "order_ts"], 10.0)
    )
    assert recent.model.calibrator.a == expected.a and recent.model.calibrator.b == expected.b


def test_every_scorer_is_calibrated_by_the_same_rule():
    from models.train import train_all

    df, _ = synthetic_features(n=6000, seed=1)
    cfg = {**CFG, "calibration": "platt"}
    result = train_all(df, SPECS, cfg, seed=42)
    s = result.summary
    assert s["model.calibration"] == s["blind.calibration"] == s["logreg.calibration"] == "platt"
    # the logistic baseline's validation probabilities are Platt-recalibrated: their mean matches the rate
    val = result.predictions[result.predictions["split"] == "val"]
    assert abs(val["p_logreg"].mean() - val["returned"].mean()) < 1e-3
