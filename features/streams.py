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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from features.engine import Context
from features.sql import running, union_all


@dataclass(frozen=True)
class StreamDef:
    """A stream: its partition keys, the query rows (target orders) and its output table's join keys."""

    keys: tuple[str, ...]
    queries: str  # SELECT order_id, order_ts AS ts, <keys> ... (one row per target order and key)
    out_keys: tuple[str, ...]


STREAMS: dict[str, StreamDef] = {
    "customer": StreamDef(
        ("customer_id",),
        "SELECT order_id, order_ts AS ts, customer_id FROM ord WHERE is_target",
        ("order_id",),
    ),
    "customer_category": StreamDef(
        ("customer_id", "category"),
        "SELECT DISTINCT order_id, order_ts AS ts, customer_id, category FROM ln WHERE is_target",
        ("order_id", "category"),
    ),
    "customer_size": StreamDef(
        ("customer_id", "size_type"),
        "SELECT DISTINCT order_id, order_ts AS ts, customer_id, size_type FROM ln "
        "WHERE is_target AND size_rank IS NOT NULL",
        ("order_id", "size_type"),
    ),
    "product": StreamDef(
        ("product_id",),
        "SELECT DISTINCT order_id, order_ts AS ts, product_id FROM ln WHERE is_target",
        ("order_id", "product_id"),
    ),
}


@dataclass(frozen=True)
class Running:
    """A running aggregate column of a stream (sum of event values, or max/min of an event timestamp)."""

    stream: str
    name: str
    agg: str = "sum"

    @property
    def default(self) -> str:
        return "0.0" if self.agg == "sum" else "NULL"


@dataclass(frozen=True)
class Events:
    """Event rows a family adds to a stream: FROM clause (exposing the stream keys), time, values."""

    stream: str
    source: str
    ts: str
    values: Mapping[str, str] = field(default_factory=dict)


def build_streams(ctx: Context, runnings: Sequence[Running], events: Sequence[Events]) -> dict[str, str]:
    """Create one table s_<stream> per stream that has running columns; returns stream -> table name."""
    tables = {}
    for name, spec in STREAMS.items():
        cols = [r for r in runnings if r.stream == name]
        evs = [e for e in events if e.stream == name]
        if not cols:
            continue
        unknown = {v for e in evs for v in e.values} - {c.name for c in cols}
        if unknown:
            raise ValueError(f"stream {name}: events set undeclared columns {sorted(unknown)}")
        columns: dict[str, str] = {k: "NULL" for k in spec.keys}
        columns.update(ts="NULL", kind="1", order_id="NULL")
        columns.update({c.name: c.default for c in cols})
        parts: list[dict[str, str]] = [{"ts": "ts", "kind": "0", "order_id": "order_id", **{k: k for k in spec.keys}}]
        sources = [f"FROM ({spec.queries}) q"]
        for e in evs:
            parts.append({"ts": e.ts, "kind": "1", **{k: k for k in spec.keys}, **e.values})
            sources.append(e.source)
        body = union_all(parts, columns, sources)
        aggs = ", ".join(f"{running(f'{c.agg}({c.name})', spec.keys)} AS {c.name}" for c in cols)
        out = ", ".join(dict.fromkeys((*spec.out_keys, *(k for k in spec.keys if k != "customer_id"))))
        table = f"s_{name}"
        ctx.sql(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            SELECT {out}, {", ".join(c.name for c in cols)}
            FROM (SELECT kind, order_id, {", ".join(spec.keys)}, {aggs} FROM ({body}) u) w
            WHERE kind = 0
        """)
        tables[name] = table
    return tables
