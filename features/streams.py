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
"scan" method (features/scan.py: every stream in one time-ordered pass, no sort by key) the result
`sx0` (Arrow, one row per target line in qi order) types counting columns (whole-number event values,
e.g. counts) as int32 and other sums as float64 (values equal the window SQL's, which stays the
reference); "last"/"first" (max/min, as in the SQL) keep their timestamp type. The "sql" method's result
is fetched into the same Arrow form, so the families' `finish` steps and the assembly read one shape:
families append per-line columns computed with numpy (`add_line_columns`, from `line_values` /
`line_codes` reads of `ln`), which the assembly reads positionally. Before evaluating a
column, `build_streams` creates the tables its event sources name that a family left pending
(`ctx.need`, e.g. `rv` while VADER scores in the background: such columns are scanned after the
others), and all pending tables before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

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


def _scan_all(ctx: Context, runnings: Sequence[Running], events: Sequence[Events], out: dict) -> None:
    """Every stream in one time-ordered pass (features/scan.py); columns fed by a pending table in a second.

    A column is "late" when any event setting it reads a table a family left pending (e.g. `rv` while
    VADER scores in the background): the other columns are scanned first, then the late ones once the
    table exists. Columns are independent running aggregates, so the split changes no value.
    """
    from features.scan import scan_streams

    late = {(e.stream, c) for e in events if ctx.pending_in(e.source) for c in e.values}
    for is_late in (False, True):
        cols = {
            name: [r for r in runnings if r.stream == name and ((name, r.name) in late) == is_late]
            for name in STREAMS
        }
        evs = {
            name: [
                replace(e, values=vals)
                for e in events
                if e.stream == name
                and (vals := {c: v for c, v in e.values.items() if ((name, c) in late) == is_late})
            ]
            for name in STREAMS
        }
        if not any(cols.values()):
            continue
        if is_late:
            ctx.need(" ".join(e.source for v in evs.values() for e in v))
        for group in _sharing_groups({n: evs[n] for n in STREAMS if cols[n]}):
            scan_streams(
                ctx,
                {n: STREAMS[n] for n in group},
                {n: cols[n] for n in group},
                {n: evs[n] for n in group},
                out,
                timing_prefix="scan_late" if is_late else "scan",
            )


def _sharing_groups(evs: Mapping[str, Sequence[Events]]) -> list[list[str]]:
    """Streams linked by a common event source (same FROM clause and time), in STREAMS order.

    Each group is one scan pass: a shared source is fetched once per pass, and streams that share
    nothing are scanned apart, so one pass's inputs are freed before the next one's are fetched
    (lower peak memory at no extra cost).
    """
    parent = {n: n for n in evs}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    owner: dict[tuple[str, str], str] = {}
    for name, events in evs.items():
        for e in events:
            other = owner.setdefault((e.source, e.ts), name)
            parent[root(name)] = root(other)
    groups: dict[str, list[str]] = {}
    for name in evs:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


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
    for name in STREAMS:
        cols = {r.name for r in runnings if r.stream == name}
        unknown = {v for e in events if e.stream == name for v in e.values} - cols
        if cols and unknown:
            raise ValueError(f"stream {name}: events set undeclared columns {sorted(unknown)}")
    if method == "scan":
        t0 = time.perf_counter()
        _scan_all(ctx, runnings, events, out)
        ctx.timings["streams_scan_s"] = time.perf_counter() - t0
    for name, spec in STREAMS.items() if method == "sql" else ():
        cols = [r for r in runnings if r.stream == name]
        evs = [e for e in events if e.stream == name]
        if not cols:
            continue
        t0 = time.perf_counter()
        ctx.need(" ".join(e.source for e in evs))
        _stream_by_windows(ctx, f"s_{name}", spec, cols, _union_sql(spec, cols, evs))
        stream_tables.append(f"s_{name}")
        ctx.timings[f"stream_{name}_s"] = time.perf_counter() - t0
    ctx.finish_pending()
    names = [r.name for r in runnings]
    if method == "scan":
        arrays = {"qi": pa.array(np.arange(n_target, dtype=np.int64))}
        validity: dict[int, tuple[Any, pa.Buffer, int]] = {}
        for r in runnings:
            values, mask = out[r.name]
            if mask is None:
                arrays[r.name] = pa.array(values, from_pandas=True)
            else:
                typ = out.get(f"_type_{r.name}", pa.timestamp("us"))
                arrays[r.name] = _with_nulls(values, mask, validity).cast(typ)
        ctx.arrow["sx0"] = pa.table(arrays)
        ctx.con.register("sx0", ctx.arrow["sx0"])
    else:
        joins = " ".join(f"LEFT JOIN {t} USING (qi)" for t in stream_tables)
        ctx.arrow["sx0"] = ctx.con.sql(
            f"SELECT q.qi, {', '.join(names)} FROM (SELECT qi FROM ln WHERE is_target) q {joins} ORDER BY q.qi"
        ).to_arrow_table()
        for t in stream_tables:
            ctx.sql(f"DROP TABLE IF EXISTS {t}")
        ctx.con.register("sx0", ctx.arrow["sx0"])
    return "sx0"


