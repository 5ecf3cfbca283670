"""Size vs history: is the ordered size the one this customer usually keeps, and does the product run small?

Why it predicts returns: the commonest return reason in fashion is fit. A customer who kept M twice
and now orders L is likely to send it back; so is one ordering a size they never kept, and anyone
buying a product that earlier buyers returned as "too small". Sizes are mapped to ranks on their size
type's ordinal scale (pipeline.contract.SIZE_SCALES); distances are in ranks, compared only within the
same size type (alpha vs EU shoe).

"Kept" is honest evidence only: an earlier line counts as kept from the end of its return window
(order_ts + labels.return_window_days) if no return was recorded before then, and stops counting if a
late return is recorded afterwards. A purchase from a few days ago is not yet known to be kept.
Product size tendency combines returns with reason too_small/too_large and reviews whose text says it
runs small/large (features.sentiment fit rule), recorded before the order:
(small - large) / (small + large + size_tendency_prior_weight), in (-1, 1), positive = runs small.
"""

from __future__ import annotations

from features.engine import N_SIZE_RANKS, Context
from features.spec import FeatureSpec
from features.streams import Events, Running

FAMILY = "size"
RANKS = range(N_SIZE_RANKS)


def _kept(sign: str) -> dict[str, str]:
    return {f"k{i}": f"CASE WHEN size_rank = {i} THEN {sign}1.0 ELSE 0.0 END" for i in RANKS}


RUNNINGS = [Running("customer_size", f"k{i}") for i in RANKS] + [
    Running("product", "p_small"),
    Running("product", "p_large"),
]

EVENTS = [
    # kept from the end of the return window, unless a return was recorded before it
    Events(
        "customer_size",
        "FROM ln WHERE size_rank IS NOT NULL AND (first_return_ts IS NULL OR first_return_ts >= window_end)",
        "window_end",
        _kept("+"),
    ),
    # a late return withdraws the kept evidence from the time it is recorded
    Events(
        "customer_size",
        "FROM ln WHERE size_rank IS NOT NULL AND first_return_ts >= window_end",
        "first_return_ts",
        _kept("-"),
    ),
    Events(
        "product",
        "FROM ret WHERE reason IN ('too_small', 'too_large')",
        "return_ts",
        {
            "p_small": "CASE WHEN reason = 'too_small' THEN 1.0 ELSE 0.0 END",
            "p_large": "CASE WHEN reason = 'too_large' THEN 1.0 ELSE 0.0 END",
        },
    ),
    Events(
        "product",
        "FROM rv WHERE fit_small OR fit_large",
        "review_ts",
        {
            "p_small": "CASE WHEN fit_small AND NOT fit_large THEN 1.0 ELSE 0.0 END",
            "p_large": "CASE WHEN fit_large AND NOT fit_small THEN 1.0 ELSE 0.0 END",
        },
    ),
]


def _order_stat(k: str) -> str:
    """Rank of the k-th smallest kept size (1-based k), from the running histogram k0..kN."""
    prefix = [" + ".join(f"k{j}" for j in range(i + 1)) for i in RANKS]
    whens = " ".join(f"WHEN {p} >= {k} THEN {i}" for i, p in enumerate(prefix))
    return f"CASE {whens} END"


def finish(ctx: Context) -> None:
    """The stream outputs `sx` = sx0 + per line: kept count, distinct sizes kept, median and mode rank."""
    n = " + ".join(f"k{i}" for i in RANKS)
    mx = "greatest(" + ", ".join(f"k{i}" for i in RANKS) + ")"
    mode = "CASE " + " ".join(f"WHEN k{i} = {mx} THEN {i}" for i in RANKS) + " END"
    ctx.sql(f"""
        CREATE OR REPLACE TEMP VIEW sx AS
        SELECT *,
               {" + ".join(f"CASE WHEN k{i} > 0 THEN 1.0 ELSE 0.0 END" for i in RANKS)} AS n_sizes,
               CASE WHEN n_kept > 0 THEN
                   ({_order_stat("floor((n_kept + 1) / 2)")} + {_order_stat("floor(n_kept / 2) + 1")}) / 2.0
               END AS median_rank,
               CASE WHEN n_kept > 0 THEN {mode} END AS mode_rank
        FROM (SELECT *, {n} AS n_kept FROM sx0) t
    """)


_SIZED = ("order_lines.size", "products.size_type")
_ON_SIZED = "CASE WHEN l.size_rank IS NOT NULL THEN {} END"

FEATURES = [
    FeatureSpec(
        "size_vs_kept_median",
        FAMILY,
        "numeric",
        "Ordered size rank minus the median rank of the sizes this customer kept earlier (same size type).",
        True,
        _ON_SIZED.format("l.size_rank - s.median_rank"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_vs_kept_mode",
        FAMILY,
        "numeric",
        "Ordered size rank minus the rank this customer kept most often (ties: the smaller size).",
        True,
        _ON_SIZED.format("l.size_rank - s.mode_rank"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_ever_kept",
        FAMILY,
        "numeric",
        "1 if the customer kept this exact size before (same size type), else 0.",
        True,
        _ON_SIZED.format(
            "CASE WHEN (CASE l.size_rank "
            + " ".join(f"WHEN {i} THEN s.k{i}" for i in RANKS)
            + " END) > 0 THEN 1.0 ELSE 0.0 END"
        ),
        requires=_SIZED,
    ),
    FeatureSpec(
        "n_sizes_kept",
        FAMILY,
        "numeric",
        "How many different sizes of this size type the customer has kept.",
        True,
        _ON_SIZED.format("s.n_sizes"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "n_items_kept_sized",
        FAMILY,
        "numeric",
        "How many items of this size type the customer has kept.",
        True,
        _ON_SIZED.format("s.n_kept"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "product_size_tendency",
        FAMILY,
        "numeric",
        "The product's fit tendency from earlier too-small/too-large returns and fit reviews (positive: runs small).",
        False,
        "CASE WHEN l.size_type IS NOT NULL AND l.size_type <> 'none' THEN "
        "((coalesce(s.p_small, 0) - coalesce(s.p_large, 0)) / "
        "(coalesce(s.p_small, 0) + coalesce(s.p_large, 0) + {size_tendency_prior_weight})) END",
        requires=("products.size_type",),
        requires_any=("returns.reason", "reviews"),
    ),
]
