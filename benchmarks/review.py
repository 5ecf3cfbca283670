"""Reviewer app latency: queue pages over N flagged customers, and customer pages over their history.

`python -m benchmarks.review --rows 50000` writes a synthetic reviewer dataset (N flagged customers,
`--orders` orders of two lines each per customer, line reasons for every line), records `--decisions`
decisions, then times server-side requests in process (FastAPI TestClient: routing, auth, store,
filtering, Jinja rendering; no network). Prints `name value unit` lines.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="flagged customers")
    ap.add_argument("--orders", type=int, default=4, help="orders per customer (two lines each)")
    ap.add_argument("--decisions", type=int, default=2_000, help="decisions recorded before timing")
    ap.add_argument("--repeat", type=int, default=15, help="requests per queue variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from fastapi.testclient import TestClient

    from pipeline.review.app import create_app, customer_url
    from pipeline.review.sample import write_sample
    from pipeline.review.store import DECISIONS, DecisionStore, init_db

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        sample = write_sample(root, n_customers=args.rows, orders_per_customer=args.orders, seed=args.seed)
        print(f"review_sample_write_s {time.perf_counter() - t0:.2f} s")
        print(f"review_history_lines {args.rows * args.orders * 2} lines")
        db = init_db(root / "decisions.db")
        store = DecisionStore.open(db)
        # time single decisions the way the app writes them (one durable transaction each) ...
        n_single = min(20, args.decisions)
        t0 = time.perf_counter()
        for i in range(n_single):
            store.record(str(rng.choice(sample.customer_ids)), DECISIONS[i % 3], "bench", "bench")
        if n_single:
            print(f"review_decision_write_ms {(time.perf_counter() - t0) / n_single * 1000:.2f} ms")
        # ... and bulk-load the rest in one transaction (the fsync per commit would dominate the run)
        con = sqlite3.connect(db)
        with con:
            con.executemany(
                "INSERT INTO decisions (customer_id, customer_id_type, decision, note, reviewer, decided_at)"
                " VALUES (?, 'str', ?, 'bench', 'bench', '2026-01-01T00:00:00')",
                [
                    (str(rng.choice(sample.customer_ids)), DECISIONS[i % 3])
                    for i in range(args.decisions - n_single)
                ],
            )
        con.close()

        token = "benchmark-token-0123456789"
        t0 = time.perf_counter()
        app = create_app(
            flags_dir=sample.flags,
            validated_dir=sample.validated,
            explain_dir=sample.explain,
            db_path=db,
            token=token,
        )
        print(f"review_app_start_s {time.perf_counter() - t0:.2f} s")
        client = TestClient(app, headers={"X-Review-Token": token})
        pages = max(1, args.rows // 50)
        variants = {
            "first": "/queue",
            "tier": "/queue?tier=review",
            "tier_type": "/queue?tier=restrict&type=wardrober",
            "search": "/queue?q=c0001",
            "deep_page": f"/queue?page={pages // 2}",
            "status": "/queue?status=undecided&tier=watch",
        }
        client.get("/queue")  # warm-up (template compilation)
        all_ms: list[float] = []
        for name, url in variants.items():
            ms = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = client.get(url)
                ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (url, r.status_code)
            all_ms += ms
            print(f"review_queue_{name}_p50_ms {statistics.median(ms):.1f} ms")
        print(f"review_queue_p50_ms {statistics.median(all_ms):.1f} ms")
        print(f"review_queue_p95_ms {_pct(all_ms, 0.95):.1f} ms")

        cust_ms = []
        for cid in rng.sample(sample.customer_ids, min(30, len(sample.customer_ids))):
            t = time.perf_counter()
            r = client.get(customer_url(str(cid)))
            cust_ms.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
        print(f"review_customer_p50_ms {statistics.median(cust_ms):.1f} ms")
        print(f"review_customer_p95_ms {_pct(cust_ms, 0.95):.1f} ms")
        app.state.data.close()


if __name__ == "__main__":
    main()
