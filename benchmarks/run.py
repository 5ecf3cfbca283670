"""Run every benchmark with small defaults (`make bench`): `python -m benchmarks.run [--only NAME] [--rows N]`.

Add a benchmark by appending (module name under benchmarks/, default arguments) to BENCHMARKS; the module
must expose `main(argv: list[str] | None)` and print one `name value unit` line per figure.
"""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("generate", ["--rows", "1000000"]),
    ("validation", ["--rows", "300000", "--repeat", "1"]),
    ("uci_ingest", ["--rows", "540000", "--repeat", "1"]),
    ("flag", ["--rows", "250000", "--repeat", "1"]),
    ("featurize", ["--rows", "300000"]),
    ("train", ["--rows", "200000"]),
    ("score", ["--rows", "200000", "--reasons-rows", "10000"]),
    ("explain", ["--rows", "200000", "--sample", "20000", "--grid", "63:-1:0.1,15:5:0.1,4:2:0.2"]),
    ("review", ["--rows", "50000", "--repeat", "5"]),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="run only this benchmark (repeatable)")
    ap.add_argument("--rows", type=int, help="override --rows of every benchmark")
    args = ap.parse_args(argv)
    known = [name for name, _ in BENCHMARKS]
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {known}")
    for name, defaults in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        bench_args = list(defaults)
        if args.rows is not None:
            bench_args = [
                a
                for i, a in enumerate(bench_args)
                if a != "--rows" and (i == 0 or bench_args[i - 1] != "--rows")
            ]
            bench_args += ["--rows", str(args.rows)]
        print(f"# benchmarks.{name} {' '.join(bench_args)}", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main(bench_args)
        print(f"# benchmarks.{name} took {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
