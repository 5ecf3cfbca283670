"""Basket and bracketing: what else is in the order, and how established the customer is.

Why it predicts returns: ordering the same product in several sizes or colours ("bracketing") means
all but one will come back; many lines of the same category signal try-at-home shopping; big baskets
are more often partly returned. New customers and rare buyers return differently from regulars.
Lines of the *same* order are known at checkout, so they are used as they are; tenure and order
frequency count only orders placed strictly before this one. Tenure is measured from the account's
signup when known, else from the customer's first earlier order (0 for a first order).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pyarrow as pa

from features.engine import Context
from features.spec import FeatureSpec
from features.sql import days_between
from features.streams import Events, LineWork, Running

FAMILY = "basket"


@nb.njit(cache=True, nogil=True)
def _order_groups(order: np.ndarray, n_orders: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by order (a counting sort, O(n)): group g is rows[start[g]:start[g + 1]]."""
    n = len(order)
    start = np.zeros(n_orders + 1, np.int64)
    for i in range(n):
        start[order[i] + 1] += 1
    for g in range(n_orders):
        start[g + 1] += start[g]
    pos = start[:-1].copy()
    rows = np.empty(n, np.int64)
    for i in range(n):
        g = order[i]
        rows[pos[g]] = i
        pos[g] += 1
    return start, rows


@nb.njit(cache=True, nogil=True)
def _run_counts(start, rows, major, minor, minor_ok, n_minor, out_lines, out_distinct):  # fmt: skip
    """Per row: the rows of its order with the same `major` code, and the distinct non-NULL `minor` values
    among them. Each order's rows are sorted by (major, minor) (insertion sort for small orders)."""
    width = n_minor + 1
    big = 0
    for g in range(len(start) - 1):
        big = max(big, start[g + 1] - start[g])
    key = np.empty(big, np.int64)
    idx = np.empty(big, np.int64)
    for g in range(len(start) - 1):
        a, b = start[g], start[g + 1]
        m = b - a
        if m == 1:
            i = rows[a]
            out_lines[i] = 1
            out_distinct[i] = 1 if minor_ok[i] else 0
            continue
        for x in range(m):
            i = rows[a + x]
            key[x] = major[i] * width + (minor[i] if minor_ok[i] else n_minor)
            idx[x] = i
        if m <= 32:
            for x in range(1, m):
                k, j, y = key[x], idx[x], x - 1
                while y >= 0 and key[y] > k:
                    key[y + 1], idx[y + 1] = key[y], idx[y]
                    y -= 1
                key[y + 1], idx[y + 1] = k, j
        else:
            o = np.argsort(key[:m])
            key[:m], idx[:m] = key[:m][o], idx[:m][o]
        x = 0
        while x < m:
            mj = key[x] // width
            y, d, prev = x, 0, -1
            while y < m and key[y] // width == mj:
                mi = key[y] % width
                if mi != n_minor and mi != prev:
                    d += 1
                prev = mi
                y += 1
            for z in range(x, y):
                out_lines[idx[z]] = y - x
                out_distinct[idx[z]] = d
            x = y


@nb.njit(cache=True, nogil=True)
def _order_sums(start, rows, quantity, unit_price):  # fmt: skip
    """Per row: its order's sum of quantity and of quantity x unit price over the non-NULL (non-NaN) terms,
    NaN when there are none (SQL's sum). Rows are added in their original order (the counting sort is
    stable), as a running sum over the lines in order would."""
    n = len(quantity)
    units, value = np.full(n, np.nan), np.full(n, np.nan)
    for g in range(len(start) - 1):
        a, b = start[g], start[g + 1]
        su, sv, nu, nv = 0.0, 0.0, 0, 0
        for x in range(a, b):
            i = rows[x]
            q = quantity[i]
            if not np.isnan(q):
                su += q
                nu += 1
                v = q * unit_price[i]
                if not np.isnan(v):
                    sv += v
                    nv += 1
        for x in range(a, b):
            i = rows[x]
            if nu:
                units[i] = su
            if nv:
                value[i] = sv
    return units, value


