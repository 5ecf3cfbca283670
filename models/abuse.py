"""Return-abuse detection: per-customer signals, an abuse score, tiers, a type and reason sentences.

Pure logic over the canonical tables (orders, order_lines, returns, products) plus one number per line:
the probability of return a *customer-blind* model gives it (it knows the item, size, price and shipping,
never who bought it). Everything is computed as of the data cutoff, on lines whose return window has
closed ("mature" lines: order_ts + return_window_days <= cutoff), so every count is final; the excess
and claim tests also use lines still inside their window, since a return is known when it happens: such a
line expects p_return * F(elapsed days), F the data's own order-to-return delay CDF (`return_time_cdf`).

Signals (each a frame keyed by customer_id):
- excess returns: observed returns vs the sum of the blind model's probabilities on the same lines, with
  the exact Poisson-binomial tail P(X >= observed) as significance (3 lines cannot be as significant as 300)
  and a shrunken ratio (obs + a) / (expected + a) as effect size. Lines of completed bracket groups are left
  out, so bracketing alone never counts as excess.
- bracketing: orders holding one product in several sizes/colours where all but one came back.
- wardrobing: high-value items of occasion categories returned close to the return deadline, compared with
  how often other customers return such items that late (Poisson-binomial tail again).
- claim anomalies: "damaged"/"not as described" returns per item bought vs the blind model's return
  probability times the share of returns other buyers of the same products claim (an honest frequent
  returner returns for fit and claims about as often per item as expected; see `claim_signal`).
- net value: revenue kept minus return costs, shown beside the score (and used to tell an honest
  high-returner, who is worth keeping, from a serial returner who costs money).

Score (documented formula, weights/thresholds in params.yaml `flag:`):
    strength(p, ratio) = min(1, -log10(p) / saturation_log10p) * clip((ratio - 1) / (ratio_full - 1), 0, 1)
    abuse_score = 1 - (1 - w_excess * s_excess) * (1 - w_wardrobing * s_wardrobing) * (1 - w_claims * s_claims)
i.e. a noisy-OR of evidence strengths, each needing both significance and size. Bracketing does not enter
the score: it is typed `bracketer` with a fit action, never escalated past `watch` on its own.

"Abuser" for evaluation = generator archetypes serial_abuser and wardrober (claim abuse is a behaviour of
serial abusers there); bracketer and honest_high are not abusers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

TIERS = ("none", "watch", "review", "restrict")
ABUSE_TYPES = ("serial_returner", "wardrober", "bracketer", "claim_abuser", "honest_high_returner")
ABUSIVE_TYPES = ("serial_returner", "wardrober", "claim_abuser")
ABUSER_ARCHETYPES = ("serial_abuser", "wardrober")
NOT_ABUSER_ARCHETYPES = ("ordinary", "honest_high", "bracketer")
# Columns of the tables this module reads; anything else is ignored. Protected attributes (gender, age,
# title) are never read: `USED_COLUMNS` is checked by the tests.
USED_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": ("order_id", "customer_id", "order_ts", "delivered_ts"),
    "order_lines": ("line_id", "order_id", "product_id", "size", "color", "quantity", "unit_price"),
    "returns": ("line_id", "return_ts", "quantity", "reason"),
    "products": ("product_id", "category"),
    "expected": ("line_id", "p_return"),
}
PROTECTED = ("gender", "age", "title", "birth_date", "date_of_birth")

ACTIONS = {
    "restrict": "Restrict free returns: returns need approval; reviewer confirms within the week.",
    "review": "Send to the reviewer queue: verify the evidence against the order history.",
    "watch": "Watch: no action against the customer; re-assess at the next run.",
    "bracketer": "Fit help, not a ban: show size advice and the size kept before on these products.",
    "honest_high_returner": "No action: returns are high but the customer is valuable; offer fit guidance.",
    "none": "",
}


@dataclass(frozen=True)
class FlagParams:
    """The `flag:` section of params.yaml (plus labels.return_window_days); defaults are the documented ones."""

    return_window_days: int = 30
    review_capacity_k: int = 100
    # significance/effect -> strength
    saturation_log10p: float = 6.0
    prior_returns: float = 2.0  # shrinkage a in (obs + a) / (expected + a)
    ratio_full: float = 2.0  # shrunken ratio at which the effect counts fully
    # signal weights in the noisy-OR
    w_excess: float = 0.7
    w_wardrobing: float = 0.9
    w_claims: float = 0.9
    # tiers
    watch_threshold: float = 0.3
    review_threshold: float = 0.55
    restrict_threshold: float = 0.8
    min_lines_restrict: int = 10
    # bracketing
    bracket_min_orders: int = 2
    bracket_min_share: float = 0.25
    # wardrobing
    occasion_categories: tuple[str, ...] = ("occasion_wear",)  # every item of these counts
    high_value_categories: tuple[str, ...] = ("dresses", "tops", "jeans", "outerwear")  # only pricey ones
    high_value_quantile: float = 0.8  # "pricey": unit_price >= this quantile of its category
    late_return_days: int = 14  # "close to the deadline": returned within the last N days of the window
    wardrobing_min_returns: int = 2
    # claims
    claim_reasons: tuple[str, ...] = ("damaged", "not_as_described")
    claim_min_count: int = 2
    claim_prior_returns: float = 20.0  # smoothing of a product's claim share toward the global share
    # net value
    return_cost_fixed: float = 7.5  # shipping + handling per returned line
    return_cost_share: float = 0.1  # share of the returned value lost (repackaging, markdown)
    honest_min_net_value: float = 0.0  # excess-only customers with net value above this are honest
    honest_max_claim_strength: float = 0.2
    # reviewer decisions
    reflag_min_new_returns: int = 3
    # naive baseline: return rate above X
    naive_min_items: int = 5
    naive_return_rate: float = 0.6

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FlagParams:
        """Build from the whole params.yaml dict; unknown keys in `flag:` are an error (typos)."""
        section = dict(params.get("flag", {}) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"params.yaml flag: unknown key(s) {unknown}; known: {sorted(known)}")
        if "labels" in params and "return_window_days" not in section:
            section["return_window_days"] = params["labels"]["return_window_days"]
        for key in ("occasion_categories", "high_value_categories", "claim_reasons"):
            if key in section:
                section[key] = tuple(section[key])
        out = cls(**section)
        if not out.watch_threshold <= out.review_threshold <= out.restrict_threshold:
            raise ValueError(
                "params.yaml flag: need watch_threshold <= review_threshold <= restrict_threshold"
            )
        return out


# ---------------------------------------------------------------------------------------------------------
# Poisson-binomial tail
# ---------------------------------------------------------------------------------------------------------

MAX_EXACT_LINES = 2048


def poisson_binomial_sf(groups: np.ndarray, probs: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """P(X_g >= observed[g]) where X_g is a sum of independent Bernoulli(probs[i]) over i with groups[i]==g.

    `groups` are codes 0..G-1 (one per line), `observed` has length G. Exact dynamic programming, vectorised
    over groups of similar size (padding with p=0 changes nothing); groups of more than MAX_EXACT_LINES
    lines use the refined normal approximation (Volkova 1996), accurate at that size.
    """
    groups = np.asarray(groups, dtype=np.int64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    observed = np.asarray(observed, dtype=np.int64)
    n_groups = len(observed)
    out = np.ones(n_groups, dtype=np.float64)
    if len(groups) == 0:
        return out
    counts = np.bincount(groups, minlength=n_groups)
    order = np.argsort(groups, kind="stable")
    g_sorted, p_sorted = groups[order], probs[order]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(len(g_sorted)) - starts[g_sorted]

    big = counts > MAX_EXACT_LINES
    if big.any():
        out[big] = _refined_normal_sf(g_sorted, p_sorted, observed, np.flatnonzero(big))
    width = 8
    lo = 0
    while lo < min(counts.max(), MAX_EXACT_LINES):
        sel = np.flatnonzero((counts > lo) & (counts <= width))
        if len(sel):
            out[sel] = _exact_sf_bucket(sel, width, g_sorted, p_sorted, pos, observed)
        lo, width = width, width * 2
    out[observed <= 0] = 1.0
    out[observed > counts] = 0.0
    return out


def _exact_sf_bucket(
    sel: np.ndarray,
    width: int,
    g_sorted: np.ndarray,
    p_sorted: np.ndarray,
    pos: np.ndarray,
    observed: np.ndarray,
) -> np.ndarray:
    row_of = np.full(len(observed), -1, dtype=np.int64)
    row_of[sel] = np.arange(len(sel))
    in_bucket = row_of[g_sorted] >= 0
    mat = np.zeros((len(sel), width))
    mat[row_of[g_sorted[in_bucket]], pos[in_bucket]] = p_sorted[in_bucket]
    dist = np.zeros((len(sel), width + 1))
    dist[:, 0] = 1.0
    for j in range(width):
        p = mat[:, j : j + 1]
        moved = dist[:, : j + 1] * p
        dist[:, : j + 1] *= 1.0 - p
        dist[:, 1 : j + 2] += moved
    tail = np.cumsum(dist[:, ::-1], axis=1)[:, ::-1]  # tail[:, k] = P(X >= k)
    k = np.clip(observed[sel], 0, width)
    return np.clip(tail[np.arange(len(sel)), k], 0.0, 1.0)


def _refined_normal_sf(
    g_sorted: np.ndarray, p_sorted: np.ndarray, observed: np.ndarray, sel: np.ndarray
) -> np.ndarray:
    n = len(observed)
    mu = np.bincount(g_sorted, weights=p_sorted, minlength=n)[sel]
    var = np.bincount(g_sorted, weights=p_sorted * (1 - p_sorted), minlength=n)[sel]
    third = np.bincount(g_sorted, weights=p_sorted * (1 - p_sorted) * (1 - 2 * p_sorted), minlength=n)[sel]
    sigma = np.sqrt(np.maximum(var, 1e-12))
    gamma = third / sigma**3
    x = (observed[sel] - 0.5 - mu) / sigma  # P(X >= k) = 1 - P(X <= k - 1)
    cdf = ndtr(x) + gamma * (1 - x**2) * np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi) / 6
    return np.clip(1.0 - cdf, 1e-300, 1.0)


def strength(pvalue: np.ndarray, ratio: np.ndarray, p: FlagParams) -> np.ndarray:
    """Evidence strength in [0, 1]: significance (-log10 p, saturating) times effect size (shrunken ratio)."""
    sig = np.clip(
        -np.log10(np.clip(np.asarray(pvalue, dtype=float), 1e-300, 1.0)) / p.saturation_log10p, 0, 1
    )
    eff = np.clip((np.asarray(ratio, dtype=float) - 1.0) / (p.ratio_full - 1.0), 0, 1)
    return sig * eff


# ---------------------------------------------------------------------------------------------------------
# Line frame
# ---------------------------------------------------------------------------------------------------------


def _require(df: pd.DataFrame, table: str, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing column(s) {missing} needed for abuse detection")


def line_frame(
    orders: pd.DataFrame,
    order_lines: pd.DataFrame,
    returns: pd.DataFrame,
    products: pd.DataFrame,
    expected: pd.DataFrame | None,
    cutoff: pd.Timestamp,
    params: FlagParams,
) -> pd.DataFrame:
    """One row per order line with what the signals need, as of `cutoff`.

    Columns: line_id, order_id, customer_id, product_id, category, size, color, quantity, unit_price,
    order_ts, delivered_ts, mature, returned (a return recorded at or before cutoff), returned_qty,
    return_ts (first return), reason (of the first return), p_return (customer-blind; lines the model did
    not score get the observed mature return rate, counted in `attrs["n_missing_expected"]`).
    """
    for name, df in (
        ("orders", orders),
        ("order_lines", order_lines),
        ("returns", returns),
        ("products", products),
    ):
        _require(
            df, name, [c for c in USED_COLUMNS[name] if c not in ("delivered_ts", "size", "color", "reason")]
        )
    if expected is not None:
        _require(expected, "expected", USED_COLUMNS["expected"])
    cutoff = pd.Timestamp(cutoff)
    o = orders[[c for c in USED_COLUMNS["orders"] if c in orders.columns]].copy()
    if "delivered_ts" not in o.columns:
        o["delivered_ts"] = pd.NaT
    ol = order_lines[[c for c in USED_COLUMNS["order_lines"] if c in order_lines.columns]].copy()
    for c in ("size", "color"):
        if c not in ol.columns:
            ol[c] = pd.NA
    prod = products[["product_id", "category"]]
    lf = ol.merge(o, on="order_id", how="inner", validate="many_to_one")
    lf = lf.merge(prod, on="product_id", how="left", validate="many_to_one")
    lf["order_ts"] = pd.to_datetime(lf["order_ts"])
    lf["delivered_ts"] = pd.to_datetime(lf["delivered_ts"])
    lf = lf[lf["order_ts"] <= cutoff]
    lf["mature"] = lf["order_ts"] + pd.Timedelta(days=params.return_window_days) <= cutoff

    r = returns.copy()
    if "reason" not in r.columns:
        r["reason"] = pd.NA
    r["return_ts"] = pd.to_datetime(r["return_ts"])
    r = r[r["return_ts"] <= cutoff].sort_values(["line_id", "return_ts"], kind="stable")
    agg = r.groupby("line_id", sort=False).agg(
        returned_qty=("quantity", "sum"), return_ts=("return_ts", "first"), reason=("reason", "first")
    )
    lf = lf.merge(agg, left_on="line_id", right_index=True, how="left")
    lf["returned"] = lf["return_ts"].notna()
    lf["returned_qty"] = np.minimum(
        lf["returned_qty"].fillna(0).astype("int64"), lf["quantity"].astype("int64")
    )
    lf["reason"] = lf["reason"].astype("string")

    lf = lf.reset_index(drop=True)
    source = "customer_blind_model"
    if expected is None:
        expected, source = product_rate_expectation(lf), "product_rate"
    exp = expected[["line_id", "p_return"]].drop_duplicates("line_id")
    lf = lf.merge(exp, on="line_id", how="left")
    missing = lf["p_return"].isna()
    fill = float(lf.loc[lf["mature"], "returned"].mean()) if lf["mature"].any() else 0.0
    lf["p_return"] = lf["p_return"].fillna(fill if np.isfinite(fill) else 0.0).clip(0.0, 1.0)
    lf = lf.reset_index(drop=True)
    lf["elapsed_days"] = ((cutoff - lf["order_ts"]).dt.total_seconds() / 86400.0).clip(lower=0.0)
    cdf = return_time_cdf(lf)
    lf["p_known"] = np.where(lf["mature"], lf["p_return"], lf["p_return"] * cdf(lf["elapsed_days"]))
    lf.attrs["n_missing_expected"] = int(missing.sum())
    lf.attrs["expectation"] = source
    return lf


def return_time_cdf(lf: pd.DataFrame):
    """Empirical CDF of days from order to return, over the returns of mature lines (their timing is final).

    A line still inside its window at the cutoff has not had every chance to come back: under the blind
    model it is returned *by the cutoff* with probability p_return * F(elapsed days). Using F estimated from
    the data (the return-delay distribution is not assumed) keeps the excess test unbiased when immature
    lines join it: their observed returns are evidence, their "not returned yet" only for the elapsed share.
    Returns a vectorised F(days) in [0, 1] (1 when no mature return exists: nothing to learn from).
    """
    r = lf[lf["mature"] & lf["returned"]]
    delays = np.sort(((r["return_ts"] - r["order_ts"]).dt.total_seconds() / 86400.0).to_numpy(dtype=float))
    delays = delays[np.isfinite(delays)]

    def cdf(days: Any) -> np.ndarray:
        d = np.asarray(days, dtype=float)
        if len(delays) == 0:
            return np.ones_like(d)
        return np.searchsorted(delays, d, side="right") / len(delays)

    return cdf


def product_rate_expectation(lf: pd.DataFrame, prior_lines: float = 20.0) -> pd.DataFrame:
    """A customer-blind expectation without a model: each line's product return rate among *other*
    customers' mature lines, smoothed toward its category's rate with `prior_lines` pseudo-lines.

    The flag stage uses the customer-blind model; this is the fallback when none is available and the
    comparison that shows what the model's item-level detail (size, price, shipping) adds.
    Returns line_id, p_return for every line of `lf`.
    """
    m = lf[lf["mature"]].copy()
    cat = m["category"].astype("string").fillna("?")
    m["_cat"] = cat
    cat_rate = m.groupby("_cat")["returned"].mean()
    m["_prior"] = cat.map(cat_rate).astype(float)
    e = m["returned"].astype(float)
    g_sum = e.groupby(m["product_id"]).transform("sum")
    g_n = e.groupby(m["product_id"]).transform("size")
    gc = [m["product_id"], m["customer_id"]]
    own_sum = e.groupby(gc).transform("sum")
    own_n = e.groupby(gc).transform("size")
    rate = (g_sum - own_sum + prior_lines * m["_prior"]) / (g_n - own_n + prior_lines)
    out = pd.DataFrame({"line_id": m["line_id"], "p_return": rate.clip(0.0, 1.0)})
    rest = lf.loc[~lf["mature"], ["line_id", "product_id", "category"]]
    if len(rest):
        prod_rate = (
            m.groupby("product_id")["returned"].sum()
            + prior_lines * m.groupby("product_id")["_prior"].first()
        ) / (m.groupby("product_id").size() + prior_lines)
        r = rest["product_id"].map(prod_rate)
        r = r.fillna(rest["category"].astype("string").map(cat_rate)).fillna(
            float(m["returned"].mean() or 0.0)
        )
        out = pd.concat([out, pd.DataFrame({"line_id": rest["line_id"], "p_return": r.astype(float)})])
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# Signals (each: customer_id-indexed frame)
# ---------------------------------------------------------------------------------------------------------


def bracket_lines(lf: pd.DataFrame) -> pd.DataFrame:
    """Bracket groups: one (order, product) with >= 2 lines in >= 2 distinct size/colour variants.

    Returns the lines of such groups with `bracket_done` = all but one (or all but one unit) came back.
    """
    m = lf[lf["mature"]]
    variant = m["size"].astype("string").fillna("") + "|" + m["color"].astype("string").fillna("")
    key = [m["order_id"], m["product_id"]]
    n_lines = m.groupby(key, sort=False)["line_id"].transform("size")
    n_var = variant.groupby(key, sort=False).transform("nunique")
    g = m[(n_lines >= 2) & (n_var >= 2)].copy()
    if g.empty:
        g["bracket_done"] = pd.Series(dtype=bool)
        return g
    gk = [g["order_id"], g["product_id"]]
    units = g["quantity"].groupby(gk, sort=False).transform("sum")
    back = g["returned_qty"].groupby(gk, sort=False).transform("sum")
    g["bracket_done"] = back == units - 1
    return g


def bracketing_signal(lf: pd.DataFrame, brackets: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """Per customer: n_orders (with mature lines), n_bracket_orders, bracketing_share, an example order."""
    m = lf[lf["mature"]]
    n_orders = m.groupby("customer_id")["order_id"].nunique().rename("n_orders")
    done = brackets[brackets["bracket_done"]]
    n_br = done.groupby("customer_id")["order_id"].nunique().rename("n_bracket_orders")
    out = pd.concat([n_orders, n_br], axis=1)
    out["n_bracket_orders"] = out["n_bracket_orders"].fillna(0).astype("int64")
    out["n_orders"] = out["n_orders"].fillna(0).astype("int64")
    out["bracketing_share"] = (out["n_bracket_orders"] / out["n_orders"].where(out["n_orders"] > 0)).fillna(
        0.0
    )
    out["is_bracketer"] = (out["n_bracket_orders"] >= p.bracket_min_orders) & (
        out["bracketing_share"] >= p.bracket_min_share
    )
    if not done.empty:
        first = done.sort_values("order_ts").groupby("customer_id").head(1).set_index("customer_id")
        out["bracket_example_order"] = first["order_id"].astype(object)
        out["bracket_example_product"] = first["product_id"].astype(object)
    return out


def tested_lines(lf: pd.DataFrame, brackets: pd.DataFrame) -> pd.DataFrame:
    """Lines the excess and claim tests use: mature lines outside completed bracket groups, plus immature
    lines (weighted by `p_known`) outside any bracket-shaped group (same order and product in several
    variants: whether it will complete is not known yet, and bracketing alone must never count as excess).
    """
    done_ids = (
        brackets.loc[brackets["bracket_done"], "line_id"] if len(brackets) else pd.Series([], dtype=object)
    )
    m = lf[lf["mature"] & ~lf["line_id"].isin(done_ids)]
    imm = lf[~lf["mature"]]
    if len(imm):
        variant = imm["size"].astype("string").fillna("") + "|" + imm["color"].astype("string").fillna("")
        key = [imm["order_id"], imm["product_id"]]
        shaped = (imm.groupby(key, sort=False)["line_id"].transform("size") >= 2) & (
            variant.groupby(key, sort=False).transform("nunique") >= 2
        )
        imm = imm[~shaped & (imm["p_known"] > 0)]
    return pd.concat([m, imm]) if len(imm) else m


def excess_signal(lf: pd.DataFrame, brackets: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """Observed vs blind-model-expected returns on the tested lines (`tested_lines`): a return recorded
    before the cutoff counts wherever it happened; an immature line expects p_return * F(elapsed)."""
    m = tested_lines(lf, brackets)
    codes, uniques = pd.factorize(m["customer_id"], sort=False)
    n = len(uniques)
    pk = m["p_known"].to_numpy(dtype=float)
    obs = np.bincount(codes, weights=m["returned"].to_numpy(dtype=float), minlength=n).astype(np.int64)
    exp = np.bincount(codes, weights=pk, minlength=n)
    pval = poisson_binomial_sf(codes, pk, obs)
    out = pd.DataFrame(
        {
            "n_items_tested": np.bincount(codes, minlength=n),
            "n_immature_tested": np.bincount(
                codes, weights=(~m["mature"]).to_numpy(dtype=float), minlength=n
            ).astype(np.int64),
            "n_returned_tested": obs,
            "expected_returns": exp,
            "excess_returns": obs - exp,
            "excess_ratio": (obs + p.prior_returns) / (exp + p.prior_returns),
            "excess_pvalue": pval,
        },
        index=pd.Index(uniques, name="customer_id"),
    )
    out["s_excess"] = strength(out["excess_pvalue"], out["excess_ratio"], p)
    all_mature = lf[lf["mature"]]
    counts = all_mature.groupby("customer_id")["returned"].agg(["size", "sum"])
    out = out.reindex(out.index.union(counts.index))
    out.index.name = "customer_id"
    out["n_items"] = counts["size"]
    out["n_returned"] = counts["sum"]
    span = all_mature.groupby("customer_id")["order_ts"].agg(["min", "max"])
    out["first_order_ts"] = span["min"]
    out["last_order_ts"] = span["max"]
    return out


def _leave_customer_out_rate(
    df: pd.DataFrame, group: str, event: str, prior_rate: float, prior_n: float
) -> pd.Series:
    """Per row: rate of `event` among *other customers'* rows of the same `group`, smoothed toward prior_rate.

    (events_group - events_group_customer + prior_n * prior_rate) / (rows_group - rows_group_customer + prior_n)
    """
    e = df[event].astype(float)
    g_sum = e.groupby(df[group], sort=False).transform("sum")
    g_n = e.groupby(df[group], sort=False).transform("size")
    gc = [df[group], df["customer_id"]]
    gc_sum = e.groupby(gc, sort=False).transform("sum")
    gc_n = e.groupby(gc, sort=False).transform("size")
    return (g_sum - gc_sum + prior_n * prior_rate) / (g_n - gc_n + prior_n)


def wardrobing_signal(lf: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """Late returns of high-value occasion items, vs how often other customers return such items that late.

    Eligible: mature lines of an occasion category, or of a high-value category priced at or above that
    category's `high_value_quantile` of unit_price. Late: returned at least (window - late_return_days)
    days after delivery (after the order when there is no delivery date).
    """
    occasion = {c.lower() for c in p.occasion_categories}
    pricey = {c.lower() for c in p.high_value_categories}
    cat = lf["category"].astype("string").str.lower()
    thr = lf.groupby(cat, sort=False)["unit_price"].transform(lambda s: s.quantile(p.high_value_quantile))
    is_occ = cat.isin(occasion).fillna(False).astype(bool)
    is_hv = cat.isin(pricey).fillna(False).astype(bool) & (lf["unit_price"] >= thr)
    elig = lf[lf["mature"] & (is_occ | is_hv)].copy()
    cols = [
        "wardrobing_returns",
        "wardrobing_expected",
        "wardrobing_pvalue",
        "s_wardrobing",
        "n_occasion_items",
    ]
    if elig.empty:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="customer_id"))
    start = elig["delivered_ts"].fillna(elig["order_ts"])
    days = (elig["return_ts"] - start).dt.total_seconds() / 86400.0
    elig["late"] = elig["returned"] & (days >= p.return_window_days - p.late_return_days)
    elig["days_to_return"] = days
    elig["cat"] = cat[elig.index]
    prior = float(elig["late"].mean())
    elig["p_late"] = _leave_customer_out_rate(elig, "cat", "late", prior, 20.0)
    codes, uniques = pd.factorize(elig["customer_id"], sort=False)
    n = len(uniques)
    obs = np.bincount(codes, weights=elig["late"].to_numpy(dtype=float), minlength=n).astype(np.int64)
    exp = np.bincount(codes, weights=elig["p_late"].to_numpy(dtype=float), minlength=n)
    pval = poisson_binomial_sf(codes, elig["p_late"].to_numpy(dtype=float), obs)
    out = pd.DataFrame(
        {
            "wardrobing_returns": obs,
            "wardrobing_expected": exp,
            "wardrobing_pvalue": pval,
            "n_occasion_items": np.bincount(codes, minlength=n),
        },
        index=pd.Index(uniques, name="customer_id"),
    )
    ratio = (out["wardrobing_returns"] + 1.0) / (out["wardrobing_expected"] + 1.0)
    s = strength(out["wardrobing_pvalue"], ratio, p)
    out["s_wardrobing"] = np.where(out["wardrobing_returns"] >= p.wardrobing_min_returns, s, 0.0)
    late = elig[elig["late"]].sort_values("return_ts")
    out["wardrobing_example_orders"] = late.groupby("customer_id")["order_id"].agg(lambda s: list(s.head(3)))
    out["wardrobing_days_min"] = late.groupby("customer_id")["days_to_return"].min()
    out["wardrobing_days_max"] = late.groupby("customer_id")["days_to_return"].max()
    return out


def claim_signal(lf: pd.DataFrame, brackets: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """Claims ("damaged"/"not as described") per item bought vs what other buyers of the same products claim.

    Expected claims = sum over the customer's tested lines (`tested_lines`) of p_known (the blind model's
    chance the line is back by the cutoff) times q, the share of other customers' returns of the same
    product that were claims (all returns known by the cutoff, smoothed toward the global share with
    claim_prior_returns). Counting per item rather than per return joins the two things a claim abuser does,
    returning more and claiming more, into one exact test: an honest high-returner who returns twice as
    much for fit reasons makes about as many claims per item as expected (fit returns carry no claim),
    while a serial abuser who claims most of what comes back exceeds it many times over (measured in
    BENCHMARKS.md: per-return claim shares left 14 of 371 serial abusers typed honest). The reason of a
    return is known when it happens, so returns on immature lines count too.
    """
    cols = ["n_claims", "expected_claims", "claim_ratio", "claim_pvalue", "s_claims", "n_reasoned_returns"]
    known = lf[lf["returned"] & lf["reason"].notna()].copy()
    if known.empty:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="customer_id"))
    known["claim"] = known["reason"].isin(list(p.claim_reasons))
    prior = float(known["claim"].mean())
    t = tested_lines(lf, brackets)
    # q for every tested line: its own row's leave-customer-out share when it was returned with a reason,
    # else the same formula for a customer with no returns of the product in the counts
    g = known.groupby("product_id", sort=False)["claim"].agg(["sum", "size"])
    gc = known.groupby(["product_id", "customer_id"], sort=False)["claim"].agg(["sum", "size"])
    idx = pd.MultiIndex.from_arrays([t["product_id"], t["customer_id"]])
    g_sum = t["product_id"].map(g["sum"]).fillna(0.0).to_numpy(dtype=float)
    g_n = t["product_id"].map(g["size"]).fillna(0.0).to_numpy(dtype=float)
    own = gc.reindex(idx)
    o_sum = own["sum"].fillna(0.0).to_numpy(dtype=float)
    o_n = own["size"].fillna(0.0).to_numpy(dtype=float)
    q = (g_sum - o_sum + p.claim_prior_returns * prior) / (g_n - o_n + p.claim_prior_returns)
    claim = t["returned"].to_numpy() & t["reason"].isin(list(p.claim_reasons)).fillna(False).to_numpy()
    probs = np.clip(t["p_known"].to_numpy(dtype=float) * q, 0.0, 1.0)
    codes, uniques = pd.factorize(t["customer_id"], sort=False)
    n = len(uniques)
    obs = np.bincount(codes, weights=claim.astype(float), minlength=n).astype(np.int64)
    exp = np.bincount(codes, weights=probs, minlength=n)
    reasoned = (t["returned"] & t["reason"].notna()).to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "n_claims": obs,
            "expected_claims": exp,
            "claim_ratio": (obs + 1.0) / (exp + 1.0),
            "claim_pvalue": poisson_binomial_sf(codes, probs, obs),
            "n_reasoned_returns": np.bincount(codes, weights=reasoned, minlength=n).astype(np.int64),
        },
        index=pd.Index(uniques, name="customer_id"),
    )
    s = strength(out["claim_pvalue"], out["claim_ratio"], p)
    out["s_claims"] = np.where(out["n_claims"] >= p.claim_min_count, s, 0.0)
    return out


def value_signal(lf: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """bought_value, return_value, kept_value, return_costs and net_value = kept - costs (mature lines)."""
    m = lf[lf["mature"]]
    bought = m["unit_price"] * m["quantity"]
    back = m["unit_price"] * m["returned_qty"]
    cost = np.where(m["returned"], p.return_cost_fixed, 0.0) + p.return_cost_share * back
    df = pd.DataFrame({"customer_id": m["customer_id"], "bought": bought, "back": back, "cost": cost})
    g = df.groupby("customer_id").sum()
    out = pd.DataFrame(
        {
            "bought_value": g["bought"],
            "return_value": g["back"],
            "kept_value": g["bought"] - g["back"],
            "return_costs": g["cost"],
        }
    )
    out["net_value"] = out["kept_value"] - out["return_costs"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Scoring, typing, tiers
# ---------------------------------------------------------------------------------------------------------

EVIDENCE_COLUMNS = (
    "n_orders",
    "n_items",
    "n_returned",
    "n_items_tested",
    "n_immature_tested",
    "n_returned_tested",
    "expected_returns",
    "excess_returns",
    "excess_ratio",
    "excess_pvalue",
    "n_bracket_orders",
    "bracketing_share",
    "wardrobing_returns",
    "wardrobing_expected",
    "wardrobing_pvalue",
    "n_claims",
    "expected_claims",
    "claim_ratio",
    "claim_pvalue",
    "bought_value",
    "return_value",
    "kept_value",
    "return_costs",
    "net_value",
)


def score_customers(lf: pd.DataFrame, p: FlagParams, customers: Iterable[Any] | None = None) -> pd.DataFrame:
    """Every customer's signals, abuse_score, tier, abuse_type, recommended_action and reasons.

    `customers`: all customer ids to score (customers without mature lines get score 0, tier none).
    """
    brackets = bracket_lines(lf)
    parts = [
        excess_signal(lf, brackets, p),
        bracketing_signal(lf, brackets, p),
        wardrobing_signal(lf, p),
        claim_signal(lf, brackets, p),
        value_signal(lf, p),
    ]
    ids = pd.Index(pd.unique(lf["customer_id"]), name="customer_id")
    if customers is not None:
        ids = ids.append(pd.Index(list(customers))).unique()
        ids.name = "customer_id"
    df = pd.DataFrame(index=ids)
    for part in parts:
        df = df.join(part, how="left")
    zero_int = [
        "n_items",
        "n_returned",
        "n_items_tested",
        "n_immature_tested",
        "n_returned_tested",
        "n_orders",
        "n_bracket_orders",
        "wardrobing_returns",
        "n_claims",
    ]
    for c in zero_int:
        df[c] = df[c].fillna(0).astype("int64")
    for c in ("excess_pvalue", "wardrobing_pvalue", "claim_pvalue", "excess_ratio", "claim_ratio"):
        df[c] = df[c].astype(float).fillna(1.0)
    for c in (
        "expected_returns", "excess_returns", "bracketing_share", "wardrobing_expected", "expected_claims",
        "s_excess", "s_wardrobing", "s_claims", "bought_value", "return_value", "kept_value", "return_costs",
        "net_value",
    ):  # fmt: skip
        df[c] = df[c].astype(float).fillna(0.0)
    df["is_bracketer"] = df["is_bracketer"].astype("boolean").fillna(False).astype(bool)

    e = p.w_excess * df["s_excess"]
    w = p.w_wardrobing * df["s_wardrobing"]
    c = p.w_claims * df["s_claims"]
    df["abuse_score"] = (1.0 - (1.0 - e) * (1.0 - w) * (1.0 - c)).clip(0.0, 1.0)

    tier = np.select(
        [df["abuse_score"] >= p.restrict_threshold, df["abuse_score"] >= p.review_threshold,
         df["abuse_score"] >= p.watch_threshold],
        ["restrict", "review", "watch"],
        "none",
    )  # fmt: skip
    mature_tested = df["n_items_tested"] - df["n_immature_tested"]
    tier = np.where((tier == "restrict") & (mature_tested < p.min_lines_restrict), "review", tier)

    kind = np.select([(w >= c) & (w >= e), c >= e], ["wardrober", "claim_abuser"], "serial_returner")
    honest = (
        (kind == "serial_returner")
        & (df["net_value"] > p.honest_min_net_value)
        & (df["s_claims"] <= p.honest_max_claim_strength)
        & (df["s_wardrobing"] <= p.honest_max_claim_strength)
    )
    kind = np.where(honest, "honest_high_returner", kind)
    tier = np.where(honest & (tier != "none"), "watch", tier)
    bracketer = df["is_bracketer"].to_numpy() & np.isin(tier, ["none", "watch"])
    kind = np.where(bracketer, "bracketer", kind)
    tier = np.where(bracketer, "watch", tier)
    kind = np.where(tier == "none", "none", kind)
    df["tier"] = tier
    df["abuse_type"] = kind
    df["recommended_action"] = [
        ACTIONS[k] if k in ("bracketer", "honest_high_returner") else ACTIONS[t]
        for k, t in zip(kind, tier, strict=True)
    ]
    df["reasons"] = ""
    flagged = df["tier"] != "none"
    if flagged.any():
        df.loc[flagged, "reasons"] = reason_sentences(df[flagged], p)
    return df.reset_index()


def _fmt_p(pv: float) -> str:
    return f"{pv:.1e}" if pv < 0.001 else f"{pv:.3f}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def reason_sentences(df: pd.DataFrame, p: FlagParams) -> list[str]:
    """Sentences a reviewer can check against the order history (counts, dates, order ids, p-values)."""
    out = []
    for _, r in df.iterrows():
        s: list[str] = []
        if r["n_items"] > 0:
            first = pd.Timestamp(r["first_order_ts"]).date() if pd.notna(r.get("first_order_ts")) else "?"
            last = pd.Timestamp(r["last_order_ts"]).date() if pd.notna(r.get("last_order_ts")) else "?"
            s.append(
                f"Returned {r['n_returned']} of {r['n_items']} items ordered {first} to {last} whose "
                f"{p.return_window_days}-day return window has closed ({r['n_returned'] / r['n_items']:.0%})."
            )
        if r["n_items_tested"] > 0 and (
            r["s_excess"] > 0 or r["abuse_type"] in ("serial_returner", "honest_high_returner")
        ):
            left_out = r["n_items"] - (r["n_items_tested"] - r["n_immature_tested"])
            scope = (
                f" (the {r['n_items_tested'] - r['n_immature_tested']} outside bracket orders)"
                if left_out
                else ""
            )
            if r["n_immature_tested"] > 0:
                scope += (
                    f" and {r['n_immature_tested']} items still inside their return window (counted for the "
                    "share of returns that usually arrive by now)"
                )
            s.append(
                f"A customer-blind model expects {r['expected_returns']:.1f} returns for exactly these items"
                f"{scope}; {r['n_returned_tested']} came back (chance of {r['n_returned_tested']} or more: "
                f"{_fmt_p(r['excess_pvalue'])})."
            )
        if r["n_bracket_orders"] > 0:
            ex = ""
            if pd.notna(r.get("bracket_example_order")):
                ex = f", e.g. order {r['bracket_example_order']} (product {r['bracket_example_product']})"
            s.append(
                f"In {r['n_bracket_orders']} of {r['n_orders']} orders ({r['bracketing_share']:.0%}) bought one "
                f"product in several sizes/colours and returned all but one{ex}; these lines are left out of "
                f"the excess count. This is a fit problem: size advice helps more than a restriction."
            )
        if r["wardrobing_returns"] > 0 and r["s_wardrobing"] > 0:
            orders = r.get("wardrobing_example_orders")
            ex = (
                f" (orders {', '.join(str(o) for o in orders)})"
                if isinstance(orders, list) and orders
                else ""
            )
            s.append(
                f"Returned {r['wardrobing_returns']} high-value occasion items "
                f"{r['wardrobing_days_min']:.0f}-{r['wardrobing_days_max']:.0f} days after delivery, within "
                f"{p.late_return_days} days of the {p.return_window_days}-day deadline{ex}; other customers "
                f"would account for {r['wardrobing_expected']:.1f} such late returns on these purchases "
                f"(chance: {_fmt_p(r['wardrobing_pvalue'])})."
            )
        if r["n_claims"] > 0 and r["s_claims"] > 0:
            s.append(
                f"Gave the reason {' or '.join(repr(x) for x in p.claim_reasons)} on {r['n_claims']} returns "
                f"of {r['n_items_tested']} items; at the return rate the customer-blind model expects and "
                f"the share of returns other buyers of the same products claim, {r['expected_claims']:.1f} "
                f"such claims were expected (chance: {_fmt_p(r['claim_pvalue'])})."
            )
        s.append(
            f"Net value: kept {_money(r['kept_value'])} of {_money(r['bought_value'])} bought, return costs "
            f"{_money(r['return_costs'])}, net {_money(r['net_value'])}."
        )
        out.append("\n".join(s))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reviewer decisions
# ---------------------------------------------------------------------------------------------------------


def apply_decisions(
    scores: pd.DataFrame, decisions: pd.DataFrame | None, lf: pd.DataFrame, p: FlagParams
) -> pd.DataFrame:
    """Confirmed-legitimate customers are not re-flagged for the same evidence.

    A customer marked `legitimate` at decided_at stays unflagged (tier none, `suppressed` True) unless at
    least `reflag_min_new_returns` returns were recorded after decided_at. `abuse` decisions change nothing
    here (they are labels for evaluation); every row gets `decision`, `decided_at` and `returns_since_decision`.
    """
    out = scores.copy()
    out["decision"] = pd.Series(pd.NA, index=out.index, dtype="string")
    out["decided_at"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
    out["returns_since_decision"] = 0
    out["suppressed"] = False
    if decisions is None or decisions.empty:
        return out
    _require(decisions, "decisions", ["customer_id", "decision", "decided_at"])
    d = decisions.copy()
    d["decided_at"] = pd.to_datetime(d["decided_at"])
    d = d.sort_values("decided_at").groupby("customer_id").tail(1).set_index("customer_id")
    d = d[d.index.isin(out["customer_id"])]
    if d.empty:
        return out
    idx = out.set_index("customer_id").index
    pos = idx.get_indexer(d.index)
    out.loc[out.index[pos], "decision"] = d["decision"].astype("string").to_numpy()
    out.loc[out.index[pos], "decided_at"] = d["decided_at"].to_numpy()
    ret = lf[lf["returned"] & lf["customer_id"].isin(d.index)][["customer_id", "return_ts"]]
    ret = ret.merge(d["decided_at"], left_on="customer_id", right_index=True)
    since = ret[ret["return_ts"] > ret["decided_at"]].groupby("customer_id").size()
    out["returns_since_decision"] = out["customer_id"].map(since).fillna(0).astype("int64")
    legit = (out["decision"] == "legitimate").fillna(False) & (
        out["returns_since_decision"] < p.reflag_min_new_returns
    )
    legit &= out["tier"] != "none"
    out.loc[legit, "suppressed"] = True
    out.loc[legit, "tier"] = "none"
    out.loc[legit, "abuse_type"] = "none"
    out.loc[legit, "recommended_action"] = ""
    for i in out.index[(out["decision"] == "legitimate").fillna(False) & ~legit & (out["tier"] != "none")]:
        out.loc[i, "reasons"] = (
            f"Reviewer marked legitimate on {pd.Timestamp(out.loc[i, 'decided_at']).date()}; "
            f"{out.loc[i, 'returns_since_decision']} returns since (re-flag from {p.reflag_min_new_returns}).\n"
            + out.loc[i, "reasons"]
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation against hidden archetypes and the naive rule
# ---------------------------------------------------------------------------------------------------------


def review_queue(scores: pd.DataFrame) -> pd.DataFrame:
    """Customers in the order a reviewer sees them: tier (restrict, review, watch, none), then score."""
    rank = scores["tier"].map({t: i for i, t in enumerate(TIERS)}).fillna(0)
    return (
        scores.assign(_rank=rank)
        .sort_values(["_rank", "abuse_score"], ascending=False, kind="stable")
        .drop(columns="_rank")
    )


def naive_return_rate(scores: pd.DataFrame, p: FlagParams) -> pd.Series:
    """The naive rule's ranking key: return rate over mature lines (customers with < naive_min_items: -1)."""
    rate = scores["n_returned"] / scores["n_items"].where(scores["n_items"] > 0)
    return rate.where(scores["n_items"] >= p.naive_min_items, -1.0).fillna(-1.0)


