"""Reason sentences: the one place where reason codes and their templates live.

Every model feature belongs to exactly one reason (`REASONS[code].features`) or is listed in
`GENERIC_FALLBACK` (deliberately rendered as "<description>: <value>"); `tests/test_reasons.py` fails when
a feature of `features.registry.FEATURES` is in neither, so a new feature cannot ship without a decision.

Templates are vectorised: a renderer receives `Lines` (the rows of the feature frame whose reason chose
this reason) and returns one sentence per row as a `Text`: integer codes into a table of distinct strings.
Values repeat a lot (a few hundred distinct counts, percentages, categories), so each formatter formats a
distinct value once, `cat` builds each distinct combination of its parts once and `choose` only moves
codes; strings are gathered per line once, when `render_reasons` hands the sentences out. The sentences
are those of the earlier per-value formatting, byte for byte (tests/test_reasons_render.py renders every
reason line by line and checks every formatter against Python's own f-strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd

NO_REASON = "Nothing about this line raises its return risk above the average line"
GENERIC_PREFIX = "feature:"


def _objects(values) -> np.ndarray:
    """A 1-D object array of `values` (strings stay whole, never split into characters)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class Text:
    """One string per line, stored as integer `codes` into `vocab` (distinct strings, unused ones allowed).

    Array-like: `to_array()` / `np.asarray(text)` / `tolist()` give the strings per line.
    """

    __slots__ = ("codes", "vocab")

    def __init__(self, codes: np.ndarray, vocab) -> None:
        self.codes = np.asarray(codes, dtype=np.intp)
        self.vocab = vocab if isinstance(vocab, np.ndarray) and vocab.dtype == object else _objects(vocab)

    @classmethod
    def const(cls, s: str, n: int) -> Text:
        return cls(np.zeros(n, dtype=np.intp), _objects([s]))

    @classmethod
    def of(cls, values) -> Text:
        """Codes of an array of strings (each distinct value once)."""
        if isinstance(values, Text):
            return values
        codes, uniq = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
        return cls(codes, _objects(uniq))

    def __len__(self) -> int:
        return len(self.codes)

    def to_array(self) -> np.ndarray:
        return self.vocab[self.codes] if len(self.vocab) else np.empty(len(self.codes), dtype=object)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.to_array()
        return arr if dtype is None else arr.astype(dtype)

    def __iter__(self):
        return iter(self.to_array())

    def tolist(self) -> list:
        return self.to_array().tolist()

    def eq(self, s: str) -> np.ndarray:
        """Per line: is the string `s`? (compared once per distinct string)."""
        if not len(self.vocab):
            return np.zeros(len(self.codes), dtype=bool)
        return np.asarray(self.vocab == s, dtype=bool)[self.codes]

    def ne(self, s: str) -> np.ndarray:
        return ~self.eq(s)


Part = Text | np.ndarray | str


