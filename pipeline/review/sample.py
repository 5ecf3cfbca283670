"""A synthetic reviewer dataset (flags, validated tables, line reasons) for tests, demos and the benchmark.

The real inputs come from the flag, validate and explain stages; this writes the same files in the same
layout so the app can be exercised alone, at any scale, including hostile text (`<script>`, spreadsheet
formulas) in every place a reviewer sees data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import write_json, write_parquet

XSS_TEXT = "<script>alert(1)</script>"
FORMULA_ID = '=HYPERLINK("http://evil.example","click")'
CATEGORIES = ("dresses", "shoes", "tops", "trousers", "outerwear", "accessories", "electronics", "home")
ALPHA = ("XS", "S", "M", "L", "XL")
TIERS = ("watch", "review", "restrict")
TYPES = ("serial_returner", "wardrober", "bracketer", "claim_abuser", "honest_high_returner")
ACTIONS = {
    "serial_returner": "Restrict free returns; review before next refund",
    "wardrober": "Inspect returned items for wear before refunding",
    "bracketer": "Offer fit advice / size guidance; do not ban",
    "claim_abuser": "Require photos for damage claims",
    "honest_high_returner": "No action: high returns explained by the items bought",
}
REASONS = ("too_small", "too_large", "not_as_described", "damaged", "quality", "changed_mind")
LINE_REASONS = (
    "Size L is one larger than the M this customer kept 4 times",
    "This customer returned 7 of their last 9 items",
    "Ships 2,300 km across a border (DE -> ES)",
    "Reviews of this product say it runs small (12 of 30)",
    "Occasion wear bought before a weekend",
)


@dataclass(frozen=True)
class SamplePaths:
    flags: Path
    validated: Path
    explain: Path
    customer_ids: list  # in score order, highest first
    xss_customer: object  # the customer whose review text and reason carry XSS_TEXT


def write_sample(
    root: Path | str,
    *,
    n_customers: int = 40,
    orders_per_customer: int = 6,
    n_products: int = 60,
    string_ids: bool = True,
    seed: int = 0,
) -> SamplePaths:
    """Write flags/, validated/ and explain/ under `root`; returns their paths and notable customers."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = int(n_customers)
    if n < 2:
        raise ValueError("n_customers: at least 2 (one carries the hostile strings)")

    # customers -------------------------------------------------------------------------------------
    if string_ids:
        cust_ids = np.array([f"C{i:06d}" for i in range(n)], dtype=object)
        cust_ids[1] = FORMULA_ID
    else:
        cust_ids = np.arange(1, n + 1, dtype="int64") * 10
    scores = np.sort(rng.beta(2, 3, n))[::-1]
    tiers = np.where(scores > 0.6, "restrict", np.where(scores > 0.35, "review", "watch"))
    types = np.array(TYPES)[rng.integers(0, len(TYPES), n)]
    types[0] = "bracketer"

    # products -----------------------------------------------------------------------------------------
    prod_ids = np.arange(1, n_products + 1, dtype="int64")
    prod_cat = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n_products)]
    size_type = np.where(
        np.isin(prod_cat, ["shoes"]),
        "eu_shoe",
        np.where(np.isin(prod_cat, ["electronics", "home", "accessories"]), "none", "alpha"),
    )
    products = pd.DataFrame(
        {
            "product_id": prod_ids,
            "category": prod_cat,
            "brand": [f"Brand {i % 7}" for i in range(n_products)],
            "size_type": size_type,
            "description": [f"Article {i}" for i in range(n_products)],
        }
    )
    products.loc[0, "description"] = XSS_TEXT

    # orders: orders_per_customer each, two lines each; some orders bracket one product in two sizes --
    n_orders = n * orders_per_customer
    order_ids = np.arange(1, n_orders + 1, dtype="int64")
    order_cust = np.repeat(cust_ids, orders_per_customer)
    start = np.datetime64("2024-01-01T00:00:00")
    order_ts = start + (rng.integers(0, 365 * 24 * 60, n_orders).astype("timedelta64[m]"))
    order_ts = np.sort(order_ts.reshape(n, orders_per_customer), axis=1).ravel()
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": order_cust,
            "order_ts": pd.to_datetime(order_ts).astype("datetime64[us]"),
            "ship_country": "DE",
            "channel": "web",
            "payment_method": "card",
            "delivered_ts": pd.to_datetime(order_ts + np.timedelta64(3, "D")).astype("datetime64[us]"),
        }
    )
    if string_ids:
        orders["customer_id"] = orders["customer_id"].astype("string")

    bracket = rng.random(n_orders) < 0.25
    bracket[:orders_per_customer:2] = True  # the first customer brackets every other order
    p1 = rng.integers(0, n_products, n_orders)
    p2 = np.where(bracket, p1, rng.integers(0, n_products, n_orders))
    size_rank = rng.integers(0, len(ALPHA) - 1, n_orders)
    line_prod = np.column_stack([p1, p2]).ravel()
    line_size_rank = np.column_stack([size_rank, np.where(bracket, size_rank + 1, size_rank)]).ravel()
    line_order = np.repeat(order_ids, 2)
    n_lines = len(line_order)
    st = size_type[line_prod]
    sizes = np.where(
        st == "alpha",
        np.array(ALPHA)[line_size_rank],
        np.where(st == "eu_shoe", (38 + line_size_rank).astype(str), None),
    )
    price = np.round(rng.gamma(2.0, 30.0, n_lines) + 5, 2)
    lines = pd.DataFrame(
        {
            "line_id": np.arange(1, n_lines + 1, dtype="int64"),
            "order_id": line_order,
            "product_id": prod_ids[line_prod],
            "size": pd.array(sizes, dtype="string"),
            "color": pd.array(
                np.array(["black", "blue", "red"])[rng.integers(0, 3, n_lines)], dtype="string"
            ),
            "quantity": np.ones(n_lines, dtype="int64"),
            "unit_price": price,
            "list_price": price,
        }
    )

    # returns: bracketed orders send one of the two back; other lines come back 35 % of the time ----------
    bracket_lines = np.repeat(bracket, 2)
    which = np.repeat(rng.integers(0, 2, n_orders), 2) == np.tile([0, 1], n_orders)
    returned = np.where(bracket_lines, which, rng.random(n_lines) < 0.35)
    ret_idx = np.flatnonzero(returned)
    line_ts = np.repeat(order_ts, 2)
    days = rng.integers(2, 30, len(ret_idx))
    returns = pd.DataFrame(
        {
            "line_id": lines["line_id"].to_numpy()[ret_idx],
            "return_ts": pd.to_datetime(line_ts[ret_idx] + days.astype("timedelta64[D]")).astype(
                "datetime64[us]"
            ),
            "quantity": np.ones(len(ret_idx), dtype="int64"),
            "reason": np.where(
                bracket_lines[ret_idx],
                np.where(line_size_rank[ret_idx] > 2, "too_large", "too_small"),
                np.array(REASONS)[rng.integers(0, len(REASONS), len(ret_idx))],
            ),
        }
    )

    # reviews: one or two per customer; the XSS customer wrote the hostile one ----------------------------
    rev_cust = np.repeat(cust_ids, 2)[: max(2, n * 3 // 2)]
    n_rev = len(rev_cust)
    reviews = pd.DataFrame(
        {
            "review_id": np.arange(1, n_rev + 1, dtype="int64"),
            "product_id": prod_ids[rng.integers(0, n_products, n_rev)],
            "customer_id": rev_cust,
            "review_ts": pd.to_datetime(start + rng.integers(0, 365, n_rev).astype("timedelta64[D]")).astype(
                "datetime64[us]"
            ),
            "rating": rng.integers(1, 6, n_rev),
            "text": [f"Review {i}: fits {ALPHA[i % 5]}, nice colour" for i in range(n_rev)],
        }
    )
    reviews.loc[0, "text"] = XSS_TEXT
    if string_ids:
        reviews["customer_id"] = reviews["customer_id"].astype("string")
    customers = pd.DataFrame({"customer_id": cust_ids, "country": "DE"})
    if string_ids:
        customers["customer_id"] = customers["customer_id"].astype("string")

    validated = root / "validated"
    for name, df in (
        ("customers", customers),
        ("products", products),
        ("orders", orders),
        ("order_lines", lines),
        ("returns", returns),
        ("reviews", reviews),
    ):
        write_parquet(df, validated / f"{name}.parquet")
    write_json({"cutoff": "2025-01-31T00:00:00", "source": "review-sample"}, validated / "meta.json")

    # flags ---------------------------------------------------------------------------------------------
    n_items = np.full(n, orders_per_customer * 2)
    n_ret = np.bincount(np.repeat(np.arange(n), orders_per_customer * 2)[ret_idx], minlength=n)
    expected = np.round(n_items * 0.3, 2)
    value = price.reshape(n, -1)
    ret_value = np.bincount(
        np.repeat(np.arange(n), orders_per_customer * 2)[ret_idx], weights=price[ret_idx], minlength=n
    )
    reasons = [
        f"Returned {r} of {i} items; a customer-blind model expected {e:.1f}.\nBracketed {b} orders in two sizes."
        for r, i, e, b in zip(n_ret, n_items, expected, bracket.reshape(n, -1).sum(1), strict=True)
    ]
    reasons[0] = reasons[0] + "\n" + XSS_TEXT
    flags = pd.DataFrame(
        {
            "customer_id": cust_ids,
            "abuse_score": scores,
            "tier": tiers,
            "abuse_type": types,
            "recommended_action": [ACTIONS[t] for t in types],
            "n_orders": np.full(n, orders_per_customer, dtype="int64"),
            "n_items": n_items.astype("int64"),
            "n_returned": n_ret.astype("int64"),
            "expected_returns": expected,
            "excess_returns": n_ret - expected,
            "excess_pvalue": rng.random(n) ** 4,
            "bracketing_share": bracket.reshape(n, -1).mean(1),
            "return_value": np.round(ret_value, 2),
            "net_value": np.round(value.sum(1) - ret_value - 4.5 * n_ret, 2),
            "reasons": reasons,
        }
    )
    if string_ids:
        flags["customer_id"] = flags["customer_id"].astype("string")
    write_parquet(flags, root / "flags" / "flagged_customers.parquet")

    # line reasons (the explain stage's output) for every line ------------------------------------------
    line_cust = np.repeat(order_cust, 2)
    lr = pd.DataFrame(
        {
            "line_id": lines["line_id"],
            "order_id": lines["order_id"],
            "customer_id": line_cust,
            "return_probability": np.round(rng.beta(2, 4, n_lines), 4),
            "reason_1": np.array(LINE_REASONS)[rng.integers(0, len(LINE_REASONS), n_lines)],
            "reason_2": np.array(LINE_REASONS)[rng.integers(0, len(LINE_REASONS), n_lines)],
            "reason_3": None,
        }
    )
    lr["reason_3"] = lr["reason_3"].astype("string")
    if string_ids:
        lr["customer_id"] = lr["customer_id"].astype("string")
    write_parquet(lr, root / "explain" / "line_reasons.parquet")

    return SamplePaths(root / "flags", validated, root / "explain", list(cust_ids), cust_ids[0])
