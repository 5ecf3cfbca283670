"""Read-side of the reviewer app: the flagged-customer queue (in memory) and per-customer history (DuckDB).

The queue holds only the flag stage's output (50,000 rows is a few MB), sorted once by score, so
filtering and paging are numpy masks. A customer's orders, returns, reviews and line reasons are
queried from the Parquet files with DuckDB, filtered to that customer, so no request loads the full
order history into pandas.
"""

from __future__ import annotations

import math
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
        # integer codes: filtering 50k rows is an int comparison, not 50k Python string comparisons
        self._tier_codes = pd.Categorical(self._tier, categories=self.tiers).codes
        self._type_codes = pd.Categorical(self._type, categories=self.types).codes

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
        try:
            self._materialize()
            # per-request queries touch a few hundred in-memory rows: one thread avoids scheduling overhead
            self._con.execute("SET threads = 1")
        except duckdb.Error as exc:
            self._con.close()
            raise ReviewDataError(f"{self.validated_dir}: cannot read the order history ({exc})") from exc

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
            mask &= self._tier_codes == (self.tiers.index(tier) if tier in self.tiers else -2)
        if abuse_type:
            mask &= self._type_codes == (self.types.index(abuse_type) if abuse_type in self.types else -2)
        if q.strip():
            mask &= self._ids_lower.str.contains(q.strip().lower(), regex=False).to_numpy()
        # set membership in plain Python (~2 ms at 50k); np.isin / Series.isin on these object/str arrays
        # fall back to pairwise comparison and took 3 s at 50k ids x 2k decisions
        if include is not None:
            mask &= self._member(include)
        if exclude:
            mask &= ~self._member(exclude)
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

    def _member(self, ids: set[str]) -> np.ndarray:
        return np.fromiter((cid in ids for cid in self._ids), dtype=bool, count=len(self._ids))

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
        """(column, label, formatted value) for the known evidence columns present, in a fixed order."""
        return [(c, label, fmt_number(rec[c], kind)) for c, label, kind in EVIDENCE if c in rec]

    def extra_evidence(self, rec: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Any other numeric column of the flag output (intermediate signals), shown folded away."""
        known = {c for c, _, _ in EVIDENCE} | _NOT_EVIDENCE | {"id_str", "returns_since_decision"}
        out = []
        for c in self.flags.columns:
            dtype = self.flags[c].dtype
            if c in known or not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
                continue
            out.append((c, c.replace("_", " "), fmt_number(rec[c], "")))
        return out

    @staticmethod
    def reasons(rec: dict[str, Any]) -> list[str]:
        text = rec.get("reasons")
        if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
            return []
        return [s.strip() for s in str(text).split("\n") if s.strip()]

    def _cols(self, path: Path) -> set[str]:
        rel = self._con.execute(f"DESCRIBE SELECT * FROM {_sql_path(path)}").fetchall()
        return {r[0] for r in rel}

    def _materialize(self) -> None:
        """Copy the flagged customers' history into in-memory DuckDB tables, sorted by customer.

        One scan of each file at start-up; afterwards a customer page reads a few hundred rows from memory
        instead of re-scanning every Parquet file per request (the whole history can be 10M lines; the
        flagged customers' share of it is small).
        """
        con, t = self._con, self.tables
        con.register("_flag_ids", pd.DataFrame({"customer_id": self.flags["customer_id"]}))
        lcols = self._cols(t["order_lines"])

        def lcol(c: str) -> str:
            return f"l.{c}" if c in lcols else f"NULL::VARCHAR AS {c}"

        products, category = "", "NULL::VARCHAR AS category, NULL::VARCHAR AS description"
        if "products" in t:
            pcols = self._cols(t["products"])
            products = f"LEFT JOIN {_sql_path(t['products'])} p ON p.product_id = l.product_id"
            category = ", ".join(
                f"p.{c}" if c in pcols else f"NULL::VARCHAR AS {c}" for c in ("category", "description")
            )
        returns_cte, returns_join = "", ""
        ret_cols = (
            "NULL::TIMESTAMP AS return_ts, NULL::BIGINT AS returned_qty, NULL::VARCHAR AS return_reason"
        )
        days = "NULL::BIGINT"
        if "returns" in t:
            reason = "arg_min(reason, return_ts)" if "reason" in self._cols(t["returns"]) else "NULL::VARCHAR"
            returns_cte = (
                f", r AS (SELECT line_id, min(return_ts) AS return_ts, sum(quantity) AS returned_qty, "
                f"{reason} AS return_reason FROM {_sql_path(t['returns'])} "
                "WHERE line_id IN (SELECT line_id FROM l) GROUP BY line_id)"
            )
            returns_join = "LEFT JOIN r ON r.line_id = l.line_id"
            ret_cols = "r.return_ts, r.returned_qty, r.return_reason"
            days = "date_diff('day', o.order_ts, r.return_ts)"
        con.execute(f"""
        CREATE TABLE h_lines AS
        WITH o AS (SELECT order_id, customer_id, order_ts FROM {_sql_path(t["orders"])}
                   WHERE customer_id IN (SELECT customer_id FROM _flag_ids)),
        l AS (SELECT * FROM {_sql_path(t["order_lines"])} WHERE order_id IN (SELECT order_id FROM o))
        {returns_cte}
        SELECT o.customer_id, l.line_id, l.order_id, o.order_ts, l.product_id, {category}, {lcol("size")},
               {lcol("color")}, l.quantity, l.unit_price, l.quantity * l.unit_price AS value, {ret_cols},
               {days} AS days_to_return
        FROM l JOIN o ON o.order_id = l.order_id {products} {returns_join}
        ORDER BY o.customer_id, o.order_ts, l.order_id, l.line_id
        """)

        self.has_reviews = "reviews" in t and "customer_id" in self._cols(t["reviews"])
        if self.has_reviews:
            rcols = self._cols(t["reviews"])
            rating = "r.rating" if "rating" in rcols else "NULL::BIGINT AS rating"
            join, cat = "", "NULL::VARCHAR AS category"
            if "products" in t:
                join = f"LEFT JOIN {_sql_path(t['products'])} p ON p.product_id = r.product_id"
                cat = "p.category" if "category" in self._cols(t["products"]) else cat
            con.execute(f"""
            CREATE TABLE h_reviews AS
            SELECT r.customer_id, r.review_ts, r.product_id, {cat}, {rating}, r.text
            FROM {_sql_path(t["reviews"])} r {join}
            WHERE r.customer_id IN (SELECT customer_id FROM _flag_ids)
            ORDER BY r.customer_id, r.review_ts DESC
            """)

        self.reason_cols: list[str] = []
        if self.line_reasons is not None:
            cols = self._cols(self.line_reasons)
            if not {"line_id", "return_probability"} <= cols:
                raise ReviewDataError(f"{self.line_reasons}: needs columns line_id and return_probability")
            self.reason_cols = sorted(c for c in cols if c.startswith("reason_"))
            sel = ", ".join(f"x.{c}" for c in ["return_probability", *self.reason_cols])
            con.execute(f"""
            CREATE TABLE h_reasons AS
            SELECT h.customer_id, x.line_id, {sel} FROM {_sql_path(self.line_reasons)} x
            JOIN h_lines h ON h.line_id = x.line_id
            ORDER BY h.customer_id, x.return_probability DESC
            """)
        con.unregister("_flag_ids")

    def _query(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        cur = self._con.cursor()  # a per-call cursor: DuckDB connections are not shared across threads
        try:
            return cur.execute(sql, params).df()
        finally:
            cur.close()

    def history(self, id_str: str) -> pd.DataFrame:
        """Every order line of the customer with category, value and its return (date, reason, days)."""
        out = self._query(
            "SELECT * EXCLUDE (customer_id) FROM h_lines WHERE customer_id = $cid "
            "ORDER BY order_ts, order_id, line_id",
            {"cid": self.typed_id(id_str)},
        )
        out["returned"] = out["return_ts"].notna()
        return out

    def reviews(self, id_str: str, limit: int = 200) -> pd.DataFrame | None:
        """The product reviews the customer wrote (newest first), or None when there is no reviews table."""
        if not self.has_reviews:
            return None
        return self._query(
            f"SELECT * EXCLUDE (customer_id) FROM h_reviews WHERE customer_id = $cid "
            f"ORDER BY review_ts DESC LIMIT {int(limit)}",
            {"cid": self.typed_id(id_str)},
        )

    def riskiest(self, id_str: str, history: pd.DataFrame, k: int = 10) -> pd.DataFrame | None:
        """The customer's k lines with the highest return probability and their reason codes, or None."""
        if self.line_reasons is None:
            return None
        top = self._query(
            "SELECT * EXCLUDE (customer_id) FROM h_reasons WHERE customer_id = $cid "
            f"ORDER BY return_probability DESC, line_id LIMIT {int(k)}",
            {"cid": self.typed_id(id_str)},
        )
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
            [str(r[c]) for c in self.reason_cols if r[c] is not None and not pd.isna(r[c]) and str(r[c])]
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
