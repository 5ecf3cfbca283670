"""Per-line columns computed with numpy (basket counts, the size family's order statistics and posterior)
equal the SQL they replaced, on random data with ties, NULLs and empty histories."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.basket import basket_counts
from features.engine import FeaturizeParams
from features.size import _TYPE_KEY, RANKS, kept_size_stats, posterior


def _coded(values: pd.Series) -> tuple[np.ndarray, int, np.ndarray]:
    codes, uniq = pd.factorize(values, use_na_sentinel=True)
    valid = codes >= 0
    return np.where(valid, codes, len(uniq)).astype(np.int64), len(uniq) + 1, valid


@pytest.mark.parametrize("seed,threads", [(0, 1), (1, 1), (2, 2)])
def test_basket_counts_equal_group_by_sql(seed, threads):
    """basket_counts = the GROUP BY SQL it replaced, on one thread or with its kernels side by side."""
    rng = np.random.default_rng(seed)
    n = 3000
    df = pd.DataFrame(
        {
            "order_id": rng.integers(0, 400, n),
            "product_id": rng.integers(0, 30, n),
            "category": pd.Series(rng.choice(["a", "b", "c", None], n), dtype=object),
            "size": pd.Series(rng.choice(["S", "M", "L", None], n), dtype=object),
            "color": pd.Series(rng.choice(["red", "blue", None], n), dtype=object),
            "quantity": rng.integers(1, 4, n).astype(float),
            "unit_price": np.round(rng.uniform(1, 100, n), 2),
        }
    )
    df.loc[rng.random(n) < 0.05, "quantity"] = np.nan
    df.loc[df["order_id"] == 7, "quantity"] = np.nan  # an order whose units are all NULL
    df["i"] = np.arange(n)
    sql = duckdb.sql("""
        SELECT bo.n_lines AS b_lines, bo.n_units AS b_units, bo.basket_value AS b_value,
               bp.n_lines AS bp_lines, bp.n_sizes AS bp_sizes, bp.n_colors AS bp_colors, bc.n_lines AS bc_lines
        FROM df l
        LEFT JOIN (SELECT order_id, count(*) AS n_lines, sum(quantity) AS n_units,
                          sum(quantity * unit_price) AS basket_value FROM df GROUP BY order_id) bo
               ON bo.order_id = l.order_id
        LEFT JOIN (SELECT order_id, product_id, count(*) AS n_lines, count(DISTINCT size) AS n_sizes,
                          count(DISTINCT color) AS n_colors FROM df GROUP BY order_id, product_id) bp
               ON bp.order_id = l.order_id AND bp.product_id = l.product_id
        LEFT JOIN (SELECT order_id, category, count(*) AS n_lines FROM df GROUP BY order_id, category) bc
               ON bc.order_id = l.order_id AND bc.category = l.category
        ORDER BY l.i
    """).df()
    got = basket_counts(
        pd.factorize(df["order_id"])[0],
        pd.factorize(df["product_id"])[0],
        _coded(df["category"]),
        _coded(df["size"]),
        _coded(df["color"]),
        df["quantity"].to_numpy(),
        df["unit_price"].to_numpy(),
        threads=threads,
    )
    for c in sql.columns:
        expected = sql[c].astype(float).to_numpy()
        np.testing.assert_allclose(got[c], expected, rtol=1e-12, equal_nan=True, err_msg=c)
        if c != "b_value":
            np.testing.assert_array_equal(got[c], expected, err_msg=c)
    assert np.isnan(got["bc_lines"][df["category"].isna().to_numpy()]).all()
    assert np.isnan(got["b_units"][(df["order_id"] == 7).to_numpy()]).all()


def test_basket_counts_by_hand():
    # one order: product 0 in sizes S, M, M (one colour), product 1 once; categories x, x, x, y
    got = basket_counts(
        np.array([0, 0, 0, 0]),
        np.array([0, 0, 0, 1]),
        (np.array([0, 0, 0, 1]), 2, np.ones(4, bool)),
        (np.array([0, 1, 1, 0]), 2, np.ones(4, bool)),
        (np.array([0, 0, 0, 0]), 1, np.array([True, True, True, False])),
        np.array([1.0, 1.0, 2.0, 1.0]),
        np.array([10.0, 10.0, 5.0, 3.0]),
    )
    assert got["b_lines"].tolist() == [4, 4, 4, 4] and got["b_units"].tolist() == [5, 5, 5, 5]
    assert got["b_value"].tolist() == [33.0] * 4
    assert got["bp_lines"].tolist() == [3, 3, 3, 1] and got["bp_sizes"].tolist() == [2, 2, 2, 1]
    assert got["bp_colors"].tolist() == [1, 1, 1, 0] and got["bc_lines"].tolist() == [3, 3, 3, 1]
    assert all(len(v) == 0 for v in basket_counts(*([np.zeros(0, np.int64)] * 2), *([(np.zeros(0, np.int64), 1, np.zeros(0, bool))] * 3), np.zeros(0), np.zeros(0)).values())  # fmt: skip


def _order_stat_sql(k: str) -> str:
    """The SQL this module replaced: rank of the k-th smallest kept size from the histogram k0..k14."""
    prefix = [" + ".join(f"k{j}" for j in range(i + 1)) for i in RANKS]
    return "CASE " + " ".join(f"WHEN {p} >= {k} THEN {i}" for i, p in enumerate(prefix)) + " END"


def test_kept_size_stats_equal_the_case_chains():
    rng = np.random.default_rng(5)
    n = 4000
    k = np.where(rng.random((len(RANKS), n)) < 0.15, rng.integers(1, 4, (len(RANKS), n)), 0)
    k[:, :50] = 0  # nothing kept yet
    k[:, 50:60] = 0
    k[3, 50:60] = 2  # ties of the mode
    k[5, 50:60] = 2
    size_rank = rng.integers(-1, len(RANKS) + 2, n)  # -1: no rank, >= 15: off the scale
    df = pd.DataFrame({f"k{i}": k[i] for i in RANKS} | {"size_rank": size_rank, "i": np.arange(n)})  # noqa: F841 (read by duckdb.sql)
    total = " + ".join(f"k{i}" for i in RANKS)
    mx = "greatest(" + ", ".join(f"k{i}" for i in RANKS) + ")"
    mode = "CASE " + " ".join(f"WHEN k{i} = {mx} THEN {i}" for i in RANKS) + " END"
    sql = duckdb.sql(f"""
        SELECT n_kept,
               {" + ".join(f"CASE WHEN k{i} > 0 THEN 1.0 ELSE 0.0 END" for i in RANKS)} AS n_sizes,
               CASE WHEN n_kept > 0 THEN
                   ({_order_stat_sql("floor((n_kept + 1) / 2)")} + {_order_stat_sql("floor(n_kept / 2) + 1")}) / 2.0
               END AS median_rank,
               CASE WHEN n_kept > 0 THEN {mode} END AS mode_rank,
               CASE WHEN (CASE size_rank {" ".join(f"WHEN {i} THEN k{i}" for i in RANKS)} END) > 0
                    THEN 1.0 ELSE 0.0 END AS kept_here
        FROM (SELECT *, {total} AS n_kept FROM df) t ORDER BY t.i
    """).df()
    got = kept_size_stats(k.astype(float), size_rank)
    for c in sql.columns:
        np.testing.assert_array_equal(got[c], sql[c].astype(float).to_numpy(), err_msg=c)
    assert np.isnan(got["median_rank"][:50]).all() and (got["mode_rank"][50:60] == 3).all()
    # one read-only int32 array per rank (the stream table's columns, read in place) gives the same
    rows = [np.frombuffer(r.astype(np.int32).tobytes(), np.int32) for r in k]
    assert not rows[0].flags.writeable
    by_rows = kept_size_stats(rows, size_rank)
    for c in got:
        np.testing.assert_array_equal(by_rows[c], got[c], err_msg=c)


def test_posterior_equals_its_sql():
    p = FeaturizeParams()
    rng = np.random.default_rng(9)
    n = 2000
    sw = np.where(rng.random(n) < 0.2, 0.0, rng.integers(0, 20, n) * 1.0)
    swx = sw * rng.uniform(0, 14, n)
    swx2 = swx * rng.uniform(0, 14, n)
    zn = {x: rng.integers(0, 9, n).astype(float) for x in _TYPE_KEY.values()}
    zsum = {x: rng.normal(0, 2, n) for x in _TYPE_KEY.values()}
    df = pd.DataFrame(
        {"sw": sw, "swx": swx, "swx2": swx2}
        | {f"zn_{x}": zn[x] for x in zn}
        | {f"zsum_{x}": zsum[x] for x in zsum}
    )
    df["i"] = np.arange(n)
    rho = p.size_cross_type_rho
    cols = []
    for st, x in _TYPE_KEY.items():
        mean, sd = p.size_moments[st]
        o = next(v for k, v in _TYPE_KEY.items() if k != st)
        num = lambda v: f"CAST({float(v)!r} AS DOUBLE)"  # noqa: E731
        pm = f"({num(mean)} + {num(sd * rho)} * zsum_{o} / (zn_{o} + 1))"
        prec = f"(1.0 / ({num(sd * sd)} * (1 - {num(rho**2)} * zn_{o} / (zn_{o} + 1))))"
        cols.append(f"(swx + {prec} * {pm}) / (sw + {prec}) AS m_{x}, 1.0 / sqrt(sw + {prec}) AS sd_{x}")
    spread = "CASE WHEN sw > 0 THEN sqrt(greatest(swx2 / sw - pow(swx / sw, 2), 0)) END AS spread"
    sql = duckdb.sql(f"SELECT {', '.join(cols)}, {spread} FROM df ORDER BY i").df()
    got = posterior(p, sw, swx, swx2, zn, zsum)
    for c in sql.columns:
        np.testing.assert_allclose(
            got[c], sql[c].astype(float).to_numpy(), rtol=1e-14, equal_nan=True, err_msg=c
        )
    assert np.isnan(got["spread"][sw == 0]).all() and (got["sd_a"] > 0).all()


@pytest.mark.parametrize("ids", ["text", "sparse"])
def test_features_do_not_depend_on_how_ids_are_spelled(small_generated, ids):
    """Text ids (dictionary-coded per record batch) and sparse integer ids (densified) give the same features
    as the generator's dense integer ids: the basket and size columns are computed from codes of them."""
    from features.build import build_features
    from features.registry import FEATURES
    from pipeline.io import read_meta

    tabs = {p.stem: pd.read_parquet(p) for p in small_generated.raw.glob("*.parquet")}
    cutoff = read_meta(small_generated.raw)["cutoff"]
    base, _ = build_features(tabs, cutoff)
    spell = {
        "text": lambda s: "id-" + s.astype("int64").astype(str),
        "sparse": lambda s: s.astype("int64") * 1_000_003 + 7 * 10**12,
    }[ids]
    renamed = {}
    for name, df in tabs.items():
        df = df.copy()
        for col in ("order_id", "product_id", "customer_id"):
            if col in df.columns:
                df[col] = spell(df[col])
        renamed[name] = df
    other, _ = build_features(renamed, cutoff)
    names = [f.name for f in FEATURES]
    a = base.set_index("line_id").sort_index()[names]
    b = other.set_index("line_id").sort_index()[names]
    cats = [f.name for f in FEATURES if f.kind == "categorical"]
    pd.testing.assert_frame_equal(
        a.astype({c: str for c in cats}), b.astype({c: str for c in cats}), check_exact=False, rtol=1e-9
    )


