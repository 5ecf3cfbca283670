"""The DuckDB side of featurization: typed staging of the contract tables and the shared base tables.

Why DuckDB: the features are as-of aggregates over event streams (sort + running sums), which DuckDB
runs out of core over Arrow/Parquet on all cores; the measured comparison with pandas is in
BENCHMARKS.md. Every family reads the base tables created here:

- `t_<table>`: each contract table with explicit types; absent optional columns are typed NULLs and
  absent optional tables are empty, so family SQL never branches on the input.
- `ln`: one row per order line joined to its order and product, with `qi` (0..n-1 over the target
  lines in (order_ts, line_id) order: the output row), `size_rank` (ordinal position of
  the size on its size type's scale), `first_return_ts` (earliest return recorded at or after the order),
  `window_end` (order_ts + return window) and `resolved_ts` (when the line's outcome became known:
  its first return, or the end of the return window, whichever is first).
- `ret`: return rows joined to their line (returns dated before their own order are ignored).
- `pop`: the population return rate as of the start of each order day (for smoothing).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.sql import add_days, quote
from pipeline.contract import FLOAT, ID, INT, SIZE_SCALES, STR, TABLES, TS

TableInput = pd.DataFrame | pa.Table | Path | str
SQL_TYPES = {STR: "VARCHAR", INT: "BIGINT", FLOAT: "DOUBLE", TS: "TIMESTAMP"}
N_SIZE_RANKS = max(len(s) for s in SIZE_SCALES.values())


@dataclass(frozen=True)
class FeaturizeParams:
    """Knobs of featurization (params.yaml `featurize:` and `labels:`); defaults match params.yaml."""

    return_window_days: int = 30
    threads: int = 2
    memory_limit: str = "4GB"
    temp_directory: str | None = None
    prior_return_rate: float = 0.2
    population_prior_weight: float = 200.0
    customer_prior_weight: float = 10.0
    category_prior_weight: float = 5.0
    product_prior_weight: float = 20.0
    size_tendency_prior_weight: float = 5.0
    late_delivery_days: float = 7.0
    negative_sentiment: float = -0.05
    category_median_min_lines: int = 5
    stream_method: str = (
        "scan"  # "scan" (one time-ordered pass, features/scan.py) or "sql" (window functions)
    )
    assembly_chunk_rows: int = 500_000  # target lines assembled (and held in memory) at a time
    # priors of features/size.py and the late-return share of features/past_returns.py (params.yaml says
    # where the defaults come from); each module checks its own
    size_moments: dict[str, list[float]] = field(
        default_factory=lambda: {"alpha": [3.15, 1.40], "eu_shoe": [5.60, 2.65]}
    )
    size_cross_type_rho: float = 0.7
    size_evidence_weights: dict[str, float] = field(
        default_factory=lambda: {"ordered": 2.0, "kept": 1.0, "returned": 2.0}
    )
    late_return_share: float = 0.6

    def __post_init__(self) -> None:
        from features import past_returns, size

        size.check_params(self)
        past_returns.check_params(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | FeaturizeParams | None) -> FeaturizeParams:
        """Read the `featurize:` and `labels:` sections of a params dict (unknown keys are an error)."""
        if params is None:
            return cls()
        if isinstance(params, FeaturizeParams):
            return params
        section = dict(params.get("featurize") or {})
        labels = params.get("labels") or {}
        if "return_window_days" in labels:
            section["return_window_days"] = labels["return_window_days"]
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"params.yaml featurize: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**section)


@dataclass
class Context:
    """An open DuckDB connection with the staged tables, plus what the input offers."""

    con: duckdb.DuckDBPyConnection
    params: FeaturizeParams
    available: set[str]
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: families may compute in a background thread (pure-Python work next to DuckDB/numpy, which
    #: release the GIL); off unless the caller resolves `pending` (features.build does)
    background: bool = False
    #: table name -> function that creates it (waits for its background work); see `need`
    pending: dict[str, Callable[[], None]] = field(default_factory=dict)
    #: Arrow tables registered with DuckDB by name (e.g. the scan's `sx0`), kept for zero-copy slicing
    arrow: dict[str, Any] = field(default_factory=dict)

    def sql(self, query: str) -> None:
        self.con.execute(query)

    def pending_in(self, text: str) -> bool:
        """True when `text` (SQL) names a pending table."""
        return any(re.search(rf"\b{re.escape(n)}\b", text) for n in self.pending)

    def need(self, text: str) -> None:
        """Create every pending table that `text` (SQL) names, waiting for its background work."""
        for name in [n for n in self.pending if re.search(rf"\b{re.escape(n)}\b", text)]:
            self.pending.pop(name)()

    def finish_pending(self) -> None:
        """Create every pending table."""
        while self.pending:
            self.pending.pop(next(iter(self.pending)))()


def connect(params: FeaturizeParams) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with threads/memory from params (spills to temp_directory when given)."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(params.threads)}")
    con.execute(f"SET memory_limit = {quote(params.memory_limit)}")
    if params.temp_directory:
        con.execute(f"SET temp_directory = {quote(str(params.temp_directory))}")
    return con


def _columns_of(data: TableInput) -> list[str]:
    if isinstance(data, pd.DataFrame):
        return [str(c) for c in data.columns]
    if isinstance(data, pa.Table):
        return list(data.column_names)
    return list(pq.read_schema(str(data)).names)


def _register(con: duckdb.DuckDBPyConnection, name: str, data: TableInput) -> None:
    if isinstance(data, pd.DataFrame | pa.Table):
        con.register(name, data)
    else:
        path = Path(data)
        if path.suffix.lower() != ".parquet":
            raise ValueError(
                f"{path}: featurization reads Parquet paths directly; load CSV into a DataFrame first"
            )
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({quote(str(path))})")


def _warm_up_scan() -> None:
    """Import numba and load the scan kernel (features/scan.py) while DuckDB stages: ~1-2 s off the path."""
    try:
        from features.scan import warm_up

        warm_up()
    except Exception:  # noqa: BLE001 - only a head start: the scan itself loads (and reports) the same
        pass


def stage(
    con: duckdb.DuckDBPyConnection,
    tables: Mapping[str, TableInput | None],
    params: FeaturizeParams,
    target_orders: TableInput | None = None,
    early: Callable[[Context], None] | None = None,
) -> Context:
    """Create typed views t_<table> over the inputs and the base tables ln, ret and pop.

    `early(ctx)` runs between the two: work that reads only the typed views (the review texts VADER
    scores in a background process) starts before the seconds of joins and sorts of the base tables.
    """
    if params.stream_method == "scan":
        threading.Thread(target=_warm_up_scan, name="scan-warm-up", daemon=True).start()
    present: dict[str, list[str]] = {}
    for name, spec in TABLES.items():
        data = tables.get(name)
        if data is None:
            if spec.required:
                raise ValueError(f"table {name!r} is required by the data contract but was not given")
            continue
        cols = _columns_of(data)
        missing = [c for c in spec.required_columns if c not in cols]
        if missing:
            raise ValueError(f"table {name!r}: required column(s) {missing} missing (data contract)")
        _register(con, f"src_{name}", data)
        present[name] = cols

    id_types = _id_types(con, present)
    available: set[str] = set()
    counts: dict[str, int] = {}
    for name, spec in TABLES.items():
        cols = present.get(name)
        if cols is None:
            selects = ", ".join(
                f"CAST(NULL AS {_sql_type(c.type, c.name, id_types)}) AS {c.name}" for c in spec.columns
            )
            con.execute(f"CREATE OR REPLACE TEMP VIEW t_{name} AS SELECT {selects} WHERE false")
            counts[name] = 0
            continue
        available.add(name)
        here = [c for c in spec.columns if c.name in cols]
        non_null = con.execute(
            f"SELECT count(*), {', '.join(f'count({c.name})' for c in here)} FROM src_{name}"
        ).fetchone()
        counts[name] = int(non_null[0])
        for c, n in zip(here, non_null[1:], strict=True):
            if n > 0 or c.required:
                available.add(f"{name}.{c.name}")
        selects = []
        for c in spec.columns:
            typ = _sql_type(c.type, c.name, id_types)
            if c.name in cols:
                expr = c.name if c.type == ID else f"CAST({c.name} AS {typ})"
                if c.name == "size":
                    expr = "upper(trim(CAST(size AS VARCHAR)))"
            else:
                expr = f"CAST(NULL AS {typ})"
            selects.append(f"{expr} AS {c.name}")
        con.execute(f"CREATE OR REPLACE TEMP VIEW t_{name} AS SELECT {', '.join(selects)} FROM src_{name}")

    if target_orders is not None:
        _register(con, "src_target", target_orders)
        target_expr = "o.order_id IN (SELECT order_id FROM src_target)"
    else:
        target_expr = "TRUE"
    ctx = Context(con, params, available, counts)
    if early is not None:
        early(ctx)
    _base_tables(ctx, target_expr)
    return ctx


def _id_types(con: duckdb.DuckDBPyConnection, present: Mapping[str, list[str]]) -> dict[str, str]:
    """The SQL type of each id column, taken from the first table that holds it."""
    types: dict[str, str] = {}
    for name, cols in present.items():
        for col_name, col_type, *_ in con.execute(f"DESCRIBE SELECT * FROM src_{name}").fetchall():
            if col_name in cols and col_name.endswith("_id") and col_name not in types:
                types[col_name] = col_type
    return types


def _sql_type(logical: str, name: str, id_types: Mapping[str, str]) -> str:
    if logical == ID:
        return id_types.get(name, "BIGINT")
    return SQL_TYPES[logical]


def _size_scale_sql() -> str:
    rows = [
        f"({quote(st)}, {quote(size)}, {rank})"
        for st, scale in SIZE_SCALES.items()
        for rank, size in enumerate(scale)
    ]
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS s(size_type, size, size_rank)"


def _base_tables(ctx: Context, target_expr: str) -> None:
    p = ctx.params
    w = p.return_window_days
    ctx.sql(f"CREATE OR REPLACE TEMP TABLE size_scale AS {_size_scale_sql()}")
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE ord AS
        SELECT o.*, {target_expr} AS is_target FROM t_orders o
    """)
    ctx.sql("""
        CREATE OR REPLACE TEMP TABLE ret AS
        SELECT r.line_id, o.customer_id, l.product_id, p.category, r.return_ts, r.quantity,
               r.reason, l.unit_price,
               row_number() OVER (PARTITION BY r.line_id ORDER BY r.return_ts, r.quantity, r.reason) = 1 AS is_first
        FROM t_returns r
        JOIN t_order_lines l ON r.line_id = l.line_id
        JOIN ord o ON l.order_id = o.order_id  -- the orders as staged (not their input file again)
        JOIN t_products p ON l.product_id = p.product_id
        WHERE r.return_ts >= o.order_ts
    """)
    # qi: the rows are stored sorted (targets first, by order_ts, line_id) and numbered by storage position
    # (rowid of a fresh table written in ORDER BY order): a plain sort costs about two thirds of the CPU of
    # the equivalent row_number() window over the wide rows, and leaves ln in qi order. qi is added as a
    # column and filled in place (not a copy of every column into a new table: 1 s of 10M lines' staging)
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE ln AS
        SELECT l.line_id, l.order_id, l.product_id, o.customer_id, o.order_ts, o.is_target,
               p.category, p.size_type, sc.size_rank, l.size, l.color,
               l.quantity, l.unit_price, l.list_price,
               fr.return_ts AS first_return_ts,
               {add_days("o.order_ts", w)} AS window_end,
               least(coalesce(fr.return_ts, {add_days("o.order_ts", w)}), {add_days("o.order_ts", w)}) AS resolved_ts
        FROM t_order_lines l
        JOIN ord o ON l.order_id = o.order_id
        JOIN t_products p ON l.product_id = p.product_id
        LEFT JOIN size_scale sc ON sc.size_type = p.size_type AND sc.size = l.size
        LEFT JOIN (SELECT line_id, return_ts FROM ret WHERE is_first) fr ON fr.line_id = l.line_id
        ORDER BY NOT o.is_target, o.order_ts, l.line_id
    """)
    ctx.sql("ALTER TABLE ln ADD COLUMN qi BIGINT")
    ctx.sql("UPDATE ln SET qi = CASE WHEN is_target THEN rowid END")
    ctx.counts["target_lines"] = int(ctx.con.execute("SELECT count(*) FROM ln WHERE is_target").fetchone()[0])
    create_pop(ctx)


POP_EVENTS_SQL = """
    SELECT date_trunc('day', resolved_ts) AS d, 1 AS res, 0 AS rtn FROM ln
    UNION ALL
    SELECT date_trunc('day', first_return_ts) AS d, 0 AS res, 1 AS rtn FROM ln WHERE first_return_ts IS NOT NULL
"""


def create_pop(ctx: Context, events_sql: str = POP_EVENTS_SQL) -> None:
    """`pop`: the population return rate as of the start of each day (events dated strictly before that
    day), shrunk towards the prior so that the first days are not 0/0.

    `events_sql` yields (d, res, rtn) day events; the batch-scoring state (features/state.py) passes its
    stored day counts united with the later raw events, so both paths share this one definition.
    """
    p = ctx.params
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE pop AS
        WITH ev AS (
            {events_sql}
            UNION ALL
            SELECT DISTINCT date_trunc('day', order_ts) AS d, 0 AS res, 0 AS rtn FROM ord WHERE is_target
        ),
        daily AS (SELECT d, sum(res) AS res, sum(rtn) AS rtn FROM ev GROUP BY d),
        cum AS (
            SELECT d,
                   coalesce(sum(res) OVER (ORDER BY d ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS res,
                   coalesce(sum(rtn) OVER (ORDER BY d ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS rtn
            FROM daily
        )
        SELECT d, (rtn + {p.population_prior_weight} * {p.prior_return_rate}) / (res + {p.population_prior_weight}) AS rate
        FROM cum
    """)
