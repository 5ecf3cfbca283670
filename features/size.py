"""Size vs history: is the ordered size the one this customer usually keeps, and does the product run small?

Why it predicts returns: the commonest return reason in fashion is fit. A customer who kept M twice
and now orders L is likely to send it back; so is one ordering a size they never kept, and anyone
buying a product that earlier buyers returned as "too small". Sizes are mapped to ranks on their size
type's ordinal scale (pipeline.contract.SIZE_SCALES); distances are in ranks, compared only within the
same size type (alpha vs EU shoe). The true-size priors are shop-specific params (params.yaml `featurize:`
size_moments, size_cross_type_rho, size_evidence_weights; the featurize report compares the moments with the
data's).

"Kept" is honest evidence only: an earlier line counts as kept from the end of its return window
(order_ts + labels.return_window_days) if no return was recorded before then, and stops counting if a
late return is recorded afterwards. A purchase from a few days ago is not yet known to be kept.
Product size tendency combines returns with reason too_small/too_large and reviews whose text says it
runs small/large (features.sentiment fit rule), recorded before the order:
(small - large) / (small + large + size_tendency_prior_weight), in (-1, 1), positive = runs small.

The customer's true size (what would fit) is inferred, not read off the last kept item: a normal posterior
over the rank T in the line's size type from every earlier sign in that type, each an implied T with a
weight (a precision, summed in the `customer_size` stream as three running sums): each earlier *ordered*
size (known at once, kept or not), each *kept* size (from the end of its return window), and each return
recorded as too small / too large (T one above / below the ordered size). The prior comes from the other
size type: alpha and EU shoe sizes are correlated in people, so a customer who only bought shoes still
gets an informed prior for tops. Sizes are compared across types on a standard score with population
moments from params (`featurize.size_moments`; the defaults were measured on the generated history's first 12
months of ordered sizes, seeds 42 and 7 agree to 0.05 rank: a shop sets its own, and the featurize report
shows the data's next to the configured ones, `measured_moments_sql` / `compare_moments`). Features: the probabilities that the ordered size is the true one, smaller or larger
than it (the normal's mass within half a rank, below, above), ordered minus posterior mean, posterior sd,
and the spread of the customer's own size evidence (personal fit uncertainty).
A 15-rank log-likelihood grid with Laplace costs was measured too: same test AUC (within 0.0003 on seeds
42 and 7) at 5x the stream columns and twice the featurize time, so the normal form is the one kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba as nb
import numpy as np
import pyarrow as pa

from features.engine import N_SIZE_RANKS, Context, FeaturizeParams
from features.spec import FeatureSpec
from features.streams import Events, LineWork, Running
from pipeline.contract import SIZE_SCALES

FAMILY = "size"
RANKS = range(N_SIZE_RANKS)

#: Size types with a true-size prior (pipeline.contract.SIZE_SCALES) -> the key in stream column names.
_TYPE_KEY = {"alpha": "a", "eu_shoe": "s"}
#: params.yaml `featurize:` keys this family reads (listed with their defaults in docs/features.md).
PARAMS = {
    "size_moments": "population [mean, sd] of ordered size ranks per size type: the standard scores that carry "
    "one type's sizes into the other's prior (defaults measured on generated data: set from the shop's history; "
    "the featurize report shows the data's)",
    "size_cross_type_rho": "correlation of a person's standardised sizes across size types",
    "size_evidence_weights": "precision of each earlier ordered size, kept size and too small / too large return",
    "size_tendency_prior_weight": "pseudo-counts in the product size tendency",
}
#: featurize.size_evidence_weights: what each earlier line of the same type says about the true rank T, as
#: a precision (1/rank^2): an ordered size implies T = s, a kept size T = s again, a "too small" return
#: T = s + 1 ("too large": s - 1).
EVIDENCE = ("ordered", "kept", "returned")
#: The featurize report warns when the data's ordered-size moments are this far from the configured ones:
#: the mean by more than MEAN_TOLERANCE ranks, the sd by more than SD_TOLERANCE of the configured sd, and
#: only for a size type with at least MIN_LINES ordered lines (fewer: too noisy to say).
MEAN_TOLERANCE, SD_TOLERANCE, MIN_LINES = 0.5, 0.3, 100


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_params(p: FeaturizeParams) -> None:
    """Clear errors for size priors a shop mistyped (they are formatted into SQL, so only numbers pass)."""
    where = "params.yaml featurize"
    moments = p.size_moments
    if not isinstance(moments, Mapping) or set(moments) != set(_TYPE_KEY):
        got = sorted(moments) if isinstance(moments, Mapping) else moments
        raise ValueError(
            f"{where}.size_moments: needs exactly {sorted(_TYPE_KEY)} -> [mean, sd], got {got!r}"
        )
    for st, value in moments.items():
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(_is_number(v) for v in value)
            or value[1] <= 0
        ):
            raise ValueError(
                f"{where}.size_moments.{st}: must be [mean, sd] in size ranks with sd > 0, got {value!r}"
            )
    rho = p.size_cross_type_rho
    if not _is_number(rho) or not -1 < rho < 1:
        raise ValueError(f"{where}.size_cross_type_rho: must be a number in (-1, 1), got {rho!r}")
    weights = p.size_evidence_weights
    if not isinstance(weights, Mapping) or set(weights) != set(EVIDENCE):
        got = sorted(weights) if isinstance(weights, Mapping) else weights
        raise ValueError(f"{where}.size_evidence_weights: needs exactly {list(EVIDENCE)}, got {got!r}")
    for k, w in weights.items():
        if not _is_number(w) or w < 0:
            raise ValueError(f"{where}.size_evidence_weights.{k}: must be a number >= 0, got {w!r}")


def _num(value: float) -> str:
    """A float literal typed DOUBLE (DuckDB reads plain decimals as DECIMAL, which can overflow)."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def _param(name: str) -> str:
    """A params placeholder typed DOUBLE, e.g. `size_moments[alpha][0]`: the engine formats event values
    with the featurize params (features.build / features.state), so both paths read the same values."""
    return f"CAST({{{name}}} AS DOUBLE)"


