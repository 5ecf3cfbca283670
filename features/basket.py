"""Basket and bracketing: what else is in the order, and how established the customer is.

Why it predicts returns: ordering the same product in several sizes or colours ("bracketing") means
all but one will come back; many lines of the same category signal try-at-home shopping; big baskets
are more often partly returned. New customers and rare buyers return differently from regulars.
Lines of the *same* order are known at checkout, so they are used as they are; tenure and order
frequency count only orders placed strictly before this one. Tenure is measured from the account's
signup when known, else from the customer's first earlier order (0 for a first order).
"""

from __future__ import annotations

from features.engine import Context
from features.spec import FeatureSpec
from features.sql import days_between
from features.streams import Events, Running

FAMILY = "basket"


def finish(ctx: Context) -> None:
    """Order-level, order x product and order x category line counts for the target orders.

    A `finish` (after the streams), not a `prepare`: only the assembly reads these tables, so they are
    not held in DuckDB's memory while the streams run (the peak at 10M lines).
    """
    ctx.sql("""
        CREATE OR REPLACE TEMP TABLE bo AS
        SELECT order_id, min(order_ts) AS order_ts, count(*) AS n_lines, sum(quantity) AS n_units,
               sum(quantity * unit_price) AS basket_value
        FROM ln WHERE is_target GROUP BY order_id
    """)
    ctx.sql("""
        CREATE OR REPLACE TEMP TABLE bp AS
        SELECT order_id, product_id, min(order_ts) AS order_ts, count(*) AS n_lines,
               count(DISTINCT size) AS n_sizes, count(DISTINCT color) AS n_colors
        FROM ln WHERE is_target GROUP BY order_id, product_id
    """)
    ctx.sql("""
        CREATE OR REPLACE TEMP TABLE bc AS
        SELECT order_id, category, min(order_ts) AS order_ts, count(*) AS n_lines
        FROM ln WHERE is_target GROUP BY order_id, category
    """)


#: Per-order tables (with the order's order_ts), read per order_ts range by the chunked assembly.
ORDER_TABLES = ["bo", "bp", "bc"]

JOINS = [
    "LEFT JOIN bo ON bo.order_id = l.order_id",
    "LEFT JOIN bp ON bp.order_id = l.order_id AND bp.product_id = l.product_id",
    "LEFT JOIN bc ON bc.order_id = l.order_id AND bc.category = l.category",
    "LEFT JOIN ord o ON o.order_id = l.order_id",
    "LEFT JOIN t_customers cu ON cu.customer_id = l.customer_id",
]

RUNNINGS = [Running("customer", "c_orders"), Running("customer", "c_first_order", "first")]

EVENTS = [Events("customer", "FROM ord", "order_ts", {"c_orders": "1.0", "c_first_order": "order_ts"})]

TENURE = f"greatest(0.0, {days_between('l.order_ts', 'coalesce(cu.signup_ts, s.c_first_order, l.order_ts)')})"

FEATURES = [
    FeatureSpec(
        "quantity", FAMILY, "numeric", "Units ordered on the line.", False, "CAST(l.quantity AS DOUBLE)"
    ),
    FeatureSpec("basket_lines", FAMILY, "numeric", "Lines in the order.", False, "bo.n_lines"),
    FeatureSpec("basket_units", FAMILY, "numeric", "Units in the order.", False, "bo.n_units"),
    FeatureSpec(
        "same_product_lines",
        FAMILY,
        "numeric",
        "Lines of this same product in the order (bracketing by size, colour or duplicates).",
        False,
        "bp.n_lines",
    ),
    FeatureSpec(
        "same_product_sizes",
        FAMILY,
        "numeric",
        "Different sizes of this product in the order (more than 1: size bracketing).",
        False,
        "CASE WHEN l.size IS NOT NULL THEN bp.n_sizes END",
        requires=("order_lines.size",),
    ),
    FeatureSpec(
        "same_product_colors",
        FAMILY,
        "numeric",
        "Different colours of this product in the order (more than 1: colour bracketing).",
        False,
        "CASE WHEN l.color IS NOT NULL THEN bp.n_colors END",
        requires=("order_lines.color",),
    ),
    FeatureSpec(
        "same_category_lines",
        FAMILY,
        "numeric",
        "Lines of the same category in the order (this one included).",
        False,
        "bc.n_lines",
    ),
    FeatureSpec(
        "cust_tenure_days",
        FAMILY,
        "numeric",
        "Days since the customer signed up (else since their first earlier order) at the order's time.",
        True,
        TENURE,
    ),
    FeatureSpec(
        "cust_prior_orders",
        FAMILY,
        "numeric",
        "Orders the customer placed before this one.",
        True,
        "s.c_orders",
    ),
    FeatureSpec(
        "cust_orders_per_30d",
        FAMILY,
        "numeric",
        "Earlier orders per 30 days of tenure (tenure floored at 30 days).",
        True,
        f"30.0 * s.c_orders / greatest({TENURE}, 30.0)",
    ),
    FeatureSpec(
        "channel",
        FAMILY,
        "categorical",
        "Sales channel of the order.",
        False,
        "o.channel",
        requires=("orders.channel",),
    ),
    FeatureSpec(
        "payment_method",
        FAMILY,
        "categorical",
        "Payment method (invoice / pay-later makes returning cheap).",
        False,
        "o.payment_method",
        requires=("orders.payment_method",),
    ),
]
