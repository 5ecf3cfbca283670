"""ReturnModel: categorical encoding (unseen levels), save/load round trip, contributions, bad input."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from models.artifact import (
    FeatureFrameError,
    ReturnModel,
    encode_categorical,
    encode_frame,
    encode_numeric,
    learn_levels,
)
from models.calibration import Calibrator


def test_levels_are_sorted_strings_and_rare_ones_dropped():
    s = pd.Series(["b", "a", "b", None, "c", "b", "a"], dtype="str")
    assert learn_levels(s) == ["a", "b", "c"]
    assert learn_levels(s, min_count=2) == ["a", "b"]
    assert learn_levels(pd.Series([3, 1, 3])) == ["1", "3"]


def test_unseen_and_missing_categories_encode_as_nan():
    codes = encode_categorical(pd.Series(["b", "zzz", None, "a"], dtype="str"), ["a", "b"])
    np.testing.assert_array_equal(codes[[0, 3]], [1.0, 0.0])
    assert np.isnan(codes[1]) and np.isnan(codes[2])


def test_category_object_and_str_columns_encode_identically():
    values = ["x", "y", None, "x"]
    levels = ["x", "y"]
    a = encode_categorical(pd.Series(values, dtype="str"), levels)
    b = encode_categorical(pd.Series(values, dtype="category"), levels)
    c = encode_categorical(pd.Series(values, dtype=object), levels)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_numeric_encoding_handles_ints_bools_nullable_and_rejects_text():
    np.testing.assert_array_equal(encode_numeric(pd.Series([1, 2]), "n"), [1.0, 2.0])
    np.testing.assert_array_equal(encode_numeric(pd.Series([True, False]), "b"), [1.0, 0.0])
    out = encode_numeric(pd.Series(pd.array([1, None], dtype="Int64")), "n")
    assert out[0] == 1.0 and np.isnan(out[1])
    with pytest.raises(FeatureFrameError, match=r"'price', row 1: value 'abc' is not numeric"):
        encode_numeric(pd.Series(["1.5", "abc"], dtype=object), "price")


def test_missing_feature_column_is_named():
    with pytest.raises(FeatureFrameError, match=r"missing feature column\(s\) \['b'\]"):
        encode_frame(pd.DataFrame({"a": [1.0]}), ["a", "b"], {})


@pytest.fixture(scope="module")
def model() -> ReturnModel:
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame(
        {
            "color": pd.Series(rng.choice(["red", "blue", "green"], n), dtype="str"),
            "price": rng.lognormal(3, 0.5, n),
        }
    )
    y = (rng.random(n) < np.where(df["color"] == "red", 0.6, 0.2)).astype(float)
    levels = {"color": learn_levels(df["color"])}
    X = encode_frame(df, ["color", "price"], levels)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 7, "seed": 1, "deterministic": True},
        lgb.Dataset(X, y, feature_name=["color", "price"], categorical_feature=[0]),
        num_boost_round=30,
    )
    return ReturnModel(
        booster, ["color", "price"], levels, Calibrator("platt", a=0.9, b=-0.1), 0.3, {"name": "t"}
    )


def test_unseen_category_scores_like_missing(model):
    df = pd.DataFrame({"color": pd.Series(["purple", None], dtype="str"), "price": [20.0, 20.0]})
    p = model.predict_proba(df)
    assert np.isfinite(p).all()
    assert p[0] == p[1], "an unseen level is routed exactly like a missing one"


def test_save_load_round_trip_is_exact(model, tmp_path):
    df = pd.DataFrame(
        {
            "color": pd.Series(["red", "blue", "green", "teal"], dtype="category"),
            "price": [5.0, 50.0, 500.0, np.nan],
        }
    )
    model.save(tmp_path)
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["categorical"] == {"color": ["blue", "green", "red"]}
    assert spec["calibration"] == {"method": "platt", "a": 0.9, "b": -0.1}
    again = ReturnModel.load(tmp_path)
    np.testing.assert_array_equal(again.predict_proba(df), model.predict_proba(df))
    assert again.threshold == 0.3 and again.metadata == {"name": "t"}
    assert not list(tmp_path.glob("*.tmp")), "no temporary files are left behind"


def test_contributions_add_up_to_the_raw_score(model):
    df = pd.DataFrame({"color": pd.Series(["red", "blue", None], dtype="str"), "price": [10.0, 30.0, 60.0]})
    contrib = model.contributions(df)
    assert contrib.shape == (3, 3)
    np.testing.assert_allclose(contrib.sum(axis=1), model.predict_raw(df), atol=1e-9)


def test_empty_frame_gives_empty_outputs(model):
    empty = pd.DataFrame({"color": pd.Series([], dtype="str"), "price": pd.Series([], dtype=float)})
    assert model.predict_proba(empty).shape == (0,)
    assert model.contributions(empty).shape == (0, 3)


def test_load_refuses_an_incomplete_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="booster.txt"):
        ReturnModel.load(tmp_path)