def _kept(sign: str) -> dict[str, str]:
    counts = {f"k{i}": f"CASE WHEN size_rank = {i} THEN {sign}1.0 ELSE 0.0 END" for i in RANKS}
    return counts | _evidence(f"{sign}{_param('size_evidence_weights[kept]')}", "size_rank")


def _evidence(weight: str, implied: str) -> dict[str, str]:
    """Running sums of weight, weight x implied rank and weight x implied rank^2."""
    return {"sw": weight, "swx": f"({weight}) * ({implied})", "swx2": f"({weight}) * pow({implied}, 2)"}


def _z(size_type: str) -> str:
    mean, sd = _param(f"size_moments[{size_type}][0]"), _param(f"size_moments[{size_type}][1]")
    return f"((size_rank - {mean}) / {sd})"


RUNNINGS = (
    [Running("customer_size", f"k{i}") for i in RANKS]
    + [Running("customer_size", c) for c in ("sw", "swx", "swx2")]
    + [Running("customer_size", "n_ordered")]
    + [Running("customer", f"{c}_{_TYPE_KEY[st]}") for st in _TYPE_KEY for c in ("zn", "zsum")]
    + [Running("product", "p_small"), Running("product", "p_large")]
)

EVENTS = [
    # every earlier ordered size, known when it is ordered (whatever its outcome)
    Events(
        "customer_size",
        "FROM ln WHERE size_rank IS NOT NULL",
        "order_ts",
        {"n_ordered": "1.0"} | _evidence(_param("size_evidence_weights[ordered]"), "size_rank"),
    ),
    # a size return says on which side of the ordered size the true size lies
    Events(
        "customer_size",
        "FROM (SELECT r.return_ts, r.reason, l.customer_id, l.size_type, l.size_rank FROM ret r "
        "JOIN ln l ON l.line_id = r.line_id "
        "WHERE r.is_first AND r.reason IN ('too_small', 'too_large') AND l.size_rank IS NOT NULL) sr",
        "return_ts",
        _evidence(
            _param("size_evidence_weights[returned]"),
            "size_rank + CASE WHEN reason = 'too_small' THEN 1 ELSE -1 END",
        ),
    ),
    # the same ordered sizes as standard scores per size type, for the other type's prior
    Events(
        "customer",
        "FROM ln WHERE size_rank IS NOT NULL AND size_type IN ('alpha', 'eu_shoe')",
        "order_ts",
        {
            f"{c}_{_TYPE_KEY[st]}": f"CASE WHEN size_type = '{st}' THEN {'1.0' if c == 'zn' else _z(st)} ELSE 0.0 END"
            for st in _TYPE_KEY
            for c in ("zn", "zsum")
        },
    ),
    # kept from the end of the return window, unless a return was recorded before it
    Events(
        "customer_size",
        "FROM ln WHERE size_rank IS NOT NULL AND (first_return_ts IS NULL OR first_return_ts >= window_end)",
        "window_end",
        _kept("+"),
    ),
    # a late return withdraws the kept evidence from the time it is recorded
    Events(
        "customer_size",
        "FROM ln WHERE size_rank IS NOT NULL AND first_return_ts >= window_end",
        "first_return_ts",
        _kept("-"),
    ),
    Events(
        "product",
        "FROM ret WHERE reason IN ('too_small', 'too_large')",
        "return_ts",
        {
            "p_small": "CASE WHEN reason = 'too_small' THEN 1.0 ELSE 0.0 END",
            "p_large": "CASE WHEN reason = 'too_large' THEN 1.0 ELSE 0.0 END",
        },
    ),
    Events(
        "product",
        "FROM rv WHERE fit_small OR fit_large",
        "review_ts",
        {
            "p_small": "CASE WHEN fit_small AND NOT fit_large THEN 1.0 ELSE 0.0 END",
            "p_large": "CASE WHEN fit_large AND NOT fit_small THEN 1.0 ELSE 0.0 END",
        },
    ),
]


