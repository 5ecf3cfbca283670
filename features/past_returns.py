"""Past returns: how often this customer, and this product, came back before the order.

Why it predicts returns: return behaviour is habitual (a customer who returned half of what they kept
deciding on will do it again) and products that disappoint keep disappointing. Only returns *recorded*
before the order's timestamp count, and a rate's denominator is the earlier lines whose outcome was
known at that time (returned, or past their return window): a purchase from three days ago is not yet
evidence of anything. Rates are shrunk towards the population rate as of the start of the order's day
(pseudo-counts from params), so a new customer or product gets the population rate, not 0 or 1. Late returns
are those recorded after params.yaml `featurize.late_return_share` of the return window.

The customer's returns are also split by the reason they gave (`REASON_GROUPS`): fit returns (too small /
too large) say the customer has trouble finding their size, claims (damaged, not as described) and quality
complaints can be real or a pretext, "changed my mind" is the plain habit; returns recorded after
`featurize.late_return_share` of the return window had passed are what wardrobing looks like (default 0.6: the
last 12 of 30 days; a shop whose customers usually return late sets it from its own return-day distribution). Each is a rate over the customer's
resolved earlier lines, shrunk towards 0 with customer_prior_weight pseudo-lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from features.spec import FeatureSpec
from features.sql import days_between
from features.streams import Events, Running

if TYPE_CHECKING:
    from features.engine import FeaturizeParams

FAMILY = "past_returns"

#: Return reasons grouped by what they say about the customer (returns.reason, pipeline.contract.RETURN_REASONS).
REASON_GROUPS = {
    "fit": ("too_small", "too_large"),
    "claim": ("damaged", "not_as_described"),
    "quality": ("quality",),
    "mind": ("changed_mind", "other"),
}

#: params.yaml `featurize:` keys this family reads (listed with their defaults in docs/features.md).
PARAMS = {
    "customer_prior_weight": "pseudo-lines at the population rate in the customer's rates",
    "product_prior_weight": "pseudo-lines at the population rate in the product's rate",
    "late_return_share": "a return recorded after this share of the return window counts as late",
}


def check_params(p: FeaturizeParams) -> None:
    """featurize.late_return_share is a share of the return window, formatted into SQL: a number in (0, 1]."""
    share = p.late_return_share
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise ValueError(
            f"params.yaml featurize.late_return_share: must be a number in (0, 1], got {share!r}"
        )


def _in(reasons: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{r}'" for r in reasons) + ")"


#: The customer's smoothed return rate; also the prior of the category family's per-category rate.
CUSTOMER_RATE = "((s.c_ret + {customer_prior_weight} * pop.rate) / (s.c_res + {customer_prior_weight}))"

RUNNINGS = [
    Running("customer", "c_res"),
    Running("customer", "c_ret"),
    Running("customer", "c_retval"),
    Running("customer", "c_last_ret", "last"),
    *(Running("customer", f"c_ret_{g}") for g in (*REASON_GROUPS, "late")),
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
        }
        | {
            f"c_ret_{g}": f"CASE WHEN is_first AND reason IN {_in(reasons)} THEN 1.0 ELSE 0.0 END"
            for g, reasons in REASON_GROUPS.items()
        },
    ),
    Events(
        "customer",
        "FROM (SELECT r.customer_id, r.return_ts, r.is_first, l.order_ts AS line_order_ts FROM ret r "
        "JOIN ln l ON l.line_id = r.line_id) rl",
        "return_ts",
        {
            "c_ret_late": "CASE WHEN is_first AND epoch(return_ts) - epoch(line_order_ts) >= "
            "CAST({late_return_share} AS DOUBLE) * {return_window_days} * 86400.0 THEN 1.0 ELSE 0.0 END"
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
        "cust_fit_return_rate",
        FAMILY,
        "numeric",
        "Share of the customer's resolved earlier lines returned as too small or too large (shrunk towards 0).",
        True,
        "(s.c_ret_fit / (s.c_res + {customer_prior_weight}))",
        requires=("returns.reason",),
    ),
    FeatureSpec(
        "cust_claim_return_rate",
        FAMILY,
        "numeric",
        "Share of the customer's resolved earlier lines returned as damaged or not as described (shrunk towards 0).",
        True,
        "(s.c_ret_claim / (s.c_res + {customer_prior_weight}))",
        requires=("returns.reason",),
    ),
    FeatureSpec(
        "cust_quality_return_rate",
        FAMILY,
        "numeric",
        "Share of the customer's resolved earlier lines returned for quality (shrunk towards 0).",
        True,
        "(s.c_ret_quality / (s.c_res + {customer_prior_weight}))",
        requires=("returns.reason",),
    ),
    FeatureSpec(
        "cust_mind_return_rate",
        FAMILY,
        "numeric",
        "Share of the customer's resolved earlier lines returned as changed mind or other (shrunk towards 0).",
        True,
        "(s.c_ret_mind / (s.c_res + {customer_prior_weight}))",
        requires=("returns.reason",),
    ),
    FeatureSpec(
        "cust_late_return_rate",
        FAMILY,
        "numeric",
        "Share of the customer's resolved earlier lines returned late in the return window (shrunk towards 0).",
        True,
        "(s.c_ret_late / (s.c_res + {customer_prior_weight}))",
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
