"""The training code's calibration step: candidates, selection rule and recency weights from the config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
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


def _cal_data(n=4000, seed=3):
    rng = np.random.default_rng(seed)
    raw = rng.normal(-1.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.7 * raw + 0.2)))).astype(float)
    ts = pd.Series(pd.date_range("2025-01-01", periods=n, freq="h"))
    return raw, y, ts


def test_selection_ece_uses_calibration_ece_bins_not_a_fixed_count():
    from models.calibration import DEFAULT_ECE_BINS, compare_methods, fit_from_config

    raw, y, ts = _cal_data()
    cfg = {
        "calibration": "auto",
        "calibration_candidates": ["platt", "beta"],
        "calibration_select": "logloss+ece",
    }
    _, four = fit_from_config(raw, y, ts, {**cfg, "calibration_ece_bins": 4}, seed=0)
    _, default = fit_from_config(raw, y, ts, cfg, seed=0)
    expected = compare_methods(raw, y, seed=0, methods=("platt", "beta"), ece_bins=4)
    assert four["calibration_cv_ece_platt"] == expected["platt.ece"]
    assert four["calibration_cv_ece_beta"] == expected["beta.ece"]
    assert four["calibration_cv_ece_platt"] != default["calibration_cv_ece_platt"]  # the bins matter
    at_default = compare_methods(raw, y, seed=0, methods=("platt", "beta"), ece_bins=DEFAULT_ECE_BINS)
    assert default["calibration_cv_ece_platt"] == at_default["platt.ece"]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "15", True])
def test_a_bad_calibration_ece_bins_is_refused_by_name(bad):
    from models.calibration import fit_from_config

    raw, y, ts = _cal_data(n=400)
    with pytest.raises(ValueError, match="train.calibration_ece_bins"):
        fit_from_config(raw, y, ts, {"calibration": "platt", "calibration_ece_bins": bad}, seed=0)


def test_train_command_passes_evaluate_ece_bins_to_the_calibrator_selection():
    from pipeline.commands.train import train_config

    params = {"train": {"calibration": "auto"}, "evaluate": {"ece_bins": 7}}
    cfg = train_config(params)
    assert cfg["calibration_ece_bins"] == 7 and "calibration_ece_bins" not in params["train"]
    assert train_config({**params, "train": {"calibration_ece_bins": 7}})["calibration_ece_bins"] == 7
    with pytest.raises(ValueError, match="differs from evaluate.ece_bins"):
        train_config({**params, "train": {"calibration_ece_bins": 15}})
    assert "calibration_ece_bins" not in train_config({"train": {}})  # no evaluate section: the default


def test_dvc_train_stage_depends_on_the_bins_its_calibration_reads():
    import yaml

    from pipeline.config import load_params, project_root

    stage = yaml.safe_load((project_root() / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["train"]
    assert "evaluate.ece_bins" in stage["params"] and "train" in stage["params"]
    params = load_params()
    assert "calibration_ece_bins" not in params["train"]  # one source: evaluate.ece_bins
    assert isinstance(params["evaluate"]["ece_bins"], int)