def measured_moments_sql(lines: str, products: str, orders: str) -> str:
    """What the size priors describe, measured in the data: per size type the ordered lines and the mean and
    sd of their size ranks, and the correlation of customers' mean ranks across the two types (over the
    customers who ordered both). Relations: `lines` (order_id, product_id, size), `products` (product_id,
    size_type), `orders` (order_id, customer_id); sizes normalised as staging does (features.engine)."""
    scale = ", ".join(
        f"('{st}', '{size}', {rank})" for st in _TYPE_KEY for rank, size in enumerate(SIZE_SCALES[st])
    )
    a, s = _TYPE_KEY
    return f"""
        WITH scale(size_type, size, size_rank) AS (VALUES {scale}),
        r AS (
            SELECT o.customer_id, sc.size_type, sc.size_rank FROM {lines} l
            JOIN {products} p ON p.product_id = l.product_id
            JOIN {orders} o ON o.order_id = l.order_id
            JOIN scale sc ON sc.size_type = p.size_type AND sc.size = upper(trim(CAST(l.size AS VARCHAR)))
        ),
        per_customer AS (
            SELECT customer_id, avg(size_rank) FILTER (WHERE size_type = '{a}') AS ma,
                   avg(size_rank) FILTER (WHERE size_type = '{s}') AS ms
            FROM r GROUP BY customer_id
        ),
        rho AS (SELECT corr(ma, ms) AS rho, count(ma + ms) AS n FROM per_customer)
        SELECT size_type, count(*) AS n, avg(size_rank) AS mean, stddev_samp(size_rank) AS sd,
               any_value(rho.rho) AS rho, any_value(rho.n) AS rho_n
        FROM r, rho GROUP BY size_type ORDER BY size_type
    """


def compare_moments(
    rows: list[tuple[str, int, float, float | None, float | None, int]], p: FeaturizeParams
) -> dict[str, Any]:
    """The featurize report's `size_priors`: measured next to configured, and a warning per size type whose
    measured mean or sd is off by more than the tolerances (a shop running on another shop's priors)."""
    measured = {st: {"n": int(n), "mean": mean, "sd": sd} for st, n, mean, sd, *_ in rows}
    rho = next(((r[4], int(r[5])) for r in rows), (None, 0))
    warnings = []
    for st, (mean, sd) in p.size_moments.items():
        m = measured.get(st)
        if m is None or m["n"] < MIN_LINES or m["sd"] is None:
            continue
        if abs(m["mean"] - mean) > MEAN_TOLERANCE:
            warnings.append(
                f"size_moments.{st}: measured mean rank {m['mean']:.2f} over {m['n']:,} ordered lines, "
                f"configured {mean:.2f} (off by more than {MEAN_TOLERANCE} rank)"
            )
        if abs(m["sd"] - sd) > SD_TOLERANCE * sd:
            warnings.append(
                f"size_moments.{st}: measured sd {m['sd']:.2f} over {m['n']:,} ordered lines, "
                f"configured {sd:.2f} (off by more than {SD_TOLERANCE:.0%})"
            )
    if warnings:
        warnings.append(
            "set params.yaml featurize.size_moments from this shop's history (see the measured values)"
        )
    return {
        "configured": {
            "size_moments": {st: list(v) for st, v in p.size_moments.items()},
            "size_cross_type_rho": p.size_cross_type_rho,
        },
        "measured": {
            "size_moments": {
                st: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
                for st, m in measured.items()
            },
            "size_cross_type_rho": None if rho[0] is None else round(rho[0], 4),
            "customers_with_both_types": rho[1],
        },
        "tolerance": {"mean_ranks": MEAN_TOLERANCE, "sd_share": SD_TOLERANCE, "min_lines": MIN_LINES},
        "warnings": warnings,
    }


