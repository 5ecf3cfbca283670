"""One sequential pass over time that evaluates every as-of stream at once (the "scan" stream method).

The streams (features/streams.py) define each running column as a window aggregate over
`ORDER BY ts, kind`: a query row (one per target line) sees the events of its key dated strictly before
its order. Instead of sorting each stream's union by (key, time, kind) (four 10-22M-row sorts at 10M
lines), this module:

1. fetches each *event source* once with only the columns it sets: events of different streams over the
   same FROM clause and time (e.g. a line resolving feeds the customer, customer x category and product
   streams) become one fetch carrying every stream's key; literal values ("1.0") are not fetched at all;
2. gives every stream key a dense integer code (integer ids minus their minimum, no hashing; strings are
   dictionary-encoded; key tuples re-densified);
3. orders each source's events by time (stable; line events come nearly sorted, in qi order);
4. walks the target lines in qi order, which is time order (order_ts, line_id), applying every event
   dated strictly before the line's order to its keys' running state (sums in float64; "last"/"first"
   the max/min value, as the window SQL's max/min: the latest/earliest for event timestamps) and then
   reading the line's state for every stream: numba, one pass, O(events + lines x streams).

The result is the same table as the window SQL (`stream_method: sql`, the portable reference): counts
exactly (whole-number sums come back as int32), other sums up to float rounding (running sums instead
of the window's; tests/test_features_parity.py at 1e-9).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.engine import Context

I64_MIN = np.iinfo(np.int64).min


@dataclass
class _Column:
    """One running column of one stream, and where the kernel keeps its state and writes its result."""

    stream: int
    name: str
    agg: str  # sum | last | first
    col: int  # position among its stream's sum (or last/first) columns
    integral: bool = True  # every event value is a whole number (sum columns)
    abs_total: float = 0.0
    out_row: int = -1
    out_int: bool = False
    type: pa.DataType | None = None  # last / first: the event values' Arrow type


@dataclass
class _Source:
    """The events of one FROM clause and time expression, for every stream and column they set."""

    source: str
    ts: str
    streams: list[int] = field(default_factory=list)  # key slots -> stream index
    sums: list[tuple[int, str, str]] = field(default_factory=list)  # (slot, column, SQL value)
    others: list[tuple[int, str, str]] = field(default_factory=list)


_CAST_LITERAL = re.compile(
    r"^\(?\s*([+-]?)\s*\(?\s*CAST\(\s*([0-9.eE+-]+)\s+AS\s+DOUBLE\s*\)\s*\)?\s*\)?$", re.I
)


def _literal(expr: str) -> float | None:
    """The float of a constant value expression ("1.0", "-CAST(1.0 AS DOUBLE)"), else None (fetched)."""
    text = expr.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _CAST_LITERAL.match(text)
    if m is None:
        return None
    try:
        value = float(m.group(2))
    except ValueError:
        return None
    return -value if m.group(1) == "-" else value


def _micros(
    col: pa.ChunkedArray | pa.Array, null: int = I64_MIN, out: np.ndarray | None = None
) -> np.ndarray:
    """A TIMESTAMP column as int64 microseconds since the epoch (NULL -> `null`), in `out` if given."""
    col = col.cast(pa.timestamp("us")).cast(pa.int64())
    return _filled(col, null, out) if out is not None else _filled(col, null).astype(np.int64, copy=False)


def _filled(col: pa.ChunkedArray | pa.Array, value: Any, out: np.ndarray | None = None) -> np.ndarray:
    """A column as numpy with NULL -> `value` (no fill pass, and no copy of a single chunk, without NULLs).

    With `out` the column is copied into it chunk by chunk: no intermediate array of the whole column (new
    memory is the dearest thing the scan touches: BENCHMARKS.md, "Eighth pass").
    """
    if out is not None:
        at = 0
        for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
            out[at : at + len(chunk)] = _filled(chunk, value)
            at += len(chunk)
        if at != len(out):
            raise ValueError(f"_filled: {at} values for an output of {len(out)}")
        return out
    if col.null_count:
        col = pc.fill_null(col, value)
    return col.to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------------------ key codes
def _column_codes(
    cols: Sequence[pa.ChunkedArray | pa.Array], out: Sequence[np.ndarray] | None = None
) -> tuple[list[np.ndarray], int]:
    """Int64 codes of one key column over several row sets (equal values, equal codes), and the code count.

    Integer keys with a range under 2**31 are value - min (no hashing, no concatenation); other keys
    are dictionary-encoded per row set and the (small) dictionaries merged. NULL is a value of its own
    (as in SQL PARTITION BY). With `out` (int32 arrays, one per row set), integer codes are written
    there in one pass and those arrays returned.
    """
    typ = next((c.type for c in cols if len(c)), cols[0].type)
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    cols = [c.cast(typ) if c.type != typ else c for c in cols]
    if pa.types.is_integer(typ):
        lo = min((v for c in cols if (v := pc.min(c).as_py()) is not None), default=None)
        hi = max((v for c in cols if (v := pc.max(c).as_py()) is not None), default=None)
        if lo is None:
            if out is not None:
                for o in out:
                    o[:] = 0
                return list(out), 1
            return [np.zeros(len(c), np.int64) for c in cols], 1
        if hi - lo < 2**31:
            null = hi - lo + 1
            codes = []
            for i, c in enumerate(cols):
                if out is None or null >= 2**31 - 1:
                    v = np.subtract(_filled(c, lo), lo, dtype=np.int64)
                else:
                    v = np.subtract(_filled(c, lo), lo, out=out[i], casting="unsafe")
                if c.null_count:
                    v[c.is_null().to_numpy(zero_copy_only=False)] = null
                codes.append(v)
            return codes, null + 1
    merged: dict[Any, int] = {}
    codes = []
    for c in cols:
        enc = (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c).dictionary_encode(
            null_encoding="encode"
        )
        remap = np.array([merged.setdefault(v, len(merged)) for v in enc.dictionary.to_pylist()], np.int64)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        codes.append(remap[idx] if len(remap) else np.zeros(len(idx), np.int64))
    return codes, max(1, len(merged))


def key_codes(
    parts: Sequence[Sequence[pa.ChunkedArray | pa.Array]], out: Sequence[np.ndarray] | None = None
) -> tuple[list[np.ndarray], int]:
    """Dense int32 codes of a key tuple over several row sets (queries, each event source), and their count.

    parts[i][k] is key column k of row set i. Equal key tuples get equal codes across the row sets.
    Multi-column keys are combined and renumbered densely (0..k-1 over the tuples in use), which keeps
    the scan's state arrays small and cache-friendly. `out` (int32 arrays, one per row set, e.g. views
    of the scan's flat key array) receives the codes instead of new arrays: a single integer key is
    then coded in one pass, without int64 temporaries.
    """
    n_keys = len(parts[0]) if parts else 0
    if n_keys == 0:
        if out is not None:
            for o in out:
                o[:] = 0
            return list(out), 1
        return [np.zeros(len(p), np.int32) for p in parts], 1
    if n_keys == 1 and out is not None:
        codes, n_codes = _column_codes([p[0] for p in parts], out)
        if codes[0].dtype == np.int32 and n_codes <= max(1 << 20, 2 * sum(len(c) for c in codes)):
            return codes, max(1, n_codes)
    else:
        codes, n_codes = _column_codes([p[0] for p in parts])
    for k in range(1, n_keys):
        more, n = _column_codes([p[k] for p in parts])
        if k == n_keys - 1 and n_codes * n <= _dense_limit(codes):  # last key: pairs numbered in one pass
            return _dense_pairs(codes, more, n, n_codes * n, out)
        for c, m in zip(codes, more, strict=True):
            c *= n
            c += m
        n_codes *= n
        del more
        if n_codes > 2**40 or k == n_keys - 1:
            codes, n_codes = _densify(codes, n_codes)
    if n_codes > max(1 << 20, 2 * sum(len(c) for c in codes)):  # sparse ids: state sized by use
        codes, n_codes = _densify(codes, n_codes)
    if out is None:
        return [c.astype(np.int32) for c in codes], max(1, n_codes)
    for o, c in zip(out, codes, strict=True):
        if o is not c:
            np.copyto(o, c, casting="unsafe")
    return list(out), max(1, n_codes)


def _dense_limit(codes: Sequence[np.ndarray]) -> int:
    """The largest code space renumbered through a table of the codes in use (else: np.unique)."""
    return max(1 << 27, 4 * sum(len(c) for c in codes))


def _dense_pairs(
    codes: Sequence[np.ndarray],
    more: Sequence[np.ndarray],
    n: int,
    n_pairs: int,
    out: Sequence[np.ndarray] | None,
) -> tuple[list[np.ndarray], int]:
    """`_densify` of the pair codes `codes * n + more` (< n_pairs; what `key_codes` gives for its last key),
    as int32 in `out` (or new arrays), without the pair codes' int64 arrays: two nogil passes over the rows.

    Measured under cProfile on a warm synthetic (customer x category) key over 22.5M rows: 0.81 -> 0.67 s.
    In the 10M run that stream's coding stayed at 1.5-1.6 CPU-s, where the per-column codes' new memory
    dominates."""
    used = np.zeros(max(1, n_pairs), np.uint8)
    for c, m in zip(codes, more, strict=True):
        _mark_pairs(c, m, n, used)
    remap = np.cumsum(used, dtype=np.int64)
    remap -= 1
    remap = remap.astype(np.int32)
    result = list(out) if out is not None else [np.empty(len(c), np.int32) for c in codes]
    for c, m, o in zip(codes, more, result, strict=True):
        _remap_pairs(c, m, n, remap, o)
    return result, max(1, int(remap[-1]) + 1)


@nb.njit(cache=True, nogil=True)
def _mark_pairs(a, b, n, used):  # fmt: skip
    for i in range(len(a)):
        used[a[i] * n + b[i]] = 1


@nb.njit(cache=True, nogil=True)
def _remap_pairs(a, b, n, remap, out):  # fmt: skip
    for i in range(len(a)):
        out[i] = remap[a[i] * n + b[i]]


def _densify(codes: list[np.ndarray], n_codes: int) -> tuple[list[np.ndarray], int]:
    """Renumber the codes in use as 0..k-1."""
    if n_codes <= _dense_limit(codes):
        used = np.zeros(n_codes, bool)
        for c in codes:
            used[c] = True
        remap = np.cumsum(used, dtype=np.int64)
        remap -= 1
        return [remap[c] for c in codes], int(remap[-1]) + 1 if n_codes else 0
    uniq, inv = np.unique(np.concatenate(codes), return_inverse=True)
    out, at = [], 0
    for c in codes:
        out.append(inv[at : at + len(c)].astype(np.int64))
        at += len(c)
    return out, len(uniq)


# ------------------------------------------------------------------------------------------ kernels
@nb.njit(cache=True, nogil=True)
def _radix_order(ts, start):
    """start + the stable argsort of int64 `ts`: least-significant-digit radix sort of ts - min, 16 bits
    a pass (three passes for microseconds over a few years). Two index arrays of memory, like numpy's
    sort: each pass counts its digits in storage order and reads the digit of the row being placed."""
    n = len(ts)
    lo = ts.min()
    span = np.uint64(ts.max() - lo)
    idx = np.arange(n, dtype=np.int64)
    idx2 = np.empty(n, np.int64)
    count = np.empty(65537, np.int64)
    shift = np.uint64(0)
    while shift < np.uint64(64) and (span >> shift) > np.uint64(0):
        count[:] = 0
        for i in range(n):
            count[np.int64((np.uint64(ts[i] - lo) >> shift) & np.uint64(0xFFFF)) + 1] += 1
        for d in range(65536):
            count[d + 1] += count[d]
        for i in range(n):
            r = idx[i]
            d = np.int64((np.uint64(ts[r] - lo) >> shift) & np.uint64(0xFFFF))
            at = count[d]
            count[d] = at + 1
            idx2[at] = r
        idx, idx2 = idx2, idx
        shift += np.uint64(16)
    idx += start
    return idx


def _time_order(ts: np.ndarray, start: int) -> np.ndarray:
    """Global row numbers (start + local) of one source's events in time order (stable).

    Sources come mostly in their table's storage order, which for line events is qi order (by order
    time): sorted ones are not sorted again, nearly sorted ones go to timsort (its runs make them cheap),
    the rest to a radix sort (numpy's stable sort of int64 is timsort: 4x slower on shuffled times).
    Both are stable: the same permutation.
    """
    if len(ts) < 2:
        return np.arange(start, start + len(ts), dtype=np.int64)
    descents = int(np.count_nonzero(ts[1:] < ts[:-1]))
    if descents == 0:
        return np.arange(start, start + len(ts), dtype=np.int64)
    if descents < len(ts) // 64:
        order = np.argsort(ts, kind="stable")
        order += start
        return order
    return _radix_order(ts, start)


def _in_time_order(ts: np.ndarray, segments: Sequence[tuple[np.ndarray, int]], n: int) -> None:
    """Permute one source's events into time order, in place: each (array, offset) segment of n rows.

    `ts` (the source's times) decides the order (`_time_order`: stable); it is one of the segments or
    a copy. The scan's kernel then reads every event array sequentially: with an index instead, each of
    its threads paid a random read per event and operation (returns and resolutions are stored in line
    order, not time order). One scratch buffer per dtype, reused segment by segment.
    """
    if n < 2 or not (ts[1:] < ts[:-1]).any():
        return
    order = _time_order(ts, 0)
    scratch: dict[np.dtype, np.ndarray] = {}
    for arr, at in segments:
        seg = arr[at : at + n]
        buf = scratch.get(arr.dtype)
        if buf is None:
            buf = scratch[arr.dtype] = np.empty(n, arr.dtype)
        np.take(seg, order, out=buf)
        seg[:] = buf


@nb.njit(cache=True, nogil=True)
def _scan_kernel(
    q_ts, q_codes, e_ts, src_start, k_off, v_off, w_off, i_off,
    sum_ops, sum_const, sum_op_start, oth_ops, oth_op_start,
    kflat, vflat, wflat, iflat, ivalid,
    state, o_val, o_set,
    read_sum, read_oth, out_f, out_i, out_o, out_ov,
):  # fmt: skip
    """Before each query (in time order), apply every event dated strictly earlier; then read its state.

    Source s's events are rows src_start[s]..src_start[s+1] of e_ts and (per key / value slot) of the
    flat arrays, already in time order (`_in_time_order`): the kernel reads every array sequentially.
    Each source has its own pointer, so events of different sources between two queries are applied
    source by source (sums are order-free up to rounding, max / min exactly). sum_ops rows: (key slot,
    state base, stride, column, value slot or -1 for sum_const, one-hot slot: the column is wflat's,
    when column is -1); oth_ops rows: (key slot, base, stride,
    column, int value slot, 1 = last: max / 2 = first: min). read_sum rows: (stream, base, stride,
    column, 1 = int32 output, output row); read_oth rows: (stream, base, stride, column, output row).
    Every row ends with (modulus, residue bit mask): with a modulus m > 1 it applies only to keys whose
    code % m (m a power of two: code & (m - 1), not a division per event and read) has its bit set (a stream
    split by key over several runs; see `_partition`).
    Query codes -1: the line has no query row in that stream (output left as initialised).
    """
    nq = len(q_ts)
    n_src = len(src_start) - 1
    ptr = src_start[:-1].copy()
    for q in range(nq):
        t = q_ts[q]
        for s in range(n_src if q == 0 or t != q_ts[q - 1] else 0):  # same instant: no new events
            j = ptr[s]
            end = src_start[s + 1]
            n = end - src_start[s]
            while j < end and e_ts[j] < t:
                r = j - src_start[s]
                for o in range(sum_op_start[s], sum_op_start[s + 1]):
                    code = kflat[k_off[s] + sum_ops[o, 0] * n + r]
                    m = sum_ops[o, 6]
                    if m > 1 and not (sum_ops[o, 7] >> (code & (m - 1))) & 1:
                        continue  # a key of this stream that another run owns
                    c = sum_ops[o, 3]
                    if c < 0:  # one-hot group: this event's column
                        c = wflat[w_off[s] + sum_ops[o, 5] * n + r]
                        if c < 0:
                            continue
                    v = sum_const[o] if sum_ops[o, 4] < 0 else vflat[v_off[s] + sum_ops[o, 4] * n + r]
                    state[sum_ops[o, 1] + code * sum_ops[o, 2] + c] += v
                for o in range(oth_op_start[s], oth_op_start[s + 1]):
                    at = i_off[s] + oth_ops[o, 4] * n + r
                    if not ivalid[at]:
                        continue
                    code = kflat[k_off[s] + oth_ops[o, 0] * n + r]
                    m = oth_ops[o, 6]
                    if m > 1 and not (oth_ops[o, 7] >> (code & (m - 1))) & 1:
                        continue
                    x = oth_ops[o, 1] + code * oth_ops[o, 2] + oth_ops[o, 3]
                    v = iflat[at]
                    if not o_set[x] or (v > o_val[x] if oth_ops[o, 5] == 1 else v < o_val[x]):
                        o_set[x] = 1
                        o_val[x] = v
                j += 1
            ptr[s] = j
        for o in range(read_sum.shape[0]):
            code = q_codes[read_sum[o, 0], q]
            m = read_sum[o, 6]
            if code < 0 or (m > 1 and not (read_sum[o, 7] >> (code & (m - 1))) & 1):
                continue
            v = state[read_sum[o, 1] + code * read_sum[o, 2] + read_sum[o, 3]]
            if read_sum[o, 4] == 1:
                out_i[read_sum[o, 5], q] = np.int32(np.rint(v))
            else:
                out_f[read_sum[o, 5], q] = v
        for o in range(read_oth.shape[0]):
            code = q_codes[read_oth[o, 0], q]
            m = read_oth[o, 5]
            if code < 0 or (m > 1 and not (read_oth[o, 6] >> (code & (m - 1))) & 1):
                continue
            x = read_oth[o, 1] + code * read_oth[o, 2] + read_oth[o, 3]
            if o_set[x]:
                out_o[read_oth[o, 4], q] = o_val[x]
                out_ov[read_oth[o, 4], q] = 1


def warm_up() -> None:
    """Load (or compile) the kernel and the radix sort from numba's cache: the session starts this in a
    thread during staging."""
    i64, z = np.zeros(1, np.int64), np.zeros(0, np.int64)
    _radix_order(np.array([1, 0], np.int64), 0)
    _scan_kernel(
        i64, np.zeros((0, 1), np.int32), z, i64, z, z, z, z,
        np.zeros((0, 8), np.int64), np.zeros(0), i64, np.zeros((0, 8), np.int64), i64,
        np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int16), z, np.zeros(0, np.uint8),
        np.zeros(0), z, np.zeros(0, np.uint8),
        np.zeros((0, 8), np.int64), np.zeros((0, 7), np.int64),
        np.zeros((0, 1)), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.int64), np.zeros((0, 1), np.uint8),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ driver
KEY_RESIDUES = 16  # a stream split by key goes over the runs in this many residue classes of its key codes
assert KEY_RESIDUES & (KEY_RESIDUES - 1) == 0, "the kernel takes residues with a bit mask"
ALL_KEYS = (1 << KEY_RESIDUES) - 1


def _partition(work: np.ndarray, threads: int) -> list[dict[int, int]]:
    """Streams split into at most `threads` runs of about equal kernel work: per run, {stream: residue
    mask}, the mask saying which key codes (by code % KEY_RESIDUES) of that stream the run owns.

    Each run walks the same time order, applying only the operations on keys it owns and reading only
    their lines: a key's state is touched by one run, in the single pass's order, so the runs go
    concurrently and every value is the one a single pass computes. Streams go whole to a run (greedy,
    largest first) unless that leaves the runs more than 10 % off an even share; then the heaviest streams
    are split by key residue class, one more at a time (the customer stream is most of the work: whole,
    it set the kernel's wall time). Not split by column: both runs would then pay the random state access
    of every event. One run when `threads` is 1 or there is no work.
    """
    n = len(work)
    total = float(np.sum(work))
    k = max(1, int(threads))
    if k == 1 or total <= 0:
        return [dict.fromkeys(range(n), ALL_KEYS)]
    split: set[int] = set()
    for s in [None, *np.argsort(-work, kind="stable").tolist()]:
        if s is not None:
            split.add(int(s))
        units: list[tuple[float, int, int]] = []  # (work, stream, residue mask)
        for j in range(n):
            if j in split:
                units += [(float(work[j]) / KEY_RESIDUES, j, 1 << r) for r in range(KEY_RESIDUES)]
            else:
                units.append((float(work[j]), j, ALL_KEYS))
        parts: list[dict[int, int]] = [{} for _ in range(k)]
        load = np.zeros(k)
        for w, j, mask in sorted(units, key=lambda u: (-u[0], u[1], u[2])):
            i = int(np.argmin(load))
            parts[i][j] = parts[i].get(j, 0) | mask
            load[i] += w
        if load.max() <= 1.1 * total / k:
            break
    return [p for p in parts if p]


def _release_freed_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    The event fetch leaves holes in the heap (DuckDB's result buffers, freed out of order) that glibc keeps
    resident; the kernel's output arrays are new mappings, so without this the process peaks with both.
    At 10M lines, 0.6-0.75 GiB released in 0.06 s before the first kernel: peak RSS 7.9 -> 7.4 GiB.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return
    trim(0)


@contextlib.contextmanager
def _small_pages() -> Iterator[None]:
    """numpy's new arrays on 4 KiB pages inside the block: numpy stops asking for transparent huge pages
    (MADV_HUGEPAGE) and asks again afterwards. Process-wide (numpy has one switch): other threads' arrays
    made meanwhile get 4 KiB pages too. A no-op where numpy lacks the switch.

    For the scan's values step, whose arrays (the flat key, value and one-hot columns) are written once in
    order: at 10M lines the step went 2.15-2.60 -> 0.95-1.57 s. On this VM 3 GiB of fresh pages cost, in
    processes run back to back, 0.05-2.06 s/GiB as huge pages (2.06 when the host had taken the memory back)
    and 0.33 s/GiB as 4 KiB pages; after two idle minutes both are cold, 2.28 and 1.61 s/GiB. Huge pages pay
    where arrays are read at random: with 4 KiB pages everywhere the events' sort went 0.99 -> 1.41 s and the
    basket's work 1.2 -> 1.9 s (BENCHMARKS.md, tenth pass).
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2 or a build without it: its default pages
        yield
        return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


#: `_written` maps arrays from this size on with 4 KiB pages (small_pages=True) and fills them on its threads
SMALL_PAGES_MIN_BYTES = 1 << 24


def _written(
    shape: int | tuple[int, ...], dtype: Any, fill: Any = 0, *, small_pages: bool = False, threads: int = 1
) -> np.ndarray:
    """`fill` written here (by `threads` threads, each its share), not lazily mapped zero pages (np.zeros).

    For the kernel's state and outputs, whose pages the kernel's threads would otherwise fault in while
    they run side by side. Measured at 10M lines (three alternated pairs, BENCHMARKS.md seventh pass):
    system time 17.5 -> 16.1 s, child wall 40.0 -> 38.8 s. On this VM fresh pages come from the host, and
    the kernel's threads faulting them in as they go cost more than a fill before the kernel starts.

    `small_pages`: for arrays written and read in order (the kernel's outputs), an anonymous mapping with
    4 KiB pages (MADV_NOHUGEPAGE) instead of the 2 MiB transparent huge pages numpy asks for. On this VM a
    huge page faulted in cold costs 2.1 s/GiB against 0.5-1.1 s/GiB for 4 KiB pages (6 GiB touched in a
    fresh process, BENCHMARKS.md eighth pass); the outputs' fill at 10M lines: 2.0-2.7 s -> 0.7-0.8 s.
    Random-access arrays (the state) keep numpy's huge pages (not measured with small pages).

    `threads`: a fill split between threads (ndarray.fill releases the GIL) faults the pages in from
    every core: 1.5 GiB of 4 KiB pages in a fresh process, 0.83-0.86 s with one thread, 0.43-0.45 s with two.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if small_pages and count * dtype.itemsize >= SMALL_PAGES_MIN_BYTES and hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf = mmap.mmap(-1, count * dtype.itemsize)  # the array holds the mapping; unmapped with it
        buf.madvise(mmap.MADV_NOHUGEPAGE)
        out = np.frombuffer(buf, dtype, count).reshape(shape)
    else:
        out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    if threads < 2 or flat.nbytes < SMALL_PAGES_MIN_BYTES:
        flat.fill(fill)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="scan-fill") as pool:
            list(pool.map(lambda part: part.fill(fill), np.array_split(flat, threads)))
    return out


def _nonzero_count(col: pa.ChunkedArray) -> int:
    """Values other than 0 (NULL counts as 0, NaN does not: np.count_nonzero of `_float_values`), in Arrow."""
    return int(pc.sum(pc.not_equal(col, 0.0)).as_py() or 0)


def _float_values(col: pa.ChunkedArray) -> np.ndarray:
    return _filled(col, 0.0).astype(np.float64, copy=False)


def _check_integral(col: _Column, arr: np.ndarray) -> None:
    """Track whether a sum column's values are all whole numbers, and a bound on its sums.

    One nogil pass (`_whole_and_abs_sum`), not numpy's np.rint(arr) and np.abs(arr): two new arrays the size
    of the column, each of them fresh memory (the dearest thing on this VM; BENCHMARKS.md eighth pass)."""
    whole, abs_sum = _whole_and_abs_sum(np.ascontiguousarray(arr, np.float64))
    if col.integral and not whole:
        col.integral = False
    col.abs_total += abs_sum


@nb.njit(cache=True, nogil=True)
def _whole_and_abs_sum(arr):  # fmt: skip
    """(every value a whole number (NaN is not), the sum of the absolute values)."""
    whole = True
    total = 0.0
    for i in range(len(arr)):
        x = arr[i]
        if whole and np.rint(x) != x:
            whole = False
        total += abs(x)
    return whole, total


def _sources(
    names: Sequence[str], cols: Mapping[str, Sequence], evs: Mapping[str, Sequence]
) -> tuple[list[_Source], dict[tuple[int, str], _Column]]:
    """Group every stream's events by (FROM clause, time): one fetch per group, each stream a key slot."""
    columns: dict[tuple[int, str], _Column] = {}
    for s, name in enumerate(names):
        n_sum = n_oth = 0
        for c in cols[name]:
            if c.agg == "sum":
                columns[(s, c.name)] = _Column(s, c.name, c.agg, n_sum)
                n_sum += 1
            else:
                columns[(s, c.name)] = _Column(s, c.name, c.agg, n_oth)
                n_oth += 1
    by_key: dict[tuple[str, str], _Source] = {}
    for s, name in enumerate(names):
        for e in evs[name]:
            src = by_key.setdefault((e.source, e.ts), _Source(e.source, e.ts))
            if s not in src.streams:
                src.streams.append(s)
            slot = src.streams.index(s)
            for c, v in e.values.items():
                target = src.sums if columns[(s, c)].agg == "sum" else src.others
                target.append((slot, c, v))
    return list(by_key.values()), columns


def scan_streams(
    ctx: Context,
    specs: Mapping[str, Any],
    cols: Mapping[str, Sequence],
    evs: Mapping[str, Sequence],
    out: dict,
    timing_prefix: str = "scan",
) -> None:
    """Evaluate the running columns `cols[stream]` from the events `evs[stream]` of every stream in one pass.

    Fills `out[column] = (values aligned with qi, null mask or None)` and `out["_type_<column>"]` like
    the per-stream scan did: whole-number sums int32 (mask: lines without a query row), other sums
    float64 (NaN without a query row), last/first int64 with their Arrow type.
    """
    names = [n for n in specs if cols.get(n)]
    size = int(out["_n"])
    if not names:
        return
    sources, columns = _sources(names, cols, evs)
    tick = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        key = f"{timing_prefix}_{step}_s"
        ctx.timings[key] = ctx.timings.get(key, 0.0) + now - tick[0]
        tick[0] = now

    # ---- queries: one fetch per distinct query SQL shape (streams over the same WHERE share it)
    q_ts = np.full(size, I64_MIN, np.int64)
    have_ts = np.zeros(size, bool)
    q_keys: dict[int, list[pa.ChunkedArray]] = {}
    q_rows: dict[int, np.ndarray] = {}
    by_where: dict[str, list[int]] = {}
    for s, name in enumerate(names):
        by_where.setdefault(specs[name].where, []).append(s)
    for group in by_where.values():
        keys = tuple(dict.fromkeys(k for s in group for k in specs[names[s]].keys))
        sql = replace(specs[names[group[0]]], keys=keys).queries  # the group's queries with every key
        q = ctx.con.sql(f"SELECT qi, ts, {', '.join(keys)} FROM ({sql}) q").to_arrow_table()
        qi = q.column("qi").to_numpy().astype(np.int64)
        ts = _micros(q.column("ts"))
        if have_ts[qi].any() and not np.array_equal(q_ts[qi][have_ts[qi]], ts[have_ts[qi]]):
            raise ValueError("streams: query rows of one target line disagree on its time")
        q_ts[qi] = ts
        have_ts[qi] = True
        for s in group:
            q_rows[s] = qi
            q_keys[s] = [q.column(k) for k in specs[names[s]].keys]
        del q, qi, ts
    if size and not have_ts.all():
        q_ts = np.maximum.accumulate(np.where(have_ts, q_ts, I64_MIN))  # rows read by no stream
    if size > 1 and (q_ts[1:] < q_ts[:-1]).any():
        raise ValueError("streams: target lines (qi) are not in time order")

    lap("queries")
    # ---- events: one fetch per source
    fetched = []
    for src in sources:
        key_cols = []
        for slot, s in enumerate(src.streams):
            for i, k in enumerate(specs[names[s]].keys):
                key_cols.append(f"{k} AS k{slot}_{i}")
        vals = []
        for j, (_, _, v) in enumerate(src.sums):
            if _literal(v) is None:
                vals.append(f"CAST({v} AS DOUBLE) AS v{j}")
        for j, (_, _, v) in enumerate(src.others):
            vals.append(f"{v} AS o{j}")
        inner = f"SELECT {', '.join([*key_cols, f'{src.ts} AS ts__', *vals])} {src.source}"
        t = ctx.con.sql(f"SELECT * FROM ({inner}) e WHERE ts__ IS NOT NULL").to_arrow_table()
        fetched.append(t)

    lap("fetch")
    # the values step's arrays are written once in order: 4 KiB pages (see _small_pages)
    with _small_pages():
        threads = max(1, int(getattr(ctx.params, "threads", 1)))
        # ---- key codes per stream over its queries and every source feeding it
        n_src = len(sources)
        n_rows = np.array([t.num_rows for t in fetched], np.int64)
        src_start = np.zeros(n_src + 1, np.int64)
        np.cumsum(n_rows, out=src_start[1:])
        n_queries = np.zeros(len(names), np.int64)
        q_codes = np.full((len(names), size), -1, np.int32)
        k_off = np.zeros(n_src, np.int64)
        n_slots = np.array([len(src.streams) for src in sources], np.int64)
        np.cumsum((n_rows * n_slots)[:-1], out=k_off[1:])
        # source j's codes for its key slot k: kflat[k_off[j] + k * n_j : k_off[j] + (k + 1) * n_j]
        kflat = np.empty(int((n_rows * n_slots).sum()), np.int32)
        n_codes = [0] * len(names)

        def code_stream(s: int, fetched: list[pa.Table] = fetched) -> None:
            """Stream s's codes: its row of q_codes, its slices of kflat (disjoint from every other stream's)."""
            name = names[s]
            feeding = [(j, src.streams.index(s)) for j, src in enumerate(sources) if s in src.streams]
            parts = [q_keys.pop(s)]
            out_views = [np.empty(len(q_rows[s]), np.int32)]
            for j, slot in feeding:
                parts.append([fetched[j].column(f"k{slot}_{i}") for i in range(len(specs[name].keys))])
                at = int(k_off[j] + slot * n_rows[j])
                out_views.append(kflat[at : at + int(n_rows[j])])
            codes, n_codes[s] = key_codes(parts, out_views)
            q_codes[s, q_rows[s]] = codes[0]
            n_queries[s] = len(q_rows.pop(s))  # the line numbers are in q_codes now

        # streams coded side by side, the most rows first, while this thread reads the values below (numpy
        # and Arrow release the GIL; the values read other columns of the fetched tables)
        stream_rows = [
            len(q_rows[s]) + sum(int(n_rows[j]) for j, src in enumerate(sources) if s in src.streams)
            for s in range(len(names))
        ]
        coding = ThreadPoolExecutor(threads, thread_name_prefix="scan-codes")
        coded = [
            coding.submit(code_stream, s)
            for s in sorted(range(len(names)), key=lambda s: (-stream_rows[s], s))
        ]
        coding.shutdown(wait=False)
        del code_stream  # and its reference to the fetched tables (the pool's tasks hold their own)

        # ---- values and operations per source (an operation names its stream; its state offset follows the codes)
        n_sum = [
            sum(1 for c in columns.values() if c.stream == s and c.agg == "sum") for s in range(len(names))
        ]
        n_oth = [
            sum(1 for c in columns.values() if c.stream == s and c.agg != "sum") for s in range(len(names))
        ]
        sum_ops, sum_const, sum_op_start = [], [], [0]
        oth_ops, oth_op_start = [], [0]
        v_off = np.zeros(n_src, np.int64)
        w_off = np.zeros(n_src, np.int64)
        i_off = np.zeros(n_src, np.int64)
        wparts, iparts, vparts_valid = [], [], []
        # value slots: each source's non-constant sum columns (and one merged column per key slot at most),
        # copied from the fetched columns straight into place; the capacity left unused is never touched
        v_cap = 0
        for j, src in enumerate(sources):
            varying = [slot for slot, _, v in src.sums if _literal(v) is None]
            v_cap += int(n_rows[j]) * (len(varying) + len(set(varying)))
        vflat = np.empty(v_cap)
        vat = wat = iat = 0
        # value / one-hot / int slots per source
        n_v, n_w, n_i = (np.zeros(n_src, np.int64) for _ in range(3))
        for j, src in enumerate(sources):
            t = fetched[j]
            n = t.num_rows
            v_off[j], w_off[j], i_off[j] = vat, wat, iat
            slot_v = slot_w = 0
            by_slot: dict[int, list[tuple[_Column, str]]] = {}
            for jj, (slot, c, v) in enumerate(src.sums):
                s = src.streams[slot]
                col = columns[(s, c)]
                lit = _literal(v)
                if lit is None:
                    by_slot.setdefault(slot, []).append((col, f"v{jj}"))
                    continue
                if col.integral and lit != round(lit):
                    col.integral = False
                col.abs_total += abs(lit) * n
                sum_ops.append((slot, s, n_sum[s], col.col, -1, -1))
                sum_const.append(lit)
            for slot, group in by_slot.items():
                s = src.streams[slot]
                # columns of which each event sets at most one (e.g. a histogram of sizes) travel as one
                # value and the column it goes to, instead of a mostly-zero value per column; the sparsest
                # columns are merged first, a column that overlaps the merged ones stays a column of its own
                arrays = [(col, t.column(name)) for col, name in group]
                density = [_nonzero_count(a) / max(1, n) for _, a in arrays]
                which = val = None
                if sum(d <= 0.5 for d in density) >= 3 and n_sum[s] < 2**15:
                    which, val = np.full(n, -1, np.int16), np.zeros(n)
                merged = 0
                for k in np.argsort(density, kind="stable"):
                    col, a = arrays[k]
                    sparse = which is not None and density[k] <= 0.5
                    # a column that may be merged is read on its own; any other goes to its slot directly
                    arr = _float_values(a) if sparse else _filled(a, 0.0, out=vflat[vat : vat + n])
                    _check_integral(col, arr)
                    if sparse:
                        nz = np.flatnonzero(arr)
                        if not (which[nz] >= 0).any():
                            which[nz] = col.col
                            val[nz] = arr[nz]
                            merged += 1
                            continue
                    if n and arr[0] == arr.min() == arr.max():  # the same value on every event
                        sum_ops.append((slot, s, n_sum[s], col.col, -1, -1))
                        sum_const.append(float(arr[0]))
                        continue  # its slot is the next column's
                    if sparse:
                        vflat[vat : vat + n] = arr
                    vat += n
                    sum_ops.append((slot, s, n_sum[s], col.col, slot_v, -1))
                    sum_const.append(0.0)
                    slot_v += 1
                if merged:
                    vflat[vat : vat + n] = val
                    wparts.append(which)
                    vat += n
                    wat += n
                    sum_ops.append((slot, s, n_sum[s], -1, slot_v, slot_w))
                    sum_const.append(0.0)
                    slot_v += 1
                    slot_w += 1
                del arrays, which, val
                t = fetched[j] = t.drop_columns([name for _, name in group])  # frees their buffers
            for jj, (slot, c, _) in enumerate(src.others):
                s = src.streams[slot]
                col = columns[(s, c)]
                arr = t.column(f"o{jj}")
                if col.type is None:
                    col.type = arr.type
                vals = _filled(arr.cast(pa.int64()), 0).astype(np.int64, copy=False)
                iparts.append(vals)
                vparts_valid.append(arr.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8))
                oth_ops.append((slot, s, n_oth[s], col.col, jj, 1 if col.agg == "last" else 2))
                iat += len(vals)
            n_v[j], n_w[j], n_i[j] = slot_v, slot_w, len(src.others)
            sum_op_start.append(len(sum_ops))
            oth_op_start.append(len(oth_ops))
        t = arr = vals = None  # the last source's table and value: freed with the others
        lap("values")
        for f in coded:  # the codes are in q_codes and kflat now: free the fetched key columns
            f.result()
        del coded
        for j, t in enumerate(fetched):
            fetched[j] = t.drop_columns([c for c in t.column_names if c.startswith("k")])
        t = None
        lap("codes")

    # ---- state layout: per stream, sum columns then last/first columns, row-major per key
    sum_base = np.zeros(len(names), np.int64)
    oth_base = np.zeros(len(names), np.int64)
    for s in range(1, len(names)):
        sum_base[s] = sum_base[s - 1] + n_codes[s - 1] * n_sum[s - 1]
        oth_base[s] = oth_base[s - 1] + n_codes[s - 1] * n_oth[s - 1]
    sum_ops = [(op[0], sum_base[op[1]], *op[2:]) for op in sum_ops]
    oth_ops = [(op[0], oth_base[op[1]], *op[2:]) for op in oth_ops]
    state = _written(int(sum_base[-1] + n_codes[-1] * n_sum[-1]), np.float64, threads=threads)
    n_ostate = int(oth_base[-1] + n_codes[-1] * n_oth[-1])
    o_val = _written(n_ostate, np.int64, threads=threads)
    o_set = _written(n_ostate, np.uint8, threads=threads)
    e_ts = np.empty(int(src_start[-1]), np.int64)
    for j, t in enumerate(fetched):
        _micros(t.column("ts__"), out=e_ts[src_start[j] : src_start[j + 1]])
    t = None
    del fetched
    vflat = vflat[:vat]
    wflat = np.concatenate(wparts) if wparts else np.zeros(0, np.int16)
    iflat = np.concatenate(iparts) if iparts else np.zeros(0, np.int64)
    ivalid = np.concatenate(vparts_valid) if vparts_valid else np.zeros(0, np.uint8)
    del wparts, iparts, vparts_valid
    lap("values")

    # each source's events put in time order, their times and every key / value slot (the kernel's reads
    # are then sequential); sources sorted side by side, largest first (radix sort and take release the GIL)
    def order_source(j: int) -> None:
        n = int(n_rows[j])
        a = int(src_start[j])
        segments = [(e_ts, a)]
        segments += [(kflat, int(k_off[j]) + k * n) for k in range(int(n_slots[j]))]
        segments += [(vflat, int(v_off[j]) + k * n) for k in range(int(n_v[j]))]
        segments += [(wflat, int(w_off[j]) + k * n) for k in range(int(n_w[j]))]
        segments += [(arr, int(i_off[j]) + k * n) for arr in (iflat, ivalid) for k in range(int(n_i[j]))]
        _in_time_order(e_ts[a : a + n], segments, n)

    by_size = sorted(range(n_src), key=lambda j: (-int(n_rows[j]), j))
    with ThreadPoolExecutor(threads, thread_name_prefix="scan-sort") as pool:
        list(pool.map(order_source, by_size))
    lap("sort")

    _release_freed_heap()  # the fetched tables' freed memory, before the outputs: the featurize peak
    # ---- outputs
    read_sum, read_oth = [], []
    nf = ni = no = 0
    for (s, _), col in columns.items():
        if col.agg == "sum":
            col.out_int = col.integral and col.abs_total < 2**31
            if col.out_int:
                col.out_row, ni = ni, ni + 1
            else:
                col.out_row, nf = nf, nf + 1
            read_sum.append((s, sum_base[s], n_sum[s], col.col, int(col.out_int), col.out_row))
        else:
            col.out_row, no = no, no + 1
            read_oth.append((s, oth_base[s], n_oth[s], col.col, col.out_row))
    out_f = _written((nf, size), np.float64, np.nan, small_pages=True, threads=threads)
    out_i = _written((ni, size), np.int32, small_pages=True, threads=threads)
    out_o = _written((no, size), np.int64, small_pages=True, threads=threads)
    out_ov = _written((no, size), np.uint8, small_pages=True, threads=threads)
    lap("outputs")

    # ---- kernel: streams split over threads by their work: per event of a stream, one random state access
    # plus its operations; per query line, one access plus the columns read (the customer stream, with 17
    # operations and 18 columns, took 3.2 CPU-s against 1.3 for two streams with 2 each and as many rows)
    work = np.zeros(len(names))
    for j, src in enumerate(sources):
        ops = [
            *sum_ops[sum_op_start[j] : sum_op_start[j + 1]],
            *oth_ops[oth_op_start[j] : oth_op_start[j + 1]],
        ]
        for s, n_ops in Counter(src.streams[op[0]] for op in ops).items():
            work[s] += n_rows[j] * (1 + n_ops)
    n_reads = Counter(r[0] for r in [*read_sum, *read_oth])
    for s in range(len(names)):
        work[s] += n_queries[s] * (1 + n_reads[s])

    def arr2(rows: list, width: int) -> np.ndarray:
        return np.array(rows, np.int64).reshape(len(rows), width)

    def run(part: dict[int, int]) -> float:
        """The kernel over the streams (and keys) in `part` only: their operations and reads; returns the
        thread's CPU seconds (its wall time on a free core, whatever else the machine runs)."""
        cpu = time.thread_time()

        def sel(s: int) -> tuple[int, int]:  # (modulus, residue mask); 1: every key
            return (1, 1) if part[s] == ALL_KEYS else (KEY_RESIDUES, part[s])

        ops, const, op_start, oops, oop_start = [], [], [0], [], [0]
        for j, src in enumerate(sources):
            for o in range(sum_op_start[j], sum_op_start[j + 1]):
                s = src.streams[sum_ops[o][0]]
                if s in part:
                    ops.append((*sum_ops[o], *sel(s)))
                    const.append(sum_const[o])
            for o in range(oth_op_start[j], oth_op_start[j + 1]):
                s = src.streams[oth_ops[o][0]]
                if s in part:
                    oops.append((*oth_ops[o], *sel(s)))
            op_start.append(len(ops))
            oop_start.append(len(oops))
        reads = [(*r, *sel(r[0])) for r in read_sum if r[0] in part]
        oreads = [(*r, *sel(r[0])) for r in read_oth if r[0] in part]
        _scan_kernel(
            q_ts, q_codes, e_ts, src_start, k_off, v_off, w_off, i_off,
            arr2(ops, 8), np.array(const, np.float64), np.array(op_start, np.int64),
            arr2(oops, 8), np.array(oop_start, np.int64),
            kflat, vflat, wflat, iflat, ivalid, state, o_val, o_set,
            arr2(reads, 8), arr2(oreads, 7), out_f, out_i, out_o, out_ov,
        )  # fmt: skip
        return time.thread_time() - cpu

    parts = _partition(work, int(getattr(ctx.params, "threads", 1)))
    if len(parts) == 1:
        cpus = [run(parts[0])]
    else:  # the kernel releases the GIL; streams own disjoint state and output rows
        with ThreadPoolExecutor(len(parts), thread_name_prefix="scan") as pool:
            cpus = [f.result() for f in [pool.submit(run, part) for part in parts]]
    key = f"{timing_prefix}_kernel_cpu_max_s"  # the longest part: the kernel's wall time on free cores
    ctx.timings[key] = ctx.timings.get(key, 0.0) + max(cpus)
    key = f"{timing_prefix}_kernel_cpu_s"
    ctx.timings[key] = ctx.timings.get(key, 0.0) + sum(cpus)
    lap("kernel")
    no_query = {s: q_codes[s] < 0 for s in range(len(names))}
    for (s, name), col in columns.items():
        if col.agg == "sum":
            if col.out_int:
                out[name] = (out_i[col.out_row], no_query[s])
                out[f"_type_{name}"] = pa.int32()
            else:
                out[name] = (out_f[col.out_row], None)
        else:
            out[name] = (out_o[col.out_row], out_ov[col.out_row] == 0)
            if col.type is not None:
                out[f"_type_{name}"] = col.type