def basket_counts(
    order: np.ndarray,
    product: np.ndarray,
    category: tuple[np.ndarray, int, np.ndarray],
    size: tuple[np.ndarray, int, np.ndarray],
    color: tuple[np.ndarray, int, np.ndarray],
    quantity: np.ndarray,
    unit_price: np.ndarray,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """Per line (the target lines of whole orders): counts over its order, order x product and order x category.

    order / product: dense integer codes; category / size / color: (codes, code count, not-NULL mask);
    quantity and unit_price: float64 with NaN for NULL. Returns b_lines, bp_lines, bp_sizes, bp_colors
    (distinct non-NULL values) as int32; b_units, b_value (sums over the order; NaN when every term is
    NULL, as SQL's sum) and bc_lines (NaN for a NULL category: SQL's join on category finds no row) as
    float64. Orders are grouped by a counting sort and each order's few rows sorted on their own (no global
    sort or hash of 10M keys). With `threads` > 1 the order sums and the three per-order counts (nogil
    kernels, each with its own outputs) run side by side: the same values.

    The codes are read in their own integer type and the counts written as int32 (not int64 copies and
    float64 conversions): at 10M lines each full-size array is fresh memory, which this VM faults in at
    0.3-2 s/GiB.
    """
    from concurrent.futures import ThreadPoolExecutor

    n = len(order)
    if n == 0:
        names = ("b_lines", "b_units", "b_value", "bp_lines", "bp_sizes", "bp_colors", "bc_lines")
        return {c: np.zeros(0) for c in names}
    order = np.ascontiguousarray(order)
    n_orders = int(order.max()) + 1
    start, rows = _order_groups(order, n_orders)
    product = np.ascontiguousarray(product)
    cat, _, cat_ok = category

    def counts(major: np.ndarray, minor: tuple[np.ndarray, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per line: lines of its order with the same `major`, and their distinct non-NULL `minor` values
        (every line is written: no fill)."""
        codes, n_codes, ok = minor
        lines, distinct = np.empty(n, np.int32), np.empty(n, np.int32)
        _run_counts(start, rows, major, np.ascontiguousarray(codes), np.asarray(ok, np.bool_), int(n_codes),
                    lines, distinct)  # fmt: skip
        return lines, distinct

    no_minor = (np.zeros(n, np.int8), 1, np.zeros(n, np.bool_))
    with ThreadPoolExecutor(max(1, min(4, int(threads))), thread_name_prefix="basket") as pool:
        sums = pool.submit(_order_sums, start, rows, quantity, unit_price)
        by_size = pool.submit(counts, product, size)
        by_color = pool.submit(counts, product, color)
        by_category = pool.submit(counts, np.ascontiguousarray(cat), no_minor)
        out = {"b_lines": np.diff(start).astype(np.int32)[order]}
        out["b_units"], out["b_value"] = sums.result()
        out["bp_lines"], out["bp_sizes"] = by_size.result()
        out["bp_colors"] = by_color.result()[1]
        out["bc_lines"] = np.where(cat_ok, by_category.result()[0], np.nan)
    return {
        c: out[c] for c in ("b_lines", "b_units", "b_value", "bp_lines", "bp_sizes", "bp_colors", "bc_lines")
    }


def finish(ctx: Context) -> LineWork:
    """Per target line (numpy, added to the stream table `sx0`): line counts of its order, order x product
    (with distinct sizes and colours) and order x category, and the order's units and value.

    A `finish` (after the streams): these arrays are not held while the streams run (the peak at 10M
    lines). Replaces three GROUP BYs with count(DISTINCT) over every order (17 s of CPU at 10M lines)
    and their three joins in the assembly; the values are the same (counts exact, the order value summed
    in line order instead of DuckDB's). Fetches the line codes here; the counting is the returned work.
    """
    from features.streams import line_codes

    threads = int(ctx.params.threads)
    c = line_codes(
        ctx,
        {"o": "order_id", "p": "product_id", "c": "category", "s": "size", "k": "color"},
        {"q": "quantity", "u": "unit_price"},
    )

    def work() -> tuple[dict[str, pa.Array], tuple[str, ...]]:
        counts = basket_counts(
            c["o"][0], c["p"][0], c["c"], c["s"], c["k"], c["q"][0], c["u"][0], threads=threads
        )
        # the features read these only on lines with a size / colour: NULL elsewhere, so the assembly
        # does not fetch the size and colour text to test it
        valid = {"bp_sizes": c["s"][2], "bp_colors": c["k"][2]}
        c.clear()
        out = {k: _compact(v) for k, v in counts.items() if k not in valid}  # sx0's columns in the order
        out.update({f"{k}_line": _compact(counts[k], ok) for k, ok in valid.items()})  # they always had
        return out, ()

    return work


def _compact(v: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Whole-number counts as int32 (NULL where NaN, or where `valid` is False), other values float64: half
    the memory in `sx0`. An int32 `v` is whole already: only its NULLs are marked (the same array as its
    float64 copy would give: float64 all-NULL when no value is left).

    One pass (`_whole_int32`) instead of numpy's five full-size temporaries (a 10M-line column with NULLs:
    0.11 -> 0.07 s on warm memory; the basket's array work at 10M lines: 1.5-1.7 -> 1.3-1.4 s)."""
    if v.dtype == np.int32:
        if valid is None or valid.all():
            return pa.array(v) if len(v) else pa.array(v.astype(np.float64))
        if not valid.any():
            return pa.nulls(len(v), pa.float64())
        return pa.array(v, mask=~valid)
    if valid is not None:
        v = np.where(valid, v, np.nan)
    whole, ints, nan, any_nan = _whole_int32(np.ascontiguousarray(v, np.float64))
    if whole:
        return pa.array(ints, mask=nan if any_nan else None)
    return pa.array(v, from_pandas=True)


@nb.njit(cache=True, nogil=True)
def _whole_int32(v):  # fmt: skip
    """(True, v as int32 with NaN -> 0, the NaN mask, whether any NaN) when v has a non-NaN value and every
    non-NaN value is a whole number under 2**31 in magnitude; (False, ...) at the first value that is not."""
    n = len(v)
    ints = np.empty(n, np.int32)
    nan = np.empty(n, np.bool_)
    n_whole = 0
    for i in range(n):
        x = v[i]
        if np.isnan(x):
            ints[i], nan[i] = 0, True
        elif x != np.rint(x) or not abs(x) < 2**31:
            return False, ints[:0], nan[:0], False
        else:
            ints[i], nan[i] = np.int32(x), False
            n_whole += 1
    return n_whole > 0, ints, nan, n_whole < n


JOINS = [
    "LEFT JOIN ord o ON o.order_id = l.order_id",
    "LEFT JOIN t_customers cu ON cu.customer_id = l.customer_id",
]

RUNNINGS = [Running("customer", "c_orders"), Running("customer", "c_first_order", "first")]

EVENTS = [Events("customer", "FROM ord", "order_ts", {"c_orders": "1.0", "c_first_order": "order_ts"})]

TENURE = f"greatest(0.0, {days_between('l.order_ts', 'coalesce(cu.signup_ts, s.c_first_order, l.order_ts)')})"

FEATURES = [
    FeatureSpec(
        "quantity", FAMILY, "numeric", "Units ordered on the line.", False, "CAST(l.quantity AS DOUBLE)"
    ),
    FeatureSpec("basket_lines", FAMILY, "numeric", "Lines in the order.", False, "s.b_lines"),
    FeatureSpec("basket_units", FAMILY, "numeric", "Units in the order.", False, "s.b_units"),
    FeatureSpec(
        "same_product_lines",
        FAMILY,
        "numeric",
        "Lines of this same product in the order (bracketing by size, colour or duplicates).",
        False,
        "s.bp_lines",
    ),
    FeatureSpec(
        "same_product_sizes",
        FAMILY,
        "numeric",
        "Different sizes of this product in the order (more than 1: size bracketing).",
        False,
        "s.bp_sizes_line",
        requires=("order_lines.size",),
    ),
    FeatureSpec(
        "same_product_colors",
        FAMILY,
        "numeric",
        "Different colours of this product in the order (more than 1: colour bracketing).",
        False,
        "s.bp_colors_line",
        requires=("order_lines.color",),
    ),
    FeatureSpec(
        "same_category_lines",
        FAMILY,
        "numeric",
        "Lines of the same category in the order (this one included).",
        False,
        "s.bc_lines",
    ),
    FeatureSpec(
        "cust_tenure_days",
        FAMILY,
        "numeric",
        "Days since the customer signed up (else since their first earlier order) at the order's time.",
        True,
        TENURE,
    ),
    FeatureSpec(
        "cust_prior_orders",
        FAMILY,
        "numeric",
        "Orders the customer placed before this one.",
        True,
        "s.c_orders",
    ),
    FeatureSpec(
        "cust_orders_per_30d",
        FAMILY,
        "numeric",
        "Earlier orders per 30 days of tenure (tenure floored at 30 days).",
        True,
        f"30.0 * s.c_orders / greatest({TENURE}, 30.0)",
    ),
    FeatureSpec(
        "channel",
        FAMILY,
        "categorical",
        "Sales channel of the order.",
        False,
        "o.channel",
        requires=("orders.channel",),
    ),
    FeatureSpec(
        "payment_method",
        FAMILY,
        "categorical",
        "Payment method (invoice / pay-later makes returning cheap).",
        False,
        "o.payment_method",
        requires=("orders.payment_method",),
    ),
]
