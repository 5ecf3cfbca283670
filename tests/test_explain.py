"""Reason-code machinery on a small LightGBM trained here on a synthetic frame (fast, no pipeline data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import explain as E
from models import reasons as R

FEATS = ["a1", "a2", "a3", "b1", "b2", "colour"]
GROUP = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "colour": "C"}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f: rng.normal(size=n) for f in FEATS[:-1]})
    df["colour"] = pd.Categorical(rng.choice(["red", "green", "blue", "black"], n))
    df.loc[rng.random(n) < 0.05, "a2"] = np.nan  # missing values take LightGBM's default branch
    df.insert(0, "line_id", np.arange(n, dtype=np.int64) + 1000)
    return df


def _label(df: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = 1.2 * df["a1"] + 0.8 * df["a2"].fillna(0) * df["a3"] - 1.0 * df["b1"] + (df["colour"] == "red") * 1.5
    return (rng.random(len(df)) < 1 / (1 + np.exp(-(z - 0.5)))).astype(int)


@pytest.fixture(scope="module")
def model():
    import lightgbm as lgb

    from models.artifact import ReturnModel
    from models.calibration import Calibrator

    df = _frame(3000, 1)
    levels = {"colour": ["black", "blue", "green", "red"]}
    from models.artifact import encode_frame

    X = encode_frame(df, FEATS, levels)
    booster = lgb.train(
        dict(
            objective="binary",
            num_leaves=15,
            max_depth=4,
            learning_rate=0.1,
            verbose=-1,
            seed=3,
            num_threads=1,
            deterministic=True,
            min_data_per_group=10,
            cat_smooth=1,
        ),
        lgb.Dataset(X, _label(df, 2), feature_name=FEATS, categorical_feature=[5]),
        num_boost_round=40,
    )
    return ReturnModel(booster, FEATS, levels, Calibrator("platt", a=0.9, b=-0.2))


def test_additivity_base_plus_contributions_equals_raw_score(model):
    df = _frame(1500, 5)
    contrib = E.compute_contributions(model, df, batch_size=400, num_threads=2)  # several batches
    assert contrib.shape == (1500, len(FEATS) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), model.predict_raw(df), atol=1e-6, rtol=0)
    # the same values with and without explicit threads / batching
    np.testing.assert_allclose(contrib, model.contributions(df), atol=1e-12)


def test_grouping_keeps_each_line_total(model):
    df = _frame(800, 6)
    contrib = model.contributions(df)
    codes, g = E.group_matrix(FEATS, GROUP.__getitem__)
    assert codes == ["A", "B", "C"]
    assert (g.sum(axis=1) == 1).all()  # every feature in exactly one reason
    grouped = E.group_contributions(contrib, g)
    np.testing.assert_allclose(grouped.sum(axis=1), contrib[:, :-1].sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(grouped[:, 0], contrib[:, 0:3].sum(axis=1), atol=1e-12)
    with pytest.raises(ValueError, match="expected 6 features"):
        E.group_contributions(contrib[:, :3], g)


def test_top_k_only_positive_largest_first():
    grouped = np.array([[0.5, -0.2, 1.0, 0.1], [-1.0, -0.1, 0.0, -3.0], [0.2, 0.2, -0.1, 0.0]])
    idx, vals = E.top_k(grouped, 3)
    assert idx.tolist() == [[2, 0, 3], [-1, -1, -1], [0, 1, -1]]  # ties keep reason order
    np.testing.assert_allclose(vals[0], [1.0, 0.5, 0.1])
    assert np.isnan(vals[1]).all() and np.isnan(vals[2, 2])
    idx5, _ = E.top_k(grouped, 5)  # k larger than the number of reasons pads with -1
    assert idx5.shape == (3, 5) and (idx5[:, 4] == -1).all()


def test_top_k_equals_a_stable_descending_sort_with_many_ties():
    rng = np.random.default_rng(0)
    grouped = np.round(rng.normal(size=(3000, 7)), 1)  # values repeat: ties everywhere
    for k in (1, 3, 7):
        order = np.argsort(-grouped, axis=1, kind="stable")[:, :k]
        vals = np.take_along_axis(grouped, order, axis=1)
        idx, got = E.top_k(grouped, k)
        assert np.array_equal(idx, np.where(vals > 0, order, -1))
        np.testing.assert_array_equal(got, np.where(vals > 0, vals, np.nan))


def test_probability_points_allocate_the_probability_change():
    from models.calibration import Calibrator

    rng = np.random.default_rng(0)
    grouped = rng.normal(size=(200, 4))
    base = np.full(200, -1.3)
    raw = base + grouped.sum(axis=1)
    raw[0] = base[0]  # a line exactly at the base value: slope rule, no division by zero
    grouped[0] = [0.3, -0.3, 0.0, 0.0]
    for cal in (Calibrator("platt", a=0.8, b=0.1), Calibrator("identity")):
        pp = E.probability_points(grouped, raw, base, cal.apply)
        np.testing.assert_allclose(
            pp[1:].sum(axis=1), 100 * (cal.apply(raw) - cal.apply(base))[1:], atol=1e-9
        )
        assert np.isfinite(pp).all()
        assert ((pp > 0) == (grouped > 0))[1:].all()  # sign follows the log-odds contribution
    # an isotonic step that does not move the probability gives zero points, never negative ones
    iso = Calibrator("isotonic", x=(-5.0, 5.0), y=(0.3, 0.3))
    assert (E.probability_points(grouped, raw, base, iso.apply) == 0).all()


def test_explain_lines_frame(model, monkeypatch):
    monkeypatch.setattr(R, "reason_of", GROUP.__getitem__)
    renders = {
        "A": lambda lines: R.cat("A is ", R.fmt_num(lines.num("a1"), 2)),
        "B": lambda lines: R.cat("B is ", R.fmt_num(lines.num("b1"), 2)),
        "C": lambda lines: R.cat("Colour ", lines.text("colour")),
    }
    monkeypatch.setattr(R, "render", lambda code, lines: renders[code](lines))
    df = _frame(600, 9)
    out = E.explain_lines(model, df, k=3, batch_size=250, reason_of=GROUP.__getitem__)
    assert out["line_id"].tolist() == df["line_id"].tolist()
    np.testing.assert_allclose(out["return_probability"], model.predict_proba(df), atol=1e-12)
    np.testing.assert_allclose(out["raw_score"], model.predict_raw(df), atol=1e-6)
    c1, c2 = out["reason_1_contrib"], out["reason_2_contrib"]
    assert ((c1 >= c2) | c2.isna()).all() and (c1.dropna() > 0).all()
    # the sentence carries the line's own value
    a_rows = out["reason_1_code"] == "A"
    assert a_rows.any()
    expected = [f"A is {v:,.2f}" for v in df.loc[a_rows.to_numpy(), "a1"]]
    assert out.loc[a_rows, "reason_1"].tolist() == expected
    none = out["reason_1_code"].isna()
    assert (out.loc[none, "reason_1"] == R.NO_REASON).all()
    assert out.loc[none, "reason_2"].isna().all()
    # points are positive exactly where a reason exists
    assert ((out["reason_1_pp"] > 0) == out["reason_1_code"].notna()).all()


def test_explain_lines_names_missing_feature_column(model):
    df = _frame(10, 1).drop(columns=["b2"])
    with pytest.raises(KeyError, match="b2"):
        E.explain_lines(model, df)


def test_global_and_family_importance(model):
    df = _frame(500, 11)
    contrib = model.contributions(df)
    glob = E.global_importance(contrib, FEATS, GROUP)
    assert glob["mean_abs_shap"].is_monotonic_decreasing
    assert glob["share"].sum() == pytest.approx(1.0)
    assert glob.iloc[0]["feature"] in {"a1", "b1", "colour"}
    fam = E.family_importance(contrib, FEATS, GROUP)
    assert set(fam["family"]) == {"A", "B", "C"}
    assert fam["n_features"].sum() == len(FEATS)
    # |sum| <= sum |.|: a family's grouped importance never exceeds its members' total
    assert (fam["mean_abs_shap"] <= fam["sum_feature_mean_abs_shap"] + 1e-12).all()
    assert fam["top_reason_share"].sum() == pytest.approx(1.0)
