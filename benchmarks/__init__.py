"""Benchmarks: `python -m benchmarks.<name> --rows N` prints one `name value unit` line per figure.

`python -m benchmarks.run` (what `make bench` calls) runs every module listed in `benchmarks.run.BENCHMARKS`.
"""