def test_assembly_pass_through_only_where_arrow_gives_duckdbs_values():
    """Output columns the assembly takes straight from its input chunk: a plain column or a number/boolean
    cast to DOUBLE or text cast to VARCHAR; a number cast to text, an expression, or a column whose type
    DuckDB would change stays in DuckDB. Taken columns equal DuckDB's, value and type."""
    from features.build import _pass_through

    chunk = pa.table(
        {
            "l__id": pa.array([1, 2, None], pa.int64()),
            "s__n": pa.array([3, None, 5], pa.int32()),
            "s__x": pa.array([0.5, float("nan"), None]),
            "sh__b": pa.array([True, False, None]),
            "l__cat": pa.array(["a", None, "c"], pa.large_string()),
        }
    )
    select = [
        "l__id AS line_id",
        "CAST(s__n AS DOUBLE) AS n",
        "CAST(s__x AS DOUBLE) AS x",
        "CAST(sh__b AS DOUBLE) AS b",
        "CAST(l__cat AS VARCHAR) AS cat",
        "CAST(s__n AS VARCHAR) AS n_text",
        "CAST((s__x / 2) AS DOUBLE) AS half",
        "l__cat AS cat_raw",
    ]
    con = duckdb.connect()
    con.register("c", chunk)
    got = con.sql(f"SELECT {', '.join(select)} FROM c").to_arrow_table()
    passed = _pass_through(select, {f.name: f.type for f in chunk.schema}, got.schema)
    assert passed == {"line_id": "l__id", "n": "s__n", "x": "s__x", "b": "sh__b", "cat": "l__cat"}
    for name, src in passed.items():
        taken, want = chunk.column(src).cast(got.schema.field(name).type), got.column(name)
        assert taken.type == want.type and taken.is_null().equals(want.is_null()), name
        if pa.types.is_floating(want.type):  # NaN where DuckDB has NaN (Arrow's equals calls NaN unequal)
            a, b = taken.to_numpy(zero_copy_only=False), want.to_numpy(zero_copy_only=False)
            np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64), err_msg=name)  # same bits
        else:
            assert taken.to_pylist() == want.to_pylist(), name


