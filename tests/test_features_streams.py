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
