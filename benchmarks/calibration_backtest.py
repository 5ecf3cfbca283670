"""Rolling-origin backtest of the calibration rule, inside the data before the test window.

Why: the calibrator is fitted on one validation window and used on the next (the test window); any choice
about it (how far to shrink the window's base rate toward the long-run rate, recency weights) must be made
without looking at the test window. Each fold repeats the training run at an earlier origin: the booster
trained on mature lines before a calibration window (early-stopped on it, as `train_return_model` does),
the calibration rule fitted on that window, then scored on the window after it. The next windows all end
on or before the real test window's start, so the test window is never read.

`.venv/bin/python -m benchmarks.calibration_backtest [--source uci-online-retail|generated] [--seed S]
[--rows N] [--features DIR] [--folds K] [--step-days D] [--scorers model,blind]` prints the monthly return
rates over the whole history (seasonality), one `name value unit` line per config x fold and the mean
criterion per config (`models.calibration.backtest_choice`, the calibrator selection's criterion).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see models/train.py: before LightGBM loads

SHRINKAGES = (0.0, 0.25, 0.5, 0.75, 1.0)


def configs() -> dict[str, dict[str, Any]]:
    """The candidate rules: base-rate shrinkage toward the long-run rate, and recency weights for reference."""
    out: dict[str, dict[str, Any]] = {
        f"shrink{s:g}": {"calibration_rate_shrinkage": s, "calibration_half_life_days": None}
        for s in SHRINKAGES
    }
    out["halflife30"] = {"calibration_rate_shrinkage": 0.0, "calibration_half_life_days": 30}
    for method in ("platt", "beta", "blend"):  # the calibrator shape fixed instead of chosen on validation
        out[method] = {
            "calibration": method,
            "calibration_rate_shrinkage": 0.0,
            "calibration_half_life_days": None,
        }
    return out


def build_folds(frame, specs, cfg: dict[str, Any], seed: int, splits, scorer: str, say, cache: Path | None):
    """One `BacktestFold` per origin: raw scores of a booster trained as training would at that origin.

    With `cache`, each fold's scores are kept in an .npz there and reused by a later run with the same folds.
    """
    import numpy as np

    from models.calibration import BacktestFold
    from models.train import LABEL, TS, long_run_rate, train_return_model

    use = specs if scorer == "model" else [s for s in specs if not s.uses_customer_history]
    out = []
    for name, split in splits:
        file = None if cache is None else cache / f"backtest_{scorer}_{name}_seed{seed}.npz"
        if file is not None and file.is_file():
            z = np.load(file)
            out.append(
                BacktestFold(
                    name, z["raw_cal"], z["y_cal"], z["raw_next"], z["y_next"], float(z["long_run_rate"]),
                    frame.loc[(split == "val").to_numpy(), TS],
                )
            )  # fmt: skip
            continue
        say(f"{scorer} {name}: training at this origin")
        fit = train_return_model(frame, split, use, cfg, seed, name=f"backtest-{scorer}")
        va, nx = (split == "val").to_numpy(), (split == "test").to_numpy()
        out.append(
            BacktestFold(
                name=name,
                raw_cal=fit.model.predict_raw(frame.loc[va]),
                y_cal=frame.loc[va, LABEL].to_numpy(dtype=np.float64),
                raw_next=fit.model.predict_raw(frame.loc[nx]),
                y_next=frame.loc[nx, LABEL].to_numpy(dtype=np.float64),
                long_run_rate=long_run_rate(frame, split),
                ts_cal=frame.loc[va, TS],
            )
        )
        if file is not None:
            f = out[-1]
            np.savez(file, raw_cal=f.raw_cal, y_cal=f.y_cal, raw_next=f.raw_next, y_next=f.y_next,
                     long_run_rate=f.long_run_rate)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    from benchmarks.real_data import run_pipeline
    from models.calibration import backtest, backtest_choice, backtest_splits, fit_from_config
    from models.evaluation import ece_noise_floor
    from models.train import LABEL, MATURE, TS, specs_from_registry
    from pipeline.commands.train import features_file, train_config
    from pipeline.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="uci-online-retail", choices=("uci-online-retail", "generated"))
    ap.add_argument("--features", type=Path, help="an existing features folder (skips ingest..featurize)")
    ap.add_argument(
        "--work", type=Path, help="keep ingest..featurize outputs here (default: a temporary folder)"
    )
    ap.add_argument("--rows", type=int, default=0, help="generated: about N order lines (0: params.yaml)")
    ap.add_argument("--seed", type=int, help="override params.yaml seed (generator and training)")
    ap.add_argument("--folds", type=int, default=4, help="origins, newest first")
    ap.add_argument("--step-days", type=int, default=30, help="days between origins")
    ap.add_argument("--min-train-days", type=int, default=60, help="training days an origin needs")
    ap.add_argument("--scorers", default="model", help="comma list of model, blind")
    args = ap.parse_args(argv)

    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in load_params().items()}
    if args.seed is not None:
        params["seed"] = args.seed
    seed = int(params["seed"])
    say = lambda m: print(f"# {m}", flush=True)  # noqa: E731
    tmp = None
    t0 = time.perf_counter()
    if args.features is None and args.work is not None and (args.work / "features").is_dir():
        args.features = args.work / "features"  # an earlier run's features (and fold scores) in --work
    if args.features is None:
        params["data"] = {**params.get("data", {}), "source": args.source}
        if args.source == "generated" and args.rows:
            from benchmarks.generate import sizes_for

            params["generate"] = {**params["generate"], **sizes_for(args.rows)}
        tmp = None if args.work else tempfile.TemporaryDirectory(prefix="calib-backtest-")
        work = Path(args.work or tmp.name)
        run_pipeline(params, work, say, train=False)
        feats = work / "features"
    else:
        feats = args.features
    try:
        frame = pd.read_parquet(features_file(feats))
    finally:
        if tmp is not None:
            tmp.cleanup()
    cfg = train_config(params)
    specs = specs_from_registry(frame)
    specs = [s for s in specs if s.name in frame.columns]

    mature = frame[MATURE].fillna(False).astype(bool)
    monthly = frame.loc[mature].groupby(frame.loc[mature, TS].dt.to_period("M"))[LABEL].agg(["mean", "size"])
    for month, r in monthly.iterrows():
        print(f"rate_{month} {r['mean']:.5f} share ({int(r['size'])} lines)")

    splits = backtest_splits(frame[TS], frame[MATURE], cfg, args.folds, args.step_days, args.min_train_days)
    for scorer in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        folds = build_folds(frame, specs, cfg, seed, splits, scorer, say, feats.parent if args.work else None)
        for (_, split), f in zip(splits, folds, strict=True):
            # the rate baseline at this origin: its ECE is exactly |training rate - next window's rate|
            train_rate = float(frame.loc[(split == "train").to_numpy(), LABEL].mean())
            print(
                f"{scorer}_{f.name}_cal_rate {f.y_cal.mean():.5f} share; next_rate {f.y_next.mean():.5f}; "
                f"long_run_rate {f.long_run_rate:.5f}; rate_baseline_ece {abs(train_rate - f.y_next.mean()):.5f}"
            )
        for f in folds:  # what a perfectly calibrated scorer would show with the current rule's predictions
            cal, _ = fit_from_config(f.raw_cal, f.y_cal, f.ts_cal, cfg, seed, long_run_rate=f.long_run_rate)
            bins = int(cfg.get("calibration_ece_bins", 15))
            floor = ece_noise_floor(cal.apply(f.raw_next), bins=bins, n_sim=200, seed=seed)
            print(f"{scorer}_{f.name}_ece_floor {floor:.5f} ece (params.yaml rule, {len(f.y_next)} lines)")
        rows = backtest(folds, configs(), cfg, seed)
        for r in rows:
            print(
                f"{scorer}_{r['config']}_{r['fold']} log_loss {r['log_loss']:.5f} ece {r['ece']:.5f} "
                f"mean_pred {r['mean_pred']:.5f} rate {r['rate']:.5f} shift {r['shift']:+.3f} ({r['method']})"
            )
        for select in ("logloss", "logloss+ece"):
            best, means = backtest_choice(rows, select)
            for c, v in means.items():
                print(f"{scorer}_mean_{select}_{c} {v:.5f} per-line")
            print(f"{scorer}_best_{select} {best}")
        by = pd.DataFrame(rows).groupby("config")[["log_loss", "ece"]].mean()
        for c, r in by.iterrows():
            print(f"{scorer}_mean_ece_{c} {r['ece']:.5f} ece; mean_log_loss {r['log_loss']:.5f}")
    print(f"seconds {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
