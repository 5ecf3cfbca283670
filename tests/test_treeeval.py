"""The compiled tree evaluator (models/treeeval.py) gives LightGBM's raw scores (1e-12, in practice the same bits)."""

from __future__ import annotations

import numpy as np
import pytest

from models import treeeval as E


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 4] = rng.integers(0, 40, n)  # categorical codes (more than 32 levels: two bitset words)
    X[:, 5] = rng.integers(0, 3, n)  # a small categorical (one-hot style splits)
    X[rng.random(n) < 0.1, 0] = np.nan
    X[rng.random(n) < 0.2, 1] = 0.0
    X[rng.random(n) < 0.05, 4] = np.nan
    y = (
        X[:, 1]
        + np.nan_to_num(X[:, 0]) * X[:, 2]
        + np.isin(X[:, 4], [1, 4, 7, 33])
        + X[:, 5]
        + rng.normal(size=n)
    )
    return X, (y > 0.8).astype(int)


def _train(X, y, rounds=40, **params):
    import lightgbm as lgb

    base = dict(objective="binary", verbose=-1, min_data_per_group=5, cat_smooth=1, num_threads=1, seed=1)
    return lgb.train({**base, **params}, lgb.Dataset(X, y, categorical_feature=[4, 5]), rounds)


def _hard_rows(seed=3):
    """Rows LightGBM routes by special rules: NaN, zeros, tiny values, unseen/negative/fractional/huge codes."""
    X, _ = _data(2000, seed=seed)
    X[:20, 4] = 45  # unseen level beyond the bitset
    X[20:30, 4] = -1
    X[30:40, 4] = 2.7  # truncates to 2
    X[40:50, 4] = -0.5  # truncates to 0
    X[50:60, 4] = 3e9  # beyond int range
    X[60:80, 5] = np.nan
    X[80:100, 1] = 1e-40  # |x| <= kZeroThreshold: LightGBM drops it from the row (0)
    X[100:120, 1] = -1e-36
    X[120:140, 2] = np.nan
    X[140:160, 3] = np.inf
    X[160:180, 3] = -np.inf
    return X


@pytest.mark.parametrize(
    "params",
    [
        dict(num_leaves=7, max_depth=3),
        dict(num_leaves=15, max_depth=5, zero_as_missing=True),
        dict(num_leaves=31, max_depth=7, max_cat_to_onehot=16),
        dict(num_leaves=20, max_depth=-1, use_missing=False),
        dict(num_leaves=15, max_depth=5, boost_from_average=False, learning_rate=0.3),
    ],
)
def test_raw_scores_equal_lightgbm(params):
    X, y = _data()
    booster = _train(X, y, **params)
    forest = E.build_forest(booster)
    assert forest is not None and forest.n_trees == booster.num_trees()
    Xt = _hard_rows()
    ref = booster.predict(Xt, raw_score=True)
    got = E.predict_raw(forest, Xt)
    np.testing.assert_allclose(got, ref, atol=1e-12, rtol=0)
    assert np.mean(got == ref) > 0.99  # the same additions in the same order: the same bits
    assert len(np.unique(np.round(got, 9))) > 50  # a model that actually separates rows


def test_layouts_threads_and_blocks_give_the_same_scores():
    X, y = _data()
    booster = _train(X, y, num_leaves=15, max_depth=5)
    forest = E.build_forest(booster)
    Xt = np.tile(_hard_rows(), (3, 1))  # several blocks
    a = E.predict_raw(forest, np.ascontiguousarray(Xt))
    b = E.predict_raw(forest, np.asfortranarray(Xt), num_threads=1)
    c = E.predict_raw(forest, Xt[:, :].astype(np.float32))  # converted to float64 first
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        c, booster.predict(Xt.astype(np.float32).astype(np.float64), raw_score=True), atol=1e-12
    )
    assert E.predict_raw(forest, Xt[:0]).shape == (0,)
    with pytest.raises(ValueError, match="feature columns"):
        E.predict_raw(forest, Xt[:, :3])


