"""History state: a history's as-of aggregates, so that scoring a batch never re-reads the history's events.

Every stream feature (features/streams.py) is a running aggregate per key of events dated strictly before
the order; the population rate and the category month medians are the two other aggregates over history.
For a batch whose orders are all dated at or after a time T (`as_of`), each aggregate splits at T:

- events dated before T are the same for every batch order, so they are aggregated once per key
  (`streams[<stream>]`: sum, or max / min for last / first) and enter the batch's streams as one summary
  event per key dated just before T; the day counts of the population rate (`pop_daily`) and the medians of
  the complete months before T's month (`cat_month`) are kept the same way;
- events dated at or after T come from the few history rows that can still produce them (`pending`: lines
  whose return window ends at or after T or with a return recorded then, every line of T's month for the
  medians, orders placed or delivered at or after T, reviews posted then) plus the batch itself: they run
  through the ordinary engine, restricted to ts >= T so that nothing is counted twice.

"Kept" evidence and resolved lines whose return window ends after T are therefore events of the pending
lines, evaluated at each batch order's time like in `build_features`. The result equals `build_features`
over history + batch for the batch's lines (tests/test_features_parity.py; the SQL of the population rate
and of the price family's medians is repeated here with the split, and the parity tests guard the copy).

A state is built once per history (`build_state`), saved as Parquet (`save` / `load`, keyed by the
history's content fingerprint, `fingerprint_files`) and reused for every chunk and run; `with_rows` adds
scored chunks as further pending rows (their events are all at or after T).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import price, registry
from features.engine import Context, FeaturizeParams, connect, create_pop, stage
from features.sql import quote, union_all
from features.streams import STREAMS, Events, Running, build_streams, finish_families
from pipeline.contract import TABLES

STATE_VERSION = 1
STATE_FILE = "state.json"
ENTITY_TABLES = ("customers", "products", "warehouses")  # referenced whole (no events of their own)
PENDING_TABLES = ("orders", "order_lines", "returns", "reviews")


def _timestamp(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _ts_sql(ts: pd.Timestamp) -> str:
    return f"TIMESTAMP {quote(ts.isoformat(sep=' '))}"


def family_streams(p: FeaturizeParams) -> tuple[list[Running], list[Events]]:
    """Every family's running columns and events (values formatted with the params), as the engine uses them."""
    values = asdict(p)
    runnings = [r for m in registry.FAMILY_MODULES for r in getattr(m, "RUNNINGS", [])]
    events = [
        replace(e, values={k: v.format(**values) for k, v in e.values.items()})
        for m in registry.FAMILY_MODULES
        for e in getattr(m, "EVENTS", [])
    ]
    return runnings, events