class Lines:
    """The rows `rows` of a feature frame, with column access as numpy arrays (cached per frame)."""

    def __init__(
        self,
        frame: pd.DataFrame,
        rows: np.ndarray,
        cache: dict[str, object] | None = None,
        contrib: np.ndarray | None = None,
        features: list[str] | None = None,
    ):
        self.frame, self.rows = frame, rows
        self._cache = cache if cache is not None else {}
        self._contrib = contrib
        self._col = {f: j for j, f in enumerate(features or [])}

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, name: str) -> bool:
        return name in self.frame.columns

    def _num_full(self, name: str) -> np.ndarray:
        key = f"num:{name}"
        if key not in self._cache:
            s = self.frame[name]
            if not (pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s)):
                s = pd.to_numeric(s, errors="coerce")
            # numpy and nullable numbers alike, NA -> NaN, without a Float64 copy on the way
            self._cache[key] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return self._cache[key]  # type: ignore[return-value]

    def _text_full(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes, distinct strings) of a column: str() of each value, 'unknown' where missing."""
        key = f"text:{name}"
        if key not in self._cache:
            s = self.frame[name]
            if isinstance(s.dtype, pd.CategoricalDtype):  # convert the categories, not every line
                cats = pd.Series(s.cat.categories).astype("string").fillna("unknown").to_numpy(dtype=object)
                codes = s.cat.codes.to_numpy().astype(np.intp)
                codes[codes < 0] = len(cats)
                vocab = _objects([*cats, "unknown"])
            else:
                arr = s.astype("string").fillna("unknown").to_numpy(dtype=object)
                codes, uniq = pd.factorize(arr, use_na_sentinel=False)
                vocab = _objects(uniq)
            self._cache[key] = (np.asarray(codes, dtype=np.intp), vocab)
        return self._cache[key]  # type: ignore[return-value]

    def num(self, name: str) -> np.ndarray:
        """Column as float64 (NaN where missing or where the frame lacks the column)."""
        if not self.has(name):
            return np.full(len(self), np.nan)
        return self._num_full(name)[self.rows]

    def contrib(self, name: str) -> np.ndarray:
        """The feature's SHAP value (log-odds) on these rows; 0 when unknown (not a model feature)."""
        if self._contrib is None or name not in self._col:
            return np.zeros(len(self))
        return self._contrib[self.rows, self._col[name]]

    def strongest(self, groups: dict[str, tuple[str, ...]]) -> np.ndarray:
        """Per row, the key of `groups` whose features push hardest toward a return (sum of SHAP values).

        Lets one reason pick the sentence for the part of it that actually drove the score.
        """
        keys, n = list(groups), len(self)
        if not n:
            return np.empty(0, dtype=object)
        sums = np.zeros((n, len(keys)))
        for j, key in enumerate(keys):  # each group summed in its feature order (unknown features: 0)
            acc = np.zeros(n)
            for f in groups[key]:
                if self._contrib is not None and f in self._col:
                    acc = acc + self.contrib(f)
            sums[:, j] = acc
        return np.array(keys, dtype=object)[np.argmax(sums, axis=1)]

    def text(self, name: str, missing: str = "unknown") -> Text:
        """Column as text ('unknown' where missing; `missing` on every line when the frame lacks it)."""
        if not self.has(name):
            return Text.const(missing, len(self))
        codes, vocab = self._text_full(name)
        return Text(codes[self.rows], vocab)


# ---------------------------------------------------------------- vectorised formatting helpers
_DENSE_MIN = 1 << 16