def test_finish_work_runs_side_by_side_and_lands_in_family_order():
    """finish_families: each family's DuckDB part runs on the session thread, its array work on worker
    threads at the same time, and the columns reach `sx0` in family order whichever work ends first
    (the same table every run); a family's `drop` removes its inputs, a finish without work adds nothing."""
    import threading
    import types

    import duckdb

    from features.engine import Context, FeaturizeParams
    from features.streams import finish_families

    con = duckdb.connect()
    ctx = Context(con, FeaturizeParams(threads=2), set())
    ctx.arrow["sx0"] = pa.table({"qi": [0, 1, 2], "k0": [5, 6, 7]})
    both_started = threading.Barrier(2, timeout=10)  # passes only if the two works overlap
    session = threading.get_ident()
    seen: list[int] = []

    def family(name, values, delay, drop=()):
        def finish(ctx):
            seen.append(threading.get_ident())  # the DuckDB part: on the session's thread
            ctx.con.execute("SELECT 1").fetchall()

            def work():
                both_started.wait()
                threading.Event().wait(delay)
                return {name: pa.array(values)}, drop

            return work

        return types.SimpleNamespace(FAMILY=name, finish=finish)

    slow_first = family("a_slow", [1.0, 2.0, 3.0], 0.3, drop=("k0",))
    no_work = types.SimpleNamespace(FAMILY="plain", finish=lambda ctx: None)
    fast_second = family("b_fast", [4, 5, 6], 0.0)
    finish_families(ctx, [slow_first, no_work, fast_second])
    sx0 = ctx.arrow["sx0"]
    assert sx0.column_names == ["qi", "a_slow", "b_fast"]
    assert sx0.column("a_slow").to_pylist() == [1.0, 2.0, 3.0]
    assert seen == [session, session]
    assert con.execute("SELECT sum(b_fast) FROM sx0").fetchone()[0] == 15  # registered with DuckDB
    assert {"a_slow_finish_work_s", "b_fast_finish_work_s", "finish_work_s"} <= set(ctx.timings)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [np.nan, np.nan],
        [1.0, 2.0],
        [1.0, np.nan, 3.0],
        [1.5, np.nan],
        [2.0**31, 1.0],
        [-(2.0**31) + 1, 0.0],
        [np.inf, 1.0],
        [-0.0, 5.0],
        [3.0, 2.5],
    ],
)
def test_basket_columns_are_int32_only_when_every_value_is_whole(values):
    """_compact = its numpy definition: int32 with NULL for NaN when all other values are whole numbers
    under 2**31, float64 (NaN -> NULL) otherwise."""
    from features.basket import _compact

    v = np.array(values, np.float64)
    nan = np.isnan(v)
    ok = v[~nan]
    if len(ok) and np.array_equal(ok, np.rint(ok)) and np.abs(ok).max() < 2**31:
        want = pa.array(np.where(nan, 0, v).astype(np.int32), mask=nan if nan.any() else None)
    else:
        want = pa.array(v, from_pandas=True)
    got = _compact(v)
    assert got.type == want.type and got.equals(want)


@pytest.mark.parametrize("share_valid", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_basket_int32_counts_give_the_arrays_their_float64_copies_gave(share_valid, n):
    """_compact of int32 counts with a not-NULL mask (the basket's direct route) = _compact of the float64
    array with NaN where the mask is False (the route it replaced): the same Arrow type, values and NULLs,
    float64 all-NULL when no value is left."""
    from features.basket import _compact

    rng = np.random.default_rng(n)
    v = rng.integers(0, 9, n).astype(np.int32)
    valid = rng.random(n) < share_valid
    want = _compact(np.where(valid, v.astype(np.float64), np.nan))
    for got in (
        _compact(v, valid),
        _compact(v.astype(np.float64), valid),
        _compact(v) if valid.all() else want,
    ):
        assert got.type == want.type and got.equals(want)
