"""Probability calibration on the validation window: isotonic or Platt, chosen by measurement.

Both calibrators map the booster's raw log-odds to a probability and are stored as plain JSON
(isotonic: its threshold arrays; Platt: the pair (a, b)), so a saved model never needs a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-6
METHODS = ("isotonic", "platt")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Calibrator:
    """A fitted map raw log-odds -> calibrated probability.

    method "platt": p = sigmoid(a * raw + b).
    method "isotonic": piecewise-linear interpolation through (x, y), clipped at both ends
    (exactly what scikit-learn's IsotonicRegression(out_of_bounds="clip") predicts).
    method "identity": p = sigmoid(raw) (an uncalibrated model).
    """

    method: str
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "platt":
            p = _sigmoid(self.a * raw + self.b)
        elif self.method == "isotonic":
            p = np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        elif self.method == "identity":
            p = _sigmoid(raw)
        else:  # pragma: no cover - guarded by from_json
            raise ValueError(f"unknown calibration method {self.method!r}")
        # Keep probabilities strictly inside (0, 1): a calibrated 0 or 1 makes log loss infinite.
        return np.clip(p, EPS, 1.0 - EPS)

    def to_json(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        return {"method": self.method}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibrator:
        method = obj.get("method")
        if method == "isotonic":
            x, y = tuple(float(v) for v in obj["x"]), tuple(float(v) for v in obj["y"])
            if len(x) != len(y) or len(x) < 1:
                raise ValueError("isotonic calibration needs equally long, non-empty x and y arrays")
            return cls("isotonic", x=x, y=y)
        if method == "platt":
            return cls("platt", a=float(obj["a"]), b=float(obj["b"]))
        if method == "identity":
            return cls("identity")
        raise ValueError(f"calibration method {method!r} is not one of {(*METHODS, 'identity')}")


def fit_platt(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    """Platt scaling: a logistic regression of the label on the raw log-odds (nearly unregularised)."""
    from sklearn.linear_model import LogisticRegression

    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 1)
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(raw, np.asarray(y, dtype=np.int64))
    return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def fit_isotonic(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    """Isotonic regression of the label on the raw log-odds, stored as its knots."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(np.asarray(raw, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return Calibrator(
        "isotonic",
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
    )


def fit_calibrator(method: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "platt":
        return fit_platt(raw, y)
    if method == "isotonic":
        return fit_isotonic(raw, y)
    raise ValueError(f"calibration method {method!r} is not one of {METHODS}")


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def compare_methods(raw: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Cross-fitted log loss of each method on the validation window (lower is better).

    Each fold's calibrator is fitted on the other folds and scored on the held-out one, so
    isotonic's extra flexibility is not rewarded for memorising the validation labels.
    """
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(raw) < 2 * folds or y.min() == y.max():
        raise ValueError(
            f"calibration needs both classes and at least {2 * folds} validation lines; got {len(raw)}"
        )
    order = np.random.default_rng(seed).permutation(len(raw))
    fold_of = np.empty(len(raw), dtype=np.int64)
    fold_of[order] = np.arange(len(raw)) % folds
    out: dict[str, float] = {}
    for method in METHODS:
        pred = np.empty(len(raw))
        for k in range(folds):
            fit_mask = fold_of != k
            cal = fit_calibrator(method, raw[fit_mask], y[fit_mask])
            pred[~fit_mask] = cal.apply(raw[~fit_mask])
        out[method] = _log_loss(y, pred)
    return out


def choose_and_fit(
    raw: np.ndarray, y: np.ndarray, *, method: str = "auto", folds: int = 5, seed: int = 0
) -> tuple[Calibrator, dict[str, float]]:
    """Fit the calibrator on the whole validation window; "auto" picks the lower cross-fitted log loss.

    Returns the calibrator and the measured cross-fitted log loss per method (empty unless "auto").
    Ties go to Platt, the simpler map.
    """
    scores: dict[str, float] = {}
    if method == "auto":
        scores = compare_methods(raw, y, folds=folds, seed=seed)
        method = "isotonic" if scores["isotonic"] < scores["platt"] else "platt"
    return fit_calibrator(method, raw, y), scores
