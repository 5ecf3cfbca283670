"""The tabulated TreeSHAP (models/treeshap.py) gives LightGBM's pred_contrib values exactly."""

from __future__ import annotations

import numpy as np
import pytest

from models import treeshap as T


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 4] = rng.integers(0, 12, n)  # categorical codes
    X[rng.random(n) < 0.1, 0] = np.nan
    X[rng.random(n) < 0.2, 1] = 0.0
    X[rng.random(n) < 0.05, 4] = np.nan
    y = X[:, 1] + np.nan_to_num(X[:, 0]) * X[:, 2] + np.isin(X[:, 4], [1, 4, 7]) + rng.normal(size=n) > 0.3
    return X, y.astype(int)


def _train(X, y, rounds=40, **params):
    import lightgbm as lgb

    base = dict(objective="binary", verbose=-1, min_data_per_group=5, cat_smooth=1, num_threads=1, seed=1)
    return lgb.train({**base, **params}, lgb.Dataset(X, y, categorical_feature=[4]), rounds)


@pytest.mark.parametrize(
    "params",
    [
        dict(num_leaves=7, max_depth=3),
        dict(num_leaves=15, max_depth=4, zero_as_missing=True),
        dict(num_leaves=31, max_depth=6, max_cat_to_onehot=16),
        dict(num_leaves=20, max_depth=-1, use_missing=False),
    ],
)
def test_tables_equal_lightgbm_pred_contrib(params):
    X, y = _data()
    booster = _train(X, y, **params)
    tables = T.build_tables(booster)
    assert tables is not None
    Xt, _ = _data(1500, seed=3)  # other rows: NaNs, zeros, unseen category 20 and negative codes
    Xt[:20, 4] = 20
    Xt[20:30, 4] = -1
    Xt[30:40, 4] = 2.7  # LightGBM truncates codes: 2
    Xt[40:50, 4] = -0.5  # truncates to 0
    Xt[50:60, 4] = 3e9  # beyond int range: right
    Xt[60:80, 1] = 1e-40  # |x| <= 1e-35: LightGBM drops it from the row (0)
    Xt[80:100, 3] = np.inf
    Xt[100:120, 3] = -np.inf
    fast = T.contributions(tables, Xt)
    np.testing.assert_array_equal(fast, T.contributions(tables, np.asfortranarray(Xt)))
    ref = booster.predict(Xt, pred_contrib=True)
    np.testing.assert_allclose(fast, ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(fast.sum(axis=1), booster.predict(Xt, raw_score=True), atol=1e-9)


def test_constant_trees_only_move_the_base_value():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    X = np.column_stack([X[:, :2], np.zeros(500), X[:, 2:], rng.integers(0, 3, 500)])
    booster = _train(X, (rng.random(500) < 0.3).astype(int), rounds=5, min_gain_to_split=1e9)
    fast = T.contributions(T.build_tables(booster), X)
    np.testing.assert_allclose(fast, booster.predict(X, pred_contrib=True), atol=1e-12)
    assert np.allclose(fast[:, :-1], 0)


def test_too_deep_models_are_not_tabulated():
    X, y = _data()
    booster = _train(X, y, rounds=5, num_leaves=40, max_depth=-1, min_data_in_leaf=2)
    assert T.build_tables(booster, max_distinct=2) is None


def test_explain_uses_tables_with_identical_values():
    from models import explain as E

    X, y = _data()
    booster = _train(X, y, num_leaves=7, max_depth=3)

    class M:  # the slice of ReturnModel that compute_contributions uses
        features = [f"f{i}" for i in range(6)]

        def __init__(self, b):
            self.booster = b

        def encode(self, df):
            return df.to_numpy(dtype=np.float64)

        def contributions(self, df):
            return self.booster.predict(self.encode(df), pred_contrib=True)

    import pandas as pd

    df = pd.DataFrame(X, columns=M.features)
    m = M(booster)
    a = E.compute_contributions(m, df, batch_size=700, method="tables", num_threads=2)
    b = E.compute_contributions(m, df, method="lightgbm")
    np.testing.assert_allclose(a, b, atol=1e-9)
    with pytest.raises(ValueError, match="not one of"):
        E.compute_contributions(m, df, method="fast")


@pytest.mark.parametrize("params", [dict(num_leaves=15, max_depth=5), dict(num_leaves=31, max_depth=6)])
def test_lane_kernel_gives_the_row_kernels_bits(params):
    """The default kernel (rows as SIMD lanes) adds every term in the row kernel's order: the same bits,
    over several blocks and a partial one, in both memory layouts."""
    X, y = _data()
    booster = _train(X, y, **params)
    tables = T.build_tables(booster)
    Xt, _ = _data(2 * T.LANE_ROWS + 77, seed=4)
    Xt[:15, 4] = 20
    Xt[15:25, 4] = -1
    Xt[25:40, 1] = 1e-40
    lanes = T.contributions(tables, Xt)
    np.testing.assert_array_equal(lanes, T.contributions(tables, Xt, kernel="rows"))
    np.testing.assert_array_equal(lanes, T.contributions(tables, np.asfortranarray(Xt), kernel="lanes"))
    np.testing.assert_allclose(lanes, booster.predict(Xt, pred_contrib=True), atol=1e-9, rtol=0)
    assert T.contributions(tables, Xt[:0]).shape == (0, Xt.shape[1] + 1)
    with pytest.raises(ValueError, match="kernel"):
        T.contributions(tables, Xt, kernel="simd")
