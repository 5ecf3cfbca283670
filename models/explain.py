"""Reason codes: exact TreeSHAP contributions of the served model, grouped into reasons, top-k per line.

Why this shape: reviewers and checkout services need *why* a line is risky, in words, for every scored
line, so the whole path is vectorised over lines (no Python loop per line).

Rules (each is tested):

* **Contributions** are exact TreeSHAP values of the model actually served, in log-odds with the base
  value last: LightGBM `pred_contrib` (`model.contributions`), or the same values from per-leaf tables
  (`models.treeshap`, several times faster on shallow trees; `explain.treeshap` in params picks).
  Per line `base + sum(contributions) == predict_raw` (additivity).
* **Grouping**: every feature belongs to exactly one reason (`models.reasons.reason_of`), so a 0/1 matrix
  ``G`` (features x reasons) turns contributions into reason contributions with one matrix product
  ``C @ G``; grouped sums therefore equal ungrouped sums (the size family is one reason, not five).
* **Only contributions toward a return** (positive log-odds) become reasons. A line whose reasons are all
  <= 0 gets ``reason_1 = models.reasons.NO_REASON`` and null ``reason_2..k``; a line with fewer than k
  positive reasons gets nulls for the rest.
* **Probability scale** (``reason_i_pp``, percentage points): proportional allocation. The line's
  calibrated probability minus the calibrated probability at the base value, ``p - p_base``, is shared
  among reasons in proportion to their log-odds contributions:
  ``pp_g = 100 * c_g * (p - p_base) / (raw - base)``. The points of all reasons of a line therefore sum
  exactly to ``100 * (p - p_base)``. When ``|raw - base| < 1e-9`` the ratio is the local slope of the
  logistic curve, ``s(raw) * (1 - s(raw))``. Because calibration is monotone, the ratio is never negative:
  a reason that raises the log-odds never shows as lowering the probability.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from models import reasons as R

DEFAULT_BATCH = 100_000


class Explainable(Protocol):
    """What explanations need from the served model (models.artifact.ReturnModel satisfies it)."""

    features: list[str]

    def contributions(self, df: pd.DataFrame) -> np.ndarray: ...  # n x (f + 1), base last

    def predict_raw(self, df: pd.DataFrame) -> np.ndarray: ...

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray: ...


def feature_list(model: Explainable) -> list[str]:
    """The model's feature names in column order of its contributions."""
    for attr in ("features", "feature_names"):
        names = getattr(model, attr, None)
        if names is not None:
            return list(names)
    raise AttributeError(f"{type(model).__name__} exposes neither .features nor .feature_names")


TREESHAP_METHODS = ("auto", "lightgbm", "tables")
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tables_for(booster: Any):
    """Per-leaf TreeSHAP tables of a booster (built once, cached while the booster lives); None if too deep."""
    from models import treeshap

    if booster not in _TABLES:
        _TABLES[booster] = (treeshap.build_tables(booster),)
    return _TABLES[booster][0]


