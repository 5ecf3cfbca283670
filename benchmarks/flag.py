"""Abuse scoring speed and quality: `python -m benchmarks.flag --rows N [--repeat R]`.

Generates about N order lines (12.3 lines per customer, products = customers / 10, --seed, default 42:
the seed the figures are reported on; params.yaml `flag:` thresholds were chosen on seed 7), then times
`line_frame` + `score_customers` (the pure logic of the flag stage, with the product-rate expectation so
no model training is needed) and prints the evaluation figures against the generator's archetypes.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

LINES_PER_CUSTOMER = 12.3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=250_000, help="about this many order lines")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42, help="generator seed (tune on one, report on another)")
    ap.add_argument(
        "--k", type=int, default=None, help="review capacity (default: params flag.review_capacity_k)"
    )
    args = ap.parse_args(argv)

    import pandas as pd

    from models.abuse import FlagParams, evaluate, line_frame, score_customers
    from pipeline.config import load_params
    from pipeline.generator import generate

    n_customers = max(200, int(args.rows / LINES_PER_CUSTOMER))
    data = generate(n_customers=n_customers, n_products=max(20, n_customers // 10), months=18, seed=args.seed)
    t = data.tables
    cutoff = pd.Timestamp(data.meta["cutoff"])
    p = FlagParams.from_params(load_params())
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        lf = line_frame(t["orders"], t["order_lines"], t["returns"], t["products"], None, cutoff, p)
        scores = score_customers(lf, p, customers=t["customers"]["customer_id"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    m = evaluate(scores, data.truth["customers_truth"], p, k=args.k)
    print(f"flag_lines {len(lf)} lines")
    print(f"flag_customers {len(scores)} customers")
    print(f"flag_score_seconds {med:.2f} s")
    print(f"flag_lines_per_second {len(lf) / med:.0f} lines/s")
    print(f"flag_peak_rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    for key in (
        "k",
        "n_abusers",
        "n_flagged",
        "precision_at_k",
        "naive_precision_at_k",
        "recall_review_restrict",
        "recall_review_restrict_min_items",
        "naive_recall_same_count",
        "precision_review_restrict",
        "misflag_share",
    ):
        print(f"flag_{key} {m[key]:.3f} {'customers' if key.startswith(('k', 'n_')) else 'share'}")


if __name__ == "__main__":
    main()