@dataclass
class HistoryState:
    """The aggregates of a history's events dated before `as_of`, plus the rows that can still produce events."""

    as_of: pd.Timestamp
    params: FeaturizeParams
    streams: dict[str, pa.Table]  # stream -> keys + running columns over events dated < as_of
    pop_daily: pa.Table  # d, res, rtn: resolved / first-returned lines per day, events dated < as_of
    cat_month: pa.Table  # category, month, med, n: complete months before as_of's month
    pending: dict[str, pd.DataFrame]  # rows of PENDING_TABLES that produce events dated >= as_of
    entities: dict[str, pd.DataFrame]  # ENTITY_TABLES, whole
    available: frozenset[str]  # contract inputs present in the history ("table" / "table.column")
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------ batch side
    def with_rows(self, tables: Mapping[str, pd.DataFrame | None]) -> HistoryState:
        """A state that also holds these orders / lines (earlier scored chunks) as pending rows.

        Their events must all be dated at or after `as_of`: orders placed then (deliveries, return windows
        and returns follow their order)."""
        pending = dict(self.pending)
        for name, df in tables.items():
            if df is None or len(df) == 0:
                continue
            if name not in PENDING_TABLES:
                raise ValueError(f"state rows: {name!r} is not one of {PENDING_TABLES}")
            if name == "orders" and (pd.to_datetime(df["order_ts"]) < self.as_of).any():
                raise ValueError(f"state rows: orders dated before the state's as_of {self.as_of}")
            pending[name] = _concat([pending.get(name), df])
        return replace(self, pending=pending)

    def tables_for(self, batch: Mapping[str, pd.DataFrame | None]) -> dict[str, pd.DataFrame | None]:
        """Pending rows + entities + the batch: the tables the batch session stages.

        Raises ValueError when the batch redefines a history product (its category / size type would
        change history events the state has already aggregated)."""
        out: dict[str, pd.DataFrame | None] = {}
        for name, spec in TABLES.items():
            base = self.entities.get(name) if name in ENTITY_TABLES else self.pending.get(name)
            new = batch.get(name)
            if new is not None and base is not None and name in ENTITY_TABLES and spec.key:
                clash = new[spec.key].isin(base[spec.key])
                if clash.any():
                    if name == "products":
                        raise ValueError(
                            f"batch products: product_id {new[spec.key][clash].iloc[0]!r} is already in the history"
                        )
                    base = base.loc[~base[spec.key].isin(new[spec.key])]  # the batch's version wins
            out[name] = _concat([base, new])
        return out

    # ------------------------------------------------------------------------------------ persistence
    def save(self, folder: Path | str) -> Path:
        """Parquet per part + state.json, written into a temporary folder renamed into place."""
        from pipeline.io import atomic_dir

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            for name, t in self.streams.items():
                pq.write_table(t, tmp / f"stream_{name}.parquet")
            pq.write_table(self.pop_daily, tmp / "pop_daily.parquet")
            pq.write_table(self.cat_month, tmp / "cat_month.parquet")
            for kind, tables in (("pending", self.pending), ("entity", self.entities)):
                for name, df in tables.items():
                    df.to_parquet(tmp / f"{kind}_{name}.parquet", index=False)
            spec = {
                "version": STATE_VERSION,
                "as_of": self.as_of.isoformat(),
                "params": asdict(self.params),
                "available": sorted(self.available),
                "fingerprint": self.fingerprint,
                "streams": sorted(self.streams),
                "pending": sorted(self.pending),
                "entities": sorted(self.entities),
                "meta": self.meta,
            }
            (tmp / STATE_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> HistoryState:
        folder = Path(folder)
        spec_file = folder / STATE_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file}: missing; a state folder is written by HistoryState.save")
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        if spec.get("version") != STATE_VERSION:
            raise ValueError(
                f"{spec_file}: state version {spec.get('version')} != {STATE_VERSION}; rebuild it"
            )
        return cls(
            as_of=pd.Timestamp(spec["as_of"]),
            params=FeaturizeParams(**spec["params"]),
            streams={n: pq.read_table(folder / f"stream_{n}.parquet") for n in spec["streams"]},
            pop_daily=pq.read_table(folder / "pop_daily.parquet"),
            cat_month=pq.read_table(folder / "cat_month.parquet"),
            pending={n: pd.read_parquet(folder / f"pending_{n}.parquet") for n in spec["pending"]},
            entities={n: pd.read_parquet(folder / f"entity_{n}.parquet") for n in spec["entities"]},
            available=frozenset(spec["available"]),
            fingerprint=spec.get("fingerprint", ""),
            meta=dict(spec.get("meta") or {}),
        )


