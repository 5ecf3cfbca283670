"""VADER compound scores of review texts, in this process or in a worker process.

VADER (vaderSentiment) is pure Python: scored in a thread it holds the GIL for seconds and slows the
numpy/DuckDB driver code next to it. `start_scoring` runs the very same `sentiment_scores` in a child
interpreter (`python -m features.vader`) that imports only numpy and vaderSentiment; the texts go in and
the float64 scores come back over pipes, so the scores are the ones the in-process call gives, bit for
bit (tests/test_features_families.py). The worker runs at the lowest CPU priority (`_yield_cpu`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score (-1..1) of each text; callers pass distinct texts (scoring is per text)."""
    analyzer = _analyzer()
    return np.fromiter(
        (analyzer.polarity_scores(t)["compound"] for t in texts), dtype="float64", count=len(texts)
    )


def _pack(texts: Sequence[str]) -> bytes:
    """Texts as: count (int64), UTF-8 byte lengths (int64 each), the UTF-8 bytes back to back."""
    data = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(d) for d in data), np.int64, count=len(data))
    return np.int64(len(data)).tobytes() + lengths.tobytes() + b"".join(data)


def _unpack(buf: bytes) -> list[str]:
    n = int(np.frombuffer(buf, np.int64, 1)[0])
    ends = np.cumsum(np.frombuffer(buf, np.int64, n, offset=8)) + 8 * (n + 1)
    starts = np.concatenate([[8 * (n + 1)], ends[:-1]]).tolist()
    return [buf[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist(), strict=True)]


def start_scoring(texts: Sequence[str]) -> Callable[[], tuple[np.ndarray, float]]:
    """Score `texts` in a worker process started now; returns a function that waits for the scores
    (and the worker's wall seconds). A failing worker raises there, with its error output."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "features.vader"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    payload = _pack(texts)
    pool = ThreadPoolExecutor(1, thread_name_prefix="vader-pipe")  # writes, then reads: no deadlock
    future = pool.submit(proc.communicate, payload)
    pool.shutdown(wait=False)

    def result() -> tuple[np.ndarray, float]:
        out, err = future.result()
        if proc.returncode != 0:
            raise RuntimeError(
                f"VADER worker failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}"
            )
        scores = np.frombuffer(out, np.float64)
        if len(scores) != len(texts):
            raise RuntimeError(f"VADER worker returned {len(scores)} scores for {len(texts)} texts")
        return scores, time.perf_counter() - t0

    return result


def _yield_cpu() -> None:
    """Run at the lowest CPU priority (Unix `nice` 19; elsewhere as is).

    The scores are needed only by the late stream pass, seconds after the worker starts: at normal
    priority it took a core from the scan's kernel threads and prolonged the critical path; at nice 19
    it runs on the core the featurize process leaves idle (single-threaded preparation, the kernel's
    longest run alone). Measured at 10M lines in BENCHMARKS.md ("Seventh pass").
    """
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(19)


def _main() -> None:
    _yield_cpu()
    texts = _unpack(sys.stdin.buffer.read())
    sys.stdout.buffer.write(sentiment_scores(texts).tobytes())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _main()