def _compact(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes 0..u-1, the u distinct keys) of integer keys in [0, size): a bitmap when small, else a hash."""
    if size <= max(4 * len(key), _DENSE_MIN):
        seen = np.zeros(size, dtype=bool)
        seen[key] = True
        uniq = np.flatnonzero(seen)
        remap = np.zeros(size, dtype=np.intp)
        remap[uniq] = np.arange(len(uniq))
        return remap[key], uniq
    codes, uniq = pd.factorize(key)
    return np.asarray(codes, dtype=np.intp), np.asarray(uniq, dtype=np.int64)


def _as_text(part: Part, n: int) -> Text:
    if isinstance(part, Text):
        return part
    if isinstance(part, str):
        return Text.const(part, n)
    return Text.of(part)


def _length(parts) -> int | None:
    for p in parts:
        if not isinstance(p, str):
            return len(p)
    return None


_KEY_LIMIT = 1 << 62


def cat(*parts: Part) -> Text | str:
    """Element-wise string concatenation of texts, string arrays and constants.

    Each distinct combination of the parts' codes is joined once (mixed-radix key, then compacted).
    """
    n = _length(parts)
    if n is None:
        return "".join(parts)  # type: ignore[arg-type]
    texts = [(i, _as_text(p, n)) for i, p in enumerate(parts) if not isinstance(p, str)]
    key, size = np.zeros(n, dtype=np.int64), 1
    for j, (i, t) in enumerate(texts):
        m = max(len(t.vocab), 1)
        if j > 1 and size * m >= _KEY_LIMIT:  # too many combinations for one key: join the prefix first
            return cat(cat(*parts[:i]), *parts[i:])
        key = key * m + t.codes
        size *= m
    codes, uniq = _compact(key, size)
    pieces: list[np.ndarray | str] = list(parts)  # type: ignore[arg-type]
    for i, t in reversed(texts):
        m = max(len(t.vocab), 1)
        pieces[i] = t.vocab[uniq % m] if len(t.vocab) else _objects([""] * len(uniq))
        uniq = uniq // m
    if len(codes) == 0:
        return Text(codes, _objects([]))
    return Text(codes, reduce(np.add, pieces))


def _format_keys(key: np.ndarray, fn: Callable[[float], str], missing: str) -> Text:
    """Format each distinct float key once (NaN -> `missing`); codes gather them per line."""
    codes, uniq = pd.factorize(key, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.intp)
    codes[codes < 0] = len(uniq)
    return Text(codes, _objects([*(fn(v) for v in uniq.tolist()), missing]))


def _float(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def fmt_int(x: np.ndarray, missing: str = "?") -> Text:
    """Rounded integers with thousands separators: 2300.4 -> '2,300' (half to even, as round())."""
    return _format_keys(np.rint(_float(x)), lambda v: f"{int(v):,}", missing)


def fmt_round(x: np.ndarray, to: int, missing: str = "?") -> Text:
    """Integers rounded to a multiple of `to` (distances to 100 km): 2,347 -> '2,300'."""
    return _format_keys(np.rint(_float(x) / to), lambda v: f"{int(v) * to:,}", missing)


def fmt_num(x: np.ndarray, decimals: int = 1, missing: str = "?") -> Text:
    """'1,234.5': each distinct float (by its bits, so -0.0 stays '-0.0') formatted once."""
    x = _float(x)
    nan = np.isnan(x)
    bits = np.ascontiguousarray(x).view(np.int64).copy()
    bits[nan] = 0
    codes, uniq = pd.factorize(bits)
    codes = np.asarray(codes, dtype=np.intp)
    codes[nan] = len(uniq)
    values = np.asarray(uniq, dtype=np.int64).view(np.float64).tolist()
    return Text(codes, _objects([*(f"{v:,.{decimals}f}" for v in values), missing]))


def fmt_pct(x: np.ndarray, missing: str = "?") -> Text:
    """A share 0..1 as a whole percentage: 0.234 -> '23%'."""
    return _format_keys(np.rint(100 * _float(x)), lambda v: f"{int(v)}%", missing)


_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _count_word(v: float) -> str:
    a = abs(int(v))
    return _WORDS[a] if a < 10 else f"{a}"


def fmt_count_word(x: np.ndarray) -> Text:
    """Small counts as words (one..nine), larger as digits."""
    return _format_keys(np.rint(_float(x)), _count_word, "?")


def plural(x: np.ndarray, one: str, many: str) -> Text:
    return Text(np.where(np.asarray(x) == 1, 0, 1), _objects([one, many]))


def times(x: np.ndarray) -> Text:
    """'once', 'twice', '4 times'."""
    return _format_keys(
        np.rint(_float(x)), lambda v: {1: "once", 2: "twice"}.get(int(v), f"{int(v):,} times"), "?"
    )


def choose(conditions: list[np.ndarray], choices: list[Part], default: Part) -> Text:
    """np.select for texts: the first true condition's sentence, else `default` (codes only move)."""
    n = _length([default, *choices])
    if n is None:
        n = len(conditions[0]) if conditions else 0
    first = _as_text(default, n)
    codes, vocabs, off = first.codes.copy(), [first.vocab], len(first.vocab)
    done = np.zeros(n, dtype=bool)
    for cond, choice in zip(conditions, choices, strict=True):
        take = np.asarray(cond, dtype=bool) & ~done
        if take.any():
            t = _as_text(choice, n)
            codes[take] = t.codes[take] + off
            vocabs.append(t.vocab)
            off += len(t.vocab)
        done |= take
    if len(vocabs) == 1:
        return Text(codes, first.vocab)
    codes, used = _compact(codes, off)
    return Text(codes, np.concatenate(vocabs)[used])


