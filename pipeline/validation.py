"""Validation of the canonical tables against the data contract (`pipeline/contract.py`).

Pure logic: frames in, frames + report out; reading and writing live in `pipeline/commands/validate.py`.
Two kinds of problem, handled differently on purpose:

- table-level (a required table or column is missing, a column holds the wrong kind of data throughout):
  `ContractError`, one message naming file, column and rule; nothing can sensibly continue.
- row-level (a value fails a rule): the row is quarantined to the rejects with the rule that failed
  (`_rule`, `_column`, `_row` = 1-based data row in the source file, `_rules` = every rule it failed),
  everything else is kept, and every reject is counted in the report. Nothing is dropped or coerced
  silently: lossless type changes (e.g. integer ids written as text) are listed in the report.

Duplicate keys: exact repeats of a row (every column equal) keep the first copy and reject the others
("<table> duplicate row"); copies that disagree reject every copy ("<table>.<key> unique"), because
nothing says which one is right. Rejecting a parent rejects its children ("parent rejected: ...").

Batch scoring reuses `validate_tables` with `reference=` (already validated history tables that serve
as foreign-key targets) and `allow_unknown=` (foreign keys that may point at nothing, e.g.
"orders.customer_id" for new customers; the values are returned in `unknown_keys`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from pipeline.contract import FEATURE_NEEDS, FLOAT, ID, INT, SIZE_SCALES, STR, TABLE_ORDER, TABLES, TS, Column

DEFAULT_PARAMS: dict[str, Any] = {"allowed_categories": [], "max_future_days": 0, "id_type": "auto"}
DUPLICATES_POLICY = "exact repeats: keep first, reject the rest; conflicting copies of a key: reject all"
PARENT_REJECTED = "parent rejected: "
_INT_TEXT = r"-?(?:0|[1-9][0-9]{0,17})"  # an integer written as text, without leading zeros


class ContractError(ValueError):
    """A table-level contract violation: the whole run stops with this one message."""


@dataclass
class ValidationResult:
    clean: dict[str, pd.DataFrame]  # typed, valid rows, per present table
    rejects: dict[str, pd.DataFrame]  # source rows as read + _row, _rule, _column, _rules
    report: dict[str, Any]  # JSON-ready (the DVC metric)
    unknown_keys: dict[str, np.ndarray] = field(default_factory=dict)  # "orders.customer_id" -> values

    @property
    def n_rejected(self) -> int:
        return int(sum(len(r) for r in self.rejects.values()))


class _Failures:
    """Row failures of one table, in rule order (the first recorded rule of a row is its `_rule`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[pd.DataFrame] = []
        self.seq = 0

    def add(self, where: np.ndarray | pd.Series, rule: str, column: str | None) -> None:
        where = np.asarray(where)
        pos = np.flatnonzero(where) if where.dtype == bool else where.astype(np.int64)
        if len(pos):
            self.parts.append(
                pd.DataFrame({"pos": pos, "seq": self.seq, "rule": rule, "column": column or ""})
            )
        self.seq += 1

    def mask(self) -> np.ndarray:
        bad = np.zeros(self.n, dtype=bool)
        for p in self.parts:
            bad[p["pos"].to_numpy()] = True
        return bad

    def table(self) -> pd.DataFrame:
        """One row per failing row position: pos, _rule, _column, _rules."""
        if not self.parts:
            return pd.DataFrame(
                {"pos": np.array([], dtype=np.int64), "_rule": [], "_column": [], "_rules": []}
            )
        f = pd.concat(self.parts, ignore_index=True).sort_values(["pos", "seq"], kind="stable")
        # a value that failed to parse is also missing: report the parse rule, not "not null" too
        f = f.drop_duplicates(["pos", "column"], keep="first")
        first = f.drop_duplicates("pos", keep="first").set_index("pos")
        rules = first["rule"] if len(f) == len(first) else f.groupby("pos", sort=True)["rule"].agg("; ".join)
        return pd.DataFrame(
            {
                "pos": first.index.to_numpy(),
                "_rule": first["rule"].to_numpy(),
                "_column": first["column"].to_numpy(),
                "_rules": rules.reindex(first.index).to_numpy(),
            }
        )


# ---------------------------------------------------------------------------------------------------
# Strict column parsing


def _type_error(source: str, column: str, dtype: Any, rule: str) -> ContractError:
    return ContractError(f"{source}: column {column!r} has type {dtype}; rule: {rule}")


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s) or s.dtype == object or isinstance(s.dtype, pd.CategoricalDtype)


