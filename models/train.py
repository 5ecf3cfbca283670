"""Out-of-time training: split by order time, LightGBM with early stopping, calibration, baselines.

Pure logic over a feature frame (one row per order line, see docs/architecture.md "Feature table");
the `train` command does the reading and writing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.artifact import ReturnModel, encode_frame, learn_levels
from models.calibration import fit_from_config
from models.evaluation import CostModel, binary_metrics, choose_threshold

# OpenMP threads that spin while waiting are ruinous on a shared, oversubscribed 2-core machine
# (measured: 192 boosting rounds took 414 s spinning vs 23 s passive under load ~12). Only effective
# before LightGBM's OpenMP runtime loads; set OMP_WAIT_POLICY=ACTIVE yourself on a dedicated machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

KEY_COLUMNS = ("line_id", "order_id", "customer_id", "product_id", "order_ts")
LABEL, MATURE, TS = "returned", "label_mature", "order_ts"
SPLITS = ("train", "val", "test")
PROTECTED = ("gender", "age", "title")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    categorical: bool
    uses_customer_history: bool


def specs_from_registry(frame: pd.DataFrame | None = None) -> list[FeatureSpec]:
    """The model's features, in registry order, from `features.registry.FEATURES`.

    The registry's `kind` decides (numeric | categorical); only a feature of another kind falls back
    to its column's dtype in `frame` (text -> categorical). An all-null numeric column stays numeric.
    """
    from features.registry import FEATURES

    specs = []
    for f in FEATURES:
        kind = str(getattr(f, "kind", "")).lower()
        if kind in ("numeric", "categorical"):
            cat = kind == "categorical"
        else:
            s = frame[f.name] if frame is not None and f.name in frame.columns else None
            cat = s is not None and not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))
        specs.append(FeatureSpec(f.name, cat, bool(f.uses_customer_history)))
    return specs


def check_specs(specs: Sequence[FeatureSpec], frame: pd.DataFrame, *, where: str = "feature table") -> None:
    """Every feature present, no protected attribute, no key or label used as a feature."""
    names = [s.name for s in specs]
    if not names:
        raise ValueError("no features to train on")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate feature names in {names}")
    bad = [n for n in names if n in (*KEY_COLUMNS, LABEL, MATURE) or _is_protected(n)]
    if bad:
        raise ValueError(
            f"{where}: {bad} may not be features (keys, labels and protected attributes are excluded)"
        )
    missing = [n for n in (*names, LABEL, MATURE, TS) if n not in frame.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing} (rule: feature table columns, docs/architecture.md)"
        )


def _is_protected(name: str) -> bool:
    tokens = name.lower().split("_")
    return "gender" in tokens or "title" in tokens or name.lower() in ("age", "customer_age", "age_years")


# ---------------------------------------------------------------- out-of-time split
@dataclass(frozen=True)
class SplitConfig:
    """Windows by order time. Relative: test = the last `test_days` mature days, validation = the
    `val_days` before, training = everything mature before that (or the last `train_days`).
    Absolute ISO dates (`val_start`, `test_start`) override the relative windows when given."""

    test_days: int = 60
    val_days: int = 60
    train_days: int | None = None
    val_start: str | None = None
    test_start: str | None = None

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> SplitConfig:
        return cls(
            test_days=int(p.get("test_days", 60)),
            val_days=int(p.get("val_days", 60)),
            train_days=None if p.get("train_days") is None else int(p["train_days"]),
            val_start=p.get("val_start"),
            test_start=p.get("test_start"),
        )


def window_bounds(order_ts: pd.Series, mature: pd.Series, cfg: SplitConfig) -> dict[str, pd.Timestamp]:
    """Start of train/val/test and the end of the mature period (the latest mature order day, exclusive end)."""
    ts = pd.to_datetime(order_ts)
    if not mature.any():
        raise ValueError(
            "no line has a mature label (order_ts + return window <= cutoff): nothing to train on"
        )
    end = ts[mature.to_numpy()].max().normalize() + pd.Timedelta(days=1)
    test_start = pd.Timestamp(cfg.test_start) if cfg.test_start else end - pd.Timedelta(days=cfg.test_days)
    val_start = pd.Timestamp(cfg.val_start) if cfg.val_start else test_start - pd.Timedelta(days=cfg.val_days)
    train_start = (
        ts.min().normalize() if cfg.train_days is None else val_start - pd.Timedelta(days=cfg.train_days)
    )
    if not train_start < val_start < test_start < end:
        raise ValueError(
            f"split windows out of order: train from {train_start}, validation from {val_start}, "
            f"test from {test_start}, mature data ends {end} (check train.split in params.yaml)"
        )
    return {"train_start": train_start, "val_start": val_start, "test_start": test_start, "end": end}


def assign_splits(order_ts: pd.Series, mature: pd.Series, cfg: SplitConfig) -> pd.Series:
    """'train' | 'val' | 'test' per line, or '' for lines left out (immature label or before the window)."""
    mature = mature.fillna(False).astype(bool)
    b = window_bounds(order_ts, mature, cfg)
    ts = pd.to_datetime(order_ts).to_numpy()
    m = mature.to_numpy()
    out = np.full(len(ts), "", dtype=object)
    out[m & (ts >= b["train_start"].to_datetime64()) & (ts < b["val_start"].to_datetime64())] = "train"
    out[m & (ts >= b["val_start"].to_datetime64()) & (ts < b["test_start"].to_datetime64())] = "val"
    out[m & (ts >= b["test_start"].to_datetime64()) & (ts < b["end"].to_datetime64())] = "test"
    return pd.Series(out, index=order_ts.index, name="split", dtype=object)


# ---------------------------------------------------------------- LightGBM
def lgbm_params(p: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """LightGBM parameters: those from params.yaml plus the fixed ones that make a run reproducible."""
    out = {
        "objective": "binary",
        "metric": "binary_logloss",
        "verbosity": -1,
        "deterministic": True,
        "force_col_wise": True,
        "seed": int(seed),
    }
    out.update(dict(p))
    return out


def fit_booster(
    X_tr: np.ndarray,
    y_tr: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    feature_names: Sequence[str],
    categorical_idx: Sequence[int],
    params: Mapping[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
) -> tuple[Any, dict[str, Any]]:
    """Train with early stopping on the validation window; returns the booster cut at its best iteration."""
    import lightgbm as lgb

    ds_params = {k: params[k] for k in ("max_bin", "min_data_in_bin") if k in params}
    dtrain = lgb.Dataset(
        X_tr,
        label=y_tr,
        feature_name=list(feature_names),
        categorical_feature=list(categorical_idx),
        params=ds_params,
        free_raw_data=True,
    )
    dval = lgb.Dataset(X_val, label=y_val, reference=dtrain, free_raw_data=True)
    evals: dict[str, Any] = {}
    booster = lgb.train(
        dict(params),
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=[dval],
        valid_names=["val"],
        callbacks=[
            lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
            lgb.record_evaluation(evals),
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    # Re-create from text: the served booster is exactly what gets saved and reloaded.
    final = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    info = {"best_iteration": int(best), "val_logloss_best": float(evals["val"][params["metric"]][best - 1])}
    return final, info


def long_run_rate(frame: pd.DataFrame, split: pd.Series) -> float:
    """Return rate of every training and validation line: the history a calibrator may shrink toward."""
    known = split.isin(["train", "val"]).to_numpy()
    if not known.any():
        raise ValueError("no training or validation lines: no long-run return rate")
    return float(frame.loc[known, LABEL].to_numpy(dtype=np.float64).mean())


@dataclass
class ModelFit:
    model: ReturnModel
    info: dict[str, Any]


def train_return_model(
    frame: pd.DataFrame,
    split: pd.Series,
    specs: Sequence[FeatureSpec],
    cfg: Mapping[str, Any],
    seed: int,
    *,
    name: str = "returnrisk",
) -> ModelFit:
    """A calibrated LightGBM `ReturnModel` trained on split=='train', early-stopped and calibrated on 'val'."""
    tr, va = (split == "train").to_numpy(), (split == "val").to_numpy()
    if tr.sum() == 0 or va.sum() == 0:
        raise ValueError(f"empty window: {int(tr.sum())} training and {int(va.sum())} validation lines")
    features = [s.name for s in specs]
    min_count = int(cfg.get("min_category_count", 1))
    train_rows = frame.loc[tr]
    levels = {s.name: learn_levels(train_rows[s.name], min_count=min_count) for s in specs if s.categorical}
    X_tr = encode_frame(train_rows, features, levels)
    X_val = encode_frame(frame.loc[va], features, levels)
    y_tr = frame.loc[tr, LABEL].to_numpy(dtype=np.float64)
    y_val = frame.loc[va, LABEL].to_numpy(dtype=np.float64)
    params = lgbm_params(cfg.get("lgbm", {}), seed)
    t0 = time.perf_counter()
    booster, info = fit_booster(
        X_tr,
        y_tr,
        X_val,
        y_val,
        feature_names=features,
        categorical_idx=[j for j, f in enumerate(features) if f in levels],
        params=params,
        num_boost_round=int(cfg.get("num_boost_round", 1000)),
        early_stopping_rounds=int(cfg.get("early_stopping_rounds", 50)),
    )
    info["fit_seconds"] = time.perf_counter() - t0
    raw_val = np.asarray(booster.predict(X_val, raw_score=True), dtype=np.float64)
    # Calibration on the validation window only (params train.calibration*; models/calibration.py).
    ts_val = frame.loc[va, TS] if TS in frame.columns else None  # only recency weights read it
    calibrator, cal_info = fit_from_config(
        raw_val, y_val, ts_val, cfg, seed, long_run_rate=long_run_rate(frame, split)
    )
    info.update(cal_info)
    model = ReturnModel(
        booster=booster,
        features=features,
        categorical=levels,
        calibrator=calibrator,
        metadata={
            "name": name,
            "n_train": int(tr.sum()),
            "n_val": int(va.sum()),
            "train_return_rate": float(y_tr.mean()),
            "best_iteration": info["best_iteration"],
            "uses_customer_history": any(s.uses_customer_history for s in specs),
        },
    )
    return ModelFit(model, info)


# ---------------------------------------------------------------- logistic-regression baseline
def logreg_pipeline(specs: Sequence[FeatureSpec], cfg: Mapping[str, Any], seed: int) -> Any:
    """scikit-learn pipeline: median-impute + scale numerics, one-hot categoricals, logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [s.name for s in specs if not s.categorical]
    cat = [s.name for s in specs if s.categorical]
    transformers = []
    if num:
        transformers.append(
            (
                "num",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                        ("scale", StandardScaler()),
                    ]
                ),
                num,
            )
        )
    if cat:
        transformers.append(
            (
                "cat",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=int(cfg.get("min_frequency", 20))
                ),
                cat,
            )
        )
    return Pipeline(
        [
            ("prep", ColumnTransformer(transformers)),
            (
                "clf",
                LogisticRegression(
                    C=float(cfg.get("C", 1.0)), max_iter=int(cfg.get("max_iter", 1000)), random_state=seed
                ),
            ),
        ]
    )


