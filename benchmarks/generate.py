"""Generator speed and memory: `python -m benchmarks.generate --rows N` prints `name value unit` lines.

Generates about N order lines (customers scaled to the default 18-month history), writes every table and
the truth as Parquet into a temporary folder, and reports the time of each part and the peak memory.
Each run happens in a fresh child process so its peak RSS (getrusage of that process, which includes
writing Parquet) is not inflated by earlier work in the caller.
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

LINES_PER_CUSTOMER_18M = 12.3  # measured with params.yaml defaults: 20k customers, 18 months -> ~245k lines


def sizes_for(rows: int) -> dict[str, int]:
    """Generator sizes giving about `rows` order lines over 18 months."""
    n_customers = max(50, round(rows / LINES_PER_CUSTOMER_18M))
    return {"n_customers": n_customers, "n_products": min(100_000, max(100, n_customers // 10)), "months": 18}


def _child(rows: int, seed: int) -> None:
    """One measured run (in this process): generate, write Parquet, print figures and own peak RSS."""
    from pipeline.generator import generate, return_rate, write_generated

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        data = generate(seed=seed, **sizes_for(rows))
        t1, c1 = time.perf_counter(), time.process_time()
        write_generated(data, Path(tmp) / "raw", Path(tmp) / "truth")
        t2 = time.perf_counter()
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.parquet"))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    print(f"lines {len(data.tables['order_lines'])}")
    print(f"generate {t1 - t0:.3f}")
    print(f"cpu {c1 - c0:.3f}")
    print(f"write {t2 - t1:.3f}")
    print(f"peak {peak_gib:.3f}")
    print(f"parquet {size / 1024**2:.1f}")
    print(f"return_rate {return_rate(data):.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="order lines to generate (approximate)")
    ap.add_argument("--repeat", type=int, default=1, help="runs (medians of times, max of memory reported)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.rows, args.seed)
        return

    runs: list[dict[str, float]] = []
    for _ in range(args.repeat):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.generate",
            "--child",
            "--rows",
            str(args.rows),
            "--seed",
            str(args.seed),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append({k: float(v) for k, v in (line.split() for line in out.splitlines() if line.strip())})

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"generate_rows {int(runs[0]['lines'])} lines")
    print(f"generate_seconds {med('generate'):.2f} s")
    print(f"generate_cpu_seconds {med('cpu'):.2f} s")
    print(f"generate_write_seconds {med('write'):.2f} s")
    print(f"generate_total_seconds {med('generate') + med('write'):.2f} s")
    print(f"generate_lines_per_s {runs[0]['lines'] / med('generate'):.0f} lines/s")
    print(f"generate_peak_rss {max(r['peak'] for r in runs):.2f} GiB")
    print(f"generate_parquet_size {runs[0]['parquet']:.0f} MiB")
    print(f"generate_return_rate {runs[0]['return_rate']:.3f} share")


if __name__ == "__main__":
    main()