def _concat(parts: Iterable[pd.DataFrame | None]) -> pd.DataFrame | None:
    frames = [p for p in parts if p is not None]
    if not frames:
        return None
    frames = [p for p in frames if len(p)] or frames[:1]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def fingerprint_files(files: Iterable[Path], extra: Mapping[str, Any] | None = None) -> str:
    """Content hash of the history's table files (names + bytes) and of `extra` (params, as_of)."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(Path(p) for p in files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ building
def _summary_sql(spec_keys: tuple[str, ...], cols: list[Running], evs: list[Events], before: str) -> str:
    """One row per key: the aggregate of the stream's events dated before `before` (the engine's union)."""
    keys = list(spec_keys)
    agg = {c.name: c for c in cols}
    columns: dict[str, str] = {k: "NULL" for k in keys}
    columns["ts"] = "NULL"
    columns.update({c.name: c.default for c in cols})
    parts = [
        {
            "ts": e.ts,
            **{k: k for k in keys},
            **{c: (f"CAST({v} AS DOUBLE)" if agg[c].agg == "sum" else v) for c, v in e.values.items()},
        }
        for e in evs
    ]
    grouped = ", ".join(f"{agg[c].sql_agg}({c}) AS {c}" for c in agg)
    k = ", ".join(keys)
    return (
        f"SELECT {k}, {grouped} FROM ({union_all(parts, columns, [e.source for e in evs])}) e "
        f"WHERE ts IS NOT NULL AND ts < {before} GROUP BY {k} ORDER BY {k}"
    )


def _prepare(ctx: Context, skip: tuple[Any, ...] = ()) -> None:
    """Every family's `prepare` but those of the `skip` modules."""
    for module in registry.FAMILY_MODULES:
        prep = getattr(module, "prepare", None)
        if prep is not None and module not in skip:
            prep(ctx)


def build_state(
    history: Mapping[str, pd.DataFrame | None], as_of: Any, params: Any = None, fingerprint: str = ""
) -> HistoryState:
    """Aggregate the history's events dated before `as_of` and keep the rows that produce later events.

    Any batch whose orders are all dated at or after `as_of` can then be featurized from the state alone
    (`featurize_batch`); the history's own cutoff is the natural `as_of` for new checkout orders.
    """
    p = FeaturizeParams.from_params(params)
    t = _timestamp(as_of)
    tables = {k: v for k, v in history.items() if v is not None}
    if tables.get("orders") is None or tables.get("order_lines") is None:
        raise ValueError("history: needs the orders and order_lines tables to build a state")
    T = _ts_sql(t)
    month = f"date_trunc('month', {T})"
    con = connect(p)
    try:
        ctx = stage(con, tables, p, target_orders=tables["orders"][["order_id"]].iloc[:0])
        _prepare(ctx)
        runnings, events = family_streams(p)
        streams: dict[str, pa.Table] = {}
        for name, spec in STREAMS.items():
            cols = [r for r in runnings if r.stream == name]
            evs = [e for e in events if e.stream == name]
            if cols and evs:
                streams[name] = con.sql(_summary_sql(spec.keys, cols, evs, T)).to_arrow_table()
        pop_daily = con.sql(f"""
            SELECT d, CAST(sum(res) AS BIGINT) AS res, CAST(sum(rtn) AS BIGINT) AS rtn FROM (
                SELECT date_trunc('day', resolved_ts) AS d, 1 AS res, 0 AS rtn FROM ln WHERE resolved_ts < {T}
                UNION ALL
                SELECT date_trunc('day', first_return_ts) AS d, 0 AS res, 1 AS rtn FROM ln
                WHERE first_return_ts IS NOT NULL AND first_return_ts < {T}
            ) e GROUP BY d ORDER BY d
        """).to_arrow_table()
        cat_month = con.sql(f"""
            SELECT category, date_trunc('month', order_ts) AS month, median(unit_price) AS med, count(*) AS n
            FROM ln WHERE order_ts < {month}
            GROUP BY category, date_trunc('month', order_ts) ORDER BY category, month
        """).to_arrow_table()
        lines_needed = (
            con.sql(f"""
            SELECT line_id FROM ln
            WHERE window_end >= {T} OR order_ts >= {month}
               OR line_id IN (SELECT line_id FROM ret WHERE return_ts >= {T})
        """)
            .to_arrow_table()
            .column(0)
            .to_pandas()
        )
        available = frozenset(ctx.available)
    finally:
        con.close()

    lines, orders = tables["order_lines"], tables["orders"]
    p_lines = lines.loc[lines["line_id"].isin(lines_needed).to_numpy()]
    keep = orders["order_id"].isin(p_lines["order_id"]) | (pd.to_datetime(orders["order_ts"]) >= t)
    if "delivered_ts" in orders:
        keep |= pd.to_datetime(orders["delivered_ts"]) >= t
    pending: dict[str, pd.DataFrame] = {
        "orders": orders.loc[keep.to_numpy()],
        "order_lines": p_lines,
    }
    returns = tables.get("returns")
    if returns is not None:
        # every return of a pending line (first-return order), and returns of lines not in the history
        # (they can only belong to batch lines)
        rl = returns["line_id"]
        pending["returns"] = returns.loc[
            (rl.isin(p_lines["line_id"]) | ~rl.isin(lines["line_id"])).to_numpy()
        ]
    reviews = tables.get("reviews")
    if reviews is not None:
        pending["reviews"] = reviews.loc[(pd.to_datetime(reviews["review_ts"]) >= t).to_numpy()]
    pending = {k: v.reset_index(drop=True) for k, v in pending.items()}
    entities = {k: tables[k].reset_index(drop=True) for k in ENTITY_TABLES if tables.get(k) is not None}
    return HistoryState(
        as_of=t,
        params=p,
        streams=streams,
        pop_daily=pop_daily,
        cat_month=cat_month,
        pending=pending,
        entities=entities,
        available=available,
        fingerprint=fingerprint,
        meta={"history_rows": {k: len(v) for k, v in tables.items()}},
    )