def compute_contributions(
    model: Explainable,
    df: pd.DataFrame,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    num_threads: int | None = None,
    method: str = "auto",
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Exact TreeSHAP contributions over `df` in batches (bounded memory); n x (f + 1), base value last.

    `matrix`: `df` already encoded by the model (`model.encode(df)`, rows aligned), to skip encoding again.

    method "lightgbm": `model.contributions` (LightGBM pred_contrib; with `num_threads` and a model that
    exposes `booster` + `encode`, called with that thread count, 0 = all cores).
    method "tables": models.treeshap's per-leaf tables (same values to ~1e-14, several times faster on
    shallow trees); "auto" uses the tables when the model can be tabulated, else LightGBM.
    """
    if method not in TREESHAP_METHODS:
        raise ValueError(f"treeshap method {method!r} is not one of {TREESHAP_METHODS}")
    n = len(df)
    if n == 0:
        return np.zeros((0, len(feature_list(model)) + 1))
    booster, encode = getattr(model, "booster", None), getattr(model, "encode", None)
    tables = None
    if method != "lightgbm" and booster is not None and callable(encode):
        tables = _tables_for(booster)
    if method == "tables" and tables is None:
        raise ValueError(
            "treeshap method 'tables': model cannot be tabulated (no booster, or paths too deep)"
        )
    fast = num_threads is not None and booster is not None and callable(encode)
    if tables is not None:
        import numba

        numba.set_num_threads(num_threads if num_threads else numba.config.NUMBA_NUM_THREADS)
    parts = []
    if matrix is not None and len(matrix) != n:
        raise ValueError(f"matrix has {len(matrix)} rows for {n} lines")

    def encoded(start: int, chunk: pd.DataFrame) -> np.ndarray:
        return encode(chunk) if matrix is None else matrix[start : start + len(chunk)]

    for start in range(0, n, batch_size):
        chunk = df.iloc[start : start + batch_size]
        if tables is not None:
            from models import treeshap

            part = treeshap.contributions(tables, encoded(start, chunk))
        elif fast:  # the same booster call as ReturnModel.contributions, with an explicit thread count
            part = booster.predict(encoded(start, chunk), pred_contrib=True, num_threads=num_threads)
        else:
            part = model.contributions(chunk)
        part = np.asarray(part, dtype=np.float64)
        parts.append(part)
        if progress is not None:
            progress(len(part))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def group_matrix(
    features: Sequence[str], reason_of: Callable[[str], str] | None = None
) -> tuple[list[str], np.ndarray]:
    """(reason codes, G) with G[i, j] = 1 when feature i belongs to reason j; each row has one 1."""
    reason_of = reason_of or R.reason_of
    codes: list[str] = []
    index: dict[str, int] = {}
    for f in features:
        code = reason_of(f)
        if code not in index:
            index[code] = len(codes)
            codes.append(code)
    g = np.zeros((len(features), len(codes)))
    for i, f in enumerate(features):
        g[i, index[reason_of(f)]] = 1.0
    return codes, g


def group_contributions(contrib: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Reason contributions (n x reasons) from feature contributions (n x f, or n x (f+1) with base last)."""
    f = g.shape[0]
    if contrib.shape[1] not in (f, f + 1):
        raise ValueError(f"contributions have {contrib.shape[1]} columns; expected {f} features (+1 base)")
    return contrib[:, :f] @ g


