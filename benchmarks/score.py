"""Benchmark: `returnrisk score` end to end on a generated export, against a naive path.

Generates a seeded history + export (pipeline.generator: about --history-rows + --rows order lines over
params.yaml's months; the export is the latest orders holding --rows lines, cut with
`pipeline.scoring.cut_sample`, written as Parquet), trains the real model on the history (params.yaml
`train:`, no MLflow) unless --model names a model folder, then times on the same machine and data:

  - score_*: `score_export` end to end (read the export, validate it against the history, point-in-time
    features over history + export, predict, calibrate, risk bands, write Parquet), without reasons;
  - score_reasons_*: the same with top-3 reasons in words, on the first --reasons-rows lines of the export;
  - naive_*: the training path a notebook would take: `build_features` over history + export into pandas,
    keep the export's lines, `booster.predict` on the DataFrame (no validation, no calibration, no file);
  - *_cpu_seconds: process CPU time (robust to other load on a shared machine).

    .venv/bin/python -m benchmarks.score --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LINES_PER_CUSTOMER = 12.3  # generator default sizes: 245k lines from 20k customers over 18 months


def _emit(name: str, value: float, unit: str) -> None:
    print(f"{name} {value:.6g} {unit}", flush=True)


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _data(rows: int, history_rows: int, seed: int):
    """(history tables, export tables, params): the export holds the latest orders with about `rows` lines."""
    from pipeline.config import load_params
    from pipeline.generator import generate
    from pipeline.scoring import cut_sample

    params = load_params()
    gen = dict(params.get("generate", {}))
    opts = {k: v for k, v in gen.items() if k not in ("n_customers", "n_products", "months", "start")}
    customers = max(200, int((rows + history_rows) / LINES_PER_CUSTOMER))
    data = generate(customers, max(50, customers // 10), int(gen.get("months", 18)), seed, **opts)
    orders = data.tables["orders"].sort_values("order_ts", kind="stable")
    per_order = data.tables["order_lines"].groupby("order_id").size()
    from_end = per_order.reindex(orders["order_id"]).fillna(0).to_numpy()[::-1].cumsum()
    k = int(np.searchsorted(from_end, rows))
    start = orders["order_ts"].iloc[max(0, len(orders) - 1 - k)]
    end = pd.Timestamp(data.meta["cutoff"]) + pd.Timedelta(seconds=1)
    history, export = cut_sample(data.tables, start, end)
    return history, export, params, pd.Timestamp(data.meta["cutoff"])


def _train(history: dict, cutoff: pd.Timestamp, params: dict, folder: Path) -> Path:
    from features.build import build_features
    from pipeline.commands.train import run_train

    frame, _ = build_features(history, cutoff, params)
    frame.to_parquet(folder / "features.parquet", index=False)
    run_train(folder / "features.parquet", folder / "model", params, log_mlflow=False)
    return folder / "model"


def _write_export(export: dict, folder: Path, n: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = export["order_lines"] if n is None else export["order_lines"].iloc[:n]
    orders = export["orders"]
    if n is not None:
        orders = orders.loc[orders["order_id"].isin(lines["order_id"])]
    for name, df in {**export, "orders": orders, "order_lines": lines}.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="order lines in the export")
    ap.add_argument("--history-rows", type=int, default=250_000, help="order lines in the history")
    ap.add_argument("--reasons-rows", type=int, default=50_000, help="export lines scored with reasons")
    ap.add_argument("--model", type=Path, help="model folder to use instead of training one")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args(argv)

    from models.artifact import ReturnModel
    from pipeline.scoring import Abuse, ScoreSettings, score_export

    t0 = time.perf_counter()
    history, export, params, cutoff = _data(args.rows, args.history_rows, args.seed)
    n = len(export["order_lines"])
    _emit("export_lines", n, "lines")
    _emit("history_lines", len(history["order_lines"]), "lines")
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model or _train(history, cutoff, params, tmp)
        _emit("setup_seconds", time.perf_counter() - t0, "s")
        model = ReturnModel.load(model_dir)
        exp_dir = _write_export(export, tmp / "export")
        run = dict(
            abuse=Abuse(None, np.array([]), np.array([])),
            params=params,
            scored_at=pd.Timestamp("2030-01-01"),
            as_of=cutoff + pd.Timedelta(days=1),
        )
        res, wall, cpu = _timed(
            lambda: score_export(
                exp_dir,
                history,
                model,
                tmp / "scored.parquet",
                settings=ScoreSettings(chunk_lines=max(n, 1), reasons=0),
                **run,
            )
        )
        assert res.scored == n, (res.scored, n, res.rejected)
        _emit("score_seconds", wall, "s")
        _emit("score_cpu_seconds", cpu, "s")
        _emit("score_lines_per_s", n / wall, "lines/s")
        for step, s in res.timings.items():
            _emit(f"score_{step.removesuffix('_s')}_seconds", s, "s")

        m = min(args.reasons_rows, n)
        sub = _write_export(export, tmp / "export_sub", m)
        res_r, wall_r, cpu_r = _timed(
            lambda: score_export(
                sub,
                history,
                model,
                tmp / "scored_reasons.parquet",
                settings=ScoreSettings(chunk_lines=max(m, 1), reasons=3),
                **run,
            )
        )
        _emit("score_reasons_lines", res_r.scored, "lines")
        _emit("score_reasons_seconds", wall_r, "s")
        _emit("score_reasons_cpu_seconds", cpu_r, "s")
        _emit("score_reasons_lines_per_s", res_r.scored / wall_r, "lines/s")
        _emit("score_reasons_step_seconds", res_r.timings.get("reasons_s", float("nan")), "s")

        if not args.skip_naive:
            from features.build import build_features, merge_tables

            def naive():
                merged = merge_tables(history, export)
                frame, _ = build_features(merged, cutoff, params)
                frame = frame.loc[frame["line_id"].isin(export["order_lines"]["line_id"])]
                X = frame[model.features].copy()
                for c in model.categorical_features:
                    X[c] = pd.Categorical(X[c].astype(object), categories=model.categorical[c])
                return model.booster.predict(X)

            p, wall_n, cpu_n = _timed(naive)
            assert len(p) == n
            _emit("naive_seconds", wall_n, "s")
            _emit("naive_cpu_seconds", cpu_n, "s")
            _emit("naive_lines_per_s", n / wall_n, "lines/s")
            _emit("score_vs_naive_speed_ratio", wall_n / wall, "x")
            _emit("score_reasons_vs_naive_speed_ratio", (res_r.scored / wall_r) / (n / wall_n), "x")


if __name__ == "__main__":
    main()
