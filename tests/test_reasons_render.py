"""Fast sentence rendering (codes into distinct strings) says exactly what per-line formatting says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import reasons as R

# halves (round half to even), negatives, signed zeros, big numbers, NaN and infinities-free floats
VALUES = np.array(
    [0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.004999, 0.005, 0.015, 0.125, 0.995, 1.0, 2.0, 3.0, 9.4, 9.5,
     10.5, 12.0, 99.5, 1234.5, 2347.0, 2350.0, 2250.0, -2350.0, 1e7 + 0.5, 123456789.25, np.nan, 1 / 3, 2 / 3]
)  # fmt: skip


def _per_value(fn, x):
    return ["?" if np.isnan(v) else fn(float(v)) for v in x]


def _words(v):
    a = abs(round(v))
    return R._WORDS[a] if a < 10 else f"{a}"


@pytest.mark.parametrize(
    ("fast", "slow"),
    [
        (R.fmt_int, lambda v: f"{round(v):,}"),
        (lambda x: R.fmt_round(x, 100), lambda v: f"{round(v / 100) * 100:,}"),
        (lambda x: R.fmt_num(x, 1), lambda v: f"{v:,.1f}"),
        (lambda x: R.fmt_num(x, 2), lambda v: f"{v:,.2f}"),
        (R.fmt_pct, lambda v: f"{round(100 * v)}%"),
        (R.fmt_count_word, _words),
        (R.times, lambda v: {1: "once", 2: "twice"}.get(round(v), f"{round(v):,} times")),
    ],
)
def test_formatters_equal_python_formatting_of_each_value(fast, slow):
    rng = np.random.default_rng(3)
    x = np.concatenate([VALUES, rng.choice(VALUES, 200), rng.normal(0, 50, 100).round(3)])
    got = fast(x)
    assert isinstance(got, R.Text)
    assert got.tolist() == _per_value(slow, x)
    assert fast(x[:0]).tolist() == []


def test_plural_cat_and_choose_match_per_line_strings():
    x = np.array([1.0, 2.0, np.nan, 1.0, 0.0])
    assert R.plural(x, " item", " items").tolist() == [" item", " items", " items", " item", " items"]
    a = R.Text.of(np.array(["x", "y", "x", "z", "y"], dtype=object))
    nums = R.fmt_int(np.array([1.0, 2.0, 1.0, np.nan, 2.0]))
    joined = R.cat("<", a, "|", nums, R.plural(x, "", "s"), ">")
    assert joined.tolist() == ["<x|1>", "<y|2s>", "<x|1s>", "<z|?>", "<y|2s>"]
    picked = R.choose([x == 1, x == 0], [joined, "zero"], R.either(np.isnan(x), "none", a))
    assert picked.tolist() == ["<x|1>", "y", "none", "<z|?>", "zero"]
    ladder = R.choose([x >= 2, x >= 1, x >= 0], ["two+", R.fmt_int(x), "zero+"], "nan")  # first true wins
    assert ladder.tolist() == ["1", "two+", "nan", "1", "zero+"]
    assert R.cat("a", "b") == "ab"
    assert R.cat("n=", R.fmt_int(np.array([]))).tolist() == []


def test_cat_with_more_combinations_than_one_integer_key_holds():
    rng = np.random.default_rng(0)
    n = 3000
    parts = [rng.integers(0, 2000, n).astype(float) for _ in range(7)]  # 2000**7 > 2**62
    texts = [R.fmt_int(p) for p in parts]
    got = R.cat(*[piece for t in texts for piece in (t, "-")])
    expected = ["".join(f"{round(p[i]):,}-" for p in parts) for i in range(n)]
    assert got.tolist() == expected


def test_text_and_num_columns_convert_like_pandas_per_line():
    frame = pd.DataFrame(
        {
            "cat_str": pd.Categorical(["b", None, "a", "b"]),
            "cat_num": pd.Categorical([1.0, 2.5, None, 1.0]),
            "obj": np.array(["x", None, "y", "x"], dtype=object),
            "ints": [1, 2, 3, 4],
            "nullable": pd.array([1, None, 3, 4], dtype="Int64"),
            "flags": pd.array([True, None, False, True], dtype="boolean"),
        }
    )
    lines = R.Lines(frame, np.array([3, 0, 1, 2, 1]))
    for col in frame.columns:
        expected = frame[col].astype("string").fillna("unknown").to_numpy(dtype=object)[lines.rows]
        assert lines.text(col).tolist() == expected.tolist(), col
        if col.startswith(("ints", "nullable", "flags")):
            want = frame[col].astype("Float64").to_numpy(np.float64, na_value=np.nan)[lines.rows]
            np.testing.assert_array_equal(lines.num(col), want)
    assert lines.text("absent", "").tolist() == [""] * 5


# ------------------------------------------------------------------ every template, batch vs line by line
def _varied_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Every template's columns with values that hit each branch: zeros, ones, halves, NaN, unknown labels."""
    from pipeline.contract import SIZE_SCALES

    rng = np.random.default_rng(seed)
    feats = sorted({f for r in R.REASONS.values() for f in r.features if f != "category"})

    def col(kind: str) -> np.ndarray:
        if kind == "share":
            v = rng.choice([0.0, 0.005, 0.125, 0.25, 0.4, 0.5, 0.62, 0.85, 1.0, 1.15, 1.5], n)
        elif kind == "count":
            v = rng.choice([0.0, 1.0, 2.0, 3.0, 9.0, 12.0, 25.0, 1500.0, -1.0, 0.5, 2.5], n)
        else:
            v = rng.normal(0, 400, n)
            v = np.choose(rng.integers(0, 3, n), [v.round(), v.round(1), v.round(2)])
        v[rng.random(n) < 0.15] = np.nan
        return v

    frame = pd.DataFrame(
        {
            f: col(
                "share"
                if f.endswith(("rate", "share", "prob", "discount", "median", "mean"))
                else "count"
                if f.startswith(("n_", "cust_", "product_", "same_", "basket", "quantity", "size_vs"))
                else "other"
            )
            for f in feats
        }
    )
    for f in ("size_prob_too_small", "size_prob_too_large", "size_fit_prob"):
        frame[f] = rng.choice([0.05, 0.3, 0.4, 0.62, np.nan], n)
    frame["cross_border"] = rng.choice([0.0, 1.0, np.nan], n)
    labels = sorted({s for scale in SIZE_SCALES.values() for s in scale} | {"one size"})
    frame["size"] = pd.Categorical(rng.choice([*labels, None], n))
    frame["size_type"] = rng.choice([*SIZE_SCALES, "other", None], n)
    frame["category"] = pd.Categorical(rng.choice(["dresses", "shoes", None], n))
    frame["channel"] = rng.choice(["app", "web", "marketplace"], n)
    frame["payment_method"] = pd.Categorical(
        rng.choice(["cod", "gift_card", "paypal", "bank_transfer", None], n)
    )
    frame["warehouse_country"] = pd.Categorical(rng.choice(["DE", "NL"], n))
    frame["ship_country"] = rng.choice(["ES", "DE", None], n)
    frame["generic_text"] = rng.choice(["p", "q", None], n)
    contrib = rng.normal(0, 1, (n, len(feats) + 1))
    contrib[rng.random(contrib.shape) < 0.2] = 0.0  # ties: argmax takes the first group
    return frame, contrib, feats


