"""As-of event streams: the one mechanism behind every "so far" feature.

A stream has a key (e.g. the customer) and interleaves two kinds of rows ordered by time:
query rows (kind 0), one per target order (and key), and event rows (kind 1) contributed by the
families: a line became resolved, a return was recorded, a review was posted, a size was kept...
A running aggregate over `ORDER BY ts, kind ROWS UNBOUNDED PRECEDING` evaluated on a query row sees
exactly the events with ts strictly before the order's timestamp: events at the same instant sort after
the query (ties are "not before"), and events after it are not in the frame. This one rule gives the
point-in-time guarantee for every stream feature, and the same SQL serves batch scoring: the batch's
orders become query rows over history + batch.

Note for callers (features/state.py, features/build.py): `build_streams(ctx, runnings, events, method)`,
`STREAMS`, `Running`, `Events` and `StreamDef` keep their signatures and meaning. With the default
"scan" method the result `sx0` (Arrow, one row per target line in qi order) types counting columns
(whole-number event values, e.g. counts) as int32 and other sums as float64 (values equal the window
SQL's, which stays the reference); "last"/"first" keep their timestamp type. Before evaluating a
stream, `build_streams` creates the tables its event sources name that a family left pending
(`ctx.need`, e.g. `rv` while VADER scores in the background), and all pending tables before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.engine import Context
from features.sql import running, union_all


@dataclass(frozen=True)
class StreamDef:
    """A stream: its partition keys and which target lines get a query row (a WHERE condition on ln)."""

    keys: tuple[str, ...]
    where: str = "TRUE"

    @property
    def queries(self) -> str:
        """One query row per target line: qi (its output row), its order's time and the stream keys."""
        return f"SELECT qi, order_ts AS ts, {', '.join(self.keys)} FROM ln WHERE is_target AND {self.where}"


STREAMS: dict[str, StreamDef] = {
    "customer": StreamDef(("customer_id",)),
    "customer_category": StreamDef(("customer_id", "category")),
    "customer_size": StreamDef(("customer_id", "size_type"), "size_rank IS NOT NULL"),
    "product": StreamDef(("product_id",)),
}


@dataclass(frozen=True)
class Running:
    """A running aggregate column of a stream.

    agg: "sum" (of event values), "last" / "first" (the latest / earliest non-null event value so far;
    used for event timestamps, where they equal max / min because streams are ordered by time).
    """

    stream: str
    name: str
    agg: str = "sum"

    def __post_init__(self) -> None:
        if self.agg not in ("sum", "last", "first"):
            raise ValueError(f"running {self.name}: agg must be sum, last or first, not {self.agg!r}")

    @property
    def default(self) -> str:
        return "CAST(0 AS DOUBLE)" if self.agg == "sum" else "NULL"

    @property
    def sql_agg(self) -> str:
        return {"sum": "sum", "last": "max", "first": "min"}[self.agg]


@dataclass(frozen=True)
class Events:
    """Event rows a family adds to a stream: FROM clause (exposing the stream keys), time, values."""

    stream: str
    source: str
    ts: str
    values: Mapping[str, str] = field(default_factory=dict)


def _union_sql(spec: StreamDef, cols: Sequence[Running], evs: Sequence[Events]) -> str:
    """Query rows (kind 0) + event rows (kind 1), events pre-aggregated per key and timestamp."""
    columns: dict[str, str] = {k: "NULL" for k in spec.keys}
    columns["ts"] = "NULL"
    columns.update({c.name: c.default for c in cols})
    agg = {c.name: c for c in cols}
    parts, sources = [], []
    for e in evs:
        values = {c: (f"CAST({v} AS DOUBLE)" if agg[c].agg == "sum" else v) for c, v in e.values.items()}
        parts.append({"ts": e.ts, **{k: k for k in spec.keys}, **values})
        sources.append(e.source)
    keys = ", ".join(spec.keys)
    names = [c.name for c in cols]
    if parts:
        grouped = ", ".join(f"{agg[c].sql_agg}({c}) AS {c}" for c in names)
        events = (
            f"SELECT {keys}, ts, 1 AS kind, NULL AS qi, {grouped} "
            f"FROM ({union_all(parts, columns, sources)}) e WHERE ts IS NOT NULL GROUP BY {keys}, ts"
        )
    else:
        events = None
    defaults = ", ".join(f"{agg[c].default} AS {c}" for c in names)
    queries = f"SELECT {keys}, ts, 0 AS kind, qi, {defaults} FROM ({spec.queries}) q"
    return queries if events is None else f"{queries}\nUNION ALL\n{events}"


