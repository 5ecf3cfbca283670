"""Probability calibration on the validation window, the calibrator chosen by cross-fitted measurement.

Every calibrator maps the booster's raw log-odds to a probability and is stored as plain JSON, so a
saved model never needs a pickle:
- platt: p = sigmoid(a * raw + b) (two parameters);
- beta (Kull et al. 2017, three parameters): p = sigmoid(a ln s - b ln(1 - s) + c) with s = sigmoid(raw),
  a, b >= 0: bends the two tails separately, which Platt cannot, and stays smooth and monotone;
- isotonic: a monotone step map, stored as its knots;
- blend: the mean of the Platt and isotonic probabilities (the smooth map steadies isotonic's steps);
- identity: p = sigmoid(raw), an uncalibrated model.
Fits accept line weights (e.g. recency weights: `recency_weights`), so the later validation days can
count more when the data drifts. Any map may carry a log-odds `shift` (calibration-in-the-large): the
validation window's base rate shrunk toward the long-run rate (`shift_toward_rate`), because one short
window's rate is a noisy guess of the next window's. `backtest` scores such choices on rolling origins
before the test window (benchmarks/calibration_backtest.py builds the folds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

EPS = 1e-6
METHODS = ("platt", "beta", "isotonic", "blend")
SELECT = ("logloss", "logloss+ece")
# params.yaml evaluate.ece_bins reaches fit_from_config as train.calibration_ece_bins (the train command sets it)
DEFAULT_ECE_BINS = 15


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # no overflow warning for large |z|

    return expit(z)


def _beta_features(raw: np.ndarray) -> np.ndarray:
    """(ln s, -ln(1 - s)) for s = sigmoid(raw), computed without overflow: -softplus(-raw), softplus(raw)."""
    return np.column_stack([-np.logaddexp(0.0, -raw), np.logaddexp(0.0, raw)])


@dataclass(frozen=True)
class Calibrator:
    """A fitted map raw log-odds -> calibrated probability.

    method "platt": p = sigmoid(a * raw + b).
    method "beta": p = sigmoid(a * ln s - b * ln(1 - s) + c), s = sigmoid(raw) (a = b = 1, c = 0 is identity).
    method "isotonic": piecewise-linear interpolation through (x, y), clipped at both ends
    (exactly what scikit-learn's IsotonicRegression(out_of_bounds="clip") predicts).
    method "blend": weight * parts[0] + (1 - weight) * parts[1] (Platt and isotonic).
    method "identity": p = sigmoid(raw) (an uncalibrated model).
    shift (any method): p' = sigmoid(logit(p) + shift), a base-rate correction after the map (0 = none).
    """

    method: str
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    c: float = 0.0
    weight: float = 0.5
    parts: tuple[Calibrator, ...] = ()
    shift: float = 0.0

    def _apply(self, raw: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return _sigmoid(self.a * raw + self.b)
        if self.method == "beta":
            f = _beta_features(raw)
            return _sigmoid(self.a * f[:, 0] + self.b * f[:, 1] + self.c)
        if self.method == "isotonic":
            return np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        if self.method == "blend":
            first, second = self.parts
            return self.weight * first._apply(raw) + (1.0 - self.weight) * second._apply(raw)
        if self.method == "identity":
            return _sigmoid(raw)
        raise ValueError(f"unknown calibration method {self.method!r}")  # pragma: no cover - from_json guards

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        # Keep probabilities strictly inside (0, 1): a calibrated 0 or 1 makes log loss infinite.
        p = np.clip(self._apply(raw), EPS, 1.0 - EPS)
        if self.shift != 0.0:
            p = np.clip(_sigmoid(np.log(p) - np.log1p(-p) + self.shift), EPS, 1.0 - EPS)
        return p

    def with_shift(self, shift: float) -> Calibrator:
        """The same map with a log-odds shift (replacing any earlier one)."""
        return replace(self, shift=float(shift))

    def to_json(self) -> dict[str, Any]:
        out = self._map_json()
        if self.shift != 0.0:  # absent when 0: models saved before the shift existed read back unchanged
            out["shift"] = self.shift
        return out

    def _map_json(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        if self.method == "beta":
            return {"method": "beta", "a": self.a, "b": self.b, "c": self.c}
        if self.method == "blend":
            return {"method": "blend", "weight": self.weight, "parts": [p.to_json() for p in self.parts]}
        return {"method": self.method}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Calibrator:
        shift = float(obj.get("shift", 0.0))
        if not np.isfinite(shift):
            raise ValueError(f"calibration shift must be a finite number; got {obj.get('shift')!r}")
        cal = cls._map_from_json(obj)
        return cal if shift == 0.0 else cal.with_shift(shift)

    @classmethod
    def _map_from_json(cls, obj: Mapping[str, Any]) -> Calibrator:
        method = obj.get("method")
        if method == "isotonic":
            x, y = tuple(float(v) for v in obj["x"]), tuple(float(v) for v in obj["y"])
            if len(x) != len(y) or len(x) < 1:
                raise ValueError("isotonic calibration needs equally long, non-empty x and y arrays")
            return cls("isotonic", x=x, y=y)
        if method == "platt":
            return cls("platt", a=float(obj["a"]), b=float(obj["b"]))
        if method == "beta":
            return cls("beta", a=float(obj["a"]), b=float(obj["b"]), c=float(obj["c"]))
        if method == "blend":
            parts = tuple(cls.from_json(p) for p in obj["parts"])
            weight = float(obj["weight"])
            if len(parts) != 2 or not 0.0 <= weight <= 1.0:
                raise ValueError("blend calibration needs two parts and a weight in [0, 1]")
            return cls("blend", weight=weight, parts=parts)
        if method == "identity":
            return cls("identity")
        raise ValueError(f"calibration method {method!r} is not one of {(*METHODS, 'identity')}")


# ---------------------------------------------------------------- fitting
def _prepare(raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None):
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if raw.shape != y.shape or (w is not None and w.shape != raw.shape):
        raise ValueError(f"calibration: raw {raw.shape}, labels {y.shape} and weights must be equally long")
    return raw, y, w


def _logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Nearly unregularised logistic regression: (coefficients, intercept)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(X, y.astype(np.int64), sample_weight=w)
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def fit_platt(raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """Platt scaling: a logistic regression of the label on the raw log-odds (nearly unregularised)."""
    raw, y, w = _prepare(raw, y, weights)
    coef, intercept = _logistic(raw.reshape(-1, 1), y, w)
    return Calibrator("platt", a=float(coef[0]), b=intercept)


def fit_beta(raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """Beta calibration: logistic regression on (ln s, -ln(1 - s)); a negative slope is dropped and refitted.

    a, b >= 0 keeps the map monotone (Kull, Silva Filho, Flach 2017).
    """
    raw, y, w = _prepare(raw, y, weights)
    f = _beta_features(raw)
    coef, c = _logistic(f, y, w)
    a, b = float(coef[0]), float(coef[1])
    if a < 0 or b < 0:
        keep = 1 if a < b else 0  # the larger slope stays; the negative one is fixed at 0
        only, c = _logistic(f[:, [keep]], y, w)
        a, b = (0.0, max(float(only[0]), 0.0)) if keep == 1 else (max(float(only[0]), 0.0), 0.0)
    return Calibrator("beta", a=a, b=b, c=c)


def fit_isotonic(raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """Isotonic regression of the label on the raw log-odds, stored as its knots."""
    from sklearn.isotonic import IsotonicRegression

    raw, y, w = _prepare(raw, y, weights)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(raw, y, sample_weight=w)
    return Calibrator(
        "isotonic",
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
    )


def fit_blend(raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """Equal-weight mean of the Platt and isotonic maps fitted on the same lines."""
    return Calibrator("blend", weight=0.5, parts=(fit_platt(raw, y, weights), fit_isotonic(raw, y, weights)))


FITTERS = {"platt": fit_platt, "beta": fit_beta, "isotonic": fit_isotonic, "blend": fit_blend}


def fit_calibrator(
    method: str, raw: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
) -> Calibrator:
    if method not in FITTERS:
        raise ValueError(f"calibration method {method!r} is not one of {METHODS}")
    return FITTERS[method](raw, y, weights)


def recency_weights(ts: Any, half_life_days: float | None) -> np.ndarray | None:
    """Line weights halving every `half_life_days` before the latest timestamp (None: equal weights)."""
    if half_life_days is None:
        return None
    if half_life_days <= 0:
        raise ValueError(f"calibration half-life must be > 0 days; got {half_life_days}")
    if ts is None:
        raise ValueError("recency-weighted calibration needs the lines' order_ts; none was given")
    t = np.asarray(ts, dtype="datetime64[ns]").astype(np.int64) / 86_400e9
    return 0.5 ** ((t.max() - t) / float(half_life_days))


# ---------------------------------------------------------------- measured choice
def _log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(np.average(-(y * np.log(p) + (1 - y) * np.log(1 - p)), weights=w))


def _ece(y: np.ndarray, p: np.ndarray, bins: int, w: np.ndarray | None = None) -> float:
    """Equal-width-bin ECE (the definition of models.evaluation.expected_calibration_error), weighted."""
    from models.evaluation import expected_calibration_error

    return expected_calibration_error(y, p, bins=bins, weights=w)


def compare_methods(
    raw: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
    weights: np.ndarray | None = None,
    ece_bins: int = DEFAULT_ECE_BINS,
) -> dict[str, float]:
    """Cross-fitted log loss and ECE of each method on the validation window (lower is better).

    Each fold's calibrator is fitted on the other folds and scored on the held-out one, so
    isotonic's extra flexibility is not rewarded for memorising the validation labels. Keys: the
    method (log loss, as before) and "<method>.ece".
    """
    raw, y, w = _prepare(raw, y, weights)
    if len(raw) < 2 * folds or y.min() == y.max():
        raise ValueError(
            f"calibration needs both classes and at least {2 * folds} validation lines; got {len(raw)}"
        )
    order = np.random.default_rng(seed).permutation(len(raw))
    fold_of = np.empty(len(raw), dtype=np.int64)
    fold_of[order] = np.arange(len(raw)) % folds
    out: dict[str, float] = {}
    for method in methods:
        pred = np.empty(len(raw))
        for k in range(folds):
            fit_mask = fold_of != k
            cal = fit_calibrator(method, raw[fit_mask], y[fit_mask], None if w is None else w[fit_mask])
            pred[~fit_mask] = cal.apply(raw[~fit_mask])
        out[method] = _log_loss(y, pred, w)
        out[f"{method}.ece"] = _ece(y, pred, ece_bins, w)
    return out


def select_method(scores: Mapping[str, float], methods: Sequence[str], select: str = "logloss") -> str:
    """The method with the lowest criterion; ties go to the earlier (simpler) method of `methods`.

    "logloss": cross-fitted log loss. "logloss+ece": cross-fitted log loss + ECE (both per line, both
    lower-is-better; ECE adds the calibration error that log loss dilutes among the well-ranked lines).
    """
    if select not in SELECT:
        raise ValueError(f"calibration selection {select!r} is not one of {SELECT}")

    def crit(m: str) -> float:
        return scores[m] + (scores[f"{m}.ece"] if select == "logloss+ece" else 0.0)

    return min(methods, key=lambda m: (crit(m), list(methods).index(m)))


def choose_and_fit(
    raw: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "auto",
    folds: int = 5,
    seed: int = 0,
    candidates: Sequence[str] = ("platt", "isotonic"),
    select: str = "logloss",
    weights: np.ndarray | None = None,
    ece_bins: int = DEFAULT_ECE_BINS,
) -> tuple[Calibrator, dict[str, float]]:
    """Fit the calibrator on the whole validation window; "auto" picks among `candidates` by measurement.

    Returns the calibrator and the cross-fitted scores per candidate (empty unless "auto"); see
    `compare_methods` and `select_method`. Ties go to the earlier candidate (list the simpler first).
    """
    scores: dict[str, float] = {}
    if method == "auto":
        unknown = [m for m in candidates if m not in METHODS]
        if unknown or not candidates:
            raise ValueError(f"calibration candidates {list(candidates)} must be among {METHODS}")
        scores = compare_methods(
            raw, y, folds=folds, seed=seed, methods=candidates, weights=weights, ece_bins=ece_bins
        )
        method = select_method(scores, candidates, select)
    return fit_calibrator(method, raw, y, weights), scores


def _logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return float(np.log(p) - np.log1p(-p))


def shift_toward_rate(
    calibrator: Calibrator,
    raw: np.ndarray,
    y: np.ndarray,
    long_run_rate: float,
    shrinkage: float,
    weights: np.ndarray | None = None,
) -> Calibrator:
    """Shrink the calibration window's base rate toward the long-run rate, in log-odds.

    Target rate = sigmoid((1 - shrinkage) * logit(window rate) + shrinkage * logit(long-run rate)); the
    returned map is `calibrator` plus the log-odds shift that makes its mean prediction on the window's
    lines equal that target. 0 keeps the window's intercept (what the map learned); 1 moves it all the way
    to the long-run rate. The window's rate is one short sample of a rate that moves from window to
    window (season, noise); when those moves do not persist, the next window is closer to the long-run
    rate. How much to shrink is chosen by `backtest`, on data before the test window.
    """
    from scipy.optimize import brentq

    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"train.calibration_rate_shrinkage must be in [0, 1]; got {shrinkage}")
    if shrinkage == 0.0:
        return calibrator
    if not 0.0 < long_run_rate < 1.0:
        raise ValueError(f"the long-run return rate must be in (0, 1); got {long_run_rate}")
    raw, y, w = _prepare(raw, y, weights)
    window_rate = float(np.average(y, weights=w))
    target = float(
        _sigmoid(np.asarray((1 - shrinkage) * _logit(window_rate) + shrinkage * _logit(long_run_rate)))
    )
    p = calibrator.with_shift(0.0).apply(raw)
    z = np.log(p) - np.log1p(-p)
    shift = brentq(lambda d: float(np.average(_sigmoid(z + d), weights=w)) - target, -30.0, 30.0, xtol=1e-10)
    return calibrator.with_shift(shift)


def fit_from_config(
    raw: np.ndarray,
    y: np.ndarray,
    ts: Any,
    cfg: Mapping[str, Any],
    seed: int,
    *,
    long_run_rate: float | None = None,
) -> tuple[Calibrator, dict[str, float | str]]:
    """The training code's calibration step, from params.yaml `train:` keys (calibration*).

    One place for the model, the customer-blind model and the logistic baseline, so every scorer is
    calibrated by the same rule on the same validation lines. Returns the calibrator and info for the
    run summary: the method and the cross-fitted log loss / ECE of each candidate.
    The ECE in the selection uses `calibration_ece_bins` bins: the train command sets it from
    params.yaml `evaluate.ece_bins`, so the calibrator is chosen by the ECE the evaluate stage reports.
    `calibration_rate_shrinkage` > 0 shifts the fitted map toward `long_run_rate` (the return rate of
    all mature history before the test window: the training code passes it), see `shift_toward_rate`.
    """
    half_life = cfg.get("calibration_half_life_days")
    shrinkage = cfg.get("calibration_rate_shrinkage", 0.0)
    shrinkage = 0.0 if shrinkage is None else shrinkage
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1:
        raise ValueError(f"train.calibration_rate_shrinkage must be a number in [0, 1]; got {shrinkage!r}")
    if shrinkage > 0 and long_run_rate is None:
        raise ValueError(
            "train.calibration_rate_shrinkage > 0 needs the long-run return rate; none was given"
        )
    ece_bins = cfg.get("calibration_ece_bins", DEFAULT_ECE_BINS)
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, int) or ece_bins < 1:
        raise ValueError(f"train.calibration_ece_bins must be an integer >= 1; got {ece_bins!r}")
    weights = recency_weights(ts, None if half_life is None else float(half_life))
    calibrator, scores = choose_and_fit(
        raw,
        y,
        method=str(cfg.get("calibration", "auto")),
        folds=int(cfg.get("calibration_folds", 5)),
        seed=seed,
        candidates=tuple(cfg.get("calibration_candidates", ("platt", "isotonic"))),
        select=str(cfg.get("calibration_select", "logloss")),
        weights=weights,
        ece_bins=ece_bins,
    )
    info: dict[str, float | str] = {"calibration": calibrator.method}
    if shrinkage > 0:
        calibrator = shift_toward_rate(calibrator, raw, y, float(long_run_rate), float(shrinkage), weights)
        info["calibration_shift"] = calibrator.shift
        info["calibration_window_rate"] = float(np.average(np.asarray(y, dtype=np.float64), weights=weights))
        info["calibration_long_run_rate"] = float(long_run_rate)
    for k, v in scores.items():
        method, _, metric = k.partition(".")
        info[f"calibration_cv_{metric or 'logloss'}_{method}"] = v
    return calibrator, info


# ---------------------------------------------------------------- rolling-origin backtest
def backtest_splits(
    order_ts: Any,
    mature: Any,
    cfg: Mapping[str, Any],
    folds: int,
    step_days: int,
    min_train_days: int,
) -> list[tuple[str, Any]]:
    """(name, split Series) per origin, newest first: the window after the calibration window ("test")
    ends `step_days` before the previous origin's, the newest at the real test window's start, so no
    origin reads the test window. Window lengths from `cfg["split"]` (train.split); an origin needs
    `min_train_days` of history before its calibration window ("val")."""
    import pandas as pd

    from models.train import SplitConfig, window_bounds

    split_cfg = SplitConfig.from_params(cfg.get("split", {}))
    mature = mature.fillna(False).astype(bool)
    b = window_bounds(order_ts, mature, split_cfg)
    ts = pd.to_datetime(order_ts)
    first = ts.min().normalize()
    out = []
    for k in range(folds):
        next_end = b["test_start"] - pd.Timedelta(days=k * step_days)
        next_start = next_end - pd.Timedelta(days=split_cfg.test_days)
        cal_start = next_start - pd.Timedelta(days=split_cfg.val_days)
        if (cal_start - first).days < min_train_days:
            break
        train_start = (
            first if split_cfg.train_days is None else cal_start - pd.Timedelta(days=split_cfg.train_days)
        )
        s = pd.Series("", index=order_ts.index, dtype=object)
        s[mature & (ts >= train_start) & (ts < cal_start)] = "train"
        s[mature & (ts >= cal_start) & (ts < next_start)] = "val"
        s[mature & (ts >= next_start) & (ts < next_end)] = "test"
        out.append((f"next{next_start.date()}", s))
    if not out:
        raise ValueError(f"no backtest fold has {min_train_days} training days before its calibration window")
    return out


@dataclass(frozen=True)
class BacktestFold:
    """One origin: the booster's raw scores on its calibration window and on the window after it.

    `long_run_rate` is the return rate of all mature lines before the next window (what training at
    that origin would know). Built from data before the test window only (benchmarks/calibration_backtest.py).
    """

    name: str
    raw_cal: np.ndarray
    y_cal: np.ndarray
    raw_next: np.ndarray
    y_next: np.ndarray
    long_run_rate: float
    ts_cal: Any = None


def backtest(
    folds: Sequence[BacktestFold],
    configs: Mapping[str, Mapping[str, Any]],
    base_cfg: Mapping[str, Any],
    seed: int,
) -> list[dict[str, Any]]:
    """Score each calibration config on each fold's next window (fit on calibration, score on next).

    A config is a set of `train.calibration*` overrides of `base_cfg`, fitted through `fit_from_config`
    exactly as training fits it. Rows: config, fold, log_loss, ece, mean prediction and observed rate.
    """
    if not folds or not configs:
        raise ValueError("backtest needs at least one fold and one config")
    bins = int(base_cfg.get("calibration_ece_bins", DEFAULT_ECE_BINS))
    rows: list[dict[str, Any]] = []
    for label, overrides in configs.items():
        cfg = {**base_cfg, **overrides}
        for f in folds:
            cal, _ = fit_from_config(f.raw_cal, f.y_cal, f.ts_cal, cfg, seed, long_run_rate=f.long_run_rate)
            p = cal.apply(f.raw_next)
            y = np.asarray(f.y_next, dtype=np.float64)
            rows.append(
                {
                    "config": label,
                    "fold": f.name,
                    "log_loss": _log_loss(y, p),
                    "ece": _ece(y, p, bins),
                    "mean_pred": float(p.mean()),
                    "rate": float(y.mean()),
                    "method": cal.method,
                    "shift": cal.shift,
                }
            )
    return rows


def backtest_choice(
    rows: Sequence[Mapping[str, Any]], select: str = "logloss+ece"
) -> tuple[str, dict[str, float]]:
    """The config with the lowest mean criterion over folds (ties: the first listed), and every mean.

    Same criteria as `select_method`: "logloss" or "logloss+ece" (both per line, lower is better).
    """
    if select not in SELECT:
        raise ValueError(f"backtest selection {select!r} is not one of {SELECT}")
    order: list[str] = []
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r["config"] not in sums:
            order.append(r["config"])
            sums[r["config"]] = []
        sums[r["config"]].append(r["log_loss"] + (r["ece"] if select == "logloss+ece" else 0.0))
    means = {c: float(np.mean(v)) for c, v in sums.items()}
    best = min(order, key=lambda c: (means[c], order.index(c)))
    return best, means
