"""The customer timeline chart: order lines and returns as geometry for a server-rendered inline SVG.

Pure functions over a customer's line history (one row per order line). Kept apart from the template so
the layout (scales, bracketing highlights, tooltips) is unit-tested without a browser; the template only
draws what is computed here, and Jinja escapes every text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER_COLOUR = "#999999"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    r: float
    colour: str
    returned: bool
    bracketing: bool
    tip: str


@dataclass(frozen=True)
class Segment:  # from the order to its return, drawn at the line's value
    x1: float
    x2: float
    y: float
    tip: str


@dataclass(frozen=True)
class Band:  # a bracketing episode: one order holding the same product in several sizes/colours
    x: float
    width: float
    tip: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass
class Timeline:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    points: list[Point] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (category, colour)
    n_lines: int = 0
    n_returned: int = 0


def bracketing_orders(lines: pd.DataFrame) -> set:
    """Orders with one product in two or more distinct sizes/colours of which at least one came back.

    That is the reviewer-facing definition of a bracketing episode (the flag stage owns the scoring one):
    buying several variants to keep one. One customer's history is small, so plain dicts beat a pandas
    groupby here (which cost ~0.3 s per page).
    """
    if lines.empty or "product_id" not in lines or "order_id" not in lines:
        return set()
    n = len(lines)

    def col(name: str) -> list:
        return lines[name].tolist() if name in lines else [None] * n

    returned = lines["return_ts"].notna().tolist() if "return_ts" in lines else [False] * n
    variants: dict[tuple, set] = {}
    any_back: dict[tuple, bool] = {}
    for oid, pid, size, colour, back in zip(
        col("order_id"), col("product_id"), col("size"), col("color"), returned, strict=True
    ):
        key = (oid, pid)
        variants.setdefault(key, set()).add(
            (None if pd.isna(size) else size, None if pd.isna(colour) else colour)
        )
        any_back[key] = any_back.get(key, False) or bool(back)
    return {oid for (oid, pid), v in variants.items() if len(v) >= 2 and any_back[(oid, pid)]}


def _fmt_money(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.2f}"


def _nice(v: float) -> float:
    """Round to two significant digits (tick labels people can read)."""
    if v <= 0:
        return 0.0
    mag = 10 ** (math.floor(math.log10(v)) - 1)
    return math.floor(v / mag) * mag


def _value_ticks(vmax: float) -> list[float]:
    """Ticks evenly spaced on the sqrt scale (values span cents to thousands), rounded to nice numbers."""
    return sorted({_nice(vmax * f * f) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})


def build_timeline(lines: pd.DataFrame, *, width: int = 900, height: int = 280) -> Timeline:
    """Lay out one customer's lines: x = order date, y = line value (sqrt scale), colour = category.

    Returned lines are hollow with a segment to the return date; bracketing orders get a shaded band.
    Expects columns order_id, order_ts, value and optionally category, size, color, product_id,
    return_ts, return_reason, days_to_return.
    """
    tl = Timeline(width=width, height=height, left=56, right=16, top=16, bottom=40)
    if lines.empty:
        return tl
    df = lines.sort_values(["order_ts", "order_id"]).reset_index(drop=True)
    order_ts = pd.to_datetime(df["order_ts"])
    return_ts = pd.to_datetime(df["return_ts"]) if "return_ts" in df else pd.Series(pd.NaT, index=df.index)
    t0 = order_ts.min()
    t_end = max(order_ts.max(), return_ts.max() if return_ts.notna().any() else order_ts.max())
    span = max((t_end - t0).total_seconds(), 86400.0)
    t0 = t0 - pd.Timedelta(seconds=span * 0.02)
    span *= 1.04
    plot_w = width - tl.left - tl.right
    plot_h = height - tl.top - tl.bottom

    def x_of(ts: pd.Timestamp) -> float:
        return round(tl.left + (ts - t0).total_seconds() / span * plot_w, 1)

    values = pd.to_numeric(df["value"], errors="coerce").fillna(0.0).clip(lower=0)
    vmax = max(float(values.max()), 1.0)

    def y_of(v: float) -> float:
        return round(tl.top + plot_h - math.sqrt(v / vmax) * plot_h, 1)

    cats = (
        df["category"].astype("string").fillna("unknown")
        if "category" in df
        else pd.Series("unknown", index=df.index)
    )
    by_count = cats.value_counts().index.tolist()
    colour = {c: PALETTE[i] if i < len(PALETTE) else OTHER_COLOUR for i, c in enumerate(by_count)}
    tl.legend = [(c, colour[c]) for c in by_count[: len(PALETTE)]]
    if len(by_count) > len(PALETTE):
        tl.legend.append(("other", OTHER_COLOUR))

    # plain lists: per-element .iloc on a frame costs more than the whole layout
    n = len(df)

    def column(name: str) -> list:
        if name not in df:
            return [None] * n
        return [None if pd.isna(v) else v for v in df[name].tolist()]

    oids, ts_list, ret_list = df["order_id"].tolist(), order_ts.tolist(), return_ts.tolist()
    vals, cat_list = values.tolist(), cats.tolist()
    sizes, colours, reasons, days_l = (
        column("size"),
        column("color"),
        column("return_reason"),
        column("days_to_return"),
    )

    bracketed = bracketing_orders(df)
    first_ts: dict = {}
    n_in_order: dict = {}
    for oid, ts in zip(oids, ts_list, strict=True):
        first_ts.setdefault(oid, ts)
        n_in_order[oid] = n_in_order.get(oid, 0) + 1
    for oid in sorted(bracketed, key=lambda o: first_ts[o]):
        ts = first_ts[oid]
        tip = f"Bracketing: order {oid} on {ts:%Y-%m-%d} ({n_in_order[oid]} lines)"
        tl.bands.append(Band(x=round(x_of(ts) - 6, 1), width=12.0, tip=tip))

    for i in range(n):
        ts, v, rts = ts_list[i], float(vals[i]), ret_list[i]
        x, y = x_of(ts), y_of(v)
        returned = rts is not None and not pd.isna(rts)
        parts = [f"{ts:%Y-%m-%d}", f"order {oids[i]}", str(cat_list[i])]
        if sizes[i] is not None and str(sizes[i]):
            parts.append(f"size {sizes[i]}")
        if colours[i] is not None and str(colours[i]):
            parts.append(str(colours[i]))
        parts.append(f"value {_fmt_money(v)}")
        if returned:
            reason = reasons[i] or "no reason given"
            days = None if days_l[i] is None else f"{float(days_l[i]):.0f}"
            parts.append(f"returned after {days} days ({reason})" if days else f"returned ({reason})")
        else:
            parts.append("kept")
        tip = " · ".join(parts)
        is_br = oids[i] in bracketed
        tl.points.append(Point(x, y, 5.0 if is_br else 4.0, colour[cat_list[i]], returned, is_br, tip))
        if returned:
            tl.segments.append(Segment(x, x_of(rts), y, tip))
    tl.n_lines = len(df)
    tl.n_returned = int(return_ts.notna().sum())

    # axes: month ticks (at most ~8), value ticks on the sqrt scale
    months = pd.date_range(t0.normalize().replace(day=1), t_end + pd.Timedelta(days=31), freq="MS")
    step = max(1, math.ceil(len(months) / 8))
    for m in months[::step]:
        x = x_of(m)
        if tl.left <= x <= width - tl.right:
            tl.x_ticks.append(Tick(x, f"{m:%b %Y}"))
    tl.y_ticks = [Tick(y_of(v), f"{v:,.4g}") for v in _value_ticks(vmax)]
    return tl
