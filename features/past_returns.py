"""Past returns: how often this customer, and this product, came back before the order.

Why it predicts returns: return behaviour is habitual (a customer who returned half of what they kept
deciding on will do it again) and products that disappoint keep disappointing. Only returns *recorded*
before the order's timestamp count, and a rate's denominator is the earlier lines whose outcome was
known at that time (returned, or past their return window): a purchase from three days ago is not yet
evidence of anything. Rates are shrunk towards the population rate as of the start of the order's day
(pseudo-counts from params), so a new customer or product gets the population rate, not 0 or 1.
"""

from __future__ import annotations

from features.spec import FeatureSpec
from features.sql import days_between
from features.streams import Events, Running

FAMILY = "past_returns"

#: The customer's smoothed return rate; also the prior of the category family's per-category rate.
CUSTOMER_RATE = "((s.c_ret + {customer_prior_weight} * pop.rate) / (s.c_res + {customer_prior_weight}))"

RUNNINGS = [
    Running("customer", "c_res"),
    Running("customer", "c_ret"),
    Running("customer", "c_retval"),
    Running("customer", "c_last_ret", "last"),
    Running("product", "p_res"),
    Running("product", "p_ret"),
]

EVENTS = [
    Events("customer", "FROM ln", "resolved_ts", {"c_res": "1.0"}),
    Events(
        "customer",
        "FROM ret",
        "return_ts",
        {
            "c_ret": "CASE WHEN is_first THEN 1.0 ELSE 0.0 END",
            "c_retval": "CAST(quantity * unit_price AS DOUBLE)",
            "c_last_ret": "return_ts",
        },
    ),
    Events("product", "FROM ln", "resolved_ts", {"p_res": "1.0"}),
    Events("product", "FROM ln WHERE first_return_ts IS NOT NULL", "first_return_ts", {"p_ret": "1.0"}),
]

FEATURES = [
    FeatureSpec(
        "cust_resolved_lines",
        FAMILY,
        "numeric",
        "Earlier lines of this customer whose outcome was known before the order (returned, or past the return window).",
        True,
        "s.c_res",
    ),
    FeatureSpec(
        "cust_returns",
        FAMILY,
        "numeric",
        "Earlier lines of this customer with a return recorded before the order.",
        True,
        "s.c_ret",
    ),
    FeatureSpec(
        "cust_return_rate",
        FAMILY,
        "numeric",
        "The customer's return rate over resolved earlier lines, shrunk towards the population rate.",
        True,
        CUSTOMER_RATE,
    ),
    FeatureSpec(
        "cust_returned_value",
        FAMILY,
        "numeric",
        "Value (quantity x unit price) of the customer's returns recorded before the order.",
        True,
        "s.c_retval",
    ),
    FeatureSpec(
        "cust_days_since_last_return",
        FAMILY,
        "numeric",
        "Days since the customer's latest return recorded before the order (empty if none).",
        True,
        days_between("l.order_ts", "s.c_last_ret"),
    ),
    FeatureSpec(
        "product_resolved_lines",
        FAMILY,
        "numeric",
        "Earlier lines of this product (all customers) whose outcome was known before the order.",
        False,
        "s.p_res",
    ),
    FeatureSpec(
        "product_return_rate",
        FAMILY,
        "numeric",
        "The product's return rate so far, shrunk towards the population rate so new products are not extreme.",
        False,
        "((s.p_ret + {product_prior_weight} * pop.rate) / (s.p_res + {product_prior_weight}))",
    ),
]
