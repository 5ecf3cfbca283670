"""Benchmark: `returnrisk score` end to end on a generated checkout export, against a naive path.

Generates a seeded history + export (pipeline.generator: about --history-rows + --rows order lines over
params.yaml's months). The export holds the latest orders with about --rows lines; the history is
everything as known when the export's first order is placed (its cutoff): earlier orders and lines, and
the returns, reviews and deliveries recorded before then, as a checkout service sees it. The real model is
trained on the history (params.yaml `train:`, overridable with --lgbm, no MLflow) unless --model names a
model folder. Then, on the same machine and data:

  - state_*: `features.state.build_state`, the history's aggregates as of its cutoff (what a service
    computes once per `dvc repro` and loads with `returnrisk score --state`);
  - score_*: `score_export` end to end with that state (read the export, validate it against the history,
    point-in-time features, predict, calibrate, risk bands, write Parquet), without reasons; the export is
    one chunk, assembled in pieces of --piece-lines whose prediction overlaps the next piece's assembly
    (score_predict_worker_seconds: the model's time in the worker thread, overlapped; score_predict_seconds:
    what was not hidden, plus bands and abuse tiers);
  - score_cold_*: the same without a precomputed state (the run builds it);
  - score_reasons_*: with top-3 reasons in words, on the first --reasons-rows lines of the export;
  - naive_*: the training path a notebook would take: `build_features` over history + export into pandas,
    keep the export's lines, `booster.predict` on the DataFrame (no validation, no calibration, no file);
  - predict_* / treeshap_*: the model steps alone on the export's features (one feature build): LightGBM's
    `booster.predict` vs the compiled trees (`ReturnModel.raw_from_matrix`, models/treeeval.py) on the same
    column-major matrix, and TreeSHAP with LightGBM's `pred_contrib` vs the per-leaf tables
    (models/treeshap.py) on a sample (--shap-sample lines); with the largest differences between them;
  - *_cpu_seconds: process CPU time (robust to other load on a shared machine); load_average_*: the
    machine's 1-minute load average at the start and end (other engineers share the machine).

    .venv/bin/python -m benchmarks.score --rows 1000000 [--lgbm num_leaves=15 --lgbm max_depth=4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LINES_PER_ORDER = 2.05  # generator: 1 + min(Poisson(mean_extra_lines=1), 5) lines per order


def _emit(name: str, value: float, unit: str) -> None:
    print(f"{name} {value:.6g} {unit}", flush=True)


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _data(rows: int, history_rows: int, seed: int):
    """(history tables, export tables, params, history cutoff): the export holds the latest orders with about
    `rows` lines; the history is what is known when the export's first order is placed."""
    from pipeline.config import load_params
    from pipeline.generator import generate
    from pipeline.scoring import cut_sample

    params = load_params()
    gen = dict(params.get("generate", {}))
    opts = {k: v for k, v in gen.items() if k not in ("n_customers", "n_products", "months", "start")}
    per_customer = float(gen.get("orders_per_customer", 6.0)) * LINES_PER_ORDER
    customers = max(200, int((rows + history_rows) / per_customer))
    data = generate(customers, max(50, customers // 10), int(gen.get("months", 18)), seed, **opts)
    orders = data.tables["orders"].sort_values("order_ts", kind="stable")
    per_order = data.tables["order_lines"].groupby("order_id").size()
    from_end = per_order.reindex(orders["order_id"]).fillna(0).to_numpy()[::-1].cumsum()
    k = int(np.searchsorted(from_end, rows))
    start = orders["order_ts"].iloc[max(0, len(orders) - 1 - k)]
    end = pd.Timestamp(data.meta["cutoff"]) + pd.Timedelta(seconds=1)
    history, _ = cut_sample(data.tables, start, start)  # as known at the export's first order
    _, export = cut_sample(data.tables, start, end)
    for name in ("customers", "products"):  # those first seen in the export come with it
        key = f"{name[:-1]}_id"
        history[name] = history[name].loc[~history[name][key].isin(export[name][key])].reset_index(drop=True)
    return history, export, params, pd.Timestamp(start)


def _train(history: dict, cutoff: pd.Timestamp, params: dict, folder: Path) -> Path:
    from features.build import build_features
    from pipeline.commands.train import run_train

    frame, _ = build_features(history, cutoff, params)
    frame.to_parquet(folder / "features.parquet", index=False)
    run_train(folder / "features.parquet", folder / "model", params, log_mlflow=False)
    return folder / "model"


def _lgbm_overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            raise SystemExit(f"--lgbm {pair}: expected KEY=VALUE")
        out[key] = float(value) if "." in value else int(value)
    return out


def _write_export(export: dict, folder: Path, n: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = export["order_lines"] if n is None else export["order_lines"].iloc[:n]
    orders = export["orders"]
    if n is not None:
        orders = orders.loc[orders["order_id"].isin(lines["order_id"])]
    for name, df in {**export, "orders": orders, "order_lines": lines}.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def _cached(args) -> tuple[dict, dict, dict, pd.Timestamp]:
    """Generated data, kept in --cache (Parquet) between runs when given."""
    from pipeline.config import load_params

    folder = args.cache
    if folder is not None and (folder / "meta.txt").is_file():
        load = lambda sub: {p.stem: pd.read_parquet(p) for p in sorted((folder / sub).glob("*.parquet"))}  # noqa: E731
        return load("history"), load("export"), load_params(), pd.Timestamp((folder / "meta.txt").read_text())
    history, export, params, cutoff = _data(args.rows, args.history_rows, args.seed)
    if folder is not None:
        for sub, tables in (("history", history), ("export", export)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for name, df in tables.items():
                df.to_parquet(folder / sub / f"{name}.parquet", index=False)
        (folder / "meta.txt").write_text(cutoff.isoformat())
    return history, export, params, cutoff


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="order lines in the export")
    ap.add_argument("--history-rows", type=int, default=250_000, help="order lines in the history")
    ap.add_argument("--reasons-rows", type=int, default=50_000, help="export lines scored with reasons")
    ap.add_argument("--model", type=Path, help="model folder to use instead of training one")
    ap.add_argument("--lgbm", action="append", default=[], help="train.lgbm override KEY=VALUE (repeatable)")
    ap.add_argument("--cache", type=Path, help="keep the generated history/export here between runs")
    ap.add_argument("--repeat", type=int, default=1, help="scoring runs (medians are printed)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-cold", action="store_true", help="skip the run without a precomputed state")
    ap.add_argument("--skip-components", action="store_true", help="skip the predict / TreeSHAP comparison")
    ap.add_argument("--shap-sample", type=int, default=20_000, help="lines of the pred_contrib comparison")
    ap.add_argument(
        "--piece-lines", type=int, help="lines assembled and predicted at a time (default score.piece_lines)"
    )
    args = ap.parse_args(argv)
    _emit("load_average_start", os.getloadavg()[0], "")

    from features.state import build_state
    from models.artifact import ReturnModel
    from pipeline.scoring import Abuse, ScoreSettings, score_export

    t0 = time.perf_counter()
    history, export, params, cutoff = _cached(args)
    if args.lgbm:
        params["train"]["lgbm"] = {**params["train"]["lgbm"], **_lgbm_overrides(args.lgbm)}
    n = len(export["order_lines"])
    _emit("export_lines", n, "lines")
    _emit("history_lines", len(history["order_lines"]), "lines")
    fparams = {"featurize": params.get("featurize") or {}, "labels": params.get("labels") or {}}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None and args.cache is not None:  # one trained model per capacity, kept
            tag = "_".join(
                f"{k}{v}" for k, v in sorted(params["train"]["lgbm"].items()) if k != "num_threads"
            )
            folder = args.cache / f"model_{tag}"
            if not (folder / "model" / "model.json").is_file():
                folder.mkdir(parents=True, exist_ok=True)
                _train(history, cutoff, params, folder)
            model_dir = folder / "model"
        model_dir = model_dir or _train(history, cutoff, params, tmp)
        _emit("setup_seconds", time.perf_counter() - t0, "s")
        model = ReturnModel.load(model_dir)
        lg = model.booster.dump_model()["tree_info"]
        _emit("model_trees", len(lg), "trees")
        _emit("model_num_leaves", max(t["num_leaves"] for t in lg), "leaves")
        exp_dir = _write_export(export, tmp / "export")
        run = dict(
            abuse=Abuse(None, np.array([]), np.array([])),
            params=params,
            scored_at=pd.Timestamp("2030-01-01"),
            as_of=pd.Timestamp(export["orders"]["order_ts"].max()) + pd.Timedelta(days=1),
        )
        state, wall_s, cpu_s = _timed(lambda: build_state(history, cutoff, fparams))
        _emit("state_build_seconds", wall_s, "s")
        _emit("state_build_cpu_seconds", cpu_s, "s")
        _emit("state_pending_lines", len(state.pending["order_lines"]), "lines")

        pieces = {"piece_lines": args.piece_lines} if args.piece_lines else {}

        def score(st, k: int, folder: Path, out: str):
            return _timed(
                lambda: score_export(
                    folder,
                    history,
                    model,
                    tmp / out,
                    settings=ScoreSettings(chunk_lines=max(n, 1), reasons=k, **pieces),
                    state=st,
                    **run,
                )
            )

        runs = [score(state, 0, exp_dir, "scored.parquet") for _ in range(max(1, args.repeat))]
        res = runs[-1][0]
        assert res.scored == n, (res.scored, n, res.rejected)
        wall = statistics.median(r[1] for r in runs)
        _emit("score_seconds", wall, "s")
        _emit("score_cpu_seconds", statistics.median(r[2] for r in runs), "s")
        _emit("score_lines_per_s", n / wall, "lines/s")
        for step, sec in res.timings.items():
            _emit(f"score_{step.removesuffix('_s')}_seconds", sec, "s")
        if not args.skip_cold:
            res_c, wall_c, cpu_c = score(None, 0, exp_dir, "scored_cold.parquet")
            _emit("score_cold_seconds", wall_c, "s")
            _emit("score_cold_cpu_seconds", cpu_c, "s")
            _emit("score_cold_lines_per_s", n / wall_c, "lines/s")
            same = pd.read_parquet(tmp / "scored.parquet")["return_probability"].to_numpy()
            cold = pd.read_parquet(tmp / "scored_cold.parquet")["return_probability"].to_numpy()
            _emit("score_cold_vs_state_max_abs_diff", float(np.abs(same - cold).max()) if n else 0.0, "")

        m = min(args.reasons_rows, n)
        sub = exp_dir if m == n else _write_export(export, tmp / "export_sub", m)
        res_r, wall_r, cpu_r = score(state, 3, sub, "scored_reasons.parquet")
        _emit("score_reasons_lines", res_r.scored, "lines")
        _emit("score_reasons_seconds", wall_r, "s")
        _emit("score_reasons_cpu_seconds", cpu_r, "s")
        _emit("score_reasons_lines_per_s", res_r.scored / wall_r, "lines/s")
        for step, sec in res_r.timings.items():
            name = "total" if step == "reasons_s" else step.removeprefix("reasons_").removesuffix("_s")
            _emit(f"score_reasons_{name}_seconds", sec, "s")

        if not args.skip_components:
            _components(model, history, export, state, params, args.shap_sample)

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
    _emit("load_average_end", os.getloadavg()[0], "")


def _components(model, history: dict, export: dict, state, params: dict, shap_sample: int) -> None:
    """Prediction and TreeSHAP alone on the export's features: LightGBM's own paths vs the compiled ones."""
    from features.build import build_features_for_batch
    from models import treeshap
    from models.explain import _tables_for

    fparams = {"featurize": params.get("featurize") or {}, "labels": params.get("labels") or {}}
    feats = build_features_for_batch(None, dict(export), params=fparams, state=state)
    X = model.encode(feats)
    model.raw_from_matrix(X[:100])  # compiled once per process (numba cache)
    n = len(X)
    ref, wall_b, cpu_b = _timed(lambda: model.booster.predict(X, raw_score=True))
    got, wall_c, cpu_c = _timed(lambda: model.raw_from_matrix(X))
    _emit("predict_booster_seconds", wall_b, "s")
    _emit("predict_booster_cpu_seconds", cpu_b, "s")
    _emit("predict_compiled_seconds", wall_c, "s")
    _emit("predict_compiled_cpu_seconds", cpu_c, "s")
    _emit("predict_compiled_speedup", wall_b / wall_c, "x")
    _emit("predict_compiled_max_abs_diff", float(np.abs(got - ref).max()) if n else 0.0, "")
    tables = _tables_for(model.booster)
    if tables is None:
        return
    Xs = X[: min(shap_sample, n)]
    treeshap.contributions(tables, Xs[:100])
    ref_c, wall_l, cpu_l = _timed(lambda: model.booster.predict(Xs, pred_contrib=True))
    got_c, wall_t, cpu_t = _timed(lambda: treeshap.contributions(tables, Xs))
    _emit("treeshap_pred_contrib_lines_per_s", len(Xs) / wall_l, "lines/s")
    _emit("treeshap_pred_contrib_cpu_seconds", cpu_l, "s")
    _emit("treeshap_tables_lines_per_s", len(Xs) / wall_t, "lines/s")
    _emit("treeshap_tables_cpu_seconds", cpu_t, "s")
    _emit("treeshap_tables_max_abs_diff", float(np.abs(got_c - ref_c).max()) if len(Xs) else 0.0, "")


if __name__ == "__main__":
    main()
