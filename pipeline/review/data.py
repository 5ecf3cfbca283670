"""Read-side of the reviewer app: the flagged-customer queue (in memory) and per-customer history (DuckDB).

The queue holds only the flag stage's output (50,000 rows is a few MB), sorted once by score, so
filtering and paging are numpy masks. A customer's orders, returns, reviews and line reasons are
queried from the Parquet files with DuckDB, filtered to that customer, so no request loads the full
order history into pandas.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from pipeline.io import find_table_file, read_any

FLAGS_FILE = "flagged_customers.parquet"
LINE_REASONS_FILE = "line_reasons.parquet"
REQUIRED_FLAG_COLUMNS = ("customer_id", "abuse_score", "tier", "abuse_type")
TIER_ORDER = ("restrict", "review", "watch")
ABUSE_TYPES = ("serial_returner", "wardrober", "bracketer", "claim_abuser", "honest_high_returner")
# Known evidence columns: (column, label, format). Unknown extra numeric columns are shown too.
EVIDENCE: tuple[tuple[str, str, str], ...] = (
    ("n_orders", "Orders", "int"),
    ("n_items", "Items bought", "int"),
    ("n_returned", "Items returned", "int"),
    ("expected_returns", "Returns expected for these items (customer-blind model)", "float1"),
    ("excess_returns", "Excess returns (observed - expected)", "signed1"),
    ("excess_pvalue", "Chance of this many returns by luck (p-value)", "p"),
    ("bracketing_share", "Share of orders bracketed (several sizes/colours, rest returned)", "pct"),
    ("wardrobing_returns", "Wardrobing-like returns (occasion wear, near the deadline)", "int"),
    ("claim_ratio", "Damage / not-as-described claims vs other buyers of the same items", "ratio"),
    ("return_value", "Value returned", "money"),
    ("net_value", "Net value (revenue kept minus return costs)", "money"),
)
_NOT_EVIDENCE = {"customer_id", "abuse_score", "tier", "abuse_type", "recommended_action", "reasons"}
PAGE_SIZE = 50


class ReviewDataError(RuntimeError):
    """An input of the app (flags, tables) is missing or unusable; the message names file and column."""


def fmt_number(value: Any, kind: str) -> str:
    """Format one evidence number for people; missing values show as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "—"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "float1":
        return f"{v:,.1f}"
    if kind == "signed1":
        return f"{v:+,.1f}"
    if kind == "p":
        return "< 0.0001" if v < 1e-4 else f"{v:.4f}"
    if kind == "pct":
        return f"{v * 100:.0f} %"
    if kind == "ratio":
        return f"{v:.2f}x"
    if kind == "money":
        return f"{v:,.2f}"
    return f"{v:,.4g}"


@dataclass(frozen=True)
class QueuePage:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    page_size: int


def _sql_path(path: Path) -> str:
    """A DuckDB table expression for a Parquet/CSV file (paths come from config, quotes escaped)."""
    lit = "'" + str(path).replace("'", "''") + "'"
    return f"read_parquet({lit})" if path.suffix.lower() == ".parquet" else f"read_csv_auto({lit})"


