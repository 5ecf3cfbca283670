"""The model matrix straight from Arrow (`encode_table`, the scorer's path) equals the pandas path bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from models.artifact import FeatureFrameError, encode_frame, encode_table


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(size=n)
    x[::7] = np.nan  # a NaN value (not a null)
    mask = np.zeros(n, dtype=bool)
    mask[3::11] = True  # nulls
    cats = np.array(["a", "b", "c", "zz", ""], dtype=object)[rng.integers(0, 5, n)]
    cats[5::13] = None
    a = pa.table(
        {
            "x": pa.array(x, mask=mask),
            "k": pa.array(rng.integers(-3, 40, n), type=pa.int32()),
            "flag": pa.array(rng.random(n) < 0.3),
            "cat": pa.array(cats, type=pa.string()),
            "cat2": pa.array(cats[::-1], type=pa.string()).dictionary_encode(),
            "unused": pa.array(np.arange(n)),
        }
    )
    return pa.concat_tables([a.slice(0, 400), a.slice(400)])  # two chunks per column


def test_encode_table_equals_the_pandas_frame_path():
    table = _table()
    features = ["cat", "x", "k", "flag", "cat2"]
    levels = {"cat": ["a", "c", ""], "cat2": ["b", "zz", "q"]}  # "b", "zz" unseen for cat; "q" never seen
    df = table.to_pandas()
    for c in ("cat", "cat2"):  # as features.build.to_frame hands the frame over
        df[c] = df[c].astype("category")
    want = encode_frame(df, features, levels, order="F")
    got = encode_table(table, features, levels)
    assert got.flags.f_contiguous and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)  # NaN in the same places, the same bits elsewhere
    assert np.isnan(got[:, 0]).sum() > 100 and np.isnan(got[:, 1]).sum() > 100
    assert set(np.unique(got[~np.isnan(got[:, 0]), 0])) == {0.0, 1.0, 2.0}


def test_encode_table_refuses_missing_and_text_columns():
    table = _table()
    with pytest.raises(FeatureFrameError, match="missing feature column"):
        encode_table(table, ["x", "nope"], {})
    with pytest.raises(FeatureFrameError, match="'cat'.*not numeric"):
        encode_table(table, ["cat"], {})
    empty = encode_table(table.slice(0, 0), ["x", "cat"], {"cat": ["a"]})
    assert empty.shape == (0, 2)


def test_return_model_scores_the_same_from_arrow_and_pandas(small_project):
    """On the real model and features: probabilities from `encode_table` equal `predict_proba(frame)`."""
    from features.build import to_frame
    from models.artifact import ReturnModel
    from pipeline.scoring import predict_proba

    model = ReturnModel.load(small_project.path("model"))
    feats = pd.read_parquet(small_project.path("features") / "features.parquet")
    table = pa.Table.from_pandas(feats.astype({c: object for c in model.categorical_features}).head(3000),
                                 preserve_index=False)  # fmt: skip
    want = model.predict_proba(to_frame(table))
    got = predict_proba(model, None, model.encode_table(table))
    np.testing.assert_array_equal(got, want)