def _as_text(s: pd.Series) -> pd.Series:
    return s.astype("str")


def id_kind(s: pd.Series) -> str | None:
    """'int' when every value is an integer (numbers, or text like "123"), 'str' otherwise; None if empty."""
    values = s.dropna()
    if values.empty:
        return None
    if pd.api.types.is_bool_dtype(values):
        return "str"
    if pd.api.types.is_numeric_dtype(values):
        return "int"
    if _is_text(values):
        return "int" if bool(_as_text(values).str.fullmatch(_INT_TEXT).all()) else "str"
    return "str"


def _parse_id(s: pd.Series, kind: str, ctx: _ColumnContext) -> pd.Series:
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        raise _type_error(ctx.source, ctx.col.name, s.dtype, "an id is an integer or text")
    numeric = pd.api.types.is_numeric_dtype(s)
    if numeric and pd.api.types.is_float_dtype(s):
        whole = s.isna() | (np.isfinite(s) & (s == np.floor(s)))
        ctx.fails.add(~whole.to_numpy(), f"{ctx.qual} is a whole-number or text id", ctx.col.name)
        s = s.where(whole).astype("Int64")
        ctx.convert("float -> integer id" if kind == "int" else "float -> text id")
    if kind == "int":
        if pd.api.types.is_integer_dtype(s):
            return s if s.dtype == np.int64 or s.isna().any() else s.astype(np.int64)
        text = _as_text(s)
        ok = text.str.fullmatch(_INT_TEXT).fillna(False).astype(bool)
        ctx.unparsed(s, s.notna().to_numpy() & ~ok.to_numpy(), "is an integer id")
        ctx.convert("text -> integer id")
        return text.where(ok).astype("Int64")
    if pd.api.types.is_integer_dtype(s):
        ctx.convert("integer -> text id")
        return s.astype("Int64").astype("str")
    return _as_text(s)


def _parse_ts(s: pd.Series, ctx: _ColumnContext) -> pd.Series:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        ctx.convert(f"{s.dtype} -> naive UTC")
        return s.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(s):
        return s
    if not _is_text(s):
        raise _type_error(
            ctx.source, ctx.col.name, s.dtype, "a timestamp column holds timestamps or ISO 8601 text"
        )
    parsed = pd.to_datetime(_as_text(s), format="ISO8601", errors="coerce", utc=True).dt.tz_localize(None)
    ctx.unparsed(s, s.notna().to_numpy() & parsed.isna().to_numpy(), "is an ISO 8601 timestamp")
    return parsed


