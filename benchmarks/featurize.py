"""Featurize benchmark: `python -m benchmarks.featurize --rows N [--batch-rows M] [--data DIR]`.

Generates about N order lines (benchmarks.generate sizes), then, each in a fresh child process so the
peak memory is featurize's own:
- featurize: the featurize stage's code path (`featurize_to_parquet`: DuckDB staging and family tables,
  the as-of streams in one time-ordered numba pass per group of streams sharing a source
  (features/scan.py), the families' finishing work side by side, chunked assembly with each chunk's joins
  and expressions overlapping, written by pyarrow in a background thread) over the whole
  history; wall, CPU, peak RSS, lines/s, each step's seconds (`scan_*`: the scan's queries, event
  fetch, values (with the key codes running beside them), the wait for the key codes after the values,
  time order, outputs and kernel), and the VADER part (scored per distinct review text, in a worker
  process next to the streams) separately;
- reference: two features (cust_returns, cust_days_since_last_return) in single-threaded pandas
  (merge_asof) vs the same two through the DuckDB engine, checked equal to the featurize output;
- batch (with --batch-rows): the scoring path, build_features_for_batch, for the last M lines' orders
  over the history before them (lines/s).
Prints one `name value unit` line per figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _tables(raw: Path) -> dict[str, Path]:
    return {p.stem: p for p in raw.glob("*.parquet")}


def _generate(rows: int, raw: Path) -> float:
    from benchmarks.generate import sizes_for
    from pipeline.generator import generate, write_generated

    t0 = time.perf_counter()
    data = generate(seed=11, **sizes_for(rows))
    write_generated(data, raw, raw.parent / "truth")
    return time.perf_counter() - t0


def _child_featurize(raw: Path, out: Path, threads: int, memory_limit: str) -> None:
    from features.build import featurize_to_parquet
    from pipeline.io import read_meta

    params = {
        "featurize": {"threads": threads, "memory_limit": memory_limit, "temp_directory": str(out.parent)}
    }
    t0 = time.perf_counter()
    rep = featurize_to_parquet(_tables(raw), read_meta(raw)["cutoff"], out, params)
    print(
        json.dumps(
            {
                "wall": time.perf_counter() - t0,
                "rows": rep["rows"],
                "timings": rep["timings_s"],
                "distinct_texts": rep["input_rows"].get("review_distinct_texts", 0),
                "reviews": rep["input_rows"].get("reviews", 0),
            }
        )
    )


def pandas_two_features(orders: pd.DataFrame, lines: pd.DataFrame, returns: pd.DataFrame) -> pd.DataFrame:
    """Single-threaded pandas: per order, returns recorded strictly before it and days since the last one."""
    lo = lines[["line_id", "order_id"]].merge(orders[["order_id", "customer_id", "order_ts"]], on="order_id")
    r = returns.merge(lo, on="line_id")
    r = r[r["return_ts"] >= r["order_ts"]]
    r = r.sort_values(["line_id", "return_ts"])
    r["first"] = ~r.duplicated("line_id")
    ev = r.sort_values("return_ts")[["customer_id", "return_ts", "first"]]
    ev["n"] = ev.groupby("customer_id")["first"].cumsum().astype("float64")
    ev["last"] = ev["return_ts"]
    q = orders[["order_id", "customer_id", "order_ts"]].sort_values("order_ts")
    m = pd.merge_asof(
        q,
        ev[["customer_id", "return_ts", "n", "last"]],
        left_on="order_ts",
        right_on="return_ts",
        by="customer_id",
        allow_exact_matches=False,
        direction="backward",
    )
    m["cust_returns"] = m["n"].fillna(0.0)
    m["cust_days_since_last_return"] = (m["order_ts"] - m["last"]).dt.total_seconds() / 86400.0
    return m[["order_id", "cust_returns", "cust_days_since_last_return"]]


def duckdb_two_features(tables: dict, threads: int) -> pd.DataFrame:
    """The same two features through the feature engine (staging, base tables, one customer stream)."""
    from features import past_returns
    from features.engine import FeaturizeParams, connect, stage
    from features.streams import build_streams

    p = FeaturizeParams(threads=threads)
    con = connect(p)
    try:
        ctx = stage(con, tables, p)
        runs = [r for r in past_returns.RUNNINGS if r.name in ("c_ret", "c_last_ret")]
        ev = [e for e in past_returns.EVENTS if "c_ret" in e.values]
        ev = [
            type(e)(
                e.stream, e.source, e.ts, {k: v for k, v in e.values.items() if k in ("c_ret", "c_last_ret")}
            )
            for e in ev
        ]
        build_streams(ctx, runs, ev)
        return (
            con.sql(
                "SELECT DISTINCT l.order_id, s.c_ret AS cust_returns, "
                "(epoch(l.order_ts) - epoch(s.c_last_ret)) / 86400.0 AS cust_days_since_last_return "
                "FROM ln l JOIN sx0 s ON s.qi = l.qi"
            )
            .to_arrow_table()
            .to_pandas()
        )
    finally:
        con.close()


def _child_reference(raw: Path, features: Path, threads: int) -> None:
    tabs = {
        k: pd.read_parquet(v) for k, v in _tables(raw).items() if k in ("orders", "order_lines", "returns")
    }
    t0 = time.perf_counter()
    pdf = pandas_two_features(tabs["orders"], tabs["order_lines"], tabs["returns"])
    t_pandas = time.perf_counter() - t0
    t0 = time.perf_counter()
    ddf = duckdb_two_features(_tables(raw), threads)
    t_duck = time.perf_counter() - t0
    feat = pd.read_parquet(features, columns=["order_id", "cust_returns", "cust_days_since_last_return"])
    feat = feat.drop_duplicates("order_id").set_index("order_id").sort_index()
    diffs = []
    for other in (pdf, ddf):
        o = other.set_index("order_id").sort_index().loc[feat.index]
        for c in ("cust_returns", "cust_days_since_last_return"):
            a, b = feat[c].to_numpy(), o[c].to_numpy()
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                raise AssertionError(f"reference {c}: missing values differ from featurize")
            diffs.append(float(np.nanmax(np.abs(a - b))) if len(a) else 0.0)
    print(json.dumps({"pandas": t_pandas, "duckdb": t_duck, "max_abs_diff": max(diffs)}))


def _child_batch(raw: Path, batch_rows: int, threads: int) -> None:
    from features.build import build_features_for_batch
    from pipeline.io import read_meta

    tabs = {k: pd.read_parquet(v) for k, v in _tables(raw).items()}
    lines = tabs["order_lines"].merge(tabs["orders"][["order_id", "order_ts"]], on="order_id")
    cut = lines["order_ts"].sort_values().iloc[max(0, len(lines) - batch_rows)]
    in_batch = tabs["orders"]["order_ts"] >= cut
    history = dict(tabs)
    history["orders"] = tabs["orders"][~in_batch]
    history["order_lines"] = tabs["order_lines"][
        ~tabs["order_lines"]["order_id"].isin(tabs["orders"]["order_id"][in_batch])
    ]
    history["returns"] = tabs["returns"][tabs["returns"]["return_ts"] < cut]
    history["reviews"] = tabs["reviews"][tabs["reviews"]["review_ts"] < cut]
    batch = {
        "orders": tabs["orders"][in_batch],
        "order_lines": tabs["order_lines"][
            tabs["order_lines"]["order_id"].isin(tabs["orders"]["order_id"][in_batch])
        ],
    }
    t0 = time.perf_counter()
    out = build_features_for_batch(
        history, batch, read_meta(raw)["cutoff"], {"featurize": {"threads": threads}}
    )
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "rows": len(out), "history_lines": len(history["order_lines"])}))


def _run_child(args: list[str]) -> tuple[dict, float, float, float]:
    """Run this module as a child; returns its JSON, wall, CPU seconds and peak RSS (GiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.featurize", *args], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{res.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(res.stdout.strip().splitlines()[-1]), wall, cpu, after.ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="about this many order lines")
    ap.add_argument("--data", type=Path, help="reuse/keep generated data here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument(
        "--batch-rows", type=int, default=0, help="also time the scoring path for this many lines"
    )
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "featurize":
            _child_featurize(Path(rest[0]), Path(rest[1]), args.threads, args.memory_limit)
        elif kind == "reference":
            _child_reference(Path(rest[0]), Path(rest[1]), args.threads)
        else:
            _child_batch(Path(rest[0]), int(rest[1]), args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        root = args.data or Path(tmp)
        raw = root / "raw"
        if not (raw / "order_lines.parquet").is_file():
            print(f"generate_seconds {_generate(args.rows, raw):.2f} s", flush=True)
        out = Path(tmp) / "features.parquet"
        common = ["--threads", str(args.threads), "--memory-limit", args.memory_limit]
        rep, wall, cpu, rss = _run_child(["--child", "featurize", str(raw), str(out), *common])
        senti = rep["timings"].get("sentiment_scoring_s", 0.0)
        print(f"featurize_lines {rep['rows']} lines")
        print(f"featurize_wall_seconds {rep['wall']:.2f} s")
        print(f"featurize_process_seconds {wall:.2f} s")
        print(f"featurize_cpu_seconds {cpu:.2f} s")
        print(f"featurize_peak_rss {rss:.2f} GiB")
        print(f"featurize_lines_per_second {rep['rows'] / rep['wall']:.0f} lines/s")
        print(f"featurize_sentiment_seconds {senti:.2f} s")
        print(f"featurize_review_texts_scored {rep['distinct_texts']} texts")
        # scoring runs in a background thread; what it costs the wall clock is at least the wait for it
        print(f"featurize_sentiment_wait_seconds {rep['timings'].get('sentiment_wait_s', 0.0):.2f} s")
        for k, v in rep["timings"].items():
            print(f"featurize_step_{k.removesuffix('_s')} {v:.2f} s")
        ref, _, _, _ = _run_child(["--child", "reference", str(raw), str(out), *common])
        print(f"reference_pandas_two_features_seconds {ref['pandas']:.2f} s")
        print(f"reference_duckdb_two_features_seconds {ref['duckdb']:.2f} s")
        print(f"reference_pandas_over_duckdb_ratio {ref['pandas'] / ref['duckdb']:.2f} x")
        print(f"reference_pandas_over_full_featurize_ratio {ref['pandas'] / rep['wall']:.3f} x")
        print(f"reference_max_abs_difference {ref['max_abs_diff']:.2e} days")
        if args.batch_rows:
            b, _, _, brss = _run_child(["--child", "batch", str(raw), str(args.batch_rows), *common])
            print(f"batch_lines {b['rows']} lines")
            print(f"batch_history_lines {b['history_lines']} lines")
            print(f"batch_features_seconds {b['wall']:.2f} s")
            print(f"batch_features_lines_per_second {b['rows'] / b['wall']:.0f} lines/s")


if __name__ == "__main__":
    main()
