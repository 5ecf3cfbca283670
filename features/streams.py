"""As-of event streams: the one mechanism behind every "so far" feature.

A stream has a key (e.g. the customer) and interleaves two kinds of rows ordered by time:
query rows (kind 0), one per target order (and key), and event rows (kind 1) contributed by the
families: a line became resolved, a return was recorded, a review was posted, a size was kept...
A running aggregate over `ORDER BY ts, kind ROWS UNBOUNDED PRECEDING` evaluated on a query row sees
exactly the events with ts strictly before the order's timestamp: events at the same instant sort after
the query (ties are "not before"), and events after it are not in the frame. This one rule gives the
point-in-time guarantee for every stream feature, and the same SQL serves batch scoring: the batch's
orders become query rows over history + batch.
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


def _stream_by_scan(ctx: Context, spec: StreamDef, cols: Sequence[Running], body: str, out: dict) -> None:
    """The fast evaluation: DuckDB sorts the union, numpy runs segmented scans (one pass per column).

    DuckDB evaluates every window aggregate separately (~0.2 us per row and aggregate here), which
    made 36 running columns the bottleneck; the sort is shared and a segmented cumulative sum is a few
    ns per row. Results are scattered by qi into arrays aligned with the output rows, so no join is
    needed to bring them back. Equality with the window SQL is tested (tests/test_features_parity.py).
    """
    keys = list(spec.keys)
    select = ", ".join([*keys, "kind", "qi", *(c.name for c in cols)])
    tbl = ctx.con.sql(
        f"SELECT {select} FROM ({body}) u ORDER BY {', '.join(keys)}, ts, kind"
    ).to_arrow_table()
    n = tbl.num_rows
    size = out["_n"]
    for c in cols:
        out[c.name] = (
            (np.full(size, np.nan), None)
            if c.agg == "sum"
            else (np.zeros(size, np.int64), np.ones(size, bool))
        )
    if n == 0:
        return
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        col = tbl.column(k).combine_chunks()
        diff = pc.fill_null(pc.not_equal(col.slice(1), col.slice(0, n - 1)), True)
        new[1:] |= diff.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new)
    pid = np.cumsum(new) - 1
    q = np.flatnonzero(pc.equal(tbl.column("kind"), 0).to_numpy(zero_copy_only=False))
    qpid = pid[q]
    qi = tbl.column("qi").take(q).to_numpy(zero_copy_only=False).astype(np.int64)
    for c in cols:
        col = tbl.column(c.name).combine_chunks()
        if c.agg == "sum":
            v = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False)
            cs = np.cumsum(v)
            base = cs[starts] - v[starts]
            out[c.name][0][qi] = cs[q] - base[qpid]
            continue
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        v = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        rows = np.arange(n)
        if c.agg == "last":
            idx = np.maximum.accumulate(np.where(valid, rows, -1))[q]
            ok = idx >= starts[qpid]
        else:
            first = np.minimum.reduceat(np.where(valid, rows, n), starts)[qpid]
            idx, ok = np.minimum(first, n - 1), first <= q
        values, mask = out[c.name]
        values[qi] = v[np.maximum(idx, 0)]
        mask[qi] = ~ok
        out[f"_type_{c.name}"] = col.type


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
        body = _union_sql(spec, cols, evs)
        if method == "scan":
            _stream_by_scan(ctx, spec, cols, body, out)
        else:
            _stream_by_windows(ctx, f"s_{name}", spec, cols, body)
            stream_tables.append(f"s_{name}")
        ctx.timings[f"stream_{name}_s"] = time.perf_counter() - t0
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