def _counts(col: Any, dtype: Any = np.float64) -> np.ndarray:
    """A stream column's values as numpy without a fill pass: NULL slots hold whatever the buffer holds, so
    callers mask them afterwards (every output of `finish` is NULL where the line has no sized query row)."""
    if isinstance(col, pa.ChunkedArray):  # one chunk (the scan's columns): its buffer, not a copy of it
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    else:
        arr = col
    if arr.type != pa.from_numpy_dtype(np.dtype(dtype)):
        arr = arr.cast(pa.from_numpy_dtype(np.dtype(dtype)), safe=False)
    if len(arr) == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * np.dtype(dtype).itemsize
    )


@nb.njit(cache=True, nogil=True)
def _kept_stats(k, size_rank):  # fmt: skip
    n_ranks, n = len(k), len(k[0])  # k: a tuple of one count array per rank
    n_kept, n_sizes = np.zeros(n), np.zeros(n)
    median, mode, here = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
    for q in range(n):
        total = 0.0
        best, arg, sizes = k[0][q], 0, 0.0
        for i in range(n_ranks):
            v = k[i][q]
            total += v
            if v > 0:
                sizes += 1.0
            if v > best:  # strictly more: ties keep the smaller rank
                best, arg = v, i
        n_kept[q], n_sizes[q] = total, sizes
        r = size_rank[q]
        if 0 <= r < n_ranks and k[r][q] > 0:
            here[q] = 1.0
        if total > 0:
            j_lo, j_hi = np.floor((total + 1) / 2), np.floor(total / 2) + 1
            lo = hi = -1
            prefix = 0.0
            for i in range(n_ranks):
                prefix += k[i][q]
                if lo < 0 and prefix >= j_lo:
                    lo = i
                if hi < 0 and prefix >= j_hi:
                    hi = i
                    break
            median[q] = (lo + hi) / 2.0
            mode[q] = arg
    return n_kept, n_sizes, median, mode, here


def kept_size_stats(k: np.ndarray | Sequence[np.ndarray], size_rank: np.ndarray) -> dict[str, np.ndarray]:
    """Per line, from the kept-size histogram k (ranks x lines, counts: a 2-D array or one array per rank,
    e.g. views of the stream table's columns, not stacked into a copy) and the ordered rank (-1: none).

    n_kept, n_sizes (ranks kept at least once), median_rank (mean of the two middle order statistics),
    mode_rank (most kept rank, ties: the smaller), kept_here (1.0 when the ordered rank was kept). Median and
    mode are NaN (NULL) when nothing was kept. The same values as the SQL CASE chains they replace (whole
    numbers and halves: exact).
    """
    rows = tuple(np.ascontiguousarray(r) for r in k)
    n_kept, n_sizes, median, mode, here = _kept_stats(rows, size_rank.astype(np.int64))
    return {
        "n_kept": n_kept,
        "n_sizes": n_sizes,
        "median_rank": median,
        "mode_rank": mode,
        "kept_here": here,
    }


@nb.njit(cache=True, nogil=True)
def _posterior_kernel(sized, sw, swx, swx2, zn_o, zsum_o, mean, c_sd_rho, c_prec, c_rho2):  # fmt: skip
    n = len(sw)
    m, sd = np.full(n, np.nan), np.full(n, np.nan)
    for q in range(n):
        if not sized[q]:
            continue
        n_o = zn_o[q]
        pm = mean + c_sd_rho * zsum_o[q] / (n_o + 1)
        prec = 1.0 / (c_prec * (1 - c_rho2 * n_o / (n_o + 1)))
        m[q] = (swx[q] + prec * pm) / (sw[q] + prec)
        sd[q] = 1.0 / np.sqrt(sw[q] + prec)
    return m, sd