def top_k(grouped: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each line's k largest *positive* reason contributions, largest first.

    Slots without a positive reason get index -1 and value NaN. Ties break by reason order (stable).
    k passes of argmax (the first maximum: the stable order) instead of sorting every reason of every line.
    """
    n, m = grouped.shape
    kk = min(k, m)
    work = np.array(grouped, dtype=np.float64, copy=True)
    rows = np.arange(n)
    idx = np.full((n, k), -1, dtype=np.int64)
    vals = np.full((n, k), np.nan)
    for j in range(kk):
        best = np.argmax(work, axis=1)
        v = work[rows, best]
        pos = v > 0
        idx[:, j] = np.where(pos, best, -1)
        vals[:, j] = np.where(pos, v, np.nan)
        work[rows, best] = -np.inf
    return idx, vals


def logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


SLOPE_STEP = 1e-4


def probability_points(
    values: np.ndarray,
    raw: np.ndarray,
    base: np.ndarray,
    to_p: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Log-odds reason contributions -> percentage points by proportional allocation (module docstring).

    `to_p` is the served raw -> calibrated probability map (default: logistic). Where raw == base the
    ratio is its local slope (central difference), so a line at the base value still gets sensible points.
    """
    to_p = to_p or logistic
    raw = np.asarray(raw, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    d = raw - base
    safe = np.abs(d) >= 1e-9
    dp = np.asarray(to_p(raw), dtype=np.float64) - np.asarray(to_p(base), dtype=np.float64)
    slope = (to_p(raw + SLOPE_STEP) - to_p(raw - SLOPE_STEP)) / (2 * SLOPE_STEP)
    ratio = np.where(safe, dp / np.where(safe, d, 1.0), slope)
    ratio = np.maximum(ratio, 0.0)
    return 100.0 * values * ratio[:, None]


def _raw_to_proba(model: Explainable) -> Callable[[np.ndarray], np.ndarray]:
    """The served raw-score -> calibrated-probability map (ReturnModel.calibrator); logistic if none."""
    calibrator = getattr(model, "calibrator", None)
    fn = getattr(calibrator, "apply", None)
    return fn if callable(fn) else logistic


def explain_lines(
    model: Explainable,
    features: pd.DataFrame,
    k: int = 3,
    *,
    batch_size: int = DEFAULT_BATCH,
    num_threads: int | None = None,
    id_column: str = "line_id",
    progress: Callable[[int], None] | None = None,
    reason_of: Callable[[str], str] | None = None,
    method: str = "auto",
    timings: dict[str, float] | None = None,
    matrix: np.ndarray | None = None,
) -> pd.DataFrame:
    """Top-k reasons toward a return for every line, as sentences with their contributions.

    Returns line_id, return_probability, raw_score, base_value, reason_i (sentence), reason_i_code
    (reason id), reason_i_contrib (log-odds) and reason_i_pp (percentage points) for i = 1..k.
    `timings`, when given, accumulates seconds spent in "contributions_s", "top_k_s" and "render_s".
    `matrix`: the frame's rows already encoded by the model (the scorer's), used instead of encoding again.
    """
    names = feature_list(model)
    missing = [c for c in names if c not in features.columns]
    if missing:
        raise KeyError(f"explain_lines: feature columns missing from the input frame: {missing}")
    codes, g = group_matrix(names, reason_of or R.reason_of)
    to_p = _raw_to_proba(model)
    parts = []
    for s in range(0, len(features), batch_size):
        chunk = features.iloc[s : s + batch_size]
        sub = None if matrix is None else matrix[s : s + batch_size]
        parts.append(
            _explain_batch(
                model, chunk, names, codes, g, k, to_p, num_threads, id_column, method, timings, sub
            )
        )
        if progress is not None:
            progress(len(chunk))
    if not parts:
        return _explain_batch(
            model, features.iloc[:0], names, codes, g, k, to_p, num_threads, id_column, method
        )
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _explain_batch(
    model, frame, names, codes, g, k, to_p, num_threads, id_column, method, timings=None, matrix=None
) -> pd.DataFrame:
    """One batch: contributions -> reasons -> top-k -> points -> sentences (bounded memory per batch)."""
    clock = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    n = len(frame)
    out: dict[str, object] = {id_column: frame[id_column].to_numpy() if id_column in frame else np.arange(n)}
    contrib = compute_contributions(
        model, frame, batch_size=max(n, 1), num_threads=num_threads, method=method, matrix=matrix
    )
    tick("contributions_s")
    base = contrib[:, -1]
    raw = contrib.sum(axis=1)  # additivity: equals predict_raw (tested)
    grouped = group_contributions(contrib, g)
    idx, vals = top_k(grouped, k)
    pp = probability_points(np.nan_to_num(vals), raw, base, to_p)
    out["return_probability"] = np.asarray(to_p(raw), dtype=np.float64)
    out["raw_score"] = raw
    out["base_value"] = base
    tick("top_k_s")
    sentences = R.render_reasons(idx, codes, frame.reset_index(drop=True), contrib=contrib, features=names)
    tick("render_s")
    code_arr = np.array([*codes, None], dtype=object)
    for j in range(k):
        out[f"reason_{j + 1}"] = sentences[j]
        out[f"reason_{j + 1}_code"] = code_arr[idx[:, j]]  # -1 -> None
        out[f"reason_{j + 1}_contrib"] = vals[:, j]
        out[f"reason_{j + 1}_pp"] = np.where(idx[:, j] >= 0, pp[:, j], np.nan)
    return pd.DataFrame(out)


def global_importance(
    contrib: np.ndarray, features: Sequence[str], family_of: dict[str, str]
) -> pd.DataFrame:
    """Mean |SHAP| (log-odds) per feature, with its family and share of the total, largest first."""
    mean_abs = np.abs(contrib[:, : len(features)]).mean(axis=0)
    mean = contrib[:, : len(features)].mean(axis=0)
    total = mean_abs.sum() or 1.0
    df = pd.DataFrame(
        {
            "feature": list(features),
            "family": [family_of.get(f, "other") for f in features],
            "mean_abs_shap": mean_abs,
            "mean_shap": mean,
            "share": mean_abs / total,
        }
    )
    return df.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)


def family_importance(
    contrib: np.ndarray, features: Sequence[str], family_of: dict[str, str]
) -> pd.DataFrame:
    """Global importance by feature family: mean |sum of the family's SHAP values| per line.

    Summing within the family first (then |.|) measures the family as one reason, as reason codes do;
    the sum of member features' mean |SHAP| is given beside it.
    """
    fams = [family_of.get(f, "other") for f in features]
    codes, g = group_matrix(list(features), reason_of=dict(zip(features, fams, strict=True)).__getitem__)
    grouped = group_contributions(contrib, g)
    per_feature = np.abs(contrib[:, : len(features)]).mean(axis=0) @ g
    mean_abs = np.abs(grouped).mean(axis=0)
    total = mean_abs.sum() or 1.0
    df = pd.DataFrame(
        {
            "family": codes,
            "n_features": g.sum(axis=0).astype(int),
            "mean_abs_shap": mean_abs,
            "share": mean_abs / total,
            "sum_feature_mean_abs_shap": per_feature,
            "top_reason_share": np.bincount(np.argmax(grouped, axis=1), minlength=len(codes))
            / max(len(grouped), 1),
        }
    )
    return df.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
