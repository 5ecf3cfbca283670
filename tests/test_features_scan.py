"""The one-pass scan (features/scan.py) against the window SQL reference and against plain numpy."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.engine import Context, FeaturizeParams, connect
from features.scan import key_codes
from features.streams import Events, Running, build_streams


def test_key_codes_group_equal_tuples_across_row_sets():
    a = [pa.chunked_array([[1, 2, None, 2]]), pa.chunked_array([["x", "y", "x", None]])]
    b = [pa.chunked_array([[2, 1, None]]), pa.chunked_array([[None, "x", "x"]])]
    (ca, cb), n = key_codes([a, b])
    rows = list(zip([1, 2, None, 2, 2, 1, None], ["x", "y", "x", None, None, "x", "x"], strict=True))
    codes = np.concatenate([ca, cb])
    for i in range(len(rows)):
        for j in range(len(rows)):
            assert (codes[i] == codes[j]) == (rows[i] == rows[j])
    assert codes.max() < n <= len(set(rows)) + 1


def test_key_codes_written_into_given_arrays_equal_the_returned_ones():
    sets = [
        [[pa.chunked_array([[3, None, 7], [3]])], [pa.array([7, 9, None])]],  # one integer key, NULLs
        [[pa.array(["a", "b", None])], [pa.array([None, "b", "c"])]],  # text
        [[pa.array([1, 2, 2]), pa.array(["x", "y", "x"])], [pa.array([2, 1]), pa.array(["x", "x"])]],
        [[pa.array([10**12, 5])], [pa.array([5, None])]],  # sparse: densified
    ]
    for parts in sets:
        expect, n = key_codes(parts)
        out = [np.full(len(p[0]), -7, np.int32) for p in parts]
        got, m = key_codes(parts, out)
        assert m == n and all(g is o for g, o in zip(got, out, strict=True))
        for e, o in zip(expect, out, strict=True):
            np.testing.assert_array_equal(e, o)


def test_key_codes_of_sparse_ids_stay_dense():
    ids = [pa.array([10**12, 5, 10**12 + 2**30]), pa.array([5, None])]
    (a, b), n = key_codes([[ids[0]], [ids[1]]])
    assert n <= 4 and a[1] == b[0] and len({*a.tolist(), *b.tolist()}) == 4


def _toy_ctx(seed: int, n_lines: int = 400, n_events: int = 900, threads: int = 1) -> Context:
    """ln (target lines in qi order) and an event table `ev`, with ties, NULL keys and NULL values."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-01-01")
    ts = np.sort(rng.integers(0, 60, n_lines)) * pd.Timedelta(hours=1) + t0
    ln = pd.DataFrame(
        {
            "qi": np.arange(n_lines),
            "is_target": True,
            "order_ts": ts,
            "customer_id": rng.integers(1, 12, n_lines),
            "category": rng.choice(["a", "b", "c"], n_lines),
            "product_id": rng.integers(100, 106, n_lines).astype(float),
            "size_type": rng.choice(["alpha", "shoe"], n_lines),
            "size_rank": np.where(rng.random(n_lines) < 0.3, np.nan, rng.integers(0, 5, n_lines)),
        }
    )
    ln.loc[rng.random(n_lines) < 0.05, "category"] = None
    ev = pd.DataFrame(
        {
            "customer_id": rng.integers(1, 13, n_events),
            "category": rng.choice(["a", "b", "c", "d"], n_events),
            "product_id": rng.integers(99, 106, n_events).astype(float),
            "size_type": rng.choice(["alpha", "shoe"], n_events),
            "ts": rng.integers(-5, 65, n_events) * pd.Timedelta(hours=1) + t0,
            "val": rng.normal(size=n_events).round(3),
            "w": rng.integers(-2, 4, n_events).astype(float),
            "stamp": rng.integers(0, 10**6, n_events) * pd.Timedelta(seconds=1) + t0,
        }
    )
    ev.loc[rng.random(n_events) < 0.05, "category"] = None
    ev.loc[rng.random(n_events) < 0.1, "ts"] = pd.NaT
    ev.loc[rng.random(n_events) < 0.2, "stamp"] = pd.NaT
    ev.loc[rng.random(n_events) < 0.1, "val"] = np.nan
    p = FeaturizeParams(threads=threads)
    con = connect(p)
    con.register("ln_src", ln)
    con.execute("CREATE TABLE ln AS SELECT * FROM ln_src")
    con.register("ev_src", ev)
    con.execute("CREATE TABLE ev AS SELECT * FROM ev_src")
    return Context(con, p, set(), {"target_lines": n_lines})