def evaluate(
    scores: pd.DataFrame, truth: pd.DataFrame, p: FlagParams, k: int | None = None
) -> dict[str, float]:
    """Metrics against the generator's archetypes (abuser = serial_abuser | wardrober), and the naive rule.

    - precision_at_k: abusers among the first k customers of the review queue.
    - recall_review_restrict: abusers in tiers review+restrict / all abusers (also among abusers with
      >= naive_min_items mature items: a customer with 2 items cannot be told from bad luck).
    - misflag_share: flagged customers (tier != none) that are honest_high or bracketer typed as an abuser.
    - naive_*: the rule "return rate above X", ranking by return rate (>= naive_min_items items) at the
      same k, and at threshold naive_return_rate.
    """
    k = int(k if k is not None else p.review_capacity_k)
    t = truth[["customer_id", "archetype"]].drop_duplicates("customer_id")
    df = scores.merge(t, on="customer_id", how="left")
    arche = df["archetype"].astype("string").fillna("ordinary")
    abuser = arche.isin(ABUSER_ARCHETYPES).to_numpy()
    n_abusers = int(abuser.sum())
    q = review_queue(df.assign(_abuser=abuser))
    top = q.head(k)
    flagged = (df["tier"] != "none").to_numpy()
    rr = df["tier"].isin(["review", "restrict"]).to_numpy()
    misflag = (
        flagged
        & arche.isin(["honest_high", "bracketer"]).to_numpy()
        & df["abuse_type"].isin(ABUSIVE_TYPES).to_numpy()
    )

    rate = naive_return_rate(df, p)
    enough = (df["n_items"] >= p.naive_min_items).to_numpy()
    naive_top = (
        df.assign(_rate=rate, _abuser=abuser).sort_values("_rate", ascending=False, kind="stable").head(k)
    )
    naive_flag = (rate > p.naive_return_rate).to_numpy()
    n_rr = int(rr.sum())
    naive_same_n = (
        df.assign(_rate=rate, _abuser=abuser).sort_values("_rate", ascending=False, kind="stable").head(n_rr)
    )
    naive_misflag = naive_flag & arche.isin(["honest_high", "bracketer"]).to_numpy()

    def share(num: float, den: float) -> float:
        return float(num / den) if den else 0.0

    m: dict[str, float] = {
        "k": k,
        "n_customers": len(df),
        "n_abusers": n_abusers,
        "n_flagged": int(flagged.sum()),
        "n_watch": int((df["tier"] == "watch").sum()),
        "n_review": int((df["tier"] == "review").sum()),
        "n_restrict": int((df["tier"] == "restrict").sum()),
        "precision_at_k": share(top["_abuser"].sum(), len(top)),
        "recall_review_restrict": share((rr & abuser).sum(), n_abusers),
        # abusers with >= naive_min_items mature items: those whose history can show anything at all
        "n_abusers_min_items": int((abuser & enough).sum()),
        "recall_review_restrict_min_items": share((rr & abuser & enough).sum(), (abuser & enough).sum()),
        "precision_review_restrict": share((rr & abuser).sum(), n_rr),
        "misflag_share": share(misflag.sum(), flagged.sum()),
        "naive_precision_at_k": share(naive_top["_abuser"].sum(), len(naive_top)),
        "naive_recall_same_count": share(naive_same_n["_abuser"].sum(), n_abusers),
        "naive_threshold_precision": share((naive_flag & abuser).sum(), naive_flag.sum()),
        "naive_threshold_recall": share((naive_flag & abuser).sum(), n_abusers),
        "naive_threshold_misflag_share": share(naive_misflag.sum(), naive_flag.sum()),
    }
    for arch in ("ordinary", "honest_high", "bracketer", "wardrober", "serial_abuser"):
        sel = (arche == arch).to_numpy()
        m[f"flagged_share_{arch}"] = share((flagged & sel).sum(), sel.sum())
        m[f"review_restrict_share_{arch}"] = share((rr & sel).sum(), sel.sum())
    if "decision" in df.columns:
        dec = df["decision"].astype("string")
        conf_abuse = (dec == "abuse").fillna(False).to_numpy()
        m["n_confirmed_abuse"] = int(conf_abuse.sum())
        m["n_confirmed_legitimate"] = int((dec == "legitimate").fillna(False).sum())
        m["confirmed_abuse_recall_review_restrict"] = share((rr & conf_abuse).sum(), conf_abuse.sum())
    return m