def _parse_number(s: pd.Series, ctx: _ColumnContext, integer: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        raise _type_error(ctx.source, ctx.col.name, s.dtype, "a numeric column holds numbers or numeric text")
    if integer and pd.api.types.is_integer_dtype(s):
        return s
    if pd.api.types.is_float_dtype(s):
        values = s  # float32 stays float32: widening would only cost memory
    elif pd.api.types.is_numeric_dtype(s):
        values = s.astype("float64")
    elif _is_text(s):
        values = pd.to_numeric(_as_text(s), errors="coerce").astype("float64")
        ctx.unparsed(s, s.notna().to_numpy() & values.isna().to_numpy(), "is a number")
    else:
        raise _type_error(ctx.source, ctx.col.name, s.dtype, "a numeric column holds numbers or numeric text")
    finite = values.isna() | np.isfinite(values)
    ctx.fails.add(~finite.to_numpy(), f"{ctx.qual} is a finite number", ctx.col.name)
    if not finite.all():
        values = values.where(finite)
    if not integer:
        return values
    whole = values.isna() | (values == np.floor(values))
    ctx.fails.add(~whole.to_numpy(), f"{ctx.qual} is a whole number", ctx.col.name)
    return values.where(whole).astype("Int64")


def _parse_str(s: pd.Series, ctx: _ColumnContext) -> pd.Series:
    if isinstance(s.dtype, pd.CategoricalDtype):
        if pd.api.types.is_string_dtype(s.cat.categories) or s.cat.categories.dtype == object:
            return s  # categorical text stays categorical: same values, far cheaper to check and keep
        ctx.convert(f"category of {s.cat.categories.dtype} -> text")
        return _as_text(s)
    if pd.api.types.is_string_dtype(s):
        return s if s.dtype == "str" else _as_text(s)
    if pd.api.types.is_integer_dtype(s):
        ctx.convert("integer -> text")
        return s.astype("Int64").astype("str")
    if pd.api.types.is_float_dtype(s):
        whole = s.isna() | (np.isfinite(s) & (s == np.floor(s)))
        if bool(whole.all()):
            ctx.convert("whole-number float -> text")
            return s.astype("Int64").astype("str")
        ctx.convert("float -> text")
        return _as_text(s)
    if pd.api.types.is_datetime64_any_dtype(s):
        raise _type_error(ctx.source, ctx.col.name, s.dtype, "a text column holds text")
    if s.dtype != object:
        ctx.convert(f"{s.dtype} -> text")
    return _as_text(s)


@dataclass
class _ColumnContext:
    table: str
    col: Column
    source: str
    fails: _Failures
    conversions: dict[str, str]

    @property
    def qual(self) -> str:
        return f"{self.table}.{self.col.name}"

    def convert(self, what: str) -> None:
        self.conversions[self.col.name] = what

    def unparsed(self, s: pd.Series, bad: np.ndarray, rule: str) -> None:
        """Rows whose text does not parse are rejects; a column where no value parses (at least two
        values) is the wrong kind of data altogether, a table-level error."""
        n_bad = int(bad.sum())
        if n_bad >= 2 and n_bad == int(s.notna().sum()):
            pos = int(np.flatnonzero(bad)[0])
            raise ContractError(
                f"{self.source}: column {self.col.name!r}: none of its {n_bad:,} values parses "
                f"(row {pos + 1}: {s.iloc[pos]!r}); rule: {self.qual} {rule}"
            )
        self.fails.add(bad, f"{self.qual} {rule}", self.col.name)


def _empty_typed(col: Column, kind: str, n: int) -> pd.Series:
    if col.type == TS:
        return pd.Series(pd.NaT, index=range(n), dtype="datetime64[us]")
    if col.type == FLOAT:
        return pd.Series(np.nan, index=range(n), dtype="float64")
    if col.type == INT or (col.type == ID and kind == "int"):
        return pd.Series(pd.NA, index=range(n), dtype="Int64")
    return pd.Series(np.nan, index=range(n), dtype="str")


def _parse(s: pd.Series, ctx: _ColumnContext, kind: str) -> pd.Series:
    if s.isna().all():  # an all-empty column has no type of its own (e.g. float NaN from Parquet)
        return _empty_typed(ctx.col, kind, len(s))
    t = ctx.col.type
    if t == ID:
        return _parse_id(s, kind, ctx)
    if t == TS:
        return _parse_ts(s, ctx)
    if t in (INT, FLOAT):
        return _parse_number(s, ctx, integer=t == INT)
    if t == STR:
        return _parse_str(s, ctx)
    raise ValueError(f"contract type {t!r} of {ctx.qual} is unknown")  # pragma: no cover


# ---------------------------------------------------------------------------------------------------
# Per-column rules (pandera)


def _range_rule(qual: str, col: Column) -> str:
    if col.min is not None and col.max is not None:
        return f"{qual} in [{col.min:g}, {col.max:g}]"
    return f"{qual} >= {col.min:g}" if col.min is not None else f"{qual} <= {col.max:g}"


def column_schema(table: str, columns: Collection[str], params: Mapping[str, Any]) -> pa.DataFrameSchema:
    """The pandera schema of one table's present columns: nulls, ranges, allowed values, patterns.

    Types are not checked here: `validate_tables` parses every column strictly first.
    """
    spec = TABLES[table]
    cols: dict[str, pa.Column] = {}
    for col in spec.columns:
        if col.name not in columns:
            continue
        qual = f"{table}.{col.name}"
        checks: list[pa.Check] = []
        if col.required and (col.type == STR or col.type == ID):
            checks.append(pa.Check(_not_blank, name=f"{qual} not blank"))
        if col.min is not None or col.max is not None:
            lo, hi = col.min, col.max
            checks.append(pa.Check(_in_range(lo, hi), name=_range_rule(qual, col)))
        if col.allowed is not None:
            checks.append(pa.Check(_is_in(col.allowed), name=f"{qual} in {{{', '.join(col.allowed)}}}"))
        if col.pattern is not None:
            checks.append(pa.Check(_matches(col.pattern), name=f"{qual} matches {col.pattern}"))
        if table == "products" and col.name == "category" and params.get("allowed_categories"):
            allowed = tuple(params["allowed_categories"])
            checks.append(pa.Check(_is_in(allowed), name=f"{qual} in validate.allowed_categories"))
        cols[col.name] = pa.Column(checks=checks, nullable=not col.required, required=col.required)
    return pa.DataFrameSchema(cols, name=table, strict=False, coerce=False)


def _per_value(s: pd.Series, fn) -> pd.Series:
    """fn over a text series; for a categorical one, over its categories only (then spread by code)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        ok = np.asarray(fn(pd.Series(s.cat.categories.astype("str"))), dtype=bool)
        codes = s.cat.codes.to_numpy()
        return pd.Series(np.where(codes >= 0, ok[np.maximum(codes, 0)], True), index=s.index)
    return fn(s)


def _not_blank(s: pd.Series) -> pd.Series:
    if not (pd.api.types.is_string_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)):
        return pd.Series(True, index=s.index)
    return _per_value(s, lambda t: (t.str.strip() != "").fillna(True))


def _in_range(lo: float | None, hi: float | None):
    def check(s: pd.Series) -> pd.Series:
        ok = pd.Series(True, index=s.index)
        if lo is not None:
            ok &= s >= lo
        if hi is not None:
            ok &= s <= hi
        return ok

    return check


def _is_in(values: tuple[str, ...]):
    return lambda s: s.isin(values)


def _matches(pattern: str):
    return lambda s: _per_value(s, lambda t: t.str.fullmatch(pattern).fillna(False).astype(bool))


def _column_rules(table: str, typed: pd.DataFrame, params: Mapping[str, Any], fails: _Failures) -> None:
    schema = column_schema(table, typed.columns, params)
    try:
        schema.validate(typed, lazy=True)
    except SchemaErrors as err:
        fc = err.failure_cases
        fc = fc[fc["index"].notna()]
        for (column, check), grp in fc.groupby(["column", "check"], sort=False):
            rule = f"{table}.{column} not null" if check == "not_nullable" else str(check)
            fails.add(grp["index"].astype(np.int64).to_numpy(), rule, str(column))


# ---------------------------------------------------------------------------------------------------
# Cross-row and cross-table rules (own vectorised code)


def _duplicates(
    table: str, typed: pd.DataFrame, cols: list[str], key: str | None, fails: _Failures
) -> dict[str, int]:
    """Exact repeats (over the contract columns `cols`) keep the first copy; conflicting copies of one
    key are all rejected."""
    if key is None:
        later = typed.duplicated(subset=cols, keep="first").to_numpy()
        fails.add(later, f"{table} duplicate row", None)
        return {"duplicate_rows": int(later.sum()), "conflicting_keys": 0}
    k = typed[key]
    dup = (k.duplicated(keep=False) & k.notna()).to_numpy()
    if not dup.any():
        return {"duplicate_rows": 0, "conflicting_keys": 0}
    sub = typed.loc[dup, cols]
    later_copy = sub.duplicated(keep="first")
    distinct = sub.loc[~later_copy, key]
    conflict_keys = distinct[distinct.duplicated(keep=False)].unique()
    conflicting = sub[key].isin(conflict_keys)
    pos = np.flatnonzero(dup)
    fails.add(pos[conflicting.to_numpy()], f"{table}.{key} unique", key)
    fails.add(pos[(later_copy & ~conflicting).to_numpy()], f"{table} duplicate row", None)
    return {"duplicate_rows": int((later_copy & ~conflicting).sum()), "conflicting_keys": len(conflict_keys)}


class _Lookup:
    """Key -> column values in the clean tables, then the reference tables.

    Each key index (a hash table) is built once and reused for every column looked up through it.
    """

    def __init__(self, clean: Mapping[str, pd.DataFrame], reference: Mapping[str, pd.DataFrame]) -> None:
        self.clean, self.reference = clean, reference
        self._index: dict[tuple[int, str], pd.Index] = {}

    def has(self, table: str, column: str) -> bool:
        return any(table in f and column in f[table] for f in (self.clean, self.reference))

    def get(self, table: str, keys: pd.Series, column: str, to_numpy) -> tuple[np.ndarray, np.ndarray]:
        """(to_numpy(column) of the row whose key equals each key, found); values are arbitrary where
        not found."""
        out: np.ndarray | None = None
        done = np.zeros(len(keys), dtype=bool)
        for n, frames in enumerate((self.clean, self.reference)):
            if table not in frames or column not in frames[table]:
                continue
            frame = frames[table]
            idx = self._index.get((n, table))
            if idx is None:
                idx = self._index[(n, table)] = pd.Index(frame[TABLES[table].key])
            pos = idx.get_indexer(keys)
            hit = (pos >= 0) & ~done
            values = np.asarray(to_numpy(frame[column]))
            if out is None:
                out = values[np.maximum(pos, 0)] if len(values) else np.zeros(len(keys), dtype=values.dtype)
            else:
                out[hit] = values[pos[hit]]
            done |= hit
        if out is None:
            out = np.zeros(len(keys))
        return out, done


def _floats(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype="float64", na_value=np.nan)


def _times(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype="datetime64[us]")


def _scale_codes(s: pd.Series) -> np.ndarray:
    """Position of each size_type in SIZE_SCALES (-1: no scale / missing), computed per distinct value."""
    names = list(SIZE_SCALES)
    if isinstance(s.dtype, pd.CategoricalDtype):
        per_cat = np.array([names.index(c) if c in names else -1 for c in s.cat.categories], dtype=np.int16)
        codes = s.cat.codes.to_numpy()
        return np.where(codes >= 0, per_cat[np.maximum(codes, 0)], -1)
    return pd.Series(s).map({name: k for k, name in enumerate(names)}).fillna(-1).to_numpy(dtype=np.int16)


def _ids(s: pd.Series) -> np.ndarray:
    return s.to_numpy()


def _frames(
    table: str, clean: Mapping[str, pd.DataFrame], reference: Mapping[str, pd.DataFrame]
) -> list[pd.DataFrame]:
    return [f[table] for f in (clean, reference) if table in f]


# ---------------------------------------------------------------------------------------------------
# The entry point


def _check_structure(
    tables: Mapping[str, pd.DataFrame], reference: Mapping[str, pd.DataFrame], sources: Mapping[str, str]
) -> None:
    for name in TABLE_ORDER:
        spec = TABLES[name]
        if name not in tables:
            if spec.required and name not in reference:
                raise ContractError(
                    f"{sources.get(name, name + ' table')}: missing; rule: table {name!r} is required "
                    f"(a {name}.parquet or {name}.csv file)"
                )
            continue
        missing = [c for c in spec.required_columns if c not in tables[name].columns]
        if missing:
            raise ContractError(
                f"{sources.get(name, name + ' table')}: column {missing[0]!r} is missing; rule: "
                f"required column of {name} (required: {', '.join(spec.required_columns)})"
            )
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ContractError(
            f"{sources.get(unknown[0], unknown[0])}: table {unknown[0]!r} is not in the data contract"
        )


def _decide_id_kind(
    tables: Mapping[str, pd.DataFrame], reference: Mapping[str, pd.DataFrame], wanted: str
) -> str:
    if wanted in ("int", "str"):
        return wanted
    if wanted != "auto":
        raise ContractError(f"params.yaml: validate.id_type is {wanted!r}; rule: one of auto, int, str")
    for frames in (reference, tables):  # the history decides for a batch; otherwise the data does
        kinds = {
            id_kind(df[c.name])
            for name, df in frames.items()
            for c in TABLES[name].columns
            if c.type == ID and c.name in df.columns
        } - {None}
        if kinds:
            return "int" if kinds == {"int"} else "str"
    return "int"


def _cutoff(meta: Mapping[str, Any] | None, max_future_days: float) -> pd.Timestamp | None:
    if not meta or meta.get("cutoff") is None:
        return None
    try:
        ts = pd.Timestamp(meta["cutoff"])
    except (ValueError, TypeError) as exc:
        raise ContractError(
            f"meta.json: field 'cutoff' = {meta['cutoff']!r}; rule: an ISO 8601 timestamp"
        ) from exc
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts + pd.Timedelta(days=float(max_future_days))


def disabled_features(missing: Collection[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Feature families switched off (family -> missing inputs) and those on a fallback (family -> fallback)."""
    disabled: dict[str, list[str]] = {}
    fallback: dict[str, str] = {}
    for need in FEATURE_NEEDS:
        lacking = [n for n in need.needs if n in missing]
        if not lacking:
            continue
        if need.fallback:
            fallback[need.family] = need.fallback
        else:
            disabled[need.family] = lacking
    return disabled, fallback


def validate_tables(
    tables: Mapping[str, pd.DataFrame],
    meta: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None = None,
    *,
    reference: Mapping[str, pd.DataFrame] | None = None,
    allow_unknown: Collection[str] = (),
    sources: Mapping[str, str] | None = None,
) -> ValidationResult:
    """Check `tables` (as read: Parquet types or CSV text) against the contract.

    `meta["cutoff"]`: nothing may be dated after it (plus `params["max_future_days"]`); None skips that rule.
    `reference`: validated tables whose keys also satisfy foreign keys (batch scoring's history).
    `allow_unknown`: "table.column" foreign keys whose unknown values pass (returned in `unknown_keys`).
    `sources`: table -> file name, for messages. Raises `ContractError` on table-level problems.
    """
    params = {**DEFAULT_PARAMS, **(params or {})}
    reference = dict(reference or {})
    sources = dict(sources or {})
    _check_structure(tables, reference, sources)
    kind = _decide_id_kind(tables, reference, str(params["id_type"]))
    cutoff = _cutoff(meta, params["max_future_days"])

    clean: dict[str, pd.DataFrame] = {}
    rejects: dict[str, pd.DataFrame] = {}
    rejected_keys: dict[str, pd.Index] = {}
    unknown_keys: dict[str, np.ndarray] = {}
    table_reports: dict[str, dict[str, Any]] = {}
    missing: list[str] = [n for n in TABLE_ORDER if n not in tables and n not in reference]
    empty: list[str] = []
    unchecked_fks: list[str] = []
    parents = _Lookup(clean, reference)

    for name in TABLE_ORDER:
        if name not in tables:
            continue
        spec = TABLES[name]
        source = sources.get(name, f"{name} table")
        raw = tables[name].reset_index(drop=True)
        n = len(raw)
        fails = _Failures(n)
        conversions: dict[str, str] = {}
        typed = pd.DataFrame(index=range(n))
        for col in spec.columns:
            if col.name not in raw.columns:
                missing.append(f"{name}.{col.name}")
                continue
            ctx = _ColumnContext(name, col, source, fails, conversions)
            typed[col.name] = _parse(raw[col.name], ctx, kind)
        extra = [c for c in raw.columns if c not in typed.columns]
        for c in extra:
            typed[c] = raw[c]

        _column_rules(name, typed, params, fails)
        contract_cols = [c.name for c in spec.columns if c.name in typed]
        dup_counts = _duplicates(name, typed, contract_cols, spec.key, fails)

        if spec.key is not None and spec.key in typed and name in reference and spec.key in reference[name]:
            seen = typed[spec.key].isin(reference[name][spec.key]).to_numpy()
            fails.add(seen, f"{name}.{spec.key} not already in the reference tables", spec.key)

        for col_name, parent in spec.foreign_keys.items():
            qual = f"{name}.{col_name}"
            if col_name not in typed:
                continue
            if parent not in tables and parent not in reference:
                unchecked_fks.append(f"{qual} -> {parent} (table absent)")
                continue
            pkey = TABLES[parent].key
            values = typed[col_name]
            present = values.notna().to_numpy()
            known = np.zeros(n, dtype=bool)
            for frame in _frames(parent, clean, reference):  # each frame looks up what is still unknown
                todo = present & ~known
                if not todo.any():
                    break
                if todo.all():
                    known |= values.isin(frame[pkey]).to_numpy()
                else:
                    at = np.flatnonzero(todo)
                    known[at] = values.iloc[at].isin(frame[pkey]).to_numpy()
            orphan = present & ~known
            was_rejected = np.zeros(n, dtype=bool)
            if orphan.any():
                at = np.flatnonzero(orphan)
                was_rejected[at] = values.iloc[at].isin(rejected_keys.get(parent, pd.Index([]))).to_numpy()
            fails.add(was_rejected, f"{PARENT_REJECTED}{parent}.{pkey}", col_name)
            unknown = orphan & ~was_rejected
            if qual in allow_unknown:
                if unknown.any():
                    unknown_keys[qual] = pd.unique(values[unknown].to_numpy())
            else:
                fails.add(unknown, f"{qual} exists in {parent}", col_name)

        if cutoff is not None:
            for col in spec.columns:
                if col.type == TS and col.name in typed:
                    fails.add((typed[col.name] > cutoff).to_numpy(), f"{name}.{col.name} <= cutoff", col.name)
        _table_specific(name, typed, fails, parents)

        bad = fails.mask()
        ftab = fails.table()
        good = typed.loc[~bad].reset_index(drop=True) if bad.any() else typed
        for col in spec.columns:  # integers without missing values become plain int64
            if col.name in good and good[col.name].dtype == "Int64" and not good[col.name].isna().any():
                good[col.name] = good[col.name].astype(np.int64)
        clean[name] = good
        rej = raw.iloc[ftab["pos"].to_numpy()].reset_index(drop=True)
        rej.insert(0, "_row", ftab["pos"].to_numpy() + 1)
        rej["_rule"] = ftab["_rule"].to_numpy()
        rej["_column"] = ftab["_column"].to_numpy()
        rej["_rules"] = ftab["_rules"].to_numpy()
        rejects[name] = rej
        if spec.key is not None and spec.key in typed:
            rk = pd.Index(typed.loc[bad, spec.key].dropna().unique())
            rejected_keys[name] = rk.difference(pd.Index(good[spec.key]))

        for col in spec.columns:
            if not col.required and col.name in good and len(good) and good[col.name].isna().all():
                empty.append(f"{name}.{col.name}")
        by_rule = ftab["_rule"].value_counts().sort_index()
        table_reports[name] = {
            "file": source,
            "rows_in": n,
            "rows_out": len(good),
            "rejected": int(bad.sum()),
            "cascaded": int(ftab["_rule"].astype(str).str.startswith(PARENT_REJECTED).sum()),
            "rejected_by_rule": {str(k): int(v) for k, v in by_rule.items()},
            "duplicate_rows": dup_counts["duplicate_rows"],
            "conflicting_keys": dup_counts["conflicting_keys"],
            "missing_optional_columns": [c.name for c in spec.columns if c.name not in raw.columns],
            "extra_columns": list(map(str, extra)),
            "conversions": conversions,
        }

    absent = sorted(set(missing) | set(empty))
    disabled, fallbacks = disabled_features(absent)
    rows_in = sum(t["rows_in"] for t in table_reports.values())
    rows_out = sum(t["rows_out"] for t in table_reports.values())
    report: dict[str, Any] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rejected": rows_in - rows_out,
        "reject_rate": round((rows_in - rows_out) / rows_in, 6) if rows_in else 0.0,
        "cascaded": sum(t["cascaded"] for t in table_reports.values()),
        "cutoff": None
        if cutoff is None
        else str(cutoff - pd.Timedelta(days=float(params["max_future_days"]))),
        "id_type": kind,
        "duplicates_policy": DUPLICATES_POLICY,
        "tables": table_reports,
        "missing_optional_tables": [m for m in missing if "." not in m],
        "missing_optional_columns": [m for m in missing if "." in m],
        "empty_optional_columns": empty,
        "disabled_features": disabled,
        "fallback_features": fallbacks,
        "unchecked_foreign_keys": unchecked_fks,
        "unknown_references": {k: len(v) for k, v in unknown_keys.items()},
    }
    return ValidationResult(clean, rejects, report, unknown_keys)


