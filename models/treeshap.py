"""Exact path-dependent TreeSHAP for shallow LightGBM models, precomputed per leaf (numba).

Why: LightGBM's own `pred_contrib` runs the classic TreeSHAP recursion, O(leaves x depth^2) per tree and
line, about 545 lines/s for a 200-tree, 63-leaf model on 2 cores. Reason codes for every scored line
need tens of thousands per second. The same exact values come much cheaper for shallow trees:

For a leaf l with value v, let U be the distinct features on its path (d of them), z_j the product of the
cover ratios (child count / parent count) of the path's splits on feature j, and o_j(x) in {0, 1}
whether x follows the path at all of those splits. Path-dependent TreeSHAP is the Shapley value of the
game v(S) = sum_l v_l prod_{j in S∩U_l} o_j prod_{j in U_l \\ S} z_j, so leaf l adds to feature i in U

    phi_i = v (o_i - z_i) sum_{S ⊆ U\\{i}} |S|! (d-|S|-1)! / d! prod_{j in S} o_j prod_{j in U\\S\\{i}} z_j

which depends on x only through the bit pattern o (2^d values). We tabulate phi for every pattern once
per model ("Fast TreeSHAP v2", Yang 2021); explaining a line is then, per tree, one pass over its split
decisions plus one table look-up per leaf: O(leaves x depth). Base value = sum_l v_l prod_j z_j.

Decisions replicate LightGBM's exactly (numerical `<=` with missing types None/Zero/NaN and default
direction; categorical bitsets, NaN/negative -> right). `tests/test_explain_treeshap.py` checks the values
against `pred_contrib` to 1e-9. Trees whose paths have more than MAX_DISTINCT distinct features are not
tabulated (tables grow as 2^d): `supports` says so and callers fall back to LightGBM's pred_contrib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from models.treeeval import fill_views, fill_views_t

MAX_DISTINCT = 10
MAX_PATH = 12  # longer paths: LightGBM's pred_contrib (a leaf maps 2^path patterns to its table rows)
MAX_TABLE_FLOATS = 32_000_000  # 256 MB of tables at most; deeper/larger models use LightGBM's pred_contrib
ZERO_THRESHOLD = 1e-35  # LightGBM kZeroThreshold
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}


@dataclass(frozen=True)
class TreeTables:
    """A LightGBM model flattened into arrays for the numba kernel.

    Per row and tree the kernel (1) decides every node with one `<=` on `models.treeeval` views (missing
    values and category sets pre-resolved), (2) builds each node's and leaf's *agreement pattern* (bit k:
    x follows the path at depth k) from its parent's in pre-order, (3) per leaf maps the pattern to the
    feature mask of its table (`pattern_mask`) and adds the table row to the leaf's d features. This
    replaces a per-leaf loop over the path (half the time of the first version); loop trip counts are the
    same for every row, so the branch predictor learns them. Two sibling leaves are one entry (a table
    indexed by the pattern itself), so "leaf" below means such an entry.
    """

    n_features: int
    # nodes (global index; tree t owns [tree_node_start[t], tree_node_start[t + 1])): node i goes left when
    # view col[i] of the row (models.treeeval.Views: missing values and category sets pre-resolved) <= thr[i]
    col: np.ndarray
    thr: np.ndarray
    views: Any
    bits: np.ndarray  # uint32 category bitset words (at least one)
    tree_node_start: np.ndarray
    tree_leaf_start: np.ndarray
    # slots: the nodes and leaves of each tree in pre-order (tree t owns [tree_slot_start[t], ...[t + 1]))
    tree_slot_start: np.ndarray
    slot_parent: np.ndarray  # the parent's slot (-1 at a root)
    slot_node: np.ndarray  # the parent's node id (a root: the dummy node, number of nodes)
    slot_side: np.ndarray  # 1: the slot is its parent's left child
    slot_depth: np.ndarray  # the parent's depth (0 at the root)
    # leaves
    path_len: int  # the longest path: patterns have path_len bits
    leaf_slot: np.ndarray
    pattern_mask: np.ndarray  # leaf x 2^path_len: path agreement pattern -> feature mask of the table
    width: int
    n_distinct: np.ndarray  # d per leaf
    uf: np.ndarray  # leaf x width: the leaf's d distinct features (then padding)
    tbl_start: np.ndarray  # the leaf's table: 2^d rows of d values
    table: np.ndarray
    base: float
    max_distinct: int


def _weights(d: int) -> np.ndarray:
    return np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])


@nb.njit(cache=True)
def _leaf_table(v: float, z: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """phi[mask, i] for every on/off pattern `mask` of the leaf's d distinct features.

    With A = the features other than i that x follows (o_j = 1) and B = the others (o_j = 0), only S ⊆ A
    contribute, so the sum is prod_B z_j * sum_s w[s] e_{|A|-s}(z_A), e_k the elementary symmetric
    polynomials of the z over A (a small DP): O(2^d d^2) per leaf instead of O(4^d d).
    """
    d = z.shape[0]
    e = np.zeros(d + 1)
    for mask in range(1 << d):
        for i in range(d):
            oi = 1.0 if (mask >> i) & 1 else 0.0
            e[:] = 0.0
            e[0] = 1.0
            a = 0
            prod_b = 1.0
            for j in range(d):
                if j == i:
                    continue
                if (mask >> j) & 1:
                    a += 1
                    for k in range(a, 0, -1):
                        e[k] += e[k - 1] * z[j]
                else:
                    prod_b *= z[j]
            total = 0.0
            for size in range(a + 1):
                total += w[size] * e[a - size]
            out[mask * d + i] = v * (oi - z[i]) * prod_b * total


def build_tables(booster: Any, max_distinct: int = MAX_DISTINCT) -> TreeTables | None:
    """Tabulate a LightGBM booster; None when a leaf's path has more than `max_distinct` distinct
    features or the tables would exceed MAX_TABLE_FLOATS (callers then use LightGBM's pred_contrib)."""
    from models.treeeval import build_forest, build_views

    model = booster.dump_model()
    forest = build_forest(booster)
    if forest is None:
        return None
    n_features = int(model["max_feature_idx"]) + 1
    # internal counts per forest node and leaf (the forest numbers nodes/leaves in the same pre-order)
    counts: list[float] = []
    leaf_counts: list[float] = []

    def walk_counts(node: dict) -> None:
        if "split_feature" in node:
            counts.append(float(node["internal_count"]))
            walk_counts(node["left_child"])
            walk_counts(node["right_child"])
        else:
            leaf_counts.append(float(node.get("leaf_count", 0)))

    for info in model["tree_info"]:
        walk_counts(info["tree_structure"])
    f = forest
    n_nodes = len(f.feat)
    dummy = n_nodes

    def count_of(child: int) -> float:
        return leaf_counts[~child] if child < 0 else counts[child]

    base = 0.0
    leaves: list[tuple[list[tuple[int, bool, int]], list[int], np.ndarray, int]] = []  # + the leaf's slot
    # slots: every node and leaf of a tree in pre-order; a child slot records its parent's slot and node,
    # the side it hangs on and the parent's depth (the agreement pattern of a leaf is built from these)
    slot_parent: list[int] = []
    slot_node: list[int] = []
    slot_side: list[int] = []
    slot_depth: list[int] = []
    tree_slot_start, tree_leaf_start = [0], [0]
    max_d, max_path = 0, 0
    total = 0
    for root in f.roots:
        root = int(root)
        if root < 0:  # a one-leaf tree: a constant
            base += float(f.leaf_value[~root])
        else:
            # (node, path of (node, went_left, feature, cover ratio), parent slot)
            stack: list[tuple[int, list, int]] = [(root, [], -1)]
            while stack:
                node, path, pslot = stack.pop()
                slot = len(slot_parent)
                slot_parent.append(pslot)
                slot_node.append(path[-1][0] if path else dummy)
                slot_side.append(int(path[-1][1]) if path else 1)
                slot_depth.append(len(path) - 1 if path else 0)
                if node >= 0:
                    parent = counts[node]
                    for child, left in ((int(f.right[node]), False), (int(f.left[node]), True)):
                        ratio = count_of(child) / parent if parent > 0 else 0.0
                        stack.append((child, [*path, (node, left, int(f.feat[node]), ratio)], slot))
                    continue
                distinct: list[int] = []
                zs: dict[int, float] = {}
                for _, _, feat_j, ratio in path:
                    if feat_j not in zs:
                        distinct.append(feat_j)
                        zs[feat_j] = 1.0
                    zs[feat_j] *= ratio
                d = len(distinct)
                total += (1 << d) * d
                if d > max_distinct or len(path) > MAX_PATH or total > MAX_TABLE_FLOATS:
                    return None
                max_d, max_path = max(max_d, d), max(max_path, len(path))
                z = np.array([zs[j] for j in distinct])
                v = float(f.leaf_value[~node])
                base += v * float(np.prod(z))
                tab = np.zeros((1 << d) * d)
                if d:
                    _leaf_table(v, z, _weights(d), tab)
                path_bits = [(g, left, distinct.index(j)) for g, left, j, _ in path]
                leaves.append((path_bits, distinct, tab, slot))
        tree_slot_start.append(len(slot_parent))
        tree_leaf_start.append(len(leaves))
    # node ranges per tree: the forest numbers nodes tree by tree (pre-order), so tree t ends where the
    # next tree with a split starts (a one-leaf tree has an empty range)
    tree_node_start = [0]
    for t in range(len(f.roots)):
        tree_node_start.append(next((int(r) for r in f.roots[t + 1 :] if r >= 0), n_nodes))

    P, W = max(max_path, 1), max(max_d, 1)
    patterns = np.arange(1 << P)

    def mask_of(path: list[tuple[int, bool, int]], d: int) -> np.ndarray:
        """The leaf's feature mask for every agreement pattern (a feature's bit is cleared when any of
        its splits on the path disagrees)."""
        mask = np.full(1 << P, (1 << d) - 1, dtype=np.int64)
        for depth, (_, _, bit) in enumerate(path):
            mask &= np.where((patterns >> depth) & 1 == 1, -1, ~(1 << bit))
        return mask

    # Sibling leaves (both children of one node) share their path but its last direction, hence their
    # features; they become one entry whose table is indexed by the left leaf's pattern directly (row p =
    # left table at its mask + right table at the mask of p with the last bit flipped): half the look-ups
    # and additions for them.
    entries: list[
        tuple[np.ndarray, list[int], np.ndarray, int]
    ] = []  # (pattern -> row, features, rows, slot)
    leaf_start = [0]
    for t in range(len(f.roots)):
        group: dict[int, list[int]] = {}
        for i in range(tree_leaf_start[t], tree_leaf_start[t + 1]):
            group.setdefault(slot_parent[leaves[i][3]], []).append(i)
        for i in range(tree_leaf_start[t], tree_leaf_start[t + 1]):
            path, distinct, tab, slot = leaves[i]
            d = len(distinct)
            sib = group[slot_parent[slot]]
            if len(sib) == 2 and d:
                if not path[-1][1]:
                    continue  # the right sibling: merged into the left one
                right = leaves[sib[0] if sib[1] == i else sib[1]]
                last = 1 << (len(path) - 1)
                rows = np.arange(1 << len(path))
                m_left = mask_of(path, d)[rows]
                m_right = mask_of(right[0], d)[rows ^ last]
                merged = tab.reshape(-1, d)[m_left] + right[2].reshape(-1, d)[m_right]
                identity = np.zeros(1 << P, dtype=np.int64)
                identity[rows] = rows
                entries.append((identity, distinct, merged.ravel(), slot))
            else:
                entries.append((mask_of(path, d), distinct, tab, slot))
        leaf_start.append(len(entries))
    tree_leaf_start = leaf_start
    L = len(entries)
    pattern_mask = np.zeros(L << P, dtype=np.int64)  # entry x pattern -> row of its table
    leaf_slot = np.zeros(L, dtype=np.int64)
    n_distinct = np.zeros(L, dtype=np.int64)
    uf = np.full(L * W, n_features, dtype=np.int64)
    tbl_start = np.zeros(L, dtype=np.int64)
    tables = []
    pos = 0
    for i, (row_of, distinct, tab, slot) in enumerate(entries):
        d = len(distinct)
        pattern_mask[i << P : (i + 1) << P] = row_of
        leaf_slot[i] = slot
        uf[i * W : i * W + d] = distinct
        n_distinct[i] = d
        tables.append(tab)
        tbl_start[i] = pos
        pos += tab.size
    views, node_col, node_thr = build_views(forest)
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return TreeTables(
        n_features=n_features,
        col=i64(node_col),
        thr=node_thr,
        views=views,
        bits=f.bits if len(f.bits) else np.zeros(1, dtype=np.uint32),
        tree_node_start=i64(tree_node_start),
        tree_leaf_start=i64(tree_leaf_start),
        tree_slot_start=i64(tree_slot_start),
        slot_parent=i64(slot_parent),
        slot_node=i64(slot_node),
        slot_side=np.asarray(slot_side, dtype=np.uint8),
        slot_depth=i64(slot_depth),
        path_len=P,
        leaf_slot=leaf_slot,
        pattern_mask=pattern_mask,
        width=W,
        n_distinct=n_distinct,
        uf=uf,
        tbl_start=tbl_start,
        table=np.concatenate(tables) if tables else np.zeros(1),
        base=base,
        max_distinct=max_d,
    )


BLOCK_ROWS = 64  # rows per work item of the row-by-row reference kernel
LANE_ROWS = 512  # rows per work item of the lane kernel (128-1024 measured: 512 least CPU; views + phi in L2)


@nb.njit(parallel=True, cache=True)
def _kernel_lanes(X, out, col, thr, view_src, view_cat, view_nan, view_zero, view_bits_start, view_bits_end,
                  bits, tree_node_start, tree_slot_start, slot_parent, slot_node, slot_side, slot_depth,
                  tree_leaf_start, P, leaf_slot, pattern_mask, W, n_distinct, uf, tbl_start, table, block):  # fmt: skip
    """`_kernel` with the block's rows as the inner loop of every step (rows are lanes: SIMD compares,
    gathers and adds). Each (row, feature) sum gets its terms in the same order (tree, leaf entry, feature
    of the entry) as in `_kernel`, so the values are the same bits."""
    n = X.shape[0]
    nf = out.shape[1] - 1
    n_trees = tree_node_start.shape[0] - 1
    n_blocks = (n + block - 1) // block
    max_nodes = 1
    max_slots = 1
    for t in range(n_trees):
        max_nodes = max(max_nodes, tree_node_start[t + 1] - tree_node_start[t])
        max_slots = max(max_slots, tree_slot_start[t + 1] - tree_slot_start[t])
    for b in nb.prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        m = hi - lo
        VT = np.empty((view_src.shape[0], m))
        fill_views_t(
            X, lo, hi, view_src, view_cat, view_nan, view_zero, view_bits_start, view_bits_end, bits, VT
        )
        go = np.empty((max_nodes, m), dtype=np.int32)  # 1: the row goes left at the tree's node
        pat = np.zeros((max_slots, m), dtype=np.int32)  # agreement pattern per slot (the root's: 0)
        tb = np.empty(m, dtype=np.int64)
        phi = np.zeros((nf, m))
        for t in range(n_trees):
            n0 = tree_node_start[t]
            s0 = tree_slot_start[t]
            for i in range(n0, tree_node_start[t + 1]):
                g = go[i - n0]
                v = VT[col[i]]
                th = thr[i]
                for r in range(m):
                    g[r] = np.int32(v[r] <= th)
            for sl in range(s0 + 1, tree_slot_start[t + 1]):
                p_row = pat[slot_parent[sl] - s0]
                g = go[slot_node[sl] - n0]
                side = np.int32(slot_side[sl])
                sh = np.int32(slot_depth[sl])
                dst = pat[sl - s0]
                for r in range(m):
                    dst[r] = p_row[r] | (np.int32(g[r] == side) << sh)
            for leaf in range(tree_leaf_start[t], tree_leaf_start[t + 1]):
                lp = pat[leaf_slot[leaf] - s0]
                d = n_distinct[leaf]
                base = leaf << P
                t0 = tbl_start[leaf]
                for r in range(m):
                    tb[r] = t0 + pattern_mask[base + lp[r]] * d
                ub = leaf * W
                for k in range(d):
                    dst = phi[uf[ub + k]]
                    for r in range(m):
                        dst[r] += table[tb[r] + k]
        for j in range(nf):
            src = phi[j]
            for r in range(m):
                out[lo + r, j] = src[r]


@nb.njit(parallel=True, cache=True)
def _kernel(X, out, col, thr, view_src, view_cat, view_nan, view_zero, view_bits_start, view_bits_end, bits,
            tree_node_start, tree_slot_start, slot_parent, slot_node, slot_side, slot_depth, tree_leaf_start, P,
            leaf_slot, pattern_mask, W, n_distinct, uf, tbl_start, table, block):  # fmt: skip
    """The row-by-row kernel (the reference `_kernel_lanes` is tested against, bit for bit)."""
    n = X.shape[0]
    nf = out.shape[1] - 1
    n_nodes = col.shape[0]
    n_trees = tree_node_start.shape[0] - 1
    n_blocks = (n + block - 1) // block
    for b in nb.prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        V = np.empty((hi - lo, view_src.shape[0]))  # the rows as the nodes read them (one <= per node)
        fill_views(
            X, lo, hi, view_src, view_cat, view_nan, view_zero, view_bits_start, view_bits_end, bits, V
        )
        go = np.empty(n_nodes + 1, dtype=np.uint8)  # node decisions (1: left); the roots' dummy parent
        pat = np.zeros(slot_parent.shape[0] + 1, dtype=np.int64)  # agreement pattern per slot
        phi = np.zeros((hi - lo, nf))
        for t in range(n_trees):  # trees outer: a tree's tables are reused by every row of the block
            n0 = tree_node_start[t]
            n1 = tree_node_start[t + 1]
            s0 = tree_slot_start[t]
            s1 = tree_slot_start[t + 1]
            for r in range(hi - lo):
                go[n_nodes] = 1
                for i in range(n0, n1):
                    go[i] = V[r, col[i]] <= thr[i]
                # agreement pattern of every slot from its parent's (pre-order: parents first)
                for sl in range(s0 + 1, s1):
                    agree = np.int64(go[slot_node[sl]] == slot_side[sl])
                    pat[sl] = pat[slot_parent[sl]] | (agree << slot_depth[sl])
                row = phi[r]
                for leaf in range(tree_leaf_start[t], tree_leaf_start[t + 1]):
                    mask = pattern_mask[(leaf << P) + pat[leaf_slot[leaf]]]
                    d = n_distinct[leaf]
                    tb = tbl_start[leaf] + mask * d
                    ub = leaf * W
                    for k in range(d):  # the same trip counts for every row: predicted well
                        row[uf[ub + k]] += table[tb + k]
        for r in range(lo, hi):
            for j in range(nf):
                out[r, j] = phi[r - lo, j]


def contributions(tables: TreeTables, X: np.ndarray, *, kernel: str = "lanes") -> np.ndarray:
    """Exact TreeSHAP values (log-odds) for the encoded matrix X: n x (features + 1), base value last.

    kernel "lanes" (default, rows as SIMD lanes) or "rows" (row by row): the same bits."""
    if X.dtype != np.float64 or not (X.flags.c_contiguous or X.flags.f_contiguous):
        X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < tables.n_features:
        raise ValueError(
            f"expected a 2-D matrix with {tables.n_features} feature columns, got shape {X.shape}"
        )
    if kernel not in ("lanes", "rows"):
        raise ValueError(f"kernel must be 'lanes' or 'rows', not {kernel!r}")
    out = np.zeros((X.shape[0], X.shape[1] + 1))
    t = tables
    if X.shape[0]:
        v = t.views
        fn, block = (_kernel_lanes, LANE_ROWS) if kernel == "lanes" else (_kernel, BLOCK_ROWS)
        fn(X, out, t.col, t.thr, v.src, v.cat, v.nan, v.zero, v.bits_start, v.bits_end, t.bits,
           t.tree_node_start, t.tree_slot_start, t.slot_parent, t.slot_node, t.slot_side, t.slot_depth,
           t.tree_leaf_start, t.path_len, t.leaf_slot, t.pattern_mask, t.width, t.n_distinct, t.uf, t.tbl_start,
           t.table, block)  # fmt: skip
    out[:, -1] = t.base
    return out
