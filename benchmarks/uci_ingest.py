"""UCI reader speed: `python -m benchmarks.uci_ingest --rows N [--repeat R] [--real FILE]`.

Builds an Online-Retail-shaped export of N rows (seeded: invoices of ~20 lines, 25% without a customer,
~1.7% cancellations of which most refer back to an earlier purchase, some postage lines), then times
`map_online_retail` and its cancellation matching alone (medians of R runs). With --real it also times
the mapping of a real export file. Prints one `name value unit` line per figure.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_export(rows: int, seed: int = 0) -> pd.DataFrame:
    """An Online Retail (I) frame of `rows` rows with the real file's proportions (not its values)."""
    rng = np.random.default_rng(seed)
    n_cancel = int(rows * 0.017)
    n_post = int(rows * 0.005)
    n_buy = rows - n_cancel - n_post
    n_customers = max(10, rows // 120)
    n_codes = max(20, min(4000, rows // 130))
    inv = np.arange(n_buy) // 20
    n_inv = int(inv[-1]) + 1 if n_buy else 0
    inv_ts = pd.Timestamp("2010-12-01") + pd.to_timedelta(np.sort(rng.uniform(0, 370, n_inv)), unit="D")
    inv_cust = rng.integers(12000, 12000 + n_customers, n_inv).astype("float64")
    inv_cust[rng.random(n_inv) < 0.25] = np.nan
    codes = np.char.add("2", (rng.zipf(1.3, n_buy) % n_codes).astype(str))
    buys = pd.DataFrame(
        {
            "InvoiceNo": (536000 + inv).astype(str),
            "StockCode": codes,
            "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "Quantity": rng.integers(1, 25, n_buy),
            "InvoiceDate": inv_ts[inv].floor("min"),
            "UnitPrice": rng.choice([0.85, 1.25, 2.55, 4.95], n_buy),
            "CustomerID": inv_cust[inv],
            "Country": "United Kingdom",
        }
    )
    known = np.flatnonzero(buys["CustomerID"].notna().to_numpy())
    src = buys.iloc[rng.choice(known, n_cancel)] if len(known) and n_cancel else buys.iloc[:0]
    later = pd.to_timedelta(rng.uniform(-3, 30, len(src)), unit="D")  # some before the purchase: unmatched
    cancels = src.assign(
        InvoiceNo="C" + src["InvoiceNo"],
        Quantity=-np.maximum(1, (src["Quantity"].to_numpy() * rng.uniform(0.2, 1.3, len(src))).astype(int)),
        InvoiceDate=(src["InvoiceDate"] + later).dt.floor("min"),
    )
    post = buys.iloc[rng.choice(len(buys), n_post)].assign(
        StockCode="POST", Description="POSTAGE", Quantity=1
    )
    out = pd.concat([buys, cancels, post], ignore_index=True)
    return out.sort_values("InvoiceDate", kind="stable", ignore_index=True)


def _median_time(fn, repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `repeat` calls (CPU time is robust to other load on the machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    from pipeline.sources.uci import map_online_retail, match_cancellations, normalise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=540_000, help="rows of the synthetic export")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is printed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", type=Path, help="also time the mapping of this real export (.parquet)")
    args = ap.parse_args(argv)

    df = synthetic_export(args.rows, args.seed)
    secs, cpu = _median_time(lambda: map_online_retail(df), args.repeat)
    _, report = map_online_retail(df)
    print(f"uci_map_rows {len(df)} rows")
    print(f"uci_map_seconds {secs:.3f} s")
    print(f"uci_map_cpu_seconds {cpu:.3f} s")
    print(f"uci_map_rows_per_second {len(df) / secs:.0f} rows/s")

    x, _ = normalise(df)
    is_c = x["invoice"].str.startswith("C").to_numpy() & x["customer"].notna().to_numpy()
    cols = ["row", "customer", "stock_code", "invoice_ts", "quantity"]
    ren = {"stock_code": "product_id", "invoice_ts": "ts"}
    buys = x.loc[
        ~is_c & x["customer"].notna().to_numpy() & (x["stock_code"] != "POST").to_numpy(), cols
    ].rename(columns=ren)
    cancels = x.loc[is_c, cols].rename(columns=ren).assign(quantity=lambda d: -d["quantity"])
    buys["quantity"] = buys["quantity"].astype("int64")
    cancels["quantity"] = cancels["quantity"].astype("int64")
    m_secs, m_cpu = _median_time(lambda: match_cancellations(buys, cancels), args.repeat)
    print(f"uci_match_cancellations {len(cancels)} rows")
    print(f"uci_match_seconds {m_secs:.3f} s")
    print(f"uci_match_cpu_seconds {m_cpu:.3f} s")
    print(f"uci_cancellations_unmatched {report['cancellations']['rows_unmatched']} rows")

    if args.real is not None:
        real = pd.read_parquet(args.real)
        r_secs, r_cpu = _median_time(lambda: map_online_retail(real), args.repeat)
        print(f"uci_real_rows {len(real)} rows")
        print(f"uci_real_map_seconds {r_secs:.3f} s")
        print(f"uci_real_map_cpu_seconds {r_cpu:.3f} s")
    print(f"uci_peak_rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
