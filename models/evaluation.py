"""Model quality on a window: ranking, probability and business metrics, curves, cost-based threshold.

Pure functions over label and probability arrays, so the model, the baselines and the oracle are
measured by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

EPS = 1e-15


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be equally long 1-d arrays")
    if len(y) == 0:
        raise ValueError("cannot evaluate an empty window")
    if np.isnan(p).any():
        raise ValueError("probabilities contain NaN")
    return y, p


def _bin_gaps(idx: np.ndarray, y: np.ndarray, p: np.ndarray, w: np.ndarray | None, bins: int) -> float:
    """sum over bins |sum w*y - sum w*p| / sum w: the weighted ECE for a given bin assignment."""
    sum_p = np.bincount(idx, weights=p if w is None else w * p, minlength=bins)
    sum_y = np.bincount(idx, weights=y if w is None else w * y, minlength=bins)
    total = float(len(y) if w is None else w.sum())
    return float(np.sum(np.abs(sum_y - sum_p)) / total) if total > 0 else float("nan")


def ece_bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability (the last bin is closed at 1)."""
    return np.minimum((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), bins - 1)


def equal_mass_bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each probability for `bins` equal-mass (quantile) bins; equal scores always share a bin.

    Edges are the score quantiles, de-duplicated, so a constant score is one bin and ties are never
    split (splitting ties would make the value depend on the row order).
    """
    p = np.asarray(p, dtype=np.float64)
    inner = np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return np.searchsorted(inner, p, side="right").astype(np.int64)


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, *, bins: int = 15, weights: np.ndarray | None = None
) -> float:
    """ECE: the line-weighted mean |observed rate - mean prediction| over equal-width probability bins.

    `weights` (e.g. bootstrap multiplicities) weight each line; None = every line once.
    """
    y, p = _check(y, p)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return _bin_gaps(ece_bin_index(p, bins), y, p, w, bins)


def adaptive_calibration_error(
    y: np.ndarray, p: np.ndarray, *, bins: int = 15, weights: np.ndarray | None = None
) -> float:
    """Adaptive ECE: as `expected_calibration_error` but over equal-mass bins (score quantiles).

    Equal-width bins put almost every line of a low base rate (UCI: 1.3 % returns) in the first bin,
    where over- and under-prediction cancel; equal-mass bins resolve the region where the lines are.
    A second view, not a replacement: the headline ECE stays equal-width (params evaluate.ece_bins).
    """
    y, p = _check(y, p)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return _bin_gaps(equal_mass_bin_index(p, bins), y, p, w, bins)


def ece_noise_floor(p: np.ndarray, *, bins: int = 15, n_sim: int = 200, seed: int = 0) -> float:
    """Mean ECE of these very probabilities against labels drawn from them (a perfectly calibrated scorer).

    The ECE of a finite window is biased upwards by label noise: even the true probabilities score
    above 0. This is that floor for this score distribution and window size.
    """
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        raise ValueError("cannot evaluate an empty window")
    rng = np.random.default_rng(seed)
    idx = ece_bin_index(p, bins)
    sims = [_bin_gaps(idx, (rng.random(len(p)) < p).astype(np.float64), p, None, bins) for _ in range(n_sim)]
    return float(np.mean(sims))


def lift_at(y: np.ndarray, p: np.ndarray, share: float) -> float:
    """Return rate among the top `share` of lines by score, divided by the overall rate."""
    y, p = _check(y, p)
    k = max(1, int(np.ceil(share * len(y))))
    top = np.argsort(-p, kind="stable")[:k]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray, *, ece_bins: int = 15) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), log loss, Brier, ECE (equal-width and equal-mass bins), lift at top 5/10 %."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y, p = _check(y, p)
    pc = np.clip(p, EPS, 1 - EPS)
    both = 0 < y.sum() < len(y)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p, bins=ece_bins),
        "ece_adaptive": adaptive_calibration_error(y, p, bins=ece_bins),
        "lift_5": lift_at(y, p, 0.05),
        "lift_10": lift_at(y, p, 0.10),
    }


# ---------------------------------------------------------------- bootstrap intervals (is a difference real?)
BOOTSTRAP_METRICS = ("ece", "ece_adaptive", "log_loss", "roc_auc", "pr_auc")
HIGHER_IS_BETTER = frozenset({"roc_auc", "pr_auc"})
RANK_CHUNK = 16  # resamples per cumulative-sum block in _weighted_rank_metrics (memory: 16 x lines floats)


def _weighted_rank_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision under each row of weights `w` (n_boot, n): sorted once, not per resample.

    Same definitions as scikit-learn's `roc_auc_score` / `average_precision_score` with `sample_weight`
    (trapezoids over distinct thresholds; AP = sum of recall steps x precision), tested against them.
    """
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    ends = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]  # last line of each distinct score
    auc = np.empty(len(w))
    ap = np.empty(len(w))
    for start in range(0, len(w), RANK_CHUNK):
        wc = w[start : start + RANK_CHUNK][:, order]
        tp = np.cumsum(wc * ys, axis=1)[:, ends]
        fp = np.cumsum(wc * (1.0 - ys), axis=1)[:, ends]
        pos, neg = tp[:, -1:], fp[:, -1:]
        tpr = np.concatenate([np.zeros((len(wc), 1)), tp / pos], axis=1)
        fpr = np.concatenate([np.zeros((len(wc), 1)), fp / neg], axis=1)
        auc[start : start + len(wc)] = (np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        ap[start : start + len(wc)] = (np.diff(tpr, axis=1) * precision).sum(axis=1)
    return auc, ap


def cluster_bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_lines) multiplicities of a bootstrap that resamples whole groups (customers, orders).

    Lines of one customer are correlated (one habit, one size), so resampling lines would understate
    the noise; resampling customers keeps each customer's lines together.
    """
    _, code = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(code.max()) + 1
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(code)), dtype=np.float64)
    for b in range(n_boot):
        out[b] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[code]
    return out


def bootstrap_intervals(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    groups: np.ndarray,
    *,
    reference: str = "model",
    metrics: tuple[str, ...] = BOOTSTRAP_METRICS,
    bins: int = 15,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Percentile intervals of each scorer's metrics and of `reference` minus each other scorer.

    Every scorer is measured on the same resamples (paired), so a difference's interval is narrower
    than the two separate intervals suggest. Keys: "<scorer>.<metric>.lo/hi", and for the differences
    "diff.<other>.<metric>" (reference - other, point estimate), ".lo", ".hi" and ".p_better" (share of
    resamples where the reference is better: lower ECE / log loss, higher ROC AUC / PR AUC).
    """
    y = np.asarray(y, dtype=np.float64)
    if reference not in scores:
        raise ValueError(f"reference scorer {reference!r} is not among {sorted(scores)}")
    unknown = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(f"bootstrap metrics {unknown} are not among {BOOTSTRAP_METRICS}")
    w = cluster_bootstrap_weights(groups, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    out: dict[str, float] = {}
    reps: dict[tuple[str, str], np.ndarray] = {}
    for key, p in scores.items():
        y_, p = _check(y, p)
        index = {"ece": ece_bin_index(p, bins), "ece_adaptive": equal_mass_bin_index(p, bins)}
        if HIGHER_IS_BETTER & set(metrics):
            if y_.min() == y_.max():
                raise ValueError("ROC AUC / PR AUC intervals need both classes among the lines")
            rank = dict(zip(("roc_auc", "pr_auc"), _weighted_rank_metrics(y_, p, w), strict=True))
            rank_point = dict(
                zip(("roc_auc", "pr_auc"), _weighted_rank_metrics(y_, p, np.ones((1, len(p)))), strict=True)
            )
        for m in metrics:
            if m in HIGHER_IS_BETTER:
                vals, point = rank[m], float(rank_point[m][0])
            elif m == "log_loss":
                pc = np.clip(p, EPS, 1 - EPS)
                line_loss = -(y_ * np.log(pc) + (1 - y_) * np.log(1 - pc))
                vals = (w @ line_loss) / w.sum(axis=1)
                point = float(line_loss.mean())
            else:
                vals = np.array([_bin_gaps(index[m], y_, p, wb, bins) for wb in w])
                point = _bin_gaps(index[m], y_, p, None, bins)
            reps[key, m] = vals
            out[f"{key}.{m}"] = point
            out[f"{key}.{m}.lo"], out[f"{key}.{m}.hi"] = (
                float(v) for v in np.quantile(vals, [alpha, 1 - alpha])
            )
    for key in scores:
        if key == reference:
            continue
        for m in metrics:
            d = reps[reference, m] - reps[key, m]
            out[f"diff.{key}.{m}"] = out[f"{reference}.{m}"] - out[f"{key}.{m}"]
            out[f"diff.{key}.{m}.lo"], out[f"diff.{key}.{m}.hi"] = (
                float(v) for v in np.quantile(d, [alpha, 1 - alpha])
            )
            out[f"diff.{key}.{m}.p_better"] = float(np.mean(d > 0 if m in HIGHER_IS_BETTER else d < 0))
    return out


# ---------------------------------------------------------------- curves (for DVC plots and PNGs)
GRID = np.linspace(0.0, 1.0, 101)


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """TPR at a fixed grid of false-positive rates (so several models share one x axis)."""
    from sklearn.metrics import roc_curve

    y, p = _check(y, p)
    fpr, tpr, _ = roc_curve(y, p)
    return pd.DataFrame({"fpr": GRID, "tpr": np.interp(GRID, fpr, tpr)})


def pr_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Best precision reached at each recall of a fixed grid (the interpolated PR curve)."""
    from sklearn.metrics import precision_recall_curve

    y, p = _check(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    # interpolated precision: the max precision at any recall >= r
    order = np.argsort(recall)
    r, pr = recall[order], np.maximum.accumulate(precision[order][::-1])[::-1]
    idx = np.searchsorted(r, GRID, side="left").clip(0, len(r) - 1)
    return pd.DataFrame({"recall": GRID, "precision": pr[idx]})


def calibration_points(y: np.ndarray, p: np.ndarray, *, bins: int = 15) -> pd.DataFrame:
    """Mean prediction vs observed return rate per equal-width probability bin (non-empty bins)."""
    y, p = _check(y, p)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    used = counts > 0
    mean_p = np.bincount(idx, weights=p, minlength=bins)[used] / counts[used]
    obs = np.bincount(idx, weights=y, minlength=bins)[used] / counts[used]
    return pd.DataFrame({"predicted": mean_p, "observed": obs, "lines": counts[used]})


def gains_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Cumulative share of returns captured when acting on the top x share of lines by score."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="stable")
    captured = np.concatenate([[0.0], np.cumsum(y[order])]) / max(y.sum(), 1.0)
    shares = np.arange(len(y) + 1) / len(y)
    return pd.DataFrame({"share_of_lines": GRID, "share_of_returns": np.interp(GRID, shares, captured)})


CURVES = {"roc": roc_points, "pr": pr_points, "calibration": calibration_points, "gains": gains_points}
CURVE_AXES = {
    "roc": ("fpr", "tpr"),
    "pr": ("recall", "precision"),
    "calibration": ("predicted", "observed"),
    "gains": ("share_of_lines", "share_of_returns"),
}


# ---------------------------------------------------------------- cost-based decision threshold
@dataclass(frozen=True)
class CostModel:
    """Costs of a return and of an intervention (e.g. a fit hint, or no free return) on one line.

    An intervened line costs `intervention_cost` and its return probability drops by the relative
    `intervention_effect`; a returned line costs `return_cost`.
    """

    return_cost: float
    intervention_cost: float
    intervention_effect: float

    def __post_init__(self) -> None:
        if self.return_cost <= 0 or self.intervention_cost < 0 or not 0 < self.intervention_effect <= 1:
            raise ValueError(
                "costs: need return_cost > 0, intervention_cost >= 0 and 0 < intervention_effect <= 1; "
                f"got {self}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, float]) -> CostModel:
        return cls(
            float(params["return_cost"]),
            float(params["intervention_cost"]),
            float(params["intervention_effect"]),
        )

    def expected_cost(self, y: np.ndarray, act: np.ndarray) -> float:
        """Total expected cost of acting on the lines in `act`, given their observed outcomes."""
        y = np.asarray(y, dtype=np.float64)
        act = np.asarray(act, dtype=bool)
        cost_no_action = y * self.return_cost
        cost_action = self.intervention_cost + y * (1.0 - self.intervention_effect) * self.return_cost
        return float(np.where(act, cost_action, cost_no_action).sum())


def choose_threshold(y: np.ndarray, p: np.ndarray, costs: CostModel, *, candidates: int = 200) -> float:
    """The score threshold (act when p >= t) minimising the expected cost on these lines.

    Candidates are the score quantiles plus "never act" (t above every score). Ties go to the
    higher threshold (fewer interventions).
    """
    y, p = _check(y, p)
    qs = np.unique(np.quantile(p, np.linspace(0.0, 1.0, candidates + 1)))
    ts = np.concatenate([qs, [np.nextafter(p.max(), np.inf)]])
    # cost(t) = sum_{p >= t} [c_i - e * C_r * y] + sum(y) * C_r: evaluate via sorting, O(n log n).
    order = np.argsort(-p, kind="stable")
    gain = costs.intervention_cost - costs.intervention_effect * costs.return_cost * y[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    n_acted = len(p) - np.searchsorted(p[order][::-1], ts, side="left")
    extra = cum[n_acted]
    best = np.flatnonzero(extra <= extra.min() + 1e-9)[-1]
    return float(ts[best])


def expected_saving(y: np.ndarray, p: np.ndarray, threshold: float, costs: CostModel) -> dict[str, float]:
    """Cost without any intervention, with the threshold rule, and the saving (absolute and per line)."""
    y, p = _check(y, p)
    base = costs.expected_cost(y, np.zeros(len(y), dtype=bool))
    act = p >= threshold
    with_rule = costs.expected_cost(y, act)
    return {
        "cost_no_action": base,
        "cost_with_threshold": with_rule,
        "saving": base - with_rule,
        "saving_per_line": (base - with_rule) / len(y),
        "share_acted": float(act.mean()),
    }


# ---------------------------------------------------------------- a whole evaluation (model + baselines)
SCORE_COLUMNS = {"model": "p_model", "blind": "p_blind", "logreg": "p_logreg", "rate": "p_rate"}


def evaluate_predictions(
    preds: pd.DataFrame,
    costs: CostModel,
    *,
    threshold: float | None = None,
    oracle: pd.Series | None = None,
    ece_bins: int = 15,
) -> tuple[dict[str, float], dict[str, dict[str, pd.DataFrame]]]:
    """Flat metrics and curves for every scorer on the test window of a predictions frame.

    `preds` has columns split ('val'/'test'), returned and p_<scorer>. `threshold` (act when
    p_model >= threshold) defaults to the cost-minimising one on validation. `oracle` maps line_id to
    the generator's true probability (generated data only). Returns ({"model.roc_auc": ...}, curves
    as {curve: {scorer: frame}}).
    """
    test = preds[preds["split"] == "test"]
    val = preds[preds["split"] == "val"]
    if test.empty or val.empty:
        raise ValueError(f"predictions need validation and test lines; got {len(val)} and {len(test)}")
    y = test["returned"].to_numpy(dtype=np.float64)
    scorers = {k: c for k, c in SCORE_COLUMNS.items() if c in test.columns}
    if oracle is not None:
        truth = test["line_id"].map(oracle)
        if truth.isna().any():
            raise ValueError(f"oracle: {int(truth.isna().sum())} test lines have no true probability")
        test = test.assign(p_oracle=truth.to_numpy(dtype=np.float64))
        scorers["oracle"] = "p_oracle"
    metrics: dict[str, float] = {
        "n_test": float(len(test)),
        "n_val": float(len(val)),
        "test_return_rate": float(y.mean()),
    }
    curves: dict[str, dict[str, pd.DataFrame]] = {c: {} for c in CURVES}
    for key, col in scorers.items():
        p = test[col].to_numpy(dtype=np.float64)
        for name, value in binary_metrics(y, p, ece_bins=ece_bins).items():
            metrics[f"{key}.{name}"] = value
        if key == "rate":
            continue  # a constant score has no curve worth drawing
        for curve, fn in CURVES.items():
            curves[curve][key] = fn(y, p, bins=ece_bins) if curve == "calibration" else fn(y, p)
    if "oracle" in scorers:
        metrics["oracle_gap"] = metrics["oracle.roc_auc"] - metrics["model.roc_auc"]
    for key in scorers:
        if key not in ("model", "oracle"):
            metrics[f"model_beats.{key}"] = float(
                metrics["model.roc_auc"] > metrics[f"{key}.roc_auc"]
                and metrics["model.log_loss"] < metrics[f"{key}.log_loss"]
            )
    y_val = val["returned"].to_numpy(dtype=np.float64)
    p_val = val["p_model"].to_numpy(dtype=np.float64)
    if threshold is None:
        threshold = choose_threshold(y_val, p_val, costs)
    metrics["threshold"] = float(threshold)
    on_val = expected_saving(y_val, p_val, threshold, costs)
    on_test = expected_saving(y, test["p_model"].to_numpy(dtype=np.float64), threshold, costs)
    metrics["expected_saving_val_per_line"] = on_val["saving_per_line"]
    metrics["expected_saving_test"] = on_test["saving"]
    metrics["expected_saving_test_per_line"] = on_test["saving_per_line"]
    metrics["share_acted_test"] = on_test["share_acted"]
    metrics["cost_no_action_test"] = on_test["cost_no_action"]
    return metrics, curves


def curve_frames(curves: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """One frame per (curve, scorer), keyed "<curve>/<scorer>" (the plot data files for DVC)."""
    return {f"{curve}/{scorer}": df for curve, by in curves.items() for scorer, df in by.items()}


def plot_curves(curves: dict[str, dict[str, pd.DataFrame]], folder) -> list:
    """One PNG per curve with every scorer on it (for MLflow and humans); returns the paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for curve, by in curves.items():
        x, yname = CURVE_AXES[curve]
        fig, ax = plt.subplots(figsize=(5, 4.2), dpi=100)
        for scorer, df in by.items():
            ax.plot(df[x], df[yname], label=scorer, marker="o" if curve == "calibration" else None, ms=3)
        if curve in ("roc", "calibration", "gains"):
            ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set_xlabel(x)
        ax.set_ylabel(yname)
        ax.set_title(f"{curve} (test window)")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        with atomic_path(folder / f"{curve}.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(folder / f"{curve}.png")
    return paths