def logreg_frame(frame: pd.DataFrame, specs: Sequence[FeatureSpec]) -> pd.DataFrame:
    """The logistic regression's input: numerics as float64 (NaN for missing), categoricals as text."""
    out = {}
    for s in specs:
        col = frame[s.name]
        if s.categorical:
            out[s.name] = (
                col.astype(object).where(col.notna(), "__missing__").astype(str).to_numpy(dtype=object)
            )
        else:
            out[s.name] = col.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.DataFrame(out, index=frame.index)


# ---------------------------------------------------------------- the whole training run
@dataclass
class TrainResult:
    model: ReturnModel
    blind: ReturnModel
    logreg: Any
    # val + test lines: line_id, split, returned, p_model, p_blind, p_logreg, p_rate
    predictions: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)


def train_all(
    frame: pd.DataFrame,
    specs: Sequence[FeatureSpec],
    cfg: Mapping[str, Any],
    seed: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Split, train the model, the customer-blind model and the logistic baseline; threshold on validation."""
    say = progress or (lambda _msg: None)
    check_specs(specs, frame)
    split_cfg = SplitConfig.from_params(cfg.get("split", {}))
    split = assign_splits(frame[TS], frame[MATURE], split_cfg)
    bounds = window_bounds(frame[TS], frame[MATURE].fillna(False).astype(bool), split_cfg)
    counts = split.value_counts()
    for s in SPLITS:
        if counts.get(s, 0) == 0:
            raise ValueError(f"the {s} window is empty ({bounds}); adjust train.split in params.yaml")

    say("training the model")
    main = train_return_model(frame, split, specs, cfg, seed, name="returnrisk")
    blind_specs = [s for s in specs if not s.uses_customer_history]
    if not blind_specs:
        raise ValueError("every feature uses customer history: the customer-blind model has no features")
    say("training the customer-blind model")
    blind = train_return_model(frame, split, blind_specs, cfg, seed, name="returnrisk-customer-blind")

    say("training the logistic-regression baseline")
    tr = (split == "train").to_numpy()
    t0 = time.perf_counter()
    logreg = logreg_pipeline(specs, cfg.get("logreg", {}), seed)
    logreg.fit(logreg_frame(frame.loc[tr], specs), frame.loc[tr, LABEL].to_numpy(dtype=np.int64))
    logreg_seconds = time.perf_counter() - t0

    say("scoring validation and test windows")
    ev = split.isin(["val", "test"]).to_numpy()
    rows = frame.loc[ev]
    train_rate = float(frame.loc[tr, LABEL].mean())
    keep = [c for c in ("line_id", "order_id", "customer_id", "product_id", TS) if c in rows.columns]
    preds = rows[keep].copy()
    preds["split"] = split[ev].to_numpy()
    preds[LABEL] = rows[LABEL].to_numpy(dtype=np.int8)
    preds["p_model"] = main.model.predict_proba(rows)
    preds["p_blind"] = blind.model.predict_proba(rows)
    # The logistic baseline gets the same calibration step as the two LightGBMs (fitted on its
    # validation decision values), so the comparison is between equally calibrated scorers.
    logreg_raw = logreg.decision_function(logreg_frame(rows, specs))
    on_val = (split[ev] == "val").to_numpy()
    logreg_cal, logreg_cal_info = fit_from_config(
        logreg_raw[on_val],
        preds[LABEL].to_numpy()[on_val],
        rows.loc[on_val, TS],
        cfg,
        seed,
        long_run_rate=long_run_rate(frame, split),
    )
    preds["p_logreg"] = logreg_cal.apply(logreg_raw)
    preds["p_rate"] = train_rate
    preds = preds.reset_index(drop=True)

    costs = CostModel.from_params(cfg["cost"])
    val = preds["split"] == "val"
    threshold = choose_threshold(
        preds.loc[val, LABEL].to_numpy(), preds.loc[val, "p_model"].to_numpy(), costs
    )
    main.model.threshold = threshold
    blind.model.threshold = choose_threshold(
        preds.loc[val, LABEL].to_numpy(), preds.loc[val, "p_blind"].to_numpy(), costs
    )
    windows = {k: v.date().isoformat() for k, v in bounds.items()}
    for m in (main.model, blind.model):
        m.metadata["windows"] = windows

    test = preds["split"] == "test"
    summary: dict[str, Any] = {
        "n_train": int(counts.get("train", 0)),
        "n_val": int(counts.get("val", 0)),
        "n_test": int(counts.get("test", 0)),
        "n_excluded": int((split == "").sum()),
        "train_return_rate": train_rate,
        "threshold": threshold,
        "logreg_fit_seconds": logreg_seconds,
        **{f"model.{k}": v for k, v in main.info.items()},
        **{f"blind.{k}": v for k, v in blind.info.items()},
        **{f"logreg.{k}": v for k, v in logreg_cal_info.items()},
    }
    for col, key in (("p_model", "model"), ("p_blind", "blind"), ("p_logreg", "logreg")):
        m = binary_metrics(preds.loc[test, LABEL].to_numpy(), preds.loc[test, col].to_numpy())
        summary[f"test.{key}.roc_auc"] = m["roc_auc"]
        summary[f"test.{key}.log_loss"] = m["log_loss"]
    return TrainResult(main.model, blind.model, logreg, preds, summary, windows)
