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