def _stream_by_windows(ctx: Context, table: str, spec: StreamDef, cols: Sequence[Running], body: str) -> None:
    """The reference (portable SQL) evaluation: window functions over the union."""
    aggs = ", ".join(f"{running(f'{c.sql_agg}({c.name})', spec.keys)} AS {c.name}" for c in cols)
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT qi, {", ".join(c.name for c in cols)}
        FROM (SELECT kind, qi, {aggs} FROM ({body}) u) w
        WHERE kind = 0
    """)


def _event_sql(spec: StreamDef, cols: Sequence[Running], evs: Sequence[Events]) -> str | None:
    """Event rows only (no query rows, not grouped: the scan handles ties); None when no events."""
    if not evs:
        return None
    columns: dict[str, str] = {k: "NULL" for k in spec.keys}
    columns["ts"] = "NULL"
    columns.update({c.name: c.default for c in cols})
    agg = {c.name: c for c in cols}
    parts = [
        {
            "ts": e.ts,
            **{k: k for k in spec.keys},
            **{c: (f"CAST({v} AS DOUBLE)" if agg[c].agg == "sum" else v) for c, v in e.values.items()},
        }
        for e in evs
    ]
    return f"SELECT * FROM ({union_all(parts, columns, [e.source for e in evs])}) e WHERE ts IS NOT NULL"


def _key_codes(
    query_keys: Sequence[pa.ChunkedArray], event_keys: Sequence[pa.ChunkedArray]
) -> tuple[np.ndarray, int]:
    """One int64 group code per row (queries first, then events) for the stream's key tuple, and the code count.

    Integer keys with a modest range use value - min (no hashing); others are dictionary-encoded. NULL
    is one key value of its own (as in SQL PARTITION BY). Codes only need to group equal keys: their
    order is irrelevant because results are scattered back by qi.
    """
    code, n_codes = None, 1
    for qk, ek in zip(query_keys, event_keys, strict=True):
        if qk.type != ek.type:
            try:
                qk = qk.cast(ek.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                qk, ek = qk.cast(pa.large_string()), ek.cast(pa.large_string())
        arr = pa.chunked_array(qk.chunks + ek.chunks, type=qk.type).combine_chunks()
        c, n = _codes_of(arr)
        del arr
        if code is None:
            code, n_codes = c, n
        elif n_codes * n >= 2**40:  # keep room for the timestamp bits: re-densify the combined code
            code, n_codes = _codes_of(pa.array(code * n + c))
        else:
            code *= n
            code += c
            n_codes *= n
    assert code is not None
    return code, n_codes


def _codes_of(arr: pa.Array) -> tuple[np.ndarray, int]:
    if pa.types.is_integer(arr.type) and len(arr):
        lo, hi = pc.min(arr).as_py(), pc.max(arr).as_py()
        if lo is not None and hi - lo < 2**32:
            null = hi - lo + 1
            vals = np.subtract(pc.fill_null(arr, lo).to_numpy(zero_copy_only=False), lo, dtype=np.int64)
            if arr.null_count:
                vals[arr.is_null().to_numpy(zero_copy_only=False)] = null
            return vals, null + 1
    enc = arr.dictionary_encode(null_encoding="encode")
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), max(1, len(enc.dictionary))


def _argsort(keys: np.ndarray, threads: int) -> np.ndarray:
    """np.argsort, split at a sampled pivot into `threads` parts sorted concurrently (numpy sorts without the GIL)."""
    n = len(keys)
    if threads <= 1 or n < 1_000_000:
        return np.argsort(keys)
    sample = np.sort(keys[:: max(1, n // 10_000)])
    pivots = np.unique(sample[[len(sample) * i // threads for i in range(1, threads)]])
    part = np.searchsorted(pivots, keys, side="right")
    idx = [np.flatnonzero(part == i) for i in range(len(pivots) + 1)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(idx)) as pool:
        orders = list(pool.map(lambda ix: np.argsort(keys[ix]), idx))
    return np.concatenate([ix[o] for ix, o in zip(idx, orders, strict=True)])


def merge_order(
    g: np.ndarray, n_groups: int, t: np.ndarray, kind: np.ndarray, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The permutation sorting rows by (g, t, kind), and g in that order.

    One int64 sort key when it fits, else an exact fallback. t is in microseconds. The key packs g above
    t and kind (queries, kind 0, before events at the same instant). When g and the time range need more
    than 63 bits, the low bits of t are dropped for the sort and the result is checked: rows whose
    coarse keys tie must already be in exact (t, kind) order, else np.lexsort sorts exactly (slow, but
    only on data with distinct timestamps of one key closer than the dropped bits).
    """
    if len(t) == 0:
        return np.zeros(0, np.int64), g[:0]
    rel = t - t.min()
    gbits = max(1, int(n_groups - 1).bit_length())
    tbits = int(rel.max()).bit_length() + 1
    if gbits + tbits <= 63:
        perm = _argsort((g << tbits) | (rel << 1) | kind, threads)
        return perm, g[perm]
    shift = gbits + tbits - 63
    perm = _argsort((g << (63 - gbits)) | ((rel >> shift) << 1) | kind, threads)
    gs, tk = g[perm], (rel << 1 | kind)[perm]
    tie = gs[1:] == gs[:-1]
    tie &= (tk[1:] >> (shift + 1)) == (tk[:-1] >> (shift + 1))
    tie &= tk[1:] < tk[:-1]
    if tie.any():
        perm = np.lexsort((kind, rel, g))
        return perm, g[perm]
    return perm, gs


