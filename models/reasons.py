"""Reason sentences: the one place where reason codes and their templates live.

Every model feature belongs to exactly one reason (`REASONS[code].features`) or is listed in
`GENERIC_FALLBACK` (deliberately rendered as "<description>: <value>"); `tests/test_reasons.py` fails when
a feature of `features.registry.FEATURES` is in neither, so a new feature cannot ship without a decision.

Templates are vectorised: a renderer receives `Lines` (the rows of the feature frame whose reason slot
chose this reason) and returns one sentence per row, built with numpy string operations, never a
per-line Python f-string loop (1M lines render in seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd

NO_REASON = "Nothing about this line raises its return risk above the average line"
GENERIC_PREFIX = "feature:"


class Lines:
    """The rows `rows` of a feature frame, with column access as numpy arrays (cached per frame)."""

    def __init__(self, frame: pd.DataFrame, rows: np.ndarray, cache: dict[str, np.ndarray] | None = None):
        self.frame, self.rows = frame, rows
        self._cache = cache if cache is not None else {}

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, name: str) -> bool:
        return name in self.frame.columns

    def _full(self, name: str, kind: str) -> np.ndarray:
        key = f"{kind}:{name}"
        if key not in self._cache:
            s = self.frame[name]
            if kind == "num":
                if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
                    arr = s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
                else:
                    arr = (
                        pd.to_numeric(s, errors="coerce")
                        .astype("Float64")
                        .to_numpy(np.float64, na_value=np.nan)
                    )
            else:
                arr = s.astype("string").fillna("unknown").to_numpy(dtype=object)
            self._cache[key] = arr
        return self._cache[key]

    def num(self, name: str) -> np.ndarray:
        """Column as float64 (NaN where missing or where the frame lacks the column)."""
        if not self.has(name):
            return np.full(len(self), np.nan)
        return self._full(name, "num")[self.rows]

    def text(self, name: str, missing: str = "unknown") -> np.ndarray:
        """Column as an object array of str ('unknown' where missing or absent)."""
        if not self.has(name):
            return np.full(len(self), missing, dtype=object)
        return self._full(name, "text")[self.rows]


# ---------------------------------------------------------------- vectorised formatting helpers
def cat(*parts: np.ndarray | str) -> np.ndarray:
    """Element-wise string concatenation of object arrays and constants."""
    return reduce(np.add, [p if isinstance(p, str) else np.asarray(p, dtype=object) for p in parts])


def _map_unique(x: np.ndarray, fn: Callable[[float], str]) -> np.ndarray:
    """Apply a scalar formatter once per distinct value (values repeat a lot), then gather."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.empty(0, dtype=object)
    uniq, inv = np.unique(x, return_inverse=True)  # NaNs collapse in numpy >= 1.21
    return np.array([fn(v) for v in uniq], dtype=object)[inv.reshape(-1)]


def fmt_int(x: np.ndarray, missing: str = "?") -> np.ndarray:
    """Rounded integers with thousands separators: 2300.4 -> '2,300'."""
    return _map_unique(x, lambda v: missing if np.isnan(v) else f"{round(v):,}")


def fmt_round(x: np.ndarray, to: int, missing: str = "?") -> np.ndarray:
    """Integers rounded to a multiple of `to` (distances to 100 km): 2,347 -> '2,300'."""
    return _map_unique(x, lambda v: missing if np.isnan(v) else f"{round(v / to) * to:,}")


def fmt_num(x: np.ndarray, decimals: int = 1, missing: str = "?") -> np.ndarray:
    return _map_unique(x, lambda v: missing if np.isnan(v) else f"{v:,.{decimals}f}")


def fmt_pct(x: np.ndarray, missing: str = "?") -> np.ndarray:
    """A share 0..1 as a whole percentage: 0.234 -> '23%'."""
    return _map_unique(x, lambda v: missing if np.isnan(v) else f"{round(100 * v)}%")


_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def fmt_count_word(x: np.ndarray) -> np.ndarray:
    """Small counts as words (one..nine), larger as digits."""
    return _map_unique(
        x,
        lambda v: (
            "?" if np.isnan(v) else (_WORDS[int(abs(round(v)))] if abs(round(v)) < 10 else f"{abs(round(v))}")
        ),
    )


def plural(x: np.ndarray, one: str, many: str) -> np.ndarray:
    return np.where(np.asarray(x) == 1, one, many).astype(object)