def only(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`x` where `mask`, else NaN: a formatter then formats only the values of lines that can show them
    (the other lines take another sentence), so fewer distinct values and combinations are built."""
    return np.where(mask, x, np.nan)


def either(cond: np.ndarray, yes: Part, no: Part) -> Text:
    """np.where for texts."""
    return choose([cond], [yes], no)


# ---------------------------------------------------------------- the reasons
@dataclass(frozen=True)
class Reason:
    """One reason code: which features it groups and how it is said."""

    code: str
    title: str
    family: str
    features: tuple[str, ...]
    render: Callable[[Lines], Text]


def _generic(feature: str) -> Callable[[Lines], Text]:
    """The deliberate fallback: '<description>: <value>' (description from the feature registry).

    Numbers when the column holds any number (in the whole frame, so a line's sentence does not depend on
    which other lines share its batch), else its text.
    """

    def render(lines: Lines) -> Text:
        label = feature_description(feature)
        try:
            vals = lines.num(feature)
            is_num = not lines.has(feature) or not np.all(np.isnan(lines._num_full(feature)))
        except (TypeError, ValueError):
            is_num = False
        shown = fmt_num(vals, 2) if is_num else lines.text(feature)
        return cat(label, ": ", shown)  # type: ignore[return-value]

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


def render(code: str, lines: Lines) -> Text:
    """Sentences for `lines` under reason `code` (a `Text`: `.tolist()` / `np.asarray` give the strings)."""
    if code in REASONS:
        return REASONS[code].render(lines)
    if code.startswith(GENERIC_PREFIX):
        return _generic(code[len(GENERIC_PREFIX) :])(lines)
    raise KeyError(f"unknown reason code {code!r}")


def render_reasons(
    idx: np.ndarray,
    codes: list[str],
    frame: pd.DataFrame,
    contrib: np.ndarray | None = None,
    features: list[str] | None = None,
) -> list[np.ndarray]:
    """One object array of sentences per reason slot; slot 1 of a line without reasons gets NO_REASON.

    Each reason renders once over all the lines that chose it in any slot (a line's sentence depends on
    the line only), as codes; one gather per slot makes the strings. `frame` rows align with `idx` rows
    (positional); `contrib`/`features` let templates see per-feature SHAP values.
    """
    n, k = idx.shape
    if k == 0:
        return []
    cache: dict[str, object] = {}
    flat = idx.reshape(-1)  # position p = line * k + slot
    # small integer codes sort by radix (linear) when stable
    order = np.argsort(flat.astype(np.int16) if len(codes) < 32_000 else flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(len(codes) + 1))
    all_codes = np.zeros(n * k, dtype=np.intp)  # 0: None
    all_codes[0::k][idx[:, 0] < 0] = 1  # 1: NO_REASON in slot 1
    vocabs: list[np.ndarray] = [_objects([None, NO_REASON])]
    off = 2
    for c in range(len(codes)):
        pos = order[bounds[c] : bounds[c + 1]]
        if not len(pos):
            continue
        text = render(codes[c], Lines(frame, pos // k, cache, contrib, features))
        if not isinstance(text, Text):  # a renderer that returns plain strings
            text = Text(np.arange(len(pos)), _objects(np.asarray(text, dtype=object)))
        all_codes[pos] = text.codes + off
        vocabs.append(text.vocab)
        off += len(text.vocab)
    vocab = np.concatenate(vocabs)
    out = vocab[all_codes.reshape(n, k).T]  # k x n: each slot contiguous
    return [out[j] for j in range(k)]


# ---------------------------------------------------------------- templates, one per reason
#: The reason-mix features of the past_returns family and how a sentence names them.
_RETURN_MIX = {
    "cust_fit_return_rate": "as too small or too large",
    "cust_claim_return_rate": "as damaged or not as described",
    "cust_quality_return_rate": "for quality",
    "cust_mind_return_rate": "as changed mind",
    "cust_late_return_rate": "late in the return window",
}


def _customer_returns(lines: Lines) -> Text:
    """'This customer returned 7 of their last 9 items' (resolved earlier lines only); when one kind of
    return drove the score: 'This customer returned 12% of their 25 earlier items as damaged or not as described'."""
    res, ret = lines.num("cust_resolved_lines"), lines.num("cust_returns")
    days = lines.num("cust_days_since_last_return")
    groups = {"overall": ("cust_resolved_lines", "cust_returns", "cust_return_rate", "cust_returned_value")}
    groups |= {name: (name,) for name in _RETURN_MIX}
    part = lines.strongest(groups)
    mix_sentences, mix_conds = [], []
    for name, words in _RETURN_MIX.items():
        rate = lines.num(name)
        mix_conds.append((part == name) & (res > 0) & (rate > 0))
        mix_sentences.append(
            cat(
                "This customer returned ",
                fmt_pct(only(rate, mix_conds[-1])),
                " of their ",
                fmt_int(only(res, mix_conds[-1])),
                plural(res, " earlier item", " earlier items"),
                " ",
                words,
            )
        )
    main = cat(
        "This customer returned ",
        fmt_int(ret),
        " of their ",
        fmt_int(res),
        plural(res, " earlier item", " earlier items"),
    )
    recent = cat(main, ", the latest ", fmt_int(days), plural(np.round(days), " day ago", " days ago"))
    return choose(
        [~(res > 0), *mix_conds, days < 31],
        [
            "This customer has no earlier purchase whose outcome is known yet",
            *mix_sentences,
            recent,
        ],
        main,
    )


def _product_returns(lines: Lines) -> Text:
    """'This product is returned 31% of the time so far (120 sold)'."""
    res, rate = lines.num("product_resolved_lines"), lines.num("product_return_rate")
    sold = cat("This product is returned ", fmt_pct(rate), " of the time so far (", fmt_int(res), " sold)")
    new = cat("New product with few sales (", fmt_int(res), "): its return rate is not known yet")
    return choose([res < 20], [new], sold)


def _category(lines: Lines) -> Text:
    """'This customer returns 45% of their dresses (6 earlier)' / 'Dresses are often returned'."""
    name = lines.text("category")
    n, rate = lines.num("cust_category_lines"), lines.num("cust_category_return_rate")
    own = cat("This customer returns ", fmt_pct(rate), " of their ", name, " (", fmt_int(n), " earlier)")
    generic = cat("Items in ", name, " are often returned")
    return choose([n > 0], [own], generic)


register(
    Reason(
        "customer_returns",
        "Customer's past returns",
        "past_returns",
        (
            "cust_resolved_lines",
            "cust_returns",
            "cust_return_rate",
            "cust_returned_value",
            "cust_days_since_last_return",
            *_RETURN_MIX,
        ),
        _customer_returns,
    )
)
register(
    Reason(
        "product_returns",
        "Product's past returns",
        "past_returns",
        (
            "product_resolved_lines",
            "product_return_rate",
        ),
        _product_returns,
    )
)
register(
    Reason(
        "category",
        "Category",
        "category",
        (
            "category",
            "cust_category_lines",
            "cust_category_return_rate",
        ),
        _category,
    )
)


def _price(lines: Lines) -> Text:
    """The price part that drove the score: discount, price vs the category, or the order's value."""
    part = lines.strongest(
        {
            "discount": ("discount",),
            "level": ("unit_price", "price_vs_category_median"),
            "basket": ("basket_value",),
        }
    )
    disc, ratio = lines.num("discount"), lines.num("price_vs_category_median")
    price, basket = lines.num("unit_price"), lines.num("basket_value")
    level = part == "level"
    discount = cat("Bought at a ", fmt_pct(disc), " discount")
    shown_ratio, shown_price = fmt_num(only(ratio, level), 1), fmt_num(only(price, level), 2)
    dear = cat("Priced ", shown_ratio, "x the category's typical price (", shown_price, ")")
    cheap = cat("Low price for its category (", shown_price, ", ", shown_ratio, "x typical)")
    usual = cat("Priced ", shown_price, ", about the category's typical price")
    order = cat("Part of an order worth ", fmt_int(only(basket, ~level)))
    return choose(
        [(part == "discount") & (disc > 0), level & (ratio >= 1.15), level & (ratio <= 0.85), level],
        [discount, dear, cheap, usual],
        order,
    )


def _shipping(lines: Lines) -> Text:
    """'Ships 2,300 km across a border (DE -> ES)' (countries when the frame carries them)."""
    km, border = lines.num("ship_distance_km"), lines.num("cross_border")
    src, dst = lines.text("warehouse_country", ""), lines.text("ship_country", "")
    route = either(src.ne("") & dst.ne(""), cat(" (", src, " -> ", dst, ")"), "")
    shown_km = fmt_round(km, 100)
    across = cat("Ships ", shown_km, " km across a border", route)
    home = cat("Ships ", shown_km, " km", route)
    return choose([border >= 1, km >= 0], [across, home], "Long or unknown shipping route")


def _late_deliveries(lines: Lines) -> Text:
    """'40% of this customer's earlier deliveries were late (6.5 days on average)'."""
    share, days = lines.num("cust_late_delivery_share"), lines.num("cust_mean_delivery_days")
    late = cat(
        fmt_pct(share),
        " of this customer's earlier deliveries were late (",
        fmt_num(days, 1),
        " days on average)",
    )
    none = "No earlier delivery of this customer to judge delivery times by"
    return choose([share >= 0], [late], none)


def _reviews(lines: Lines) -> Text:
    """'Reviews of this product mention fit problems (12 of 30)' / negative reviews / low rating."""
    part = lines.strongest(
        {
            "fit": ("product_fit_mention_share",),
            "tone": ("product_sentiment_mean", "product_negative_share", "product_rating_mean"),
            "count": ("product_review_count",),
        }
    )
    n, fit = lines.num("product_review_count"), lines.num("product_fit_mention_share")
    neg, rating = lines.num("product_negative_share"), lines.num("product_rating_mean")
    fit_s = cat("Reviews of this product mention fit problems (", fmt_int(fit * n), " of ", fmt_int(n), ")")
    tone = cat("Reviews of this product are negative (", fmt_int(neg * n), " of ", fmt_int(n), ")")
    rated = cat(tone, ", average rating ", fmt_num(rating, 1), " stars")
    few = cat("Few or no reviews of this product yet (", fmt_int(np.nan_to_num(n)), ")")
    return choose(
        [(part == "fit") & (n > 0), (part == "tone") & (n > 0) & (rating >= 0), (part == "tone") & (n > 0)],
        [fit_s, rated, tone],
        few,
    )


register(
    Reason(
        "price",
        "Price",
        "price",
        (
            "unit_price",
            "discount",
            "price_vs_category_median",
            "basket_value",
        ),
        _price,
    )
)
register(Reason("shipping", "Shipping route", "shipping", ("ship_distance_km", "cross_border"), _shipping))
register(
    Reason(
        "late_deliveries",
        "Earlier deliveries",
        "shipping",
        (
            "cust_mean_delivery_days",
            "cust_late_delivery_share",
        ),
        _late_deliveries,
    )
)
register(
    Reason(
        "reviews",
        "Product reviews",
        "sentiment",
        (
            "product_review_count",
            "product_sentiment_mean",
            "product_negative_share",
            "product_fit_mention_share",
            "product_rating_mean",
        ),
        _reviews,
    )
)


def _size_label(size_type: Text, rank: np.ndarray) -> Text:
    """Size label of a rank on its size type's scale ('' when unknown)."""
    from pipeline.contract import SIZE_SCALES

    codes = np.zeros(len(rank), dtype=np.intp)
    vocab, off = [""], 1
    for st, scale in SIZE_SCALES.items():
        m = size_type.eq(st) & (rank >= 0) & (rank < len(scale))
        codes[m] = off + rank[m].astype(int)
        vocab += scale
        off += len(scale)
    return Text(codes, _objects(vocab))


def _size_rank(size_type: Text, size: Text) -> np.ndarray:
    """Position of the size on its size type's scale (NaN when not on it); looked up once per label."""
    from pipeline.contract import SIZE_SCALES

    out = np.full(len(size), np.nan)
    for st, scale in SIZE_SCALES.items():
        pos = {label: i for i, label in enumerate(scale)}
        m = size_type.eq(st)
        ranks = np.array([pos.get(v, np.nan) for v in size.vocab], dtype=np.float64)
        out[m] = ranks[size.codes[m]]
    return out


def _size(lines: Lines) -> Text:
    """'Size L is one larger than the M this customer kept' / never kept this size / product runs small.

    Size labels need the optional context columns `size` and `size_type` (the explain stage joins them);
    without them the sentence speaks of sizes in steps.
    """
    part = lines.strongest(
        {
            "distance": ("size_vs_kept_mode", "size_vs_kept_median"),
            "never": ("size_ever_kept", "n_sizes_kept", "n_items_kept_sized"),
            "product": ("product_size_tendency",),
            "inferred": _INFERRED_SIZE,
        }
    )
    d = lines.num("size_vs_kept_mode")
    d = np.where(np.isnan(d), np.round(lines.num("size_vs_kept_median")), d)
    n_kept, tend = lines.num("n_items_kept_sized"), lines.num("product_size_tendency")
    size, size_type = lines.text("size", ""), lines.text("size_type", "")
    kept_label = _size_label(size_type, _size_rank(size_type, size) - d)
    known = size.ne("") & kept_label.ne("")
    word = fmt_count_word(d)
    larger = either(d > 0, " larger", " smaller")
    kept = cat(" (", fmt_int(n_kept), plural(n_kept, " item", " items"), " of this size type kept)")
    labelled = cat(
        "Size ", size, " is ", word, larger, " than the ", kept_label, " this customer usually keeps", kept
    )
    steps = cat(
        "Ordered ",
        word,
        plural(np.abs(d), " size", " sizes"),
        larger,
        " than this customer usually keeps",
        kept,
    )
    never = cat(
        "This customer has never kept ",
        either(size.ne(""), cat("size ", size), "this size"),
        kept,
    )
    first = "This customer has not kept an item of this size type before"
    runs = cat(
        "This product runs ",
        either(tend > 0, "small", "large"),
        " (earlier returns and reviews)",
    )
    dist = (part == "distance") & (np.abs(d) >= 1)
    p_small, p_large = lines.num("size_prob_too_small"), lines.num("size_prob_too_large")
    p_fit, n_ord = lines.num("size_fit_prob"), lines.num("n_items_ordered_sized")
    inferred = part == "inferred"
    evidence = cat(
        " (from ", fmt_int(n_ord), plural(n_ord, " earlier order", " earlier orders"), " and returns)"
    )
    too = cat(
        either(size.ne(""), cat("Size ", size), "The ordered size"),
        " is probably too ",
        either(p_small >= p_large, "small", "large"),
        " for this customer (",
        fmt_pct(np.maximum(p_small, p_large)),
        " likely)",
        evidence,
    )
    unsure = cat(
        "This customer's size is uncertain: ",
        fmt_pct(p_fit),
        " likely that ",
        either(size.ne(""), cat("size ", size), "this size"),
        " fits",
        evidence,
    )
    return choose(
        [
            inferred & (np.maximum(p_small, p_large) > p_fit),
            inferred & (p_fit < 0.5),
            dist & known,
            dist,
            (part == "product") & (tend != 0),
            n_kept > 0,
        ],
        [too, unsure, labelled, steps, runs, never],
        first,
    )


#: The size family's inferred-true-size features (features/size.py posterior).
_INFERRED_SIZE = (
    "size_fit_prob",
    "size_prob_too_small",
    "size_prob_too_large",
    "size_vs_inferred",
    "size_uncertainty",
    "size_spread",
    "n_items_ordered_sized",
)


register(
    Reason(
        "size",
        "Size",
        "size",
        (
            "size_vs_kept_median",
            "size_vs_kept_mode",
            "size_ever_kept",
            "n_sizes_kept",
            "n_items_kept_sized",
            "product_size_tendency",
            *_INFERRED_SIZE,
        ),
        _size,
    )
)


def _bracketing(lines: Lines) -> Text:
    """'Ordered in 3 sizes in the same order (size bracketing)'."""
    sizes, colors = lines.num("same_product_sizes"), lines.num("same_product_colors")
    n = lines.num("same_product_lines")
    by_size = cat("Ordered in ", fmt_int(sizes), " sizes in the same order (size bracketing)")
    by_colour = cat("Ordered in ", fmt_int(colors), " colours in the same order (colour bracketing)")
    dup = cat(fmt_int(n), " lines of this same product in the order")
    single = "The only line of this product in the order"
    return choose([sizes > 1, colors > 1, n > 1], [by_size, by_colour, dup], single)


def _basket(lines: Lines) -> Text:
    """'Part of a 9-line order, 4 of them in the same category' / '3 units of this item'."""
    part = lines.strongest(
        {"units": ("quantity",), "order": ("basket_lines", "basket_units", "same_category_lines")}
    )
    q, n, same = lines.num("quantity"), lines.num("basket_lines"), lines.num("same_category_lines")
    units = cat(fmt_int(q), " units of this item on one line")
    order = cat("Part of a ", fmt_int(n), "-line order, ", fmt_int(same), " of them in the same category")
    return choose([(part == "units") & (q > 1)], [units], order)


def _customer_profile(lines: Lines) -> Text:
    """'First order of a new customer' / 'Customer for 40 days with 2 earlier orders (1.5 a month)'."""
    tenure, prior, rate = (
        lines.num("cust_tenure_days"),
        lines.num("cust_prior_orders"),
        lines.num("cust_orders_per_30d"),
    )
    first = "First order of a new customer"
    profile = cat(
        "Customer for ",
        fmt_int(tenure),
        plural(np.round(tenure), " day", " days"),
        " with ",
        fmt_int(prior),
        plural(prior, " earlier order", " earlier orders"),
        " (",
        fmt_num(rate, 1),
        " a month)",
    )
    return choose([~(prior > 0)], [first], profile)


_PAYMENT_WORDS = {"cod": "cash on delivery", "gift_card": "gift card", "paypal": "PayPal"}


def _checkout(lines: Lines) -> Text:
    """'Ordered via marketplace, paid by cash on delivery'."""
    pay = lines.text("payment_method")
    words = Text(pay.codes, [_PAYMENT_WORDS.get(u, u.replace("_", " ")) for u in pay.vocab])
    return cat("Ordered via ", lines.text("channel"), ", paid by ", words)


register(
    Reason(
        "bracketing",
        "Bracketing",
        "basket",
        (
            "same_product_lines",
            "same_product_sizes",
            "same_product_colors",
        ),
        _bracketing,
    )
)
register(
    Reason(
        "basket",
        "Order contents",
        "basket",
        (
            "quantity",
            "basket_lines",
            "basket_units",
            "same_category_lines",
        ),
        _basket,
    )
)
register(
    Reason(
        "customer_profile",
        "Customer tenure",
        "basket",
        (
            "cust_tenure_days",
            "cust_prior_orders",
            "cust_orders_per_30d",
        ),
        _customer_profile,
    )
)
register(Reason("checkout", "Channel and payment", "basket", ("channel", "payment_method"), _checkout))

#: Reason codes that explain a size mismatch (the size-reason metric counts these).
SIZE_REASONS: frozenset[str] = frozenset(c for c, r in REASONS.items() if r.family == "size")


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


def unassigned(features: list[str]) -> list[str]:
    """Features with neither a reason template nor a deliberate generic fallback (must be empty)."""
    return [f for f in features if f not in _REASON_OF and f not in GENERIC_FALLBACK]
