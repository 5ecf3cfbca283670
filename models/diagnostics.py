"""Product diagnostics: products, product x size and product x colour cells that return abnormally often.

The question a merchandiser asks is "which articles come back more than they should?", where "should"
means: more than these very lines (these customers, prices, baskets, delivery routes, seasons) would
return if the article itself were ordinary. So every cell compares its observed returns with an
**expectation that knows nothing about the article's own history**:

* **Expectation model** = the return model's own training code (`models.train.train_return_model`,
  LightGBM + calibration) on every feature *except product history* (`is_product_history`: the
  product's past return rate, size tendency from return reasons and reviews, review sentiment and
  ratings). Those features would explain the bias away: a product that runs small has a high
  `product_return_rate` and `product_size_tendency`, so the main model already expects its returns and
  the product would look normal.
* **Cross-fitted by product**: products are split into `folds` groups; the lines of a group are scored by
  a model trained on the other groups only. Price and category can nearly identify an article, so a
  model that saw the article's lines could still learn its return rate; out-of-fold it cannot.
  The result is calibrated (the calibration step of the training code), so expected counts add up.
* **Test per cell**: observed returns O against the Poisson-binomial distribution of the sum of the
  cell's line probabilities (exact up to 2048 lines, refined normal approximation beyond:
  `models.abuse.poisson_binomial_sf`), one-sided p = P(X >= O). Cells with fewer than `min_lines` lines
  are not tested (they could never reach significance after correction and only dilute it).
* **Multiple comparisons**: Benjamini-Hochberg at `alpha`, separately within each level (products,
  product x size, product x colour): each level is its own list a person reads, and in each the expected
  share of false discoveries among flagged cells is at most alpha. A cell is flagged when q <= alpha and
  observed / expected >= `min_ratio` (an effect-size floor so a huge cell is not flagged for a trivial
  excess).
* **Reason tests per product** (when the returns carry reason codes): the rate test dilutes a product
  that runs small among its ordinary returns, but its *too-small* returns stand out. For each reason test
  R (runs_small: too_small; runs_large: too_large; quality: the quality reason) a product's observed
  returns with reason R are compared with sum over its lines of p_expected x s_R, where s_R is the share of
  returns with reason R among the *other* products of its category (shrunk toward the share among all
  other products with `reason_prior_weight` pseudo-returns). Reviews add evidence to the same test when
  present: reviews saying it runs small / runs large (the featurizer's fit rule, features.sentiment) and
  negative ratings (<= `negative_rating` stars), each against the category's share among other products'
  reviews. The sum of both counts is tested against the Poisson-binomial of all those trials. The
  product level's Benjamini-Hochberg correction runs over all its tests (rate and reason tests together).
  A flagged test is typed (FINDINGS: runs small, runs large, quality or description, excess returns) and
  carries a recommended action. Without reason codes (e.g. the UCI export) only the rate tests run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.abuse import poisson_binomial_sf

LEVELS: dict[str, tuple[str, ...]] = {
    "product": ("product_id",),
    "product_size": ("product_id", "size"),
    "product_color": ("product_id", "color"),
}
RATE_TEST = "excess_returns"
# test name -> (finding in words, recommended action)
FINDINGS: dict[str, tuple[str, str]] = {
    "runs_small": ("runs small", "fix the size chart (it runs small); advise sizing up"),
    "runs_large": ("runs large", "fix the size chart (it runs large); advise sizing down"),
    "quality": ("quality or description", "check the quality and the photos/description"),
    RATE_TEST: ("excess returns", "read the return comments; check price, photos and description"),
}
# the review evidence of each reason test: a mark computed by review_marks
REVIEW_MARKS: dict[str, str] = {"runs_small": "runs_small", "runs_large": "runs_large", "quality": "negative"}
DEFAULT_REASON_TESTS: dict[str, tuple[str, ...]] = {
    "runs_small": ("too_small",),
    "runs_large": ("too_large",),
    "quality": ("quality",),
}
CELL_COLUMNS = [
    "level",
    "product_id",
    "size",
    "color",
    "test",
    "n_lines",
    "observed",
    "expected",
    "ratio",
    "excess",
    "z",
    "pvalue",
    "qvalue",
    "tested",
    "flagged",
    "review_observed",
    "review_expected",
    "finding",
    "action",
]
PRODUCT_HISTORY_PREFIX = "product_"


def is_product_history(feature: str) -> bool:
    """True for features computed from the product's own past lines, returns or reviews.

    By the registry's naming rule these, and only these, start with ``product_`` (product_return_rate,
    product_size_tendency, product_review_count, product_sentiment_mean, ...). Basket features about the
    same product in one order (same_product_*) are not history and stay.
    """
    return feature.startswith(PRODUCT_HISTORY_PREFIX)


@dataclass(frozen=True)
class DiagnoseParams:
    """params.yaml `diagnose:` (see there for the meaning of each knob)."""

    alpha: float = 0.05
    min_lines: int = 30
    min_ratio: float = 1.0
    folds: int = 3
    val_share: float = 0.2
    window_days: int | None = None
    levels: tuple[str, ...] = tuple(LEVELS)
    quality_threshold: float = 0.4
    reason_tests: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_REASON_TESTS))
    use_reviews: bool = True
    negative_rating: int = 2
    reason_prior_weight: float = 20.0
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"diagnose.alpha must be in (0, 1); got {self.alpha}")
        if self.folds < 2:
            raise ValueError(f"diagnose.folds must be >= 2 (cross-fitting by product); got {self.folds}")
        if not 0 < self.val_share < 1:
            raise ValueError(f"diagnose.val_share must be in (0, 1); got {self.val_share}")
        if self.min_lines < 1:
            raise ValueError(f"diagnose.min_lines must be >= 1; got {self.min_lines}")
        unknown = set(self.levels) - set(LEVELS)
        if unknown or not self.levels:
            raise ValueError(f"diagnose.levels: unknown {sorted(unknown)}; expected some of {list(LEVELS)}")
        from pipeline.contract import RETURN_REASONS

        for name, reasons in self.reason_tests.items():
            if name not in REVIEW_MARKS:
                raise ValueError(
                    f"diagnose.reason_tests: unknown test {name!r}; expected some of {list(REVIEW_MARKS)}"
                )
            bad = set(reasons) - set(RETURN_REASONS)
            if bad or not reasons:
                raise ValueError(
                    f"diagnose.reason_tests.{name}: unknown reason(s) {sorted(bad)}; expected some of {RETURN_REASONS}"
                )
        if self.reason_prior_weight < 0:
            raise ValueError(f"diagnose.reason_prior_weight must be >= 0; got {self.reason_prior_weight}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DiagnoseParams:
        d = dict(params.get("diagnose", {}) or {})
        wd = d.get("window_days")
        return cls(
            alpha=float(d.get("alpha", 0.05)),
            min_lines=int(d.get("min_lines", 30)),
            min_ratio=float(d.get("min_ratio", 1.0)),
            folds=int(d.get("folds", 3)),
            val_share=float(d.get("val_share", 0.2)),
            window_days=None if wd is None else int(wd),
            levels=tuple(d.get("levels", tuple(LEVELS))),
            quality_threshold=float(d.get("quality_threshold", 0.4)),
            reason_tests={
                str(k): tuple(v) for k, v in (d.get("reason_tests", DEFAULT_REASON_TESTS) or {}).items()
            },
            use_reviews=bool(d.get("use_reviews", True)),
            negative_rating=int(d.get("negative_rating", 2)),
            reason_prior_weight=float(d.get("reason_prior_weight", 20.0)),
            # the calibrator's selection bins = the evaluate stage's ECE bins, as for the train stage
            model={
                "calibration_ece_bins": int((params.get("evaluate") or {}).get("ece_bins", 15)),
                **dict(d.get("model", {}) or {}),
            },
        )


# ---------------------------------------------------------------- the expectation
def expectation_specs(specs: Sequence[Any]) -> list[Any]:
    """The features of the expectation model: every feature but product history."""
    out = [s for s in specs if not is_product_history(s.name)]
    if not out:
        raise ValueError("every feature is product history: nothing left for the expectation model")
    return out


def product_folds(product_ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) per line; all lines of a product share a fold (seeded permutation)."""
    codes, uniques = pd.factorize(product_ids, sort=True)
    if (codes < 0).any():
        raise ValueError("product_id is missing on some lines: every line needs a product")
    if len(uniques) < folds:
        raise ValueError(f"{len(uniques)} products cannot be split into {folds} folds")
    perm = np.random.default_rng(seed).permutation(len(uniques))
    fold_of_product = np.empty(len(uniques), dtype=np.int64)
    fold_of_product[perm] = np.arange(len(uniques)) % folds
    return fold_of_product[codes]