def times(x: np.ndarray) -> np.ndarray:
    """'once', 'twice', '4 times'."""
    return _map_unique(
        x, lambda v: "?" if np.isnan(v) else {1: "once", 2: "twice"}.get(int(round(v)), f"{round(v):,} times")
    )


def choose(conditions: list[np.ndarray], choices: list[np.ndarray], default: np.ndarray) -> np.ndarray:
    """np.select for object arrays: the first true condition's sentence, else `default`."""
    out = np.asarray(default, dtype=object).copy()
    done = np.zeros(len(out), dtype=bool)
    for cond, choice in zip(conditions, choices, strict=True):
        take = np.asarray(cond, dtype=bool) & ~done
        out[take] = np.asarray(choice, dtype=object)[take]
        done |= take
    return out


# ---------------------------------------------------------------- the reasons
@dataclass(frozen=True)
class Reason:
    """One reason code: which features it groups and how it is said."""

    code: str
    title: str
    features: tuple[str, ...]
    render: Callable[[Lines], np.ndarray]


def _generic(feature: str) -> Callable[[Lines], np.ndarray]:
    """The deliberate fallback: '<description>: <value>' (description from the feature registry)."""

    def render(lines: Lines) -> np.ndarray:
        label = feature_description(feature)
        try:
            vals = lines.num(feature)
            is_num = not np.all(np.isnan(vals)) or not lines.has(feature)
        except (TypeError, ValueError):
            is_num = False
        shown = fmt_num(vals, 2) if is_num else lines.text(feature)
        return cat(label, ": ", shown)

    return render


def feature_description(feature: str) -> str:
    """The registry's one-sentence description (without the final dot), else the feature name."""
    try:
        from features.registry import FEATURES
    except ImportError:  # registry not importable: fall back to the name
        return feature.replace("_", " ").capitalize()
    for spec in FEATURES:
        if spec.name == feature:
            return spec.description.rstrip(". ")
    return feature.replace("_", " ").capitalize()


REASONS: dict[str, Reason] = {}
GENERIC_FALLBACK: frozenset[str] = frozenset()


def register(reason: Reason) -> Reason:
    if reason.code in REASONS:
        raise ValueError(f"reason code {reason.code!r} defined twice")
    REASONS[reason.code] = reason
    return reason


def reason_of(feature: str) -> str:
    """The reason code a feature's contribution is grouped into (generic per-feature code if unassigned)."""
    return _REASON_OF.get(feature, GENERIC_PREFIX + feature)


def render(code: str, lines: Lines) -> np.ndarray:
    """Sentences for `lines` under reason `code`."""
    if code in REASONS:
        return REASONS[code].render(lines)
    if code.startswith(GENERIC_PREFIX):
        return _generic(code[len(GENERIC_PREFIX) :])(lines)
    raise KeyError(f"unknown reason code {code!r}")


def render_reasons(idx: np.ndarray, codes: list[str], frame: pd.DataFrame) -> list[np.ndarray]:
    """One object array of sentences per reason slot; slot 1 of a line without reasons gets NO_REASON.

    Each (slot, reason) pair renders once over all the lines that chose it (vectorised).
    """
    n, k = idx.shape
    cache: dict[str, np.ndarray] = {}
    out = []
    for j in range(k):
        col = np.full(n, None, dtype=object)
        slot = idx[:, j]
        order = np.argsort(slot, kind="stable")
        bounds = np.searchsorted(slot[order], np.arange(-1, len(codes) + 1))
        for c in range(len(codes)):
            rows = order[bounds[c + 1] : bounds[c + 2]]
            if len(rows):
                col[rows] = render(codes[c], Lines(frame, rows, cache))
        if j == 0:
            col[slot < 0] = NO_REASON
        out.append(col)
    return out


# ---------------------------------------------------------------- index (after all registrations)
def _index() -> dict[str, str]:
    owner: dict[str, str] = {}
    for reason in REASONS.values():
        for f in reason.features:
            if f in owner:
                raise ValueError(f"feature {f!r} is in reasons {owner[f]!r} and {reason.code!r}; one only")
            if f in GENERIC_FALLBACK:
                raise ValueError(f"feature {f!r} has a template ({reason.code!r}) and is in GENERIC_FALLBACK")
            owner[f] = reason.code
    return owner


_REASON_OF: dict[str, str] = _index()