# ------------------------------------------------------------------------------------------------ batch
def _after(e: Events, T: str, end: str) -> Events:
    """The same events restricted to [T, end): earlier ones are in the summary, and no batch order (the
    last is at `end`) sees an event dated at or after its own time."""
    return replace(e, source=f"FROM (SELECT * {e.source}) ev_src WHERE ({e.ts}) >= {T} AND ({e.ts}) < {end}")


def _replace_pop(ctx: Context, T: str) -> None:
    """The population rate (features/engine.py `pop`) from the state's day counts + events dated >= T."""
    create_pop(
        ctx,
        f"""
        SELECT d, res, rtn FROM st_pop
        UNION ALL
        SELECT date_trunc('day', resolved_ts) AS d, 1 AS res, 0 AS rtn FROM ln WHERE resolved_ts >= {T}
        UNION ALL
        SELECT date_trunc('day', first_return_ts) AS d, 0 AS res, 1 AS rtn FROM ln
        WHERE first_return_ts IS NOT NULL AND first_return_ts >= {T}
        """,
    )


def _replace_cat_month(ctx: Context, T: str) -> None:
    """The price family's `cat_month` (features/price.py) from the state's complete months + raw later lines."""
    price.create_cat_month(
        ctx,
        f"""
        SELECT category, month, med, n FROM st_cat_month
        UNION ALL
        SELECT category, date_trunc('month', order_ts) AS month, median(unit_price) AS med, count(*) AS n
        FROM ln WHERE order_ts >= date_trunc('month', {T}) GROUP BY category, date_trunc('month', order_ts)
        """,
    )