class ReviewData:
    """Everything the pages read. Construct once per app; methods are safe to call from threads."""

    def __init__(
        self, flags_dir: Path | str, validated_dir: Path | str, explain_dir: Path | str | None
    ) -> None:
        self.flags_path = Path(flags_dir) / FLAGS_FILE
        if not self.flags_path.is_file():
            raise ReviewDataError(
                f"{self.flags_path}: flagged customers not found; run the flag stage first (`dvc repro flag`)"
            )
        flags = read_any(self.flags_path)
        missing = [c for c in REQUIRED_FLAG_COLUMNS if c not in flags.columns]
        if missing:
            raise ReviewDataError(f"{self.flags_path}: missing required column(s) {', '.join(missing)}")
        dup = flags["customer_id"].duplicated()
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            raise ReviewDataError(
                f"{self.flags_path}: row {row}: column customer_id: duplicate id {flags['customer_id'].iloc[row]!r}"
            )
        self.id_is_int = pd.api.types.is_integer_dtype(flags["customer_id"])
        flags = flags.sort_values(["abuse_score", "customer_id"], ascending=[False, True], kind="stable")
        self.flags = flags.reset_index(drop=True)
        self._ids = self.flags["customer_id"].astype(str).to_numpy(dtype=object)
        self._ids_lower = pd.Series(self._ids).str.lower()
        self._tier = self.flags["tier"].astype(str).to_numpy(dtype=object)
        self._type = self.flags["abuse_type"].astype(str).to_numpy(dtype=object)
        self._pos = {cid: i for i, cid in enumerate(self._ids)}
        self.tiers = [t for t in TIER_ORDER if t in set(self._tier)] + sorted(
            set(self._tier) - set(TIER_ORDER)
        )
        self.types = [t for t in ABUSE_TYPES if t in set(self._type)] + sorted(
            set(self._type) - set(ABUSE_TYPES)
        )

        self.validated_dir = Path(validated_dir)
        self.tables: dict[str, Path] = {}
        for name in ("orders", "order_lines", "returns", "products", "reviews"):
            p = find_table_file(self.validated_dir, name)
            if p is not None:
                self.tables[name] = p
        for required in ("orders", "order_lines"):
            if required not in self.tables:
                raise ReviewDataError(
                    f"{self.validated_dir}: table {required} (.parquet/.csv) not found; run the validate stage"
                )
        self.line_reasons: Path | None = None
        if explain_dir is not None and (Path(explain_dir) / LINE_REASONS_FILE).is_file():
            self.line_reasons = Path(explain_dir) / LINE_REASONS_FILE
        self._con = duckdb.connect()
        self._lock = threading.Lock()
        self._columns: dict[Path, set[str]] = {}

    def close(self) -> None:
        self._con.close()

    # ---- queue -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.flags)

    def queue(
        self,
        *,
        tier: str = "",
        abuse_type: str = "",
        q: str = "",
        include: set[str] | None = None,
        exclude: set[str] | None = None,
        page: int = 1,
        page_size: int = PAGE_SIZE,
    ) -> QueuePage:
        """One page of flagged customers by descending score, filtered by tier, type, id text, decision."""
        mask = np.ones(len(self.flags), dtype=bool)
        if tier:
            mask &= self._tier == tier
        if abuse_type:
            mask &= self._type == abuse_type
        if q.strip():
            mask &= self._ids_lower.str.contains(q.strip().lower(), regex=False).to_numpy()
        if include is not None:
            mask &= np.isin(self._ids, list(include))
        if exclude:
            mask &= ~np.isin(self._ids, list(exclude))
        idx = np.flatnonzero(mask)
        total = len(idx)
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, page), pages)
        sel = idx[(page - 1) * page_size : page * page_size]
        part = self.flags.iloc[sel]
        rows = []
        for cid, rec in zip(self._ids[sel], part.to_dict("records"), strict=True):
            rec["id_str"] = cid
            rows.append(rec)
        return QueuePage(rows=rows, total=total, page=page, pages=pages, page_size=page_size)

    # ---- one customer --------------------------------------------------------------------------------
    def customer(self, id_str: str) -> dict[str, Any] | None:
        """The flag row of a customer (by id as text), or None when not flagged."""
        pos = self._pos.get(id_str)
        if pos is None:
            return None
        rec = self.flags.iloc[pos].to_dict()
        rec["id_str"] = id_str
        return rec

    def typed_id(self, id_str: str) -> int | str:
        return int(id_str) if self.id_is_int else id_str

    def evidence(self, rec: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(column, label, formatted value) for every evidence column present, known ones first."""
        out = [(c, label, fmt_number(rec[c], kind)) for c, label, kind in EVIDENCE if c in rec]
        known = {c for c, _, _ in EVIDENCE} | _NOT_EVIDENCE | {"id_str"}
        for c in self.flags.columns:
            dtype = self.flags[c].dtype
            if (
                c not in known
                and pd.api.types.is_numeric_dtype(dtype)
                and not pd.api.types.is_bool_dtype(dtype)
            ):
                out.append((c, c.replace("_", " "), fmt_number(rec[c], "")))
        return out

    @staticmethod
    def reasons(rec: dict[str, Any]) -> list[str]:
        text = rec.get("reasons")
        if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
            return []
        return [s.strip() for s in str(text).split("\n") if s.strip()]

    def _cols(self, path: Path) -> set[str]:
        if path not in self._columns:
            with self._lock:
                rel = self._con.execute(f"DESCRIBE SELECT * FROM {_sql_path(path)}").fetchall()
            self._columns[path] = {r[0] for r in rel}
        return self._columns[path]

    def _query(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        cur = self._con.cursor()  # a per-call cursor: DuckDB connections are not shared across threads
        try:
            return cur.execute(sql, params).df()
        finally:
            cur.close()

    def history(self, id_str: str) -> pd.DataFrame:
        """Every order line of the customer with category, value and its return (date, reason, days)."""
        t = self.tables
        lcols = self._cols(t["order_lines"])

        def lcol(c: str) -> str:
            return f"l.{c}" if c in lcols else f"NULL AS {c}"

        products = ""
        category = "NULL AS category, NULL AS description"
        if "products" in t:
            pcols = self._cols(t["products"])
            products = f"LEFT JOIN {_sql_path(t['products'])} p ON p.product_id = l.product_id"
            category = ", ".join(
                f"p.{c}" if c in pcols else f"NULL AS {c}" for c in ("category", "description")
            )
        returns_cte, returns_join = "", ""
        ret_cols = "NULL AS return_ts, NULL AS returned_qty, NULL AS return_reason"
        if "returns" in t:
            rcols = self._cols(t["returns"])
            reason = "arg_min(reason, return_ts)" if "reason" in rcols else "NULL"
            returns_cte = (
                f", r AS (SELECT line_id, min(return_ts) AS return_ts, sum(quantity) AS returned_qty, "
                f"{reason} AS return_reason FROM {_sql_path(t['returns'])} "
                "WHERE line_id IN (SELECT line_id FROM l) GROUP BY line_id)"
            )
            returns_join = "LEFT JOIN r ON r.line_id = l.line_id"
            ret_cols = "r.return_ts, r.returned_qty, r.return_reason"
        sql = f"""
        WITH o AS (SELECT order_id, order_ts FROM {_sql_path(t["orders"])} WHERE customer_id = $cid),
        l AS (SELECT * FROM {_sql_path(t["order_lines"])} WHERE order_id IN (SELECT order_id FROM o))
        {returns_cte}
        SELECT l.line_id, l.order_id, o.order_ts, l.product_id, {category}, {lcol("size")}, {lcol("color")},
               l.quantity, l.unit_price, l.quantity * l.unit_price AS value, {ret_cols},
               date_diff('day', o.order_ts, {"r.return_ts" if returns_join else "NULL"}) AS days_to_return
        FROM l JOIN o ON o.order_id = l.order_id {products} {returns_join}
        ORDER BY o.order_ts, l.order_id, l.line_id
        """
        out = self._query(sql, {"cid": self.typed_id(id_str)})
        out["returned"] = out["return_ts"].notna()
        return out

    def reviews(self, id_str: str, limit: int = 200) -> pd.DataFrame | None:
        """The product reviews the customer wrote (newest first), or None when there is no reviews table."""
        t = self.tables
        if "reviews" not in t or "customer_id" not in self._cols(t["reviews"]):
            return None
        rcols = self._cols(t["reviews"])
        rating = "r.rating" if "rating" in rcols else "NULL AS rating"
        join, cat = "", "NULL AS category"
        if "products" in t:
            join = f"LEFT JOIN {_sql_path(t['products'])} p ON p.product_id = r.product_id"
            cat = "p.category" if "category" in self._cols(t["products"]) else cat
        sql = f"""SELECT r.review_ts, r.product_id, {cat}, {rating}, r.text
                  FROM {_sql_path(t["reviews"])} r {join}
                  WHERE r.customer_id = $cid ORDER BY r.review_ts DESC LIMIT {int(limit)}"""
        return self._query(sql, {"cid": self.typed_id(id_str)})

    def riskiest(self, id_str: str, history: pd.DataFrame, k: int = 10) -> pd.DataFrame | None:
        """The customer's k lines with the highest return probability and their reason codes, or None."""
        if self.line_reasons is None:
            return None
        cols = self._cols(self.line_reasons)
        reason_cols = [c for c in ("reason_1", "reason_2", "reason_3") if c in cols]
        if "customer_id" in cols:
            where, params = "customer_id = $cid", {"cid": self.typed_id(id_str)}
        else:
            where, params = "line_id IN (SELECT unnest($ids))", {"ids": history["line_id"].tolist()}
        sel = ", ".join(["line_id", "return_probability", *reason_cols])
        sql = (
            f"SELECT {sel} FROM {_sql_path(self.line_reasons)} WHERE {where} "
            f"ORDER BY return_probability DESC, line_id LIMIT {int(k)}"
        )
        top = self._query(sql, params)
        if top.empty:
            return top
        extra = [
            c
            for c in ("line_id", "order_ts", "category", "size", "value", "return_ts", "returned")
            if c in history
        ]
        top = top.merge(history[extra], on="line_id", how="left")
        top["returned"] = top["returned"].fillna(False).astype(bool) if "returned" in top else False
        top["reasons"] = [
            [str(r[c]) for c in reason_cols if r[c] is not None and not pd.isna(r[c]) and str(r[c])]
            for r in top.to_dict("records")
        ]
        return top

    @staticmethod
    def value_summary(history: pd.DataFrame) -> dict[str, float]:
        """Ordered, returned and kept value from the line history (before return costs)."""
        if history.empty:
            return {"ordered": 0.0, "returned": 0.0, "kept": 0.0}
        value = pd.to_numeric(history["value"], errors="coerce").fillna(0.0)
        qty = pd.to_numeric(history["quantity"], errors="coerce").replace(0, np.nan)
        share = (
            (pd.to_numeric(history["returned_qty"], errors="coerce").fillna(0.0) / qty).clip(0, 1).fillna(0)
        )
        returned = float((value * share).sum())
        ordered = float(value.sum())
        return {"ordered": ordered, "returned": returned, "kept": ordered - returned}
