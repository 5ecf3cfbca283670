"""VADER compound scores of review texts, in this process or in a worker process.

VADER (vaderSentiment) is pure Python: scored in a thread it holds the GIL for seconds and slows the
numpy/DuckDB driver code next to it. `start_scoring` runs the very same `sentiment_scores` in a child
interpreter (`python -m features.vader`) that imports only numpy and vaderSentiment; the texts go in and
the float64 scores come back over pipes, so the scores are the ones the in-process call gives, bit for
bit (tests/test_features_families.py). The worker runs at the lowest CPU priority (`_yield_cpu`).

`sentiment_scores` gives `SentimentIntensityAnalyzer.polarity_scores(t)["compound"]` bit for bit, about 4x
faster on review texts (`_MemoScorer`): VADER's rules give each lexicon word a valence that depends only on
the words from three before it to two after it (and on whether the text mixes ALL-CAPS words), so that
valence is computed by VADER's own `sentiment_valence` once per distinct window and reused; the text-wide
steps (summing, punctuation emphasis, normalising) are VADER's. Texts this shortcut does not cover (non-ASCII,
which VADER first translates emojis in, and the word "but", which reweights the whole text) go to VADER whole.
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
from types import SimpleNamespace
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class _Memo(dict):
    """A dict that fills a missing key with `fn(key)`: a per-token cache without a Python-level lookup."""

    def __init__(self, fn: Callable[[str], Any]) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: str) -> Any:
        value = self[key] = self.fn(key)
        return value


class _MemoScorer:
    """VADER's compound score with each lexicon word's valence computed once per context window.

    In `SentimentIntensityAnalyzer.polarity_scores` the valence of word i reads only words i-3..i+2 (the
    "no"/"least"/negation/booster/idiom rules), its position when it is among the first three words, and
    the text's `is_cap_diff`. That is the memo key; a miss asks VADER's `sentiment_valence` about the window
    alone, with the word at the same offset, which reads exactly the same words and bounds. The words after
    it are read only when it is "no" or begins a multi-word VADER special case (e.g. "bad ass"); otherwise
    they enter the key as one `_AFTER`, which no rule matches, so "good fit" and "good quality" share a window.
    """

    _AFTER = " "  # never a token (tokens are whitespace-split) nor in any of VADER's word lists
    MAX_WINDOWS = 2_000_000  # the memos are cleared past this many windows or tokens (about 0.5 GB)

    def __init__(self) -> None:
        from vaderSentiment import vaderSentiment as vs

        self.vs = vs
        self.analyzer = _analyzer()
        self.lexicon = self.analyzer.lexicon
        self.boosters = vs.BOOSTER_DICT
        self.tokens = _Memo(vs.SentiText._strip_punc_if_word)
        self.lowers = _Memo(str.lower)
        self.windows: dict[tuple, float] = {}
        self.reads_after = {"no", *(case.split()[0] for case in vs.SPECIAL_CASES if " " in case)}

    def _valence(self, key: tuple, is_cap_diff: bool, offset: int) -> float:
        window = SimpleNamespace(words_and_emoticons=list(key[2:]), is_cap_diff=is_cap_diff)
        value = self.analyzer.sentiment_valence(0, window, key[2 + offset], offset, [])[-1]
        if len(self.windows) >= self.MAX_WINDOWS:
            self.windows.clear()

        self.windows[key] = value
        return value

    def compound(self, text: str) -> float:
        if not (isinstance(text, str) and text.isascii()):  # emojis are translated by VADER first
            return self.analyzer.polarity_scores(text)["compound"]
        text = text.strip()  # what VADER's emoji pass leaves of an ASCII text
        if len(self.tokens) >= self.MAX_WINDOWS:
            self.tokens.clear()
            self.lowers.clear()
        tokens = [self.tokens[w] for w in text.split()]
        lowers = [self.lowers[w] for w in tokens]
        if "but" in lowers:  # "but" reweights every word before and after it
            return self.analyzer.polarity_scores(text)["compound"]
        n = len(tokens)
        is_cap_diff = 0 < n - sum(map(str.isupper, tokens)) < n  # vaderSentiment.allcap_differential
        lexicon, boosters, windows, after = self.lexicon, self.boosters, self.windows, self._AFTER
        sentiments: list[float] = []
        for i, low in enumerate(lowers):
            if (
                low in boosters
                or low not in lexicon
                or (low == "kind" and i < n - 1 and lowers[i + 1] == "of")
            ):
                sentiments.append(0)  # VADER's own zero (an int), summed the same way
                continue
            lo = i - 3 if i > 3 else 0
            if low in self.reads_after or i + 1 == n:
                key = (is_cap_diff, i - lo, *tokens[lo : i + 3])
            else:
                key = (is_cap_diff, i - lo, *tokens[lo : i + 1], after)  # one follower: the same bounds
            value = windows.get(key)
            sentiments.append(self._valence(key, is_cap_diff, i - lo) if value is None else value)
        if not sentiments:
            return 0.0
        sum_s = float(sum(sentiments))  # vaderSentiment's score_valence, its compound part
        punct = self.analyzer._punctuation_emphasis(text)
        if sum_s > 0:
            sum_s += punct
        elif sum_s < 0:
            sum_s -= punct
        return round(self.vs.normalize(sum_s), 4)


@lru_cache(maxsize=1)
def _scorer() -> _MemoScorer:
    return _MemoScorer()


def sentiment_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score (-1..1) of each text; callers pass distinct texts (scoring is per text)."""
    compound = _scorer().compound
    return np.fromiter((compound(t) for t in texts), dtype="float64", count=len(texts))


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