def test_every_template_renders_the_same_in_a_batch_as_line_by_line():
    frame, contrib, feats = _varied_frame(90, seed=11)
    codes = [*R.REASONS, "feature:cust_returns", "feature:generic_text", "feature:no_such_column"]
    rows = np.random.default_rng(1).permutation(len(frame))
    for code in codes:
        batch = R.render(code, R.Lines(frame, rows, contrib=contrib, features=feats)).tolist()
        one_by_one = [
            R.render(code, R.Lines(frame, np.array([r]), contrib=contrib, features=feats)).tolist()[0]
            for r in rows
        ]
        assert batch == one_by_one, code
        assert all(isinstance(s, str) and s and "nan" not in s for s in batch), code
        assert len(set(batch)) > 1 or code == "feature:no_such_column", code  # the frame varies each sentence


def test_render_reasons_slots_equal_each_reason_rendered_alone():
    frame, contrib, feats = _varied_frame(120, seed=5)
    codes = list(R.REASONS)
    rng = np.random.default_rng(2)
    idx = np.stack([rng.permutation(len(codes))[:3] for _ in range(len(frame))])
    idx[rng.random(idx.shape) < 0.25] = -1
    slots = R.render_reasons(idx, codes, frame, contrib=contrib, features=feats)
    assert len(slots) == 3
    for j, got in enumerate(slots):
        assert got.dtype == object and len(got) == len(frame)
        for i in range(len(frame)):
            c = idx[i, j]
            if c >= 0:
                line = R.Lines(frame, np.array([i]), contrib=contrib, features=feats)
                assert got[i] == R.render(codes[c], line).tolist()[0]
            else:
                assert got[i] == (R.NO_REASON if j == 0 else None)
    assert R.render_reasons(idx[:, :0], codes, frame) == []
    empty = R.render_reasons(idx[:0], codes, frame.iloc[:0], contrib=contrib[:0], features=feats)
    assert [s.tolist() for s in empty] == [[], [], []]