@contextlib.contextmanager
def batch_session(
    state: HistoryState, batch: Mapping[str, pd.DataFrame | None], params: Any = None
) -> Iterator[Context]:
    """The engine's session over pending rows + batch, with the state's aggregates standing in for the rest."""
    p = FeaturizeParams.from_params(params) if params is not None else state.params
    if p != state.params:
        raise ValueError(
            f"history state built with featurize params {asdict(state.params)}, asked for {asdict(p)}; rebuild it"
        )
    orders = batch["orders"]
    if len(orders) and (pd.to_datetime(orders["order_ts"]) < state.as_of).any():
        raise ValueError(f"batch orders: dated before the history state's as_of {state.as_of}")
    tables = state.tables_for(batch)
    target = pd.DataFrame({"order_id": orders["order_id"].drop_duplicates()})
    T = _ts_sql(state.as_of)
    con = connect(p)
    try:
        ctx = stage(con, tables, p, target_orders=target)
        ctx.available = set(ctx.available) | set(state.available)
        con.register("st_pop", state.pop_daily)
        con.register("st_cat_month", state.cat_month)
        _prepare(ctx, skip=(price,))  # price's only table, cat_month, comes from the state just below
        _replace_pop(ctx, T)
        _replace_cat_month(ctx, T)
        runnings, events = family_streams(p)
        last = pd.to_datetime(orders["order_ts"]).max()
        end = _ts_sql(pd.Timestamp(last)) if pd.notna(last) else T
        events = [_after(e, T, end) for e in events]
        before = _ts_sql(state.as_of - pd.Timedelta(microseconds=1))
        for name, summary in state.streams.items():
            cols = [r.name for r in runnings if r.stream == name]
            con.register(f"st_{name}", summary)
            events.append(
                Events(name, f"FROM (SELECT *, {before} AS ts FROM st_{name}) st", "ts", {c: c for c in cols})
            )
        build_streams(ctx, runnings, events, method=p.stream_method)
        finish_families(ctx, registry.FAMILY_MODULES)
        yield ctx
    finally:
        con.close()


def featurize_batch_pieces(
    state: HistoryState, batch: Mapping[str, pd.DataFrame | None], params: Any = None, rows: int | None = None
) -> Iterator[pa.Table]:
    """The batch's feature rows as consecutive Arrow tables of about `rows` lines (default: the params'
    `assembly_chunk_rows`), in qi order as `features.build.assembled_chunks` yields them.

    Why pieces: the scorer predicts one piece in a worker thread while the next is assembled. The piece
    size only cuts the target lines into ranges; every row is computed by the same expressions (the same
    bits as one piece, tested). Close the generator (or exhaust it) to end the DuckDB session."""
    from features.build import assembled_chunks

    with batch_session(state, batch, params) as ctx:
        if rows:
            ctx.params = replace(ctx.params, assembly_chunk_rows=max(1, int(rows)))
        yield from assembled_chunks(ctx, None)


def qi_permutation(table: pa.Table) -> pa.Array | None:
    """Row order that puts `table` in (order_ts, line_id) order, or None when it already is (the engine
    assembles in that order; this is the guard)."""
    from features.build import _in_qi_order

    if _in_qi_order(table.column("order_ts"), table.column("line_id")):
        return None
    return pc.sort_indices(table, sort_keys=[("order_ts", "ascending"), ("line_id", "ascending")])


def featurize_batch_table(
    state: HistoryState, batch: Mapping[str, pd.DataFrame | None], params: Any = None
) -> pa.Table:
    """The batch's feature rows as the engine's Arrow table, in (order_ts, line_id) order: what
    `featurize_batch` returns before pandas.

    Assembled like the full-history path (`features.build.assembled_chunks`: the line and per-order fields
    in one narrow query, the feature expressions over them and the stream columns aligned by position, in
    qi order), so the batch rows come from the same code as the training rows."""
    chunks = list(featurize_batch_pieces(state, batch, params))
    table = pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]
    order = qi_permutation(table)
    return table if order is None else table.take(order)


def featurize_batch(
    state: HistoryState, batch: Mapping[str, pd.DataFrame | None], params: Any = None
) -> pd.DataFrame:
    """The batch's feature rows (keys + registry features, no labels) from the state: `build_features` parity."""
    from features.build import to_frame

    return to_frame(featurize_batch_table(state, batch, params))
