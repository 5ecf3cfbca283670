"""Category: what kind of merchandise the line is, and how this customer fared with it before.

Why it predicts returns: return rates differ several-fold between categories (apparel and shoes are
tried on and sent back, electronics rarely), and customers have category-specific habits (keeps shoes,
returns dresses). The per-category rate counts only returns recorded before the order over the
customer's resolved earlier lines in the category, shrunk towards the customer's own overall rate.
"""

from __future__ import annotations

from features.past_returns import CUSTOMER_RATE
from features.spec import FeatureSpec
from features.streams import Events, Running

FAMILY = "category"

RUNNINGS = [Running("customer_category", "cc_res"), Running("customer_category", "cc_ret")]

EVENTS = [
    Events("customer_category", "FROM ln", "resolved_ts", {"cc_res": "1.0"}),
    Events(
        "customer_category", "FROM ln WHERE first_return_ts IS NOT NULL", "first_return_ts", {"cc_ret": "1.0"}
    ),
]

FEATURES = [
    FeatureSpec(
        "category", FAMILY, "categorical", "The product's merchandise category.", False, "l.category"
    ),
    FeatureSpec(
        "cust_category_lines",
        FAMILY,
        "numeric",
        "The customer's resolved earlier lines in this category.",
        True,
        "s.cc_res",
    ),
    FeatureSpec(
        "cust_category_return_rate",
        FAMILY,
        "numeric",
        "The customer's earlier return rate in this category, shrunk towards their overall return rate.",
        True,
        f"((s.cc_ret + {{category_prior_weight}} * {CUSTOMER_RATE}) / (s.cc_res + {{category_prior_weight}}))",
    ),
]