@nb.njit(cache=True, nogil=True)
def _spread_kernel(sized, sw, swx, swx2):  # fmt: skip
    n = len(sw)
    out = np.full(n, np.nan)
    for q in range(n):
        if sized[q] and sw[q] > 0:
            mu = swx[q] / sw[q]
            out[q] = np.sqrt(max(swx2[q] / sw[q] - mu * mu, 0.0))
    return out


def posterior(
    p: FeaturizeParams,
    sw: np.ndarray,
    swx: np.ndarray,
    swx2: np.ndarray,
    zn: dict,
    zsum: dict,
    sized: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per size type key x: the prior from the other type's standard scores, then the normal posterior's
    mean m_x and sd sd_x; `spread` is the sd of the customer's own evidence in the line's type (NaN when
    there is none). zn / zsum map type keys to the customer's counts and sums of standard scores (NULL
    -> 0); lines not `sized` get NaN. Evaluated in the order of the SQL it replaced (one pass per output)."""
    if sized is None:
        sized = np.ones(len(sw), np.bool_)
    out: dict[str, np.ndarray] = {}
    rho = float(p.size_cross_type_rho)
    for st, x in _TYPE_KEY.items():
        mean, sd = (float(v) for v in p.size_moments[st])
        o = next(v for k, v in _TYPE_KEY.items() if k != st)
        out[f"m_{x}"], out[f"sd_{x}"] = _posterior_kernel(
            sized, sw, swx, swx2, zn[o], zsum[o], mean, float(sd * rho), float(sd * sd), float(rho**2)
        )
    out["spread"] = _spread_kernel(sized, sw, swx, swx2)
    return out


#: stream columns the size family's per-line values are computed from (dropped from `sx0` afterwards)
_INPUTS = (
    [f"k{i}" for i in RANKS]
    + ["sw", "swx", "swx2"]
    + [f"{c}_{x}" for x in _TYPE_KEY.values() for c in ("zn", "zsum")]
)


def finish(ctx: Context) -> LineWork:
    """Per line, added to the stream table `sx0` (numpy, replacing 15-rank CASE chains per line): kept count,
    distinct sizes kept, median and mode rank, whether the ordered size was kept, and the true-size
    posterior's mean and sd per size type and the spread of the customer's size evidence. Lines without
    a sized query row get NULLs (the features are NULL there anyway). Fetches the ordered size rank
    here; the statistics are the returned work (which drops the stream's per-rank inputs from `sx0`)."""
    from features.streams import line_values

    sx0 = ctx.arrow["sx0"]
    params = ctx.params
    threads = max(1, int(params.threads))
    rank = line_values(ctx, {"r": "coalesce(size_rank, -1)"}).column("r")

    def work() -> tuple[dict[str, pa.Array], tuple[str, ...]]:
        n = sx0.num_rows
        size_rank = rank.to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        sized = sx0.column("k0").is_valid().to_numpy(zero_copy_only=False)  # lines with a sized query row
        # counts (int32 from the scan; whole doubles from the SQL), read in place
        cols = kept_size_stats([_counts(sx0.column(f"k{i}"), np.int32) for i in RANKS], size_rank)
        sw, swx, swx2 = (_counts(sx0.column(c)) for c in ("sw", "swx", "swx2"))
        zn = {x: _counts(sx0.column(f"zn_{x}")) for x in _TYPE_KEY.values()}
        zsum = {x: _counts(sx0.column(f"zsum_{x}")) for x in _TYPE_KEY.values()}
        cols |= posterior(params, sw, swx, swx2, zn, zsum, sized)
        del sw, swx, swx2, zn, zsum
        unsized = ~sized
        for c in ("n_kept", "n_sizes", "kept_here", "median_rank", "mode_rank"):
            cols[c][unsized] = np.nan
        # to Arrow (a NULL bitmap from the NaNs) on both threads: the size work is the finishes' longest
        with ThreadPoolExecutor(threads, thread_name_prefix="size-arrow") as pool:
            arrays = pool.map(lambda v: pa.array(v, from_pandas=True), cols.values())
            return dict(zip(cols, arrays, strict=True)), _INPUTS

    return work


def _phi(x: str) -> str:
    """Standard normal CDF (tanh approximation, absolute error < 3e-4: DuckDB has no erf)."""
    return f"(0.5 * (1 + tanh(0.7978845608 * (({x}) + 0.044715 * pow({x}, 3)))))"


def _prob_between(lo: str, hi: str) -> str:
    """Posterior probability that the true rank lies in (ordered rank + lo, ordered rank + hi)."""
    return _per_type(
        f"{_phi(f'(l.size_rank + {hi} - s.m_{{x}}) / s.sd_{{x}}')} - {_phi(f'(l.size_rank + {lo} - s.m_{{x}}) / s.sd_{{x}}')}"
    )


def _per_type(template: str) -> str:
    """`template` with {x} = the line's size type key."""
    return f"CASE l.size_type {' '.join(f'WHEN {st!r} THEN {template.format(x=x)}' for st, x in _TYPE_KEY.items())} END"


_SIZED = ("order_lines.size", "products.size_type")
_ON_SIZED = "CASE WHEN l.size_rank IS NOT NULL THEN {} END"

FEATURES = [
    FeatureSpec(
        "size_vs_kept_median",
        FAMILY,
        "numeric",
        "Ordered size rank minus the median rank of the sizes this customer kept earlier (same size type).",
        True,
        _ON_SIZED.format("l.size_rank - s.median_rank"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_vs_kept_mode",
        FAMILY,
        "numeric",
        "Ordered size rank minus the rank this customer kept most often (ties: the smaller size).",
        True,
        _ON_SIZED.format("l.size_rank - s.mode_rank"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_ever_kept",
        FAMILY,
        "numeric",
        "1 if the customer kept this exact size before (same size type), else 0.",
        True,
        _ON_SIZED.format("s.kept_here"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "n_sizes_kept",
        FAMILY,
        "numeric",
        "How many different sizes of this size type the customer has kept.",
        True,
        _ON_SIZED.format("s.n_sizes"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "n_items_kept_sized",
        FAMILY,
        "numeric",
        "How many items of this size type the customer has kept.",
        True,
        _ON_SIZED.format("s.n_kept"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_fit_prob",
        FAMILY,
        "numeric",
        "Probability that the ordered size is the customer's true size, inferred from every earlier order, "
        "kept item and size return (and the other size type).",
        True,
        _ON_SIZED.format(_prob_between("-0.5", "0.5")),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_prob_too_small",
        FAMILY,
        "numeric",
        "Probability that the customer's true size is larger than the ordered size (the item is too small).",
        True,
        _ON_SIZED.format(_per_type(f"1 - {_phi('(l.size_rank + 0.5 - s.m_{x}) / s.sd_{x}')}")),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_prob_too_large",
        FAMILY,
        "numeric",
        "Probability that the customer's true size is smaller than the ordered size (the item is too large).",
        True,
        _ON_SIZED.format(_per_type(_phi("(l.size_rank - 0.5 - s.m_{x}) / s.sd_{x}"))),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_vs_inferred",
        FAMILY,
        "numeric",
        "Ordered size rank minus the customer's inferred true size rank (posterior mean).",
        True,
        _ON_SIZED.format("l.size_rank - " + _per_type("s.m_{x}")),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_uncertainty",
        FAMILY,
        "numeric",
        "How uncertain the customer's inferred true size is (posterior standard deviation in ranks).",
        True,
        _ON_SIZED.format(_per_type("s.sd_{x}")),
        requires=_SIZED,
    ),
    FeatureSpec(
        "size_spread",
        FAMILY,
        "numeric",
        "Spread (sd in ranks) of the sizes this customer ordered, kept and returned in this size type: personal "
        "fit uncertainty.",
        True,
        _ON_SIZED.format("s.spread"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "n_items_ordered_sized",
        FAMILY,
        "numeric",
        "How many items of this size type the customer ordered before (kept or not).",
        True,
        _ON_SIZED.format("s.n_ordered"),
        requires=_SIZED,
    ),
    FeatureSpec(
        "product_size_tendency",
        FAMILY,
        "numeric",
        "The product's fit tendency from earlier too-small/too-large returns and fit reviews (positive: runs small).",
        False,
        "CASE WHEN l.size_type IS NOT NULL AND l.size_type <> 'none' THEN "
        "((coalesce(s.p_small, 0) - coalesce(s.p_large, 0)) / "
        "(coalesce(s.p_small, 0) + coalesce(s.p_large, 0) + {size_tendency_prior_weight})) END",
        requires=("products.size_type",),
        requires_any=("returns.reason", "reviews"),
    ),
]