def test_early_stopping_uses_the_best_iteration_like_predict():
    import lightgbm as lgb

    X, y = _data()
    Xv, yv = _data(1000, seed=5)
    params = dict(objective="binary", verbose=-1, num_leaves=31, learning_rate=0.3, seed=1, num_threads=1)
    train = lgb.Dataset(X, y, categorical_feature=[4, 5])
    booster = lgb.train(
        params, train, 300, valid_sets=[lgb.Dataset(Xv, yv, reference=train)],
        callbacks=[lgb.early_stopping(5, verbose=False)], keep_training_booster=True,
    )  # fmt: skip
    assert 0 < booster.best_iteration < booster.current_iteration()
    forest = E.build_forest(booster)
    assert forest.n_trees == booster.best_iteration
    np.testing.assert_allclose(E.predict_raw(forest, X), booster.predict(X, raw_score=True), atol=1e-12)
    reloaded = lgb.Booster(model_str=booster.model_to_string())  # what ReturnModel.load reads
    np.testing.assert_allclose(
        E.predict_raw(E.build_forest(reloaded), X), reloaded.predict(X, raw_score=True), atol=1e-12
    )


def test_constant_trees_and_unsupported_models():
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    y = (rng.random(500) < 0.3).astype(int)
    flat = lgb.train(dict(objective="binary", verbose=-1, min_gain_to_split=1e9), lgb.Dataset(X, y), 5)
    forest = E.build_forest(flat)
    np.testing.assert_allclose(E.predict_raw(forest, X), flat.predict(X, raw_score=True), atol=1e-12)
    multi = lgb.train(
        dict(objective="multiclass", num_class=3, verbose=-1), lgb.Dataset(X, rng.integers(0, 3, 500)), 3
    )
    assert E.build_forest(multi) is None
    linear = lgb.train(dict(objective="binary", verbose=-1, linear_tree=True), lgb.Dataset(X, y), 3)
    assert E.build_forest(linear) is None


def test_return_model_uses_the_compiled_trees_and_falls_back_to_the_booster(monkeypatch):
    import pandas as pd

    from models import artifact
    from models.calibration import Calibrator

    X, y = _data()
    booster = _train(X, y, num_leaves=15, max_depth=5)
    names = [f"f{i}" for i in range(6)]
    model = artifact.ReturnModel(booster, names, {}, Calibrator("platt", a=1.0, b=0.0))
    df = pd.DataFrame(_hard_rows(), columns=names)
    assert artifact.compiled_forest(booster) is artifact.compiled_forest(booster)  # built once
    fast = model.predict_raw(df)
    np.testing.assert_allclose(fast, booster.predict(df.to_numpy(), raw_score=True), atol=1e-12)
    monkeypatch.setattr(artifact, "compiled_forest", lambda b: None)  # e.g. numba not installed
    np.testing.assert_allclose(model.predict_raw(df), fast, atol=1e-12)
    monkeypatch.undo()
    assert artifact.compiled_forest(object()) is None


@pytest.mark.parametrize(
    "params",
    [
        dict(num_leaves=15, max_depth=5),
        dict(num_leaves=15, max_depth=5, zero_as_missing=True, max_cat_to_onehot=16),
        dict(num_leaves=31, max_depth=6, use_missing=False),
        dict(num_leaves=7, max_depth=7),  # deeper than LANE_MAX_DEPTH: the row kernel
    ],
)
def test_lane_kernel_gives_the_row_kernels_bits(params):
    """Complete trees evaluated with rows as lanes (every node decided for the block, then the path read
    from the decisions) add the same leaves in the same order: the row kernel's and LightGBM's bits."""
    X, y = _data()
    booster = _train(X, y, **params)
    forest = E.build_forest(booster)
    Xt = np.tile(_hard_rows(), (2, 1))[: 3 * E.LANE_ROWS + 5]  # several blocks and a partial one
    lanes = E.predict_raw(forest, Xt)
    np.testing.assert_array_equal(lanes, E.predict_raw(forest, Xt, kernel="rows"))
    np.testing.assert_array_equal(lanes, E.predict_raw(forest, np.asfortranarray(Xt), num_threads=1))
    ref = booster.predict(Xt, raw_score=True)
    np.testing.assert_allclose(lanes, ref, atol=1e-12, rtol=0)
    assert np.mean(lanes == ref) > 0.99
    with pytest.raises(ValueError, match="kernel"):
        E.predict_raw(forest, Xt, kernel="simd")


def test_keep_masks_remove_the_left_subtree_slots():
    """The lane kernel's masks: going right at a node rules out the bottom slots under its left child."""
    full = (1 << 64) - 1
    assert E._keep_mask(0, 2) == full & ~0b0011  # root of a depth-2 tree: slots 0-1 are left
    assert E._keep_mask(1, 2) == full & ~0b0001
    assert E._keep_mask(2, 2) == full & ~0b0100
    assert E._keep_mask(0, 6) == full & ~((1 << 32) - 1)
    assert E._keep_mask(62, 6) == full & ~(1 << 62)  # the last bottom-level node: slot 62 of 0..63
