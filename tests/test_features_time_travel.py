"""Time-travel properties: an order's features depend only on what was known strictly before it."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from features.build import build_features
from features.registry import FEATURES
from features.toy import Toy

PARAMS = {"labels": {"return_window_days": 10}, "featurize": {"threads": 1, "category_median_min_lines": 1}}
T0 = pd.Timestamp("2024-01-01")
NAMES = [f.name for f in FEATURES]
SIZES = ("S", "M", "L", "XL")
SENTINEL_H = 9000
TEXTS = ("Runs small, sadly.", "Love it!", "Too big and poor quality.", "Fine.", "Didn't fit at all")


def _ts(hours: int) -> str:
    return str(T0 + pd.Timedelta(hours=hours))


@st.composite
def histories(draw):
    """A random small history: up to 3 customers, 3 products, 10 orders (ties allowed), returns, reviews."""
    t = Toy()
    for c in (1, 2, 3):
        t.customer(c, None if draw(st.booleans()) else "2023-06-01")
    t.product(1, "dresses", "alpha").product(2, "dresses", "alpha").product(3, "shoes", "none")
    t.warehouse(1, "DE").warehouse(2, "FR")
    orders = []
    for oid in range(1, draw(st.integers(3, 10)) + 1):
        hours = draw(st.sampled_from([0, 24, 48, 300, 301, 600, 900])) + draw(st.integers(0, 3)) * 24
        lines = [
            {
                "product_id": (p := draw(st.integers(1, 3))),
                "size": draw(st.sampled_from(SIZES)) if p != 3 else None,
                "unit_price": float(draw(st.integers(5, 60))),
                "list_price": 70.0,
                "color": draw(st.sampled_from(["red", "blue"])),
            }
            for _ in range(draw(st.integers(1, 3)))
        ]
        delivered = draw(st.one_of(st.none(), st.integers(1, 400)))
        ids = t.order(
            oid,
            draw(st.integers(1, 3)),
            _ts(hours),
            lines,
            ship_country=draw(st.sampled_from(["DE", "FR"])),
            warehouse_id=draw(st.sampled_from([1, 2])),
            delivered=_ts(hours + delivered) if delivered else None,
            channel="web",
            payment_method=draw(st.sampled_from(["card", "invoice"])),
        )
        orders.append((oid, hours, ids))
        for line in ids:
            if draw(st.booleans()):
                t.ret(
                    line,
                    _ts(hours + draw(st.integers(0, 400))),
                    draw(st.sampled_from(["too_small", "too_large", "other"])),
                )
    for rid in range(draw(st.integers(0, 5))):
        t.review(
            rid + 1,
            draw(st.integers(1, 3)),
            _ts(draw(st.integers(0, 1300))),
            draw(st.sampled_from(TEXTS)),
            draw(st.integers(1, 5)),
        )
    # far-future sentinels keep the *schema* constant (reviews and return reasons present), so that a
    # change between runs can only come from what an order may see, not from features being switched on
    t.review(97, 3, _ts(SENTINEL_H), "Fine.", 3)
    t.ret(orders[0][2][0], _ts(SENTINEL_H), "other")
    target = draw(st.sampled_from(orders))
    return t, target


def _features_of(t: Toy, order_id: int) -> pd.DataFrame:
    df, _ = build_features(t.tables(), "2025-12-31", PARAMS)
    out = df[df.order_id == order_id].set_index("line_id")[NAMES]
    cats = [f.name for f in FEATURES if f.kind == "categorical"]
    return out.astype({c: "str" for c in cats})  # category levels follow the data; compare the values


SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each example runs DuckDB twice
)


@SETTINGS
@given(histories(), st.data())
def test_events_at_or_after_the_order_do_not_change_its_features(case, data):
    t, (oid, hours, _) = case
    before = _features_of(t, oid)
    at_or_after = st.integers(hours, hours + 500).map(_ts)
    customer = int(next(o for o in t.rows["orders"] if o["order_id"] == oid)["customer_id"])
    # a new order of the same customer (possibly at the same instant) with a return and a review
    new_ids = t.order(
        999, customer, data.draw(at_or_after), [{"product_id": 1, "size": "M"}, {"product_id": 3}]
    )
    t.ret(new_ids[0], _ts(hours + 600), "too_small")
    t.review(99, 1, data.draw(at_or_after), "Runs small and cheap, terrible.", 1)
    t.review(98, 3, data.draw(at_or_after), "Wonderful!", 5)
    # returns of earlier lines recorded at or after the order; later orders change; deliveries land later
    for o in t.rows["orders"]:
        if o["order_id"] != oid and o["order_ts"] >= T0 + pd.Timedelta(hours=hours):
            o["payment_method"] = "invoice"
            o["ship_country"] = "FR"
    for line in t.rows["order_lines"]:
        order = next(o for o in t.rows["orders"] if o["order_id"] == line["order_id"])
        if line["order_id"] != oid and order["order_ts"] >= T0 + pd.Timedelta(hours=hours):
            line["size"] = "XL" if line["size"] else None
            line["unit_price"] = 1.0
        elif line["order_id"] != oid and data.draw(st.booleans()):
            t.ret(line["line_id"], data.draw(at_or_after), "too_large")
    t.rows["returns"] = [
        r
        for r in t.rows["returns"]
        if r["return_ts"] < T0 + pd.Timedelta(hours=hours)
        or r["return_ts"] == T0 + pd.Timedelta(hours=SENTINEL_H)
        or data.draw(st.booleans())
    ]  # drop some later returns
    t.rows["reviews"] = [
        r
        for r in t.rows["reviews"]
        if r["review_ts"] < T0 + pd.Timedelta(hours=hours) or r["review_id"] >= 98 or data.draw(st.booleans())
    ]
    for o in t.rows["orders"]:  # deliveries not yet made at the order's time land (later) at or after it
        undelivered = pd.isna(o["delivered_ts"]) or o["delivered_ts"] >= T0 + pd.Timedelta(hours=hours)
        if o["order_id"] != oid and undelivered and data.draw(st.booleans()):
            o["delivered_ts"] = pd.Timestamp(data.draw(at_or_after))
    after = _features_of(t, oid)
    pd.testing.assert_frame_equal(before, after, check_exact=False, rtol=1e-9)


@SETTINGS
@given(histories())
def test_removing_earlier_events_changes_the_features_that_count_them(case):
    t, (oid, hours, ids) = case
    t_o = T0 + pd.Timedelta(hours=hours)
    order = next(o for o in t.rows["orders"] if o["order_id"] == oid)
    customer = order["customer_id"]
    before = _features_of(t, oid)
    # an earlier order of the same customer, with a return recorded before the order
    t.order(500, customer, str(t_o - pd.Timedelta(days=40)), [{"product_id": 3, "unit_price": 20.0}])
    extra = t.rows["order_lines"][-1]["line_id"]
    t.ret(extra, str(t_o - pd.Timedelta(days=39)), "other")
    t.review(77, 1, str(t_o - pd.Timedelta(hours=1)), "Runs small.", 2)
    more = _features_of(t, oid)
    assert (more["cust_prior_orders"] == before["cust_prior_orders"] + 1).all()
    assert (more["cust_returns"] == before["cust_returns"] + 1).all()
    assert (more["cust_returned_value"] == before["cust_returned_value"] + 20.0).all()
    assert (more["cust_days_since_last_return"] <= 39).all()
    on_1 = [
        i
        for i, line in zip(more.index, more.index, strict=True)
        if next(x for x in t.rows["order_lines"] if x["line_id"] == line)["product_id"] == 1
    ]
    assert (more.loc[on_1, "product_review_count"] == before.loc[on_1, "product_review_count"] + 1).all()
    # removing them again restores the original features exactly
    t.rows["orders"] = [o for o in t.rows["orders"] if o["order_id"] != 500]
    t.rows["order_lines"] = [x for x in t.rows["order_lines"] if x["order_id"] != 500]
    t.rows["returns"] = [r for r in t.rows["returns"] if r["line_id"] != extra]
    t.rows["reviews"] = [r for r in t.rows["reviews"] if r["review_id"] != 77]
    pd.testing.assert_frame_equal(before, _features_of(t, oid), check_exact=False, rtol=1e-9)