RUNS = [
    Running("customer", "n"),
    Running("customer", "v"),
    Running("customer", "w"),
    Running("customer", "last_stamp", "last"),
    Running("customer", "first_stamp", "first"),
    Running("customer_category", "cn"),
    Running("customer_size", "sn"),
    Running("product", "pn"),
    Running("product", "pv"),
    *(Running("customer_size", f"h{i}") for i in range(4)),  # one-hot: a histogram of w
    *(Running("product", f"a{i}") for i in range(3)),  # three values per event, not one-hot
    Running("customer_size", "hw"),  # with the one-hot group: a constant and a dense column
    Running("customer_size", "hx"),
]
EVENTS = [
    Events(
        "customer", "FROM ev", "ts", {"n": "1.0", "v": "val", "last_stamp": "stamp", "first_stamp": "stamp"}
    ),
    Events("customer", "FROM ev WHERE w > 0", "ts", {"w": "w", "n": "1.0"}),
    Events("customer_category", "FROM ev", "ts", {"cn": "1.0"}),
    Events("customer_size", "FROM ev WHERE w <> 0", "ts", {"sn": "w"}),
    Events("product", "FROM ev", "ts", {"pn": "1.0", "pv": "val * 2"}),
    Events(
        "customer_size",
        "FROM ev",
        "ts",
        {
            "hw": "CAST(2.0 AS DOUBLE) + 0.0 * w",
            "hx": "val * 3",
            **{f"h{i}": f"CASE WHEN w = {i} THEN 1.0 ELSE 0.0 END" for i in range(4)},
        },
    ),
    Events(
        "customer_size",
        "FROM ev WHERE w < 0",
        "ts",
        {f"h{i}": f"CASE WHEN w = {i - 2} THEN -1.0 ELSE 0.0 END" for i in range(4)},
    ),
    Events("product", "FROM ev WHERE val IS NOT NULL", "stamp", {"a0": "w", "a1": "w * 2", "a2": "val"}),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scan_equals_window_sql_on_random_streams(seed):
    frames = {}
    for method in ("scan", "sql"):
        ctx = _toy_ctx(seed)
        build_streams(ctx, RUNS, EVENTS, method=method)
        table = ctx.con.sql("SELECT * FROM sx0 ORDER BY qi").to_arrow_table()
        frames[method] = table.to_pandas()
        frames[f"{method}_types"] = {f.name: str(f.type) for f in table.schema}
        ctx.con.close()
    scan, sql = frames["scan"], frames["sql"]
    assert scan["n"].notna().all() and (scan["n"] > 0).any() and scan["last_stamp"].notna().any()
    assert scan["sn"].isna().any() and scan["sn"].notna().any()  # lines without a customer_size query row
    for c in ("n", "w", "cn", "sn", "pn", "last_stamp", "first_stamp", "h0", "h1", "h2", "h3", "a0", "a1"):
        pd.testing.assert_series_equal(scan[c], sql[c], check_dtype=False, check_exact=True, obj=c)
    for c in ("v", "pv", "a2", "hw", "hx"):
        pd.testing.assert_series_equal(scan[c], sql[c], check_dtype=False, rtol=1e-12, atol=1e-12, obj=c)
    assert (scan["h1"] > 0).any() and (scan["h0"] < 0).any()
    # counts are exact integers in the scan's table
    types = frames["scan_types"]
    assert types["n"] == types["h2"] == types["sn"] == "int32" and types["a2"] == "double"


@pytest.mark.parametrize("seed", [1, 2])
def test_scan_split_over_threads_equals_one_pass(seed):
    """Streams split over two kernel runs give the single pass's values bit for bit (same operations
    on the same state in the same order), counts, float sums, one-hot groups and last/first alike."""
    from features.scan import ALL_KEYS, KEY_RESIDUES, _partition

    tables = {}
    for threads in (1, 2):
        ctx = _toy_ctx(seed, threads=threads)
        build_streams(ctx, RUNS, EVENTS, method="scan")
        tables[threads] = ctx.arrow["sx0"]
        if threads == 2:  # the four streams share `ev`: one pass, really split in two
            assert ctx.timings["scan_kernel_cpu_s"] >= ctx.timings["scan_kernel_cpu_max_s"] > 0
        ctx.con.close()
    assert tables[1].equals(tables[2])
    every = ALL_KEYS
    assert _partition(np.array([5.0, 1.0, 3.0, 2.0]), 2) == [{0: every, 1: every}, {2: every, 3: every}]
    # one dominant stream: split by key residue class, the two runs owning complementary halves
    a, b = _partition(np.array([50.0, 1.0, 3.0]), 2)
    assert a[0] | b[0] == every and a[0] & b[0] == 0 and bin(a[0]).count("1") == KEY_RESIDUES // 2
    assert {1, 2} <= set(a) | set(b)
    assert _partition(np.array([5.0, 1.0]), 1) == [{0: every, 1: every}]


@pytest.mark.parametrize("seed", [1, 2])
def test_scan_split_by_key_equals_one_pass(seed, monkeypatch):
    """Every stream split by key residue class over two concurrent runs (each run applying and reading
    only the keys it owns) gives the single pass's table bit for bit."""
    import features.scan as scan

    ctx = _toy_ctx(seed, threads=1)
    build_streams(ctx, RUNS, EVENTS, method="scan")
    one = ctx.arrow["sx0"]
    ctx.con.close()
    half = sum(1 << r for r in range(0, scan.KEY_RESIDUES, 2))
    split = [{}, {}]

    def by_key(work, threads):
        split[0] = {s: half for s in range(len(work))}
        split[1] = {s: scan.ALL_KEYS ^ half for s in range(len(work))}
        return split

    monkeypatch.setattr(scan, "_partition", by_key)
    ctx = _toy_ctx(seed, threads=2)
    build_streams(ctx, RUNS, EVENTS, method="scan")
    assert split[0], "the split partition was not used"
    assert ctx.timings["scan_kernel_cpu_s"] >= ctx.timings["scan_kernel_cpu_max_s"] > 0
    assert ctx.arrow["sx0"].equals(one)
    ctx.con.close()


def test_streams_sharing_a_source_share_a_pass():
    from features.streams import _sharing_groups

    evs = {
        "customer": [
            Events("customer", "FROM ln", "resolved_ts"),
            Events("customer", "FROM ret", "return_ts"),
        ],
        "customer_size": [Events("customer_size", "FROM ln WHERE size_rank IS NOT NULL", "window_end")],
        "product": [Events("product", "FROM ln", "resolved_ts")],
        "customer_category": [Events("customer_category", "FROM ln", "first_return_ts")],
    }
    assert _sharing_groups(evs) == [["customer", "product"], ["customer_size"], ["customer_category"]]


def test_constant_value_expressions_are_not_fetched():
    from features.scan import _literal

    assert _literal("1.0") == 1.0 and _literal(" -CAST(1.0 AS DOUBLE)") == -1.0
    assert _literal("(+CAST(2.5 AS DOUBLE))") == 2.5
    assert _literal("(CAST(2.0 AS DOUBLE)) * (size_rank)") is None and _literal("compound") is None


@pytest.mark.parametrize("kind", ["shuffled", "ties", "nearly_sorted", "sorted", "extremes"])
def test_time_order_is_numpys_stable_argsort(kind):
    """The scan's event order (radix sort for shuffled times, timsort for nearly sorted ones) is exactly
    numpy's stable argsort: equal times keep their storage order, so sums add in the same order."""
    from features.scan import _radix_order, _time_order

    rng = np.random.default_rng(3)
    n = 50_000
    ts = {
        "shuffled": rng.integers(1_600_000_000_000_000, 1_700_000_000_000_000, n),
        "ties": rng.integers(0, 40, n) * 86_400_000_000 + 1_650_000_000_000_000,
        "nearly_sorted": np.sort(rng.integers(0, 10**14, n)) - np.where(np.arange(n) % 500 == 0, 10**9, 0),
        "sorted": np.sort(rng.integers(0, 10**14, n)),
        "extremes": np.concatenate(
            [rng.integers(-(2**62), 2**62, n), [np.iinfo(np.int64).min + 1, 2**63 - 1]]
        ),
    }[kind].astype(np.int64)
    expected = np.argsort(ts, kind="stable") + 11
    np.testing.assert_array_equal(_time_order(ts, 11), expected)
    np.testing.assert_array_equal(_radix_order(ts, 11), expected)


@pytest.mark.parametrize("kind", ["shuffled", "sorted"])
def test_events_are_permuted_in_place_into_time_order(kind):
    """Every slot of one source (times, int32 keys, float values, int16 one-hot columns, uint8 validity)
    is put in the times' stable order, in place; rows outside the source's segments stay untouched."""
    from features.scan import _in_time_order

    rng = np.random.default_rng(5)
    n = 3_000
    ts = rng.integers(0, 200, n).astype(np.int64)  # ties: stability matters
    if kind == "sorted":
        ts.sort()
    e_ts = np.concatenate([[-1], ts, [-2]])
    keys = rng.integers(0, 10**6, 2 * n + 4).astype(np.int32)
    vals = rng.normal(size=n + 1)
    which = rng.integers(-1, 30, n).astype(np.int16)
    valid = rng.integers(0, 2, n).astype(np.uint8)
    before = [a.copy() for a in (e_ts, keys, vals, which, valid)]
    segments = [(e_ts, 1), (keys, 3), (keys, 3 + n), (vals, 1), (which, 0), (valid, 0)]
    _in_time_order(e_ts[1 : 1 + n], segments, n)
    order = np.argsort(ts, kind="stable")
    originals = [before[0], before[1], before[1], before[2], before[3], before[4]]
    for (arr, at), orig in zip(segments, originals, strict=True):
        np.testing.assert_array_equal(arr[at : at + n], orig[at : at + n][order])
    assert e_ts[0] == -1 and e_ts[-1] == -2 and (keys[:3] == before[1][:3]).all() and vals[0] == before[2][0]
    np.testing.assert_array_equal(keys[3 + 2 * n :], before[1][3 + 2 * n :])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("small_pages", [False, True])
def test_written_arrays_hold_the_fill_and_small_pages_map_without_huge_pages(
    monkeypatch, small_pages, threads
):
    """`_written` gives np.full's array either way, filled by one thread or split between several; with
    small_pages (above the size threshold) the memory is its own mapping advised MADV_NOHUGEPAGE (`nh` in
    /proc/self/smaps, on Linux), writable, and usable as an Arrow buffer."""
    import mmap
    import sys

    import pyarrow as pa

    import features.scan as scan

    monkeypatch.setattr(scan, "SMALL_PAGES_MIN_BYTES", 4096)
    out = scan._written((3, 50_001), np.float64, np.nan, small_pages=small_pages, threads=threads)
    np.testing.assert_array_equal(out, np.full((3, 50_001), np.nan))
    assert scan._written(100_003, np.uint8, 7, threads=threads).tolist() == [7] * 100_003
    out = scan._written((3, 50_000), np.float64, np.nan, small_pages=small_pages, threads=threads)
    np.testing.assert_array_equal(out, np.full((3, 50_000), np.nan))
    assert out.dtype == np.float64 and out.shape == (3, 50_000) and out.flags.c_contiguous
    out[1, 7] = 2.5
    assert pa.array(out[1]).to_numpy()[7] == 2.5
    small = scan._written(10, np.int32, small_pages=small_pages)  # under the threshold: plain numpy
    assert isinstance(small.base, type(None)) and (small == 0).all()
    if not small_pages:
        assert out.base is None
        return
    if not (sys.platform.startswith("linux") and hasattr(mmap, "MADV_NOHUGEPAGE")):
        pytest.skip("MADV_NOHUGEPAGE is Linux only")
    assert "nh" in _vm_flags(out)


def _vm_flags(arr: np.ndarray) -> list[str]:
    """The VmFlags of the mapping holding `arr`'s middle byte (/proc/self/smaps): `hg` advised huge pages,
    `nh` advised no huge pages. (numpy advises the 2 MiB-aligned part only, which the kernel then maps on
    its own: the array's first bytes may lie in a neighbouring mapping without the flag.)"""
    import re

    start = arr.ctypes.data + arr.nbytes // 2
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m[1], 16) <= start < int(m[2], 16)
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds address {start:#x}")


def test_small_pages_stops_numpy_asking_for_huge_pages_inside_the_block_only():
    """Inside `_small_pages` numpy's large arrays are not advised MADV_HUGEPAGE; numpy asks again after the
    block, also when the block raises."""
    import sys

    import features.scan as scan

    if not (sys.platform.startswith("linux") and os.path.exists("/proc/self/smaps")):
        pytest.skip("VmFlags come from /proc/self/smaps (Linux)")
    size = 64 << 20  # well above numpy's 4 MiB threshold for the advice
    before = np.ones(size, np.uint8)
    if "hg" not in _vm_flags(before):
        pytest.skip("this numpy does not advise huge pages here (nothing for _small_pages to turn off)")
    with scan._small_pages():
        inside = np.ones(size, np.uint8)
        assert "hg" not in _vm_flags(inside)
    assert "hg" in _vm_flags(np.ones(size, np.uint8))
    with pytest.raises(RuntimeError), scan._small_pages():
        raise RuntimeError("a failing values step")
    assert "hg" in _vm_flags(np.ones(size, np.uint8))


@pytest.mark.parametrize("seed", range(4))
def test_key_codes_of_key_pairs_and_triples_are_dense_and_equal_exactly_for_equal_tuples(seed):
    """Multi-column keys (the last one numbered with its pairs in one pass): over every row set, equal key
    tuples get equal codes, different tuples different codes, and the codes are 0..k-1."""
    rng = np.random.default_rng(seed)

    def ints(n):
        v = rng.integers(0, 40, n)
        return pa.array(v, mask=rng.random(n) < 0.1)

    def texts(n):
        return pa.array(rng.choice(["a", "b", "c", None], n).tolist())

    for kinds in [(ints, texts), (texts, ints), (ints, ints, texts)]:
        sizes = [int(x) for x in rng.integers(0, 300, 3)]
        parts = [[kind(n) for kind in kinds] for n in sizes]
        for out in (None, [np.full(n, -5, np.int32) for n in sizes]):
            codes, n_codes = key_codes(parts, out)
            tuples = [t for p in parts for t in zip(*(c.to_pylist() for c in p), strict=True)]
            flat = np.concatenate(codes)
            assert flat.dtype == np.int32 and len(flat) == len(tuples)
            first: dict[tuple, int] = {}
            for t, c in zip(tuples, flat.tolist(), strict=True):
                assert first.setdefault(t, c) == c
            assert len(set(first.values())) == len(first) == n_codes or (not tuples and n_codes == 1)
            assert sorted(first.values()) == list(range(len(first)))


def test_whole_and_abs_sum_is_numpys_definition_in_one_pass():
    from features.scan import _whole_and_abs_sum

    rng = np.random.default_rng(5)
    cases = [
        rng.integers(-1000, 1000, 10_000).astype(float),
        rng.normal(size=1000),
        np.array([1.0, np.nan, 2.0]),
        np.array([np.inf, -np.inf, 3.0]),
        np.array([2.0**52 + 1, -(2.0**60)]),
        np.zeros(0),
    ]
    for arr in cases:
        whole, total = _whole_and_abs_sum(arr)
        assert whole == np.array_equal(np.rint(arr), arr)
        np.testing.assert_allclose(total, np.abs(arr).sum(), rtol=1e-12)