def _table_specific(name: str, typed: pd.DataFrame, fails: _Failures, parents: _Lookup) -> None:
    """Rules that relate a row to other tables: time order, size scales, returned quantity."""
    if name == "orders" and "delivered_ts" in typed:
        early = (typed["delivered_ts"] < typed["order_ts"]).to_numpy()
        fails.add(early, "orders.delivered_ts >= orders.order_ts", "delivered_ts")

    if name == "order_lines" and "size" in typed and parents.has("products", "size_type"):
        code, found = parents.get("products", typed["product_id"], "size_type", _scale_codes)
        code = np.where(found, code, -1)
        size = typed["size"]
        off = np.zeros(len(typed), dtype=bool)
        for k, scale in enumerate(SIZE_SCALES.values()):
            rows = code == k
            if rows.any():
                off[rows] = (size[rows].notna() & ~size[rows].isin(scale)).to_numpy(dtype=bool)
        fails.add(off, "order_lines.size on its product's size_type scale", "size")

    if name == "returns" and parents.has("order_lines", "order_id"):
        order_id, known = parents.get("order_lines", typed["line_id"], "order_id", _ids)
        if parents.has("orders", "order_ts") and known.any():
            ts, found = parents.get("orders", pd.Series(order_id[known]), "order_ts", _times)
            order_ts = np.full(len(typed), np.datetime64("NaT", "us"), dtype="datetime64[us]")
            order_ts[np.flatnonzero(known)[found]] = ts[found]
            before = typed["return_ts"].to_numpy(dtype="datetime64[us]") < order_ts  # NaT compares False
            fails.add(before, "returns.return_ts >= orders.order_ts", "return_ts")
        ok = ~fails.mask()  # only returns that are otherwise valid count towards the line's quantity
        r = typed.loc[ok, ["line_id", "return_ts", "quantity"]]
        r = r.sort_values(["line_id", "return_ts"], kind="stable")
        cum = r.groupby("line_id", sort=False)["quantity"].cumsum().to_numpy(dtype="float64")
        cap, found = parents.get("order_lines", r["line_id"], "quantity", _floats)
        cap = np.where(found, cap, np.nan)
        fails.add(
            r.index.to_numpy()[cum > cap],  # NaN (unknown line) compares False
            "returns.quantity (summed per line) <= order_lines.quantity",
            "quantity",
        )