def cross_fitted_expectation(
    frame: pd.DataFrame,
    usable: np.ndarray,
    specs: Sequence[Any],
    p: DiagnoseParams,
    seed: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Out-of-fold calibrated return probability of every usable line (NaN elsewhere).

    Fold f's lines are scored by a model trained on the usable lines of the other folds' products;
    a further `val_share` of those products (never fold f's) is its validation set for early stopping
    and calibration. `frame` needs product_id, `returned` and the features of `specs`.
    """
    from models.train import train_return_model

    say = progress or (lambda _m: None)
    usable = np.asarray(usable, dtype=bool)
    if usable.sum() == 0:
        raise ValueError("no line to diagnose (no mature label in the window)")
    fold = product_folds(frame["product_id"], p.folds, seed)
    # validation products: a seeded draw of products, disjoint from the scored fold by construction
    codes, uniques = pd.factorize(frame["product_id"], sort=True)
    val_product = np.random.default_rng(seed + 1).random(len(uniques)) < p.val_share
    is_val = val_product[codes]
    cfg = {"min_category_count": 20, "calibration": "auto", **p.model}
    out = np.full(len(frame), np.nan)
    for f in range(p.folds):
        say(f"expectation model {f + 1}/{p.folds}")
        other = usable & (fold != f)
        split = np.where(other & ~is_val, "train", np.where(other & is_val, "val", ""))
        fit = train_return_model(
            frame, pd.Series(split, index=frame.index), specs, cfg, seed, name=f"diagnose-fold-{f}"
        )
        scored = usable & (fold == f)
        out[scored] = fit.model.predict_proba(frame.loc[scored])
    return out


# ---------------------------------------------------------------- tests per cell
def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH step-up adjusted p-values (q-values): flag q <= alpha for FDR control at alpha. NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = np.clip(ranked, 0.0, 1.0)
    q[ok] = adj
    return q


def cell_tests(lines: pd.DataFrame, keys: Sequence[str], p: DiagnoseParams) -> pd.DataFrame:
    """One row per cell of `keys` (lines with a missing key are left out): counts, test, BH q-value.

    `lines` has the key columns, `returned` (0/1) and `p_expected`.
    """
    need = [*keys, "returned", "p_expected"]
    missing = [c for c in need if c not in lines.columns]
    if missing:
        raise ValueError(f"diagnostic lines: missing column(s) {missing}")
    keep = lines[list(keys)].notna().all(axis=1).to_numpy()
    sub = lines.loc[keep, need]
    if sub["p_expected"].isna().any():
        raise ValueError("diagnostic lines: p_expected is missing on some lines")
    if sub.empty:
        return pd.DataFrame(columns=[c for c in CELL_COLUMNS if c != "level"])
    grouped = sub.groupby(list(keys), sort=True, observed=True)
    group = grouped.ngroup().to_numpy()
    y = sub["returned"].to_numpy(dtype=np.float64)
    pe = np.clip(sub["p_expected"].to_numpy(dtype=np.float64), 0.0, 1.0)
    n_groups = int(group.max()) + 1
    n = np.bincount(group, minlength=n_groups)
    obs = np.bincount(group, weights=y, minlength=n_groups)
    exp = np.bincount(group, weights=pe, minlength=n_groups)
    var = np.bincount(group, weights=pe * (1 - pe), minlength=n_groups)
    cells = grouped.size().reset_index()[list(keys)]
    tested = n >= p.min_lines
    pval = np.full(n_groups, np.nan)
    idx = np.flatnonzero(tested)
    if len(idx):
        remap = np.full(n_groups, -1)
        remap[idx] = np.arange(len(idx))
        in_t = tested[group]
        pval[idx] = poisson_binomial_sf(remap[group[in_t]], pe[in_t], obs[idx].round().astype(np.int64))
    cells["test"] = RATE_TEST
    _fill_test_columns(cells, n, obs, exp, var, pval, tested)
    return flag_cells(cells, p)


def _fill_test_columns(
    cells: pd.DataFrame,
    n: np.ndarray,
    obs: np.ndarray,
    exp: np.ndarray,
    var: np.ndarray,
    pval: np.ndarray,
    tested: np.ndarray,
) -> None:
    cells["n_lines"] = n
    cells["observed"] = np.asarray(obs).round().astype(np.int64)
    cells["expected"] = exp
    cells["ratio"] = np.divide(obs, exp, out=np.full(len(cells), np.inf), where=np.asarray(exp) > 0)
    cells["excess"] = obs - exp
    cells["z"] = (obs - exp) / np.sqrt(np.maximum(var, 1e-12))
    cells["pvalue"] = pval
    cells["tested"] = tested


def flag_cells(cells: pd.DataFrame, p: DiagnoseParams) -> pd.DataFrame:
    """Benjamini-Hochberg over every test in `cells` (one level), then the flag, finding and action."""
    q = benjamini_hochberg(cells["pvalue"].to_numpy(dtype=np.float64))
    obs = cells["observed"].to_numpy(dtype=np.float64)
    exp = cells["expected"].to_numpy(dtype=np.float64)
    cells["qvalue"] = q
    cells["flagged"] = (
        cells["tested"].to_numpy(dtype=bool)
        & (q <= p.alpha)
        & (cells["ratio"].to_numpy(dtype=np.float64) >= p.min_ratio)
        & (obs > exp)
    )
    tests = cells["test"].astype(str)
    cells["finding"] = tests.map(lambda t: FINDINGS[t][0]).where(cells["flagged"], "")
    cells["action"] = tests.map(lambda t: FINDINGS[t][1]).where(cells["flagged"], "")
    return cells


# ---------------------------------------------------------------- reason tests (products)
def leave_product_out_share(
    hit: np.ndarray, trials: np.ndarray, product: np.ndarray, group: np.ndarray, prior_weight: float
) -> np.ndarray:
    """Per row: hits / trials among the *other* products of the row's group (category), shrunk toward the
    share among all other products with `prior_weight` pseudo-trials. A product's own rows never enter
    its expectation, so its excess cannot hide in the share it is compared with. `product` and `group`
    are integer codes."""
    hit = np.asarray(hit, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    own_h = np.bincount(product, weights=hit)[product]
    own_t = np.bincount(product, weights=trials)[product]
    grp_h = np.bincount(group, weights=hit)[group] - own_h
    grp_t = np.bincount(group, weights=trials)[group] - own_t
    all_h = hit.sum() - own_h
    all_t = trials.sum() - own_t
    overall = np.divide(all_h, all_t, out=np.zeros(len(hit)), where=all_t > 0)
    den = grp_t + prior_weight
    return np.divide(grp_h + prior_weight * overall, den, out=overall.copy(), where=den > 0)


def has_reasons(lines: pd.DataFrame) -> bool:
    """True when some returned line carries a reason code (generated data; not the UCI export)."""
    if "reason" not in lines.columns:
        return False
    returned = lines["returned"].to_numpy(dtype=np.float64) > 0
    return bool(lines.loc[returned, "reason"].notna().any())


def review_marks(reviews: pd.DataFrame, negative_rating: int) -> pd.DataFrame:
    """Per review: product_id, category (when given), runs_small / runs_large (the featurizer's fit rule,
    features.sentiment, on the lower-cased text) and negative (rating <= negative_rating; NA without a
    rating)."""
    from features.sentiment import RUNS_LARGE, RUNS_SMALL

    if "product_id" not in reviews.columns:
        raise ValueError("reviews: missing column 'product_id'")
    out = reviews[[c for c in ("product_id", "category") if c in reviews.columns]].copy()
    text = reviews["text"] if "text" in reviews.columns else pd.Series(pd.NA, index=reviews.index)
    lower = text.astype("string").str.lower()
    uniq = pd.unique(lower.dropna().to_numpy(dtype=object))
    for name, pattern in (("runs_small", RUNS_SMALL), ("runs_large", RUNS_LARGE)):
        rx = re.compile(pattern)
        hits = {t: rx.search(t) is not None for t in uniq}
        out[name] = lower.map(hits).fillna(False).astype(bool).to_numpy()
    if "rating" in reviews.columns:
        rating = pd.to_numeric(reviews["rating"], errors="coerce")
        out["negative"] = (rating <= negative_rating).astype("boolean").where(rating.notna())
    else:
        out["negative"] = pd.Series(pd.NA, index=reviews.index, dtype="boolean")
    return out.reset_index(drop=True)


def reason_tests(lines: pd.DataFrame, p: DiagnoseParams, reviews: pd.DataFrame | None = None) -> pd.DataFrame:
    """Product-level reason tests (CELL_COLUMNS but level, qvalue, flagged, finding, action).

    `lines`: product_id, returned, p_expected, reason (NA when kept or unknown), optional category.
    `reviews` (optional): the output of `review_marks`; reviews of products without diagnosed lines are
    ignored. Evidence per product and test: its returns with the test's reasons (trials: its lines, with
    probability p_expected x the category's leave-product-out reason share) plus its marked reviews
    (trials: its reviews, with the category's leave-product-out mark share); one-sided Poisson-binomial p.
    """
    need = ["product_id", "returned", "p_expected", "reason"]
    missing = [c for c in need if c not in lines.columns]
    if missing:
        raise ValueError(f"diagnostic lines: missing column(s) {missing}")
    prod_codes, products = pd.factorize(lines["product_id"], sort=True)
    if (prod_codes < 0).any():
        raise ValueError("diagnostic lines: product_id is missing on some lines")
    n_prod = len(products)
    cat = lines["category"] if "category" in lines.columns else pd.Series(0, index=lines.index)
    cat_codes = pd.factorize(cat.astype("string").fillna("<none>"))[0]
    returned = lines["returned"].to_numpy(dtype=np.float64)
    pe_line = np.clip(lines["p_expected"].to_numpy(dtype=np.float64), 0.0, 1.0)
    reason = lines["reason"].astype("string")
    n = np.bincount(prod_codes, minlength=n_prod)
    tested = n >= p.min_lines

    rv_codes = rv_cat = None
    if reviews is not None and p.use_reviews and len(reviews):
        rv_prod = pd.Index(products).get_indexer(reviews["product_id"])
        keep = rv_prod >= 0
        reviews = reviews.loc[keep].reset_index(drop=True)
        rv_codes = rv_prod[keep]
        # a review's category is its product's (as in the lines); unseen categories get their own code
        line_cat = pd.Series(cat_codes).groupby(prod_codes).first().reindex(range(n_prod)).to_numpy()
        rv_cat = line_cat[rv_codes]

    parts = []
    for name, reasons in p.reason_tests.items():
        hit = (reason.isin(list(reasons)).fillna(False).to_numpy(dtype=bool) & (returned > 0)).astype(
            np.float64
        )
        share = leave_product_out_share(hit, returned, prod_codes, cat_codes, p.reason_prior_weight)
        codes, hits, probs = [prod_codes], [hit], [pe_line * share]
        r_obs = np.full(n_prod, np.nan)
        r_exp = np.full(n_prod, np.nan)
        if rv_codes is not None:
            mark = reviews[REVIEW_MARKS[name]]
            known = mark.notna().to_numpy(dtype=bool)
            if known.any():
                m_hit = mark[known].astype(bool).to_numpy(dtype=np.float64)
                m_prod, m_cat = rv_codes[known], rv_cat[known]
                m_p = leave_product_out_share(
                    m_hit, np.ones(len(m_hit)), m_prod, m_cat, p.reason_prior_weight
                )
                codes.append(m_prod)
                hits.append(m_hit)
                probs.append(m_p)
                r_obs = np.bincount(m_prod, weights=m_hit, minlength=n_prod)
                r_exp = np.bincount(m_prod, weights=m_p, minlength=n_prod)
        code = np.concatenate(codes)
        y = np.concatenate(hits)
        pr = np.concatenate(probs)
        obs = np.bincount(code, weights=y, minlength=n_prod)
        exp = np.bincount(code, weights=pr, minlength=n_prod)
        var = np.bincount(code, weights=pr * (1 - pr), minlength=n_prod)
        pval = np.full(n_prod, np.nan)
        idx = np.flatnonzero(tested)
        if len(idx):
            remap = np.full(n_prod, -1)
            remap[idx] = np.arange(len(idx))
            in_t = tested[code]
            pval[idx] = poisson_binomial_sf(remap[code[in_t]], pr[in_t], obs[idx].round().astype(np.int64))
        cells = pd.DataFrame({"product_id": products})
        cells["test"] = name
        _fill_test_columns(cells, n, obs, exp, var, pval, tested)
        cells["review_observed"] = r_obs
        cells["review_expected"] = r_exp
        parts.append(cells)
    if not parts:
        return pd.DataFrame(columns=[c for c in CELL_COLUMNS if c not in ("level", "qvalue", "flagged")])
    return pd.concat(parts, ignore_index=True)


def diagnose_cells(
    lines: pd.DataFrame, p: DiagnoseParams, reviews: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every level's cells in one frame (CELL_COLUMNS), each level corrected on its own; a level whose key
    column is absent or empty (e.g. no sizes in the data) is skipped. The product level also holds the
    reason tests when the lines carry reasons (`has_reasons`), corrected together with its rate tests."""
    parts = []
    for level in p.levels:
        keys = LEVELS[level]
        if any(k not in lines.columns or lines[k].notna().sum() == 0 for k in keys):
            continue
        cells = cell_tests(lines, keys, p)
        if level == "product" and p.reason_tests and has_reasons(lines):
            rt = reason_tests(lines, p, reviews)
            cells = flag_cells(pd.concat([cells, rt], ignore_index=True, sort=False), p)
        cells.insert(0, "level", level)
        parts.append(cells)
    if not parts:
        raise ValueError(f"no level of {list(p.levels)} can be diagnosed (missing key columns)")
    out = pd.concat(parts, ignore_index=True, sort=False)
    for c in ("size", "color"):
        if c not in out.columns:
            out[c] = pd.Series(pd.NA, index=out.index, dtype="string")
        else:
            out[c] = out[c].astype("string")
    for c in ("review_observed", "review_expected"):
        if c not in out.columns:
            out[c] = np.nan
        out[c] = out[c].astype("float64")
    out = out[CELL_COLUMNS]
    return out.sort_values(
        ["flagged", "level", "qvalue", "pvalue"], ascending=[False, True, True, True], kind="stable"
    ).reset_index(drop=True)


PRODUCT_COLUMNS = [
    "product_id",
    "finding",
    "action",
    "findings",
    "levels",
    "min_qvalue",
    "flagged_sizes",
    "flagged_colors",
    "n_lines",
    "observed",
    "expected",
    "ratio",
]


def _tests(cells: pd.DataFrame) -> pd.Series:
    if "test" in cells.columns:
        return cells["test"].astype(str)
    return pd.Series(RATE_TEST, index=cells.index)


def product_findings(cells: pd.DataFrame) -> pd.Series:
    """Per flagged product, its findings' test names, most specific first: the flagged reason tests by
    q-value, then the rate test (any level: a flagged size or colour cell is an excess of returns)."""
    f = cells[cells["flagged"]].assign(_t=_tests(cells)[cells["flagged"]])
    keys = ["_rate", *(["qvalue"] if "qvalue" in f.columns else [])]
    f = f.assign(_rate=f["_t"] == RATE_TEST).sort_values(keys, kind="stable")
    return f.groupby("product_id", sort=False)["_t"].agg(lambda s: list(dict.fromkeys(s)))


def flagged_products(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per product with any flagged cell: its main finding and action, every finding, which levels,
    the smallest q, and its product-level rate figures."""
    f = cells[cells["flagged"]]
    if f.empty:
        return pd.DataFrame(columns=PRODUCT_COLUMNS)

    def joined(s: pd.Series) -> str:
        return ", ".join(sorted(str(v) for v in s.dropna().unique()))

    agg = f.groupby("product_id", sort=False).agg(
        levels=("level", joined),
        min_qvalue=("qvalue", "min"),
    )
    found = product_findings(cells)
    agg["finding"] = found.map(lambda t: FINDINGS[t[0]][0])
    agg["action"] = found.map(lambda t: FINDINGS[t[0]][1])
    agg["findings"] = found.map(lambda t: ", ".join(FINDINGS[x][0] for x in t))
    agg["flagged_sizes"] = f[f["level"] == "product_size"].groupby("product_id")["size"].agg(joined)
    agg["flagged_colors"] = f[f["level"] == "product_color"].groupby("product_id")["color"].agg(joined)
    rate = cells[(cells["level"] == "product") & (_tests(cells) == RATE_TEST)]
    prod = rate.set_index("product_id")[["n_lines", "observed", "expected", "ratio"]]
    out = agg.join(prod, how="left").reset_index()
    out[["flagged_sizes", "flagged_colors"]] = out[["flagged_sizes", "flagged_colors"]].fillna("")
    out = out[PRODUCT_COLUMNS]
    return out.sort_values(["min_qvalue", "product_id"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- evaluation (generated data)
def evaluate_against_truth(
    cells: pd.DataFrame, products_truth: pd.DataFrame, quality_threshold: float, min_lines: int
) -> dict[str, float]:
    """Recall of truly abnormal products and the false discovery share among flagged ones.

    Truly abnormal = hidden size_bias != 0 or quality < quality_threshold (generator truth). Only products
    with lines in the diagnosed window count. `recall` is over all of them, `recall_testable` over those
    with at least `min_lines` lines (the others cannot be tested). A product counts as flagged when any of
    its cells is. `false_discovery_share` = flagged products that are not abnormal / flagged products.
    """
    need = {"product_id", "size_bias", "quality"}
    if not need <= set(products_truth.columns):
        raise ValueError(f"products_truth: missing column(s) {sorted(need - set(products_truth.columns))}")
    prod = cells[(cells["level"] == "product") & (_tests(cells) == RATE_TEST)].set_index("product_id")
    truth = products_truth.set_index("product_id").reindex(prod.index)
    if truth["quality"].isna().any():
        raise ValueError(
            f"products_truth: {int(truth['quality'].isna().sum())} diagnosed products have no truth"
        )
    sized = truth["size_bias"].to_numpy() != 0
    poor = truth["quality"].to_numpy() < quality_threshold
    bad = sized | poor
    flagged_any = prod.index.isin(cells.loc[cells["flagged"], "product_id"].unique())
    testable = prod["n_lines"].to_numpy() >= min_lines

    def share(num: np.ndarray, den: np.ndarray) -> float:
        d = int(den.sum())
        return float(num.sum() / d) if d else float("nan")

    out: dict[str, float] = {
        "n_products": float(len(prod)),
        "n_abnormal": float(bad.sum()),
        "n_abnormal_testable": float((bad & testable).sum()),
        "n_flagged_products": float(flagged_any.sum()),
        "recall": share(flagged_any & bad, bad),
        "recall_testable": share(flagged_any & bad & testable, bad & testable),
        "recall_size_bias": share(flagged_any & sized, sized),
        "recall_size_bias_testable": share(flagged_any & sized & testable, sized & testable),
        "recall_low_quality": share(flagged_any & poor, poor),
        "recall_low_quality_testable": share(flagged_any & poor & testable, poor & testable),
        "false_discovery_share": share(flagged_any & ~bad, flagged_any) if flagged_any.any() else 0.0,
    }
    # typed: was the product flagged with the finding that names its defect?
    found = product_findings(cells).reindex(prod.index)
    has = {t: found.map(lambda x, t=t: isinstance(x, list) and t in x).to_numpy(dtype=bool) for t in FINDINGS}
    truth_of = {
        "runs_small": truth["size_bias"].to_numpy() < 0,
        "runs_large": truth["size_bias"].to_numpy() > 0,
        "quality": poor,
        RATE_TEST: bad,
    }
    for t, is_t in truth_of.items():
        out[f"{t}.n_flagged"] = float(has[t].sum())
        out[f"{t}.recall"] = share(has[t] & is_t, is_t)
        out[f"{t}.recall_testable"] = share(has[t] & is_t & testable, is_t & testable)
        # flagged with this finding but without the matching hidden defect
        out[f"{t}.false_share"] = share(has[t] & ~is_t, has[t]) if has[t].any() else 0.0
    bad_ids = set(prod.index[bad])
    for level in cells["level"].unique():
        f = cells[(cells["level"] == level) & cells["flagged"]]
        out[f"{level}.n_flagged_tests"] = float(len(f))
        out[f"{level}.false_discovery_share"] = (
            float((~f["product_id"].isin(bad_ids)).mean()) if len(f) else 0.0
        )
    return out


def summary_metrics(cells: pd.DataFrame, lines: pd.DataFrame) -> dict[str, float]:
    """Counts per level and how well the expectation adds up overall (observed / expected returns)."""
    exp = float(lines["p_expected"].sum())
    out: dict[str, float] = {
        "n_lines": float(len(lines)),
        "observed_returns": float(lines["returned"].sum()),
        "expected_returns": exp,
        "observed_over_expected": float(lines["returned"].sum() / exp) if exp > 0 else float("nan"),
    }
    tests = _tests(cells)
    for level, g in cells[tests == RATE_TEST].groupby("level", sort=False):
        out[f"{level}.n_cells"] = float(len(g))
        out[f"{level}.n_tested"] = float(g["tested"].sum())
        out[f"{level}.n_flagged"] = float(g["flagged"].sum())
    reason = cells[tests != RATE_TEST]
    out["reason_tests_run"] = float(len(reason) > 0)
    out["reason_tests.n_tested"] = float(reason["tested"].sum())
    out["reviews_used"] = float(reason["review_observed"].notna().any()) if len(reason) else 0.0
    for t in FINDINGS:
        out[f"findings.{t}"] = float(
            cells.loc[(tests == t).to_numpy() & cells["flagged"].to_numpy(dtype=bool), "product_id"].nunique()
        )
    return out


def cell_label(cells: pd.DataFrame) -> pd.Series:
    """Human label of a cell: "product 17", "product 17 size M", "product 17 colour navy", and for a
    reason test "product 17: runs small"."""
    lab = "product " + cells["product_id"].astype(str)
    size = cells["size"].astype(object)
    color = cells["color"].astype(object)
    lab = lab.where(size.isna(), lab + " size " + size.astype(str))
    lab = lab.where(color.isna(), lab + " colour " + color.astype(str))
    tests = _tests(cells)
    words = tests.map(lambda t: FINDINGS[t][0])
    return lab.where(tests == RATE_TEST, lab + ": " + words)