def _stream_by_scan(
    ctx: Context, spec: StreamDef, cols: Sequence[Running], evs: Sequence[Events], out: dict
) -> None:
    """The fast evaluation: query rows from ln, event rows from DuckDB, merged and scanned in numpy.

    DuckDB evaluates every window aggregate separately (~0.2 us per row and aggregate), and sorting the
    union with its payload (or grouping the events by key and time) in DuckDB spilled at 10M lines; here
    one int64 key per row is sorted (one sort per stream), events are prefix-summed in merged order as
    one row-major matrix, and each query reads its group's sums before it (prefix at its position minus
    prefix at its group's start). "last" / "first" take the latest / earliest event with a value (the
    max / min value among events at that same instant, as the window SQL's max / min). Results are
    scattered by qi into arrays aligned with the output rows, so no join brings them back. Counting
    columns (whole-number event values) come back as int32, others as float64. Equality with the window
    SQL is tested (tests/test_features_parity.py).
    """
    keys = list(spec.keys)
    size = out["_n"]
    sums = [c for c in cols if c.agg == "sum"]
    others = [c for c in cols if c.agg != "sum"]
    for c in others:
        out[c.name] = (np.zeros(size, np.int64), np.ones(size, bool))
    q = ctx.con.sql(f"SELECT qi, {', '.join(keys)}, ts FROM ({spec.queries}) q").to_arrow_table()
    ev_sql = _event_sql(spec, cols, evs)
    e = ctx.con.sql(ev_sql).to_arrow_table() if ev_sql else None
    nq = q.num_rows
    ne = 0 if e is None else e.num_rows
    qi = q.column("qi").to_numpy().astype(np.int64)
    if nq == 0 or ne == 0:
        for c in sums:
            v = np.full(size, np.nan)
            v[qi] = 0.0
            out[c.name] = (v, None)
        return
    g, n_groups = _key_codes([q.column(k) for k in keys], [e.column(k) for k in keys])
    t = np.concatenate([_micros(q.column("ts")), _micros(e.column("ts"))])
    del q
    kind = np.zeros(nq + ne, np.int8)
    kind[nq:] = 1
    perm, gs = merge_order(g, n_groups, t, kind, int(ctx.params.threads))
    del g, kind
    n = nq + ne
    is_q = perm < nq
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(gs[1:], gs[:-1], out=new[1:])
    ge = gs[perm >= nq] if others else None
    del gs
    # events before each sorted position, and before the start of its group
    ev_before = np.arange(n, dtype=np.int64)
    ev_before -= np.cumsum(is_q)
    ev_before += is_q
    q_pos = np.flatnonzero(is_q)
    start = np.where(new, np.arange(n), 0)
    np.maximum.accumulate(start, out=start)
    hi = ev_before[q_pos]
    lo = ev_before[start[q_pos]]
    del ev_before, start, new
    qrow = qi[perm[q_pos]]
    ev_order = perm[~is_q]
    ev_order -= nq
    del perm, is_q, q_pos
    te = t[nq:][ev_order]
    del t
    for c in others:
        col = e.column(c.name).combine_chunks()
        out[f"_type_{c.name}"] = col.type
        valid = col.is_valid().to_numpy(zero_copy_only=False)[ev_order]
        vals = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)[ev_order]
        # runs of events at the same key and instant: their max / min stands for the run
        run = np.empty(ne, bool)
        run[0] = True
        run[1:] = (te[1:] != te[:-1]) | (ge[1:] != ge[:-1])
        run_starts = np.flatnonzero(run)
        run_id = np.cumsum(run) - 1
        rows = np.arange(ne)
        if c.agg == "last":
            best = np.maximum.reduceat(np.where(valid, vals, np.iinfo(np.int64).min), run_starts)
            last = np.maximum.accumulate(np.where(valid, rows, -1))
            idx = np.where(hi > 0, last[np.maximum(hi - 1, 0)], -1)
            ok = (idx >= lo) & (idx >= 0)
        else:
            best = np.minimum.reduceat(np.where(valid, vals, np.iinfo(np.int64).max), run_starts)
            nxt = np.minimum.accumulate(np.where(valid, rows, ne)[::-1])[::-1]
            idx = np.where(lo < ne, nxt[np.minimum(lo, ne - 1)], ne)
            ok = idx < hi
        values, mask = out[c.name]
        values[qrow] = best[run_id[np.clip(idx, 0, ne - 1)]]
        mask[qrow] = ~ok
    del te, ge
    if not sums:
        return
    # one row-major matrix of the events' values in merged order (one cache line per event when
    # gathered), prefix-summed down the rows; each value column is fetched and freed in turn
    integral, mat = [], np.empty((ne + 1, len(sums)))
    mat[0] = 0.0
    buf = np.empty(ne)
    for j, c in enumerate(sums):
        v = pc.fill_null(e.column(c.name), 0.0).to_numpy(zero_copy_only=False)
        e = e.drop_columns([c.name])
        np.rint(v, out=buf)
        integral.append(bool(np.array_equal(buf, v)))
        np.take(v, ev_order, out=mat[1:, j], mode="clip")
        del v
    del e, buf, ev_order
    np.cumsum(mat, axis=0, out=mat)
    res = mat[hi]
    res -= mat[lo]
    del mat
    for j in range(len(sums)):
        integral[j] = integral[j] and float(np.abs(res[:, j]).max(initial=0.0)) < 2**31
    for j, c in enumerate(sums):
        if integral[j]:
            v = np.zeros(size, np.int32)
            mask = np.ones(size, bool)
            v[qrow] = np.rint(res[:, j])
            mask[qrow] = False
            out[c.name] = (v, mask)
            out[f"_type_{c.name}"] = pa.int32()
        else:
            v = np.full(size, np.nan)
            v[qrow] = res[:, j]
            out[c.name] = (v, None)


