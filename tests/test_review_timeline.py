"""Timeline geometry and the reviewer-facing helpers (bracketing episodes, number formats)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.review.data import fmt_number
from pipeline.review.timeline import PALETTE, bracketing_orders, build_timeline


def _lines(rows):
    cols = [
        "line_id",
        "order_id",
        "order_ts",
        "product_id",
        "category",
        "size",
        "color",
        "value",
        "return_ts",
        "return_reason",
        "days_to_return",
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["order_ts"] = pd.to_datetime(df["order_ts"])
    df["return_ts"] = pd.to_datetime(df["return_ts"])
    return df


@pytest.fixture
def lines():
    return _lines(
        [
            # order 1: one dress in M and L, L returned -> bracketing
            (1, 1, "2024-01-10", 5, "dresses", "M", "red", 60.0, None, None, None),
            (2, 1, "2024-01-10", 5, "dresses", "L", "red", 60.0, "2024-01-20", "too_large", 10),
            # order 2: two different products, one returned -> not bracketing
            (3, 2, "2024-03-01", 6, "shoes", "40", "black", 90.0, "2024-03-29", "damaged", 28),
            (4, 2, "2024-03-01", 7, "tops", "S", "blue", 20.0, None, None, None),
            # order 3: same product, same size twice, one returned -> not bracketing (no variants)
            (5, 3, "2024-05-01", 8, "tops", "S", "blue", 15.0, None, None, None),
            (6, 3, "2024-05-01", 8, "tops", "S", "blue", 15.0, "2024-05-05", "changed_mind", 4),
            # order 4: one product in two colours, both kept -> not bracketing (nothing came back)
            (7, 4, "2024-06-01", 9, "tops", "S", "blue", 15.0, None, None, None),
            (8, 4, "2024-06-01", 9, "tops", "S", "green", 15.0, None, None, None),
        ]
    )


def test_bracketing_orders(lines):
    assert bracketing_orders(lines) == {1}
    assert bracketing_orders(lines.iloc[0:0]) == set()


def test_timeline_geometry(lines):
    tl = build_timeline(lines, width=800, height=300)
    assert tl.n_lines == 8 and tl.n_returned == 3
    assert len(tl.points) == 8 and len(tl.segments) == 3
    xs = [p.x for p in tl.points]
    ys = [p.y for p in tl.points]
    assert all(tl.left <= x <= 800 - tl.right for x in xs)
    assert all(tl.top <= y <= 300 - tl.bottom for y in ys)
    assert xs == sorted(xs)  # time runs left to right
    # value on the y axis: the 90.00 shoe is highest (smallest y), the 15.00 tops lowest
    assert min(ys) == tl.points[2].y and max(ys) == tl.points[4].y
    # returns run to the right, longer for later returns
    seg = {round(s.x2 - s.x1): s for s in tl.segments}
    assert all(s.x2 > s.x1 for s in tl.segments)
    assert max(seg) > min(seg)
    # the bracketing order is highlighted at its date, and its points are marked
    assert len(tl.bands) == 1 and "order 1" in tl.bands[0].tip
    assert abs(tl.bands[0].x + tl.bands[0].width / 2 - tl.points[0].x) < 0.2
    assert [p.bracketing for p in tl.points] == [True, True] + [False] * 6
    # tooltips carry category, size, value, reason and days to return
    assert tl.points[1].tip.count("dresses") == 1 and "size L" in tl.points[1].tip
    assert "returned after 10 days (too_large)" in tl.points[1].tip
    assert "kept" in tl.points[0].tip
    # categories coloured by frequency (tops is most common -> first colour), legend lists them
    assert tl.legend[0] == ("tops", PALETTE[0])
    assert tl.x_ticks and tl.y_ticks


def test_timeline_of_nothing_and_of_one_line():
    assert build_timeline(_lines([])).points == []
    one = build_timeline(_lines([(1, 1, "2024-01-10", 5, None, None, None, 0.0, None, None, None)]))
    assert len(one.points) == 1 and one.legend == [("unknown", PALETTE[0])]


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (1234.5, "money", "1,234.50"),
        (3, "int", "3"),
        (0.256, "pct", "26 %"),
        (2.5, "signed1", "+2.5"),
        (0.00001, "p", "< 0.0001"),
        (float("nan"), "money", "—"),
        (None, "int", "—"),
        (pd.NA, "int", "—"),
    ],
)
def test_fmt_number(value, kind, text):
    assert fmt_number(value, kind) == text
