"""Stream evaluation through the build: chunked assembly (the scan itself: tests/test_features_scan.py)."""

from __future__ import annotations


def test_chunked_parquet_assembly_equals_one_chunk_in_memory(small_generated, tmp_path):
    """featurize_to_parquet in many small chunks = build_features in one: same rows, order and values."""
    import pandas as pd

    from features.build import build_features, featurize_to_parquet
    from pipeline.io import read_meta

    tables = {p.stem: p for p in small_generated.raw.glob("*.parquet")}
    cutoff = read_meta(small_generated.raw)["cutoff"]
    whole, report = build_features(tables, cutoff)
    out = tmp_path / "features.parquet"
    rep = featurize_to_parquet(tables, cutoff, out, {"featurize": {"assembly_chunk_rows": 97}})
    chunked = pd.read_parquet(out)
    assert rep["rows"] == report["rows"] == len(whole) > 5 * 97
    # qi order: (order_ts, line_id), the same in both
    assert chunked["line_id"].tolist() == whole["line_id"].tolist()
    assert whole.set_index(["order_ts", "line_id"]).index.is_monotonic_increasing
    for c in whole.columns:
        a, b = whole[c], chunked[c]
        if a.dtype == "category":
            a, b = a.astype(str), b.astype(str)
        assert a.equals(b), c


def test_stream_columns_share_a_mask_bitmap_and_equal_pa_array():
    """The scan's columns of one stream share a null mask: converted once, the arrays are still exactly
    pa.array(values, mask=mask), whatever the dtype, with or without nulls, and for a new mask object."""
    import numpy as np
    import pyarrow as pa

    from features.streams import _with_nulls

    rng = np.random.default_rng(3)
    mask = rng.random(1000) < 0.3
    none = np.zeros(1000, bool)
    cache: dict = {}
    for values, m in [
        (rng.integers(0, 9, 1000).astype(np.int32), mask),
        (rng.integers(0, 9, (2, 1000)).astype(np.int32)[1], mask),  # a row of the scan's 2-D output
        (rng.integers(0, 9, 1000).astype(np.int64), none),
        (rng.integers(0, 9, 1000).astype(np.int64), mask.copy()),
    ]:
        got = _with_nulls(values, m, cache)
        assert got.equals(pa.array(values, mask=m)) and got.null_count == int(m.sum())
    assert len(cache) == 3  # one bitmap per distinct mask object


def test_line_codes_encode_each_column_in_qi_order_whatever_the_threads():
    """Batches, text with NULLs, integer ids, floats and a fetch out of qi order: codes equal exactly for
    equal values (NULL: one code past the others), NaN for NULL floats, and the same arrays on 1 or 2 threads."""
    import numpy as np
    import pandas as pd

    from features.engine import Context, FeaturizeParams, connect
    from features.streams import line_codes

    rng = np.random.default_rng(3)
    n = 1000
    ln = pd.DataFrame(
        {
            "qi": rng.permutation(n),
            "is_target": True,
            "category": rng.choice(["a", "b", "c", None], n),
            "order_id": pd.array(
                np.where(rng.random(n) < 0.1, None, rng.integers(10**9, 10**9 + 50, n)), "Int64"
            ),
            "price": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
        }
    )
    results = []
    for threads in (1, 2):
        p = FeaturizeParams(threads=threads)
        con = connect(p)
        con.register("ln_src", ln)
        con.execute("CREATE TEMP TABLE ln AS SELECT * FROM ln_src")
        ctx = Context(con, p, set(), {"target_lines": n})
        results.append(line_codes(ctx, {"c": "category", "o": "order_id"}, {"u": "price"}, batch_rows=128))
        con.close()
    by_qi = ln.sort_values("qi")
    for k, column in (("c", "category"), ("o", "order_id")):
        codes, n_codes, ok = results[0][k]
        np.testing.assert_array_equal(ok, by_qi[column].notna().to_numpy())
        pairs = set(zip(by_qi[column].astype(object).fillna("NULL").astype(str), codes.tolist(), strict=True))
        assert len(pairs) == len({v for v, _ in pairs}) == len({c for _, c in pairs})
        assert codes.min() >= 0 and codes.max() < n_codes
        assert (codes[~ok] == n_codes - 1).all()
    np.testing.assert_array_equal(results[0]["u"][0], by_qi["price"].to_numpy())
    for k in ("c", "o", "u"):
        for a, b in zip(results[0][k], results[1][k], strict=True):
            np.testing.assert_array_equal(a, b)