def _with_nulls(
    values: np.ndarray, mask: np.ndarray, validity: dict[int, tuple[Any, pa.Buffer, int]]
) -> pa.Array:
    """`pa.array(values, mask=mask)` without copying `values`, and with one validity bitmap per mask object:
    the scan gives every whole-number column of a stream the same mask (its lines without a query row),
    which pa.array would convert to a bitmap again for each of them. `validity` caches by mask (and holds
    it, so its id is not reused)."""
    cached = validity.get(id(mask))
    if cached is None or cached[0] is not mask:
        nulls = int(np.count_nonzero(mask))
        cached = validity[id(mask)] = (mask, pa.array(~mask).buffers()[1] if nulls else None, nulls)
    _, bitmap, nulls = cached
    values = np.ascontiguousarray(values)
    typ = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(typ, len(values), [bitmap, pa.py_buffer(values)], nulls)


def line_values(ctx: Context, exprs: Mapping[str, str]) -> pa.Table:
    """Columns (name -> SQL over `ln`) of the target lines, one row per line in qi order.

    `ln` is stored in qi order, so the rows usually come back in order; otherwise they are put in order by
    their qi (a permutation, no sort).
    """
    cols = ", ".join(f"{e} AS {n}" for n, e in exprs.items())
    t = ctx.con.sql(f"SELECT qi, {cols} FROM ln WHERE is_target").to_arrow_table()
    n = int(ctx.counts.get("target_lines", 0))
    qi = t.column("qi").to_numpy().astype(np.int64, copy=False)
    if len(qi) != n:
        raise RuntimeError(f"line_values: {len(qi)} target lines, expected {n}")
    if n and not (qi[0] == 0 and (np.diff(qi) == 1).all()):
        order = np.empty(n, np.int64)
        order[qi] = np.arange(n)
        t = t.take(order)
    return t.drop_columns(["qi"])


def line_codes(
    ctx: Context, codes: Mapping[str, str], floats: Mapping[str, str] = {}, batch_rows: int = 1 << 20
) -> dict[str, tuple[np.ndarray, int, np.ndarray]]:
    """Per target line in qi order: `codes` columns (SQL over `ln`) as (dense int32 codes, code count,
    not-NULL mask) and `floats` columns as (float64 with NaN for NULL, 0, not-NULL mask).

    Read in record batches, each encoded on arrival (text keys: per-batch dictionaries merged), so a
    10M-line fetch never holds the text columns whole (the basket family's peak memory). The columns are
    encoded side by side on `threads` threads (Arrow's and numpy's work releases the GIL); each column's
    batches go in order, so its codes are those of a one-thread run. At 10M lines the basket's fetch took
    1.4 s on the session's thread, 1.1 s of it encoding, with the second core idle.
    """
    from concurrent.futures import ThreadPoolExecutor

    from features.scan import _filled

    n = int(ctx.counts.get("target_lines", 0))
    exprs = {**codes, **floats}
    cols = ", ".join(f"{e} AS {k}" for k, e in exprs.items())
    reader = ctx.con.sql(f"SELECT qi, {cols} FROM ln WHERE is_target").to_arrow_reader(batch_rows)
    qi = np.empty(n, np.int64)
    raw = {k: np.empty(n, np.int64) for k in codes}
    valid = {k: np.empty(n, bool) for k in exprs}
    vals = {k: np.empty(n, np.float64) for k in floats}
    dicts: dict[str, dict[Any, int]] = {k: {} for k in codes}

    def encode(k: str, col: pa.Array, at: int) -> None:
        m = len(col)
        valid[k][at : at + m] = col.is_valid().to_numpy(zero_copy_only=False)
        if k in floats:
            vals[k][at : at + m] = _filled(col.cast(pa.float64()), np.nan)
        elif pa.types.is_integer(col.type):
            raw[k][at : at + m] = _filled(col, 0)
        else:
            enc = col.dictionary_encode()
            seen = dicts[k]
            remap = np.array([seen.setdefault(v, len(seen)) for v in enc.dictionary.to_pylist()], np.int64)
            idx = _filled(enc.indices, 0)
            raw[k][at : at + m] = remap[idx] if len(remap) else 0

    def finish(k: str) -> tuple[np.ndarray, int, np.ndarray]:
        ok = valid[k] if order is None else valid[k][order]
        if k in floats:
            return (vals[k] if order is None else vals[k][order], 0, ok)
        v = raw.pop(k)
        if order is not None:
            v = v[order]
        if dicts[k] or not n:  # text: codes already dense; NULL -> one code past them
            n_codes = len(dicts[k]) + 1
            v[~ok] = n_codes - 1
        else:  # integers: value - min, densified when sparse (NULL -> one code past them)
            lo = int(v[ok].min()) if ok.any() else 0
            v -= lo
            v[~ok] = int(v[ok].max()) + 1 if ok.any() else 0
            n_codes = int(v.max()) + 1
            if n_codes > max(1 << 20, 2 * n):
                uniq, inv = np.unique(v, return_inverse=True)
                v, n_codes = inv.reshape(-1), len(uniq)
        return (v.astype(np.int32), n_codes, ok)

    at = 0
    order = None
    with ThreadPoolExecutor(max(1, int(ctx.params.threads)), thread_name_prefix="line-codes") as pool:
        for batch in reader:
            m = batch.num_rows
            if at + m > n:
                raise RuntimeError(f"line_codes: more than {n} target lines")
            qi[at : at + m] = batch.column(0).to_numpy()
            list(pool.map(encode, exprs, [batch.column(k) for k in exprs], [at] * len(exprs)))
            at += m
        if at != n:
            raise RuntimeError(f"line_codes: {at} target lines, expected {n}")
        if n and not (qi[0] == 0 and (np.diff(qi) == 1).all()):
            order = np.empty(n, np.int64)
            order[qi] = np.arange(n)
        return dict(zip(exprs, pool.map(finish, exprs), strict=True))