def _micros(col: pa.ChunkedArray) -> np.ndarray:
    """A TIMESTAMP column as int64 microseconds since the epoch."""
    return col.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def build_streams(
    ctx: Context, runnings: Sequence[Running], events: Sequence[Events], method: str = "scan"
) -> str:
    """Evaluate every stream; returns the table `sx0`: qi + every running column, one row per target line.

    method "scan" (default, fast) or "sql" (window functions only: the portable reference).
    """
    if method not in ("scan", "sql"):
        raise ValueError(f"stream method must be 'scan' or 'sql', not {method!r}")
    n_target = int(ctx.counts.get("target_lines", 0))
    out: dict = {"_n": n_target}
    stream_tables = []
    for name, spec in STREAMS.items():
        cols = [r for r in runnings if r.stream == name]
        evs = [e for e in events if e.stream == name]
        if not cols:
            continue
        unknown = {v for e in evs for v in e.values} - {c.name for c in cols}
        if unknown:
            raise ValueError(f"stream {name}: events set undeclared columns {sorted(unknown)}")
        t0 = time.perf_counter()
        ctx.need(" ".join(e.source for e in evs))
        if method == "scan":
            _stream_by_scan(ctx, spec, cols, evs, out)
        else:
            _stream_by_windows(ctx, f"s_{name}", spec, cols, _union_sql(spec, cols, evs))
            stream_tables.append(f"s_{name}")
        ctx.timings[f"stream_{name}_s"] = time.perf_counter() - t0
    ctx.finish_pending()
    names = [r.name for r in runnings]
    if method == "scan":
        arrays = {"qi": pa.array(np.arange(n_target, dtype=np.int64))}
        for r in runnings:
            values, mask = out[r.name]
            if mask is None:
                arrays[r.name] = pa.array(values, from_pandas=True)
            else:
                typ = out.get(f"_type_{r.name}", pa.timestamp("us"))
                arrays[r.name] = pa.array(values, mask=mask).cast(typ)
        ctx.con.register("sx0", pa.table(arrays))
    else:
        joins = " ".join(f"LEFT JOIN {t} USING (qi)" for t in stream_tables)
        ctx.sql(
            f"CREATE OR REPLACE TEMP TABLE sx0 AS SELECT q.qi, {', '.join(names)} "
            f"FROM (SELECT qi FROM ln WHERE is_target) q {joins}"
        )
    return "sx0"
