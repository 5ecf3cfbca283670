"""The few dialect-specific SQL expressions, in one place.

Everything else in features/ is standard SQL (CTEs, joins, GROUP BY, window functions with ROWS frames,
CASE, least/greatest, date_trunc) that runs unchanged on DuckDB and Spark SQL. To port to Spark, change
only these helpers: `epoch(x)` -> `unix_timestamp(x)` (or `cast(x as double)`), `regexp_matches(a, p)` ->
`a rlike p`, `INTERVAL '30' DAY` works in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def days_between(later: str, earlier: str) -> str:
    """Fractional days from `earlier` to `later` (both timestamps)."""
    return f"((epoch({later}) - epoch({earlier})) / 86400.0)"


def add_days(ts: str, days: int) -> str:
    """A timestamp `days` whole days after `ts`."""
    return f"({ts} + INTERVAL '{int(days)}' DAY)"


def regex_match(expr: str, pattern: str) -> str:
    """True when the regular expression `pattern` (RE2/Java compatible) matches anywhere in `expr`."""
    return f"regexp_matches({expr}, {quote(pattern)})"


def running(agg: str, partition: Sequence[str]) -> str:
    """A running aggregate over an event stream up to and including the current row.

    Streams sort query rows (kind 0) before event rows (kind 1) at the same timestamp, so a query row
    sees exactly the events with ts strictly before its own: the point-in-time rule. ROWS frames are
    standard SQL and, unlike RANGE frames over timestamps, also run on Spark.
    """
    return (
        f"{agg} OVER (PARTITION BY {', '.join(partition)} ORDER BY ts, kind "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )


def union_all(parts: Sequence[Mapping[str, str]], columns: Mapping[str, str], sources: Sequence[str]) -> str:
    """UNION ALL of SELECTs that fill every column in `columns` (name -> default) in the same order.

    `parts[i]` maps column -> expression for the SELECT over `sources[i]` (a FROM ... [WHERE ...] clause).
    """
    selects = []
    for part, source in zip(parts, sources, strict=True):
        unknown = set(part) - set(columns)
        if unknown:
            raise ValueError(f"stream columns {sorted(unknown)} are not declared")
        cols = ", ".join(f"{part.get(c, default)} AS {c}" for c, default in columns.items())
        selects.append(f"SELECT {cols} {source}")
    return "\nUNION ALL\n".join(selects)
