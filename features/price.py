"""Price: what the line cost, how discounted it was and how it compares with its category.

Why it predicts returns: expensive items get a second thought at home (and are worth the effort of
sending back), deep discounts attract impulse and speculative buying, and an item priced far above its
category's usual level raises expectations it may not meet. Large baskets are more often partly
returned. The category's typical price is the median unit price of its lines in the latest earlier
calendar month with enough lines (params `category_median_min_lines`): only lines ordered before the
order's month, so no later prices leak in, and it follows price levels as they drift.
"""

from __future__ import annotations

from features.engine import Context
from features.spec import FeatureSpec

FAMILY = "price"


MONTHLY_MEDIANS_SQL = """
    SELECT category, date_trunc('month', order_ts) AS month, median(unit_price) AS med, count(*) AS n
    FROM ln GROUP BY category, date_trunc('month', order_ts)
"""


def create_cat_month(ctx: Context, monthly_medians_sql: str = MONTHLY_MEDIANS_SQL) -> None:
    """`cat_month`: per target (category, month) the latest earlier month's median price with enough lines.

    `monthly_medians_sql` yields (category, month, med, n); the batch-scoring state (features/state.py) passes
    its stored complete months united with the raw later lines, so both paths share this one definition.
    """
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE cat_month AS
        WITH m AS ({monthly_medians_sql}),
        hist AS (SELECT category, month, med FROM m WHERE n >= {int(ctx.params.category_median_min_lines)}),
        q AS (SELECT DISTINCT category, date_trunc('month', order_ts) AS month FROM ln WHERE is_target),
        s AS (
            SELECT category, month AS ts, 0 AS kind, CAST(NULL AS TIMESTAMP) AS src FROM q
            UNION ALL
            SELECT category, month AS ts, 1 AS kind, month AS src FROM hist
        ),
        r AS (
            SELECT category, ts, kind,
                   max(src) OVER (PARTITION BY category ORDER BY ts, kind
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS src
            FROM s
        )
        SELECT r.category, r.ts AS month, h.med
        FROM r LEFT JOIN hist h ON h.category = r.category AND h.month = r.src
        WHERE r.kind = 0
    """)


def prepare(ctx: Context) -> None:
    """Monthly category medians and, per target (category, month), the latest earlier usable one."""
    create_cat_month(ctx)


JOINS = ["LEFT JOIN cat_month cm ON cm.category = l.category AND cm.month = date_trunc('month', l.order_ts)"]

FEATURES = [
    FeatureSpec("unit_price", FAMILY, "numeric", "Price paid per unit.", False, "l.unit_price"),
    FeatureSpec(
        "discount",
        FAMILY,
        "numeric",
        "Share of the list price taken off (1 - unit price / list price).",
        False,
        "CASE WHEN l.list_price > 0 THEN 1.0 - l.unit_price / l.list_price END",
        requires=("order_lines.list_price",),
    ),
    FeatureSpec(
        "price_vs_category_median",
        FAMILY,
        "numeric",
        "Unit price divided by the category's median unit price in the latest earlier month.",
        False,
        "l.unit_price / NULLIF(cm.med, 0)",
    ),
    FeatureSpec(
        "basket_value",
        FAMILY,
        "numeric",
        "Total value of the order (sum of quantity x unit price over its lines).",
        False,
        "s.b_value",
    ),
]
