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
"""

from __future__ import annotations

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
CELL_COLUMNS = [
    "level",
    "product_id",
    "size",
    "color",
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
            model=dict(d.get("model", {}) or {}),
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
    q = benjamini_hochberg(pval)
    ratio = np.divide(obs, exp, out=np.full(n_groups, np.inf), where=exp > 0)
    cells["n_lines"] = n
    cells["observed"] = obs.round().astype(np.int64)
    cells["expected"] = exp
    cells["ratio"] = ratio
    cells["excess"] = obs - exp
    cells["z"] = (obs - exp) / np.sqrt(np.maximum(var, 1e-12))
    cells["pvalue"] = pval
    cells["qvalue"] = q
    cells["tested"] = tested
    cells["flagged"] = tested & (q <= p.alpha) & (ratio >= p.min_ratio) & (obs > exp)
    return cells


def diagnose_cells(lines: pd.DataFrame, p: DiagnoseParams) -> pd.DataFrame:
    """Every level's cells in one frame (CELL_COLUMNS), each level corrected on its own; a level whose key
    column is absent or empty (e.g. no sizes in the data) is skipped."""
    parts = []
    for level in p.levels:
        keys = LEVELS[level]
        if any(k not in lines.columns or lines[k].notna().sum() == 0 for k in keys):
            continue
        cells = cell_tests(lines, keys, p)
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
    out = out[CELL_COLUMNS]
    return out.sort_values(
        ["flagged", "level", "qvalue", "pvalue"], ascending=[False, True, True, True], kind="stable"
    ).reset_index(drop=True)


def flagged_products(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per product with any flagged cell: which levels, the smallest q, its product-level figures."""
    f = cells[cells["flagged"]]
    if f.empty:
        return pd.DataFrame(
            columns=[
                "product_id",
                "levels",
                "min_qvalue",
                "flagged_sizes",
                "flagged_colors",
                "n_lines",
                "observed",
                "expected",
                "ratio",
            ]
        )

    def joined(s: pd.Series) -> str:
        return ", ".join(sorted(str(v) for v in s.dropna().unique()))

    agg = f.groupby("product_id", sort=False).agg(
        levels=("level", joined),
        min_qvalue=("qvalue", "min"),
    )
    agg["flagged_sizes"] = f[f["level"] == "product_size"].groupby("product_id")["size"].agg(joined)
    agg["flagged_colors"] = f[f["level"] == "product_color"].groupby("product_id")["color"].agg(joined)
    prod = cells[cells["level"] == "product"].set_index("product_id")[
        ["n_lines", "observed", "expected", "ratio"]
    ]
    out = agg.join(prod, how="left").reset_index()
    out[["flagged_sizes", "flagged_colors"]] = out[["flagged_sizes", "flagged_colors"]].fillna("")
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
    prod = cells[cells["level"] == "product"].set_index("product_id")
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
    bad_ids = set(prod.index[bad])
    for level in cells["level"].unique():
        f = cells[(cells["level"] == level) & cells["flagged"]]
        out[f"{level}.n_flagged"] = float(len(f))
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
    for level, g in cells.groupby("level", sort=False):
        out[f"{level}.n_cells"] = float(len(g))
        out[f"{level}.n_tested"] = float(g["tested"].sum())
        out[f"{level}.n_flagged"] = float(g["flagged"].sum())
    return out


def cell_label(cells: pd.DataFrame) -> pd.Series:
    """Human label of a cell: "product 17", "product 17 size M", "product 17 colour navy"."""
    lab = "product " + cells["product_id"].astype(str)
    size = cells["size"].astype(object)
    color = cells["color"].astype(object)
    lab = lab.where(size.isna(), lab + " size " + size.astype(str))
    return lab.where(color.isna(), lab + " colour " + color.astype(str))
