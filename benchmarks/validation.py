"""Validation speed: `python -m benchmarks.validation --rows N` prints `name value unit` lines.

Generates a dataset of about N order lines (pipeline.generator), breaks a small share of rows
(`--faults`: negative prices, orphan lines, returns before their order, duplicate line ids) so the
quarantine path runs too, writes it as Parquet, then measures
- the pure check `validate_tables` in this process (median of `--repeat` runs), and
- the whole command `returnrisk validate` (read + check + write) in a child process, with its peak memory.
CPU seconds are printed beside wall seconds: on a shared machine they are the figure robust to other load.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LINES_PER_CUSTOMER_18M = 12.3  # measured: 20k customers over 18 months give ~245k lines


def make_data(rows: int, folder: Path, faults: float, seed: int) -> dict[str, int]:
    from pipeline.generator import generate, write_generated

    n_customers = max(200, int(rows / LINES_PER_CUSTOMER_18M))
    data = generate(n_customers=n_customers, n_products=max(100, n_customers // 10), months=18, seed=seed)
    t = data.tables
    rng = np.random.default_rng(seed)
    lines, returns = t["order_lines"], t["returns"]
    k = max(1, int(len(lines) * faults))
    pick = rng.choice(len(lines), size=4 * k, replace=False)
    lines.loc[lines.index[pick[:k]], "unit_price"] = -1.0
    lines.loc[lines.index[pick[k : 2 * k]], "order_id"] = t["orders"]["order_id"].max() + 1
    lines.loc[lines.index[pick[2 * k : 3 * k]], "line_id"] = lines["line_id"].to_numpy()[pick[3 * k :]]
    r = rng.choice(len(returns), size=min(k, len(returns)), replace=False)
    returns.loc[returns.index[r], "return_ts"] = pd.Timestamp("2000-01-01")
    write_generated(data, folder / "raw", folder / "truth")
    return {name: len(df) for name, df in t.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="order lines to generate (approximate)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the in-process check (median reported)")
    ap.add_argument("--faults", type=float, default=0.001, help="share of lines broken per fault kind")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    from pipeline.commands.validate import read_table_folder
    from pipeline.io import read_meta
    from pipeline.validation import validate_tables

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        rows = make_data(args.rows, folder, args.faults, args.seed)
        print(f"validate_generate_s {time.perf_counter() - t0:.1f} s")
        print(f"validate_lines {rows['order_lines']} lines")
        print(f"validate_rows_all_tables {sum(rows.values())} rows")

        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "validate",
            str(folder / "raw"),
            "--out",
            str(folder / "validated"),
            "--report",
            str(folder / "validation.json"),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        print(f"validate_command_s {wall:.2f} s")
        print(f"validate_command_cpu_s {cpu:.2f} s")
        print(f"validate_command_peak_rss {after.ru_maxrss / 1024:.0f} MiB")

        tables, sources, _ = read_table_folder(folder / "raw")
        meta = read_meta(folder / "raw")
        times, cpus = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            res = validate_tables(tables, meta, sources=sources)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        check = statistics.median(times)
        print(f"validate_check_s {check:.2f} s")
        print(f"validate_check_cpu_s {statistics.median(cpus):.2f} s")
        print(f"validate_check_lines_per_s {rows['order_lines'] / check:.0f} lines/s")
        print(f"validate_rejected {res.report['rejected']} rows")


if __name__ == "__main__":
    main()
