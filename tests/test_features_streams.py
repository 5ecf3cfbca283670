"""The scan engine's merge order: (key, time, kind) exactly, whether or not the packed key fits 63 bits."""

from __future__ import annotations

import numpy as np
import pytest

from features.streams import merge_order


def _exact(g, t, kind):
    return np.lexsort((kind, t, g))


@pytest.mark.parametrize(
    ("n_groups", "t_span", "threads"),
    [
        (50, 10**6, 1),  # packed key fits: one exact sort
        (2**20, 2**45, 1),  # does not fit: coarse sort, checked (no close timestamps -> kept)
        (2**20, 2**45, 2),  # same, split over two sorting threads
    ],
)
def test_merge_order_sorts_by_key_time_kind(n_groups, t_span, threads):
    rng = np.random.default_rng(3)
    n = 1_200_000 if threads > 1 else 20_000
    g = rng.integers(0, n_groups, n)
    t = 1_700_000_000_000_000 + rng.integers(0, t_span, n)
    t[1::7] = t[::7][: len(t[1::7])]  # exact ties between rows
    kind = rng.integers(0, 2, n)
    perm, gs = merge_order(g, n_groups, t, kind, threads)
    key = np.stack([g, t, kind])[:, perm]
    exact = np.stack([g, t, kind])[:, _exact(g, t, kind)]
    assert np.array_equal(key, exact) and np.array_equal(gs, g[perm])


def test_merge_order_falls_back_when_dropped_bits_would_misorder():
    # many groups and a wide time range force dropping low time bits; timestamps 1 us apart in the
    # same group then tie on the coarse key, and a query (kind 0) must still follow an earlier event
    g = np.array([5, 5, 5, 2**21 - 1], dtype=np.int64)
    t = np.array([2**46 + 3, 2**46 + 2, 0, 7], dtype=np.int64)
    kind = np.array([0, 1, 1, 0], dtype=np.int64)
    perm, _ = merge_order(g, 2**21, t, kind)
    assert perm.tolist() == [2, 1, 0, 3]


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