#: What a family's `finish` may hand back: its per-line array work, which reads neither DuckDB nor `ctx`
#: (the finish fetched its inputs on the session's thread) and returns the columns to add to `sx0` and
#: those of `sx0` to drop. `finish_families` runs the families' work side by side.
LineWork = Callable[[], tuple[Mapping[str, Any], Sequence[str]]]


def finish_families(ctx: Context, modules: Sequence[Any]) -> None:
    """Run every family's `finish` (after the streams): the DuckDB part one family after another on the
    session's connection (not safe to share between threads), each family's returned `LineWork` on a
    worker thread as soon as its DuckDB part is done (up to `threads` at once, next to the following
    families' DuckDB parts), then add their columns in family order (the same `sx0` every run).

    Why: the size and basket finishes are seconds of numpy/numba each at 10M lines (nogil kernels) and
    ran one after the other with the second core idle. Timings: `<family>_finish_s` (the DuckDB part),
    `<family>_finish_work_s` (its array work), `finish_work_s` (from the first work started to the last
    column added, wall).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def timed(todo: LineWork) -> tuple[tuple[Mapping[str, Any], Sequence[str]], float]:
        t = time.perf_counter()
        return todo(), time.perf_counter() - t

    started: list[tuple[str, Future]] = []
    t_first = None
    with ThreadPoolExecutor(max(1, int(ctx.params.threads)), thread_name_prefix="finish") as pool:
        for module in modules:
            fin = getattr(module, "finish", None)
            if fin is None:
                continue
            t0 = time.perf_counter()
            todo = fin(ctx)
            ctx.timings[f"{module.FAMILY}_finish_s"] = time.perf_counter() - t0
            if todo is not None:
                t_first = t_first or time.perf_counter()
                started.append((module.FAMILY, pool.submit(timed, todo)))
        done = [(family, f.result()) for family, f in started]
    for family, ((columns, drop), seconds) in done:
        add_line_columns(ctx, columns, drop=drop)
        ctx.timings[f"{family}_finish_work_s"] = seconds
    if t_first is not None:
        ctx.timings["finish_work_s"] = time.perf_counter() - t_first


def add_line_columns(ctx: Context, columns: Mapping[str, Any], drop: Sequence[str] = ()) -> None:
    """Append per-line columns (aligned with qi) to the stream table `sx0` (the assembly's `s`), minus `drop`.

    Families whose per-line values are plain array work (e.g. the basket counts, the size family's order
    statistics) compute them with numpy and join the assembly positionally through `sx0` instead of by
    a SQL join or a per-line CASE chain.
    """
    sx0 = ctx.arrow["sx0"]
    sx0 = sx0.drop_columns([c for c in drop if c in sx0.column_names])
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, from_pandas=True)
        if len(arr) != sx0.num_rows:
            raise ValueError(f"line column {name}: {len(arr)} values for {sx0.num_rows} target lines")
        sx0 = sx0.append_column(name, arr)
    ctx.arrow["sx0"] = sx0
    ctx.con.register("sx0", sx0)
