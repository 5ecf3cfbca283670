"""Batch scoring: a checkout export of new orders -> one scored row per order line (`returnrisk score`).

The I/O edge around pure logic that lives elsewhere: validation (`pipeline.validation.validate_tables` with
the history as reference), features (`features.state.featurize_batch_table`, the batch path of
`features.build.build_features_for_batch`: the same SQL as the training features, so an order scored here
gets exactly the row it has in training), the model (`models.artifact.ReturnModel`: calibrated
probabilities; the Arrow feature table is encoded straight into its matrix, no pandas frame of the
features unless reasons need one), reasons (`models.explain.explain_lines`, on the same matrix).

Why it is shaped like this:

* **Chunks of whole orders.** `order_lines` (the big table) is read in chunks of about `chunk_lines`
  lines (Parquet batches / CSV chunks); the lines of the last order in a chunk are held back for the next
  one, so basket features always see every line of an order. Assumption (README): the lines of an order are
  contiguous in the export; a line whose order was already scored in an earlier chunk is rejected.
  `orders`, `customers` and `products` of the export are read whole (they are small next to the lines).
* **History state, not history re-reads.** The history's events are aggregated once per key
  (`features.state.HistoryState`, as of the export's first order, or loaded precomputed) and each chunk is
  featurized from that state plus the rows that still produce events (`features.state`): the work per
  chunk follows the chunk, not the history.
* **Exactness across chunks.** Chunk k is featurized against the history plus chunks 1..k-1 (their orders
  and lines are events: earlier orders, deliveries). When the export is in time order (a checkout export
  is) this equals scoring the whole export at once; an order's features only see events before it.
* **Atomic outputs.** Output and rejects are streamed into hidden temporary files beside the targets and
  renamed only when complete: a killed run leaves no file or the previous complete one.
* **Deterministic.** Rows keep input order; Parquet/CSV writing has no clock in it, so the same inputs
  (and the same `scored_at`) give byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.contract import TABLES

EXPORT_TABLES = ("customers", "products", "orders", "order_lines")  # what an export may hold
REQUIRED_EXPORT = ("orders", "order_lines")
RISK_BANDS = ("low", "medium", "high")
NO_FLAG = "none"  # abuse tier/type of a customer with no flag (and of a new customer)
UNKNOWN = "unknown"  # abuse tier/type when no abuse flags were given


def output_columns(k: int = 3) -> list[str]:
    """The scored file's columns, in order."""
    return [
        "line_id",
        "order_id",
        "customer_id",
        "return_probability",
        "risk_band",
        "abuse_tier",
        "abuse_type",
        *(f"reason_{i}" for i in range(1, k + 1)),
        "model_name",
        "model_version",
        "scored_at",
    ]


REJECT_COLUMNS = ["table", "row", "key", "rule", "column", "rules", "record"]


class ScoringError(ValueError):
    """A problem with the whole run (missing table, unreadable file, unusable model): exit code 2."""


@dataclass(frozen=True)
class ScoreSettings:
    """params.yaml `score:` (the scoring-run part)."""

    chunk_lines: int = 500_000
    reasons: int = 3
    medium_share: float = 0.5
    #: lines of a chunk assembled at a time: a worker thread predicts one piece while the next is assembled
    piece_lines: int = 250_000

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> ScoreSettings:
        s = dict(section or {})
        out = cls(
            chunk_lines=int(s.get("chunk_lines", cls.chunk_lines)),
            reasons=int(s.get("reasons", cls.reasons)),
            medium_share=float(s.get("medium_share", cls.medium_share)),
            piece_lines=int(s.get("piece_lines", cls.piece_lines)),
        )
        if out.chunk_lines < 1 or out.reasons < 0 or not 0 < out.medium_share <= 1 or out.piece_lines < 1:
            raise ValueError(
                "params.yaml score: chunk_lines >= 1, reasons >= 0, 0 < medium_share <= 1 and piece_lines >= 1"
                f" (got {out})"
            )
        return out


# ---------------------------------------------------------------------------------------------- pure logic
def risk_band_codes(p: np.ndarray, threshold: float, medium_share: float = 0.5) -> np.ndarray:
    """Positions in RISK_BANDS (int8): high when p >= the cost-based threshold (intervening pays), medium
    when p >= medium_share x threshold, else low."""
    p = np.asarray(p, dtype=np.float64)
    return (p >= medium_share * threshold).astype(np.int8) + (p >= threshold).astype(np.int8)


def risk_bands(p: np.ndarray, threshold: float, medium_share: float = 0.5) -> np.ndarray:
    """The band names of `risk_band_codes`."""
    return np.asarray(RISK_BANDS, dtype=object)[risk_band_codes(p, threshold, medium_share)]


def _text_column(values: Any) -> pa.Array:
    """Text for the output table: few distinct values (bands, tiers, a model name) via a dictionary (no
    per-row Python strings), anything else converted directly."""
    if isinstance(values, pd.Series):
        return pa.array(values, type=pa.string(), from_pandas=True)
    arr = np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    if len(uniques) <= 64:
        dictionary = pa.array(np.asarray(uniques, dtype=object), type=pa.string())
        idx = pa.array(codes.astype(np.int32), mask=codes < 0)
        return pa.DictionaryArray.from_arrays(idx, dictionary).cast(pa.string())
    return pa.array(arr, type=pa.string(), from_pandas=True)


def _constant_text(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value])).cast(
        pa.string()
    )


def hold_back_last_order(chunk: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a lines chunk into (complete orders, the trailing run of lines of its last order)."""
    if len(chunk) == 0 or "order_id" not in chunk.columns:
        return chunk, chunk.iloc[:0]
    ids = chunk["order_id"]

    def key(i: int) -> str | None:  # ids compared as text (CSV and Parquet alike); only the tail is read
        v = ids.iloc[i]
        return None if pd.isna(v) else str(v)

    last = key(len(ids) - 1)
    i = len(ids) - 1
    while i > 0 and key(i - 1) == last:
        i -= 1
    return chunk.iloc[:i], chunk.iloc[i:]


def _same_ids(values: pd.Series, keys: pd.Series) -> np.ndarray:
    """values.isin(keys) with ids compared as text; integer columns compare directly (same result, faster)."""
    if pd.api.types.is_integer_dtype(values.dtype) and pd.api.types.is_integer_dtype(keys.dtype):
        return values.isin(pd.unique(keys.to_numpy())).to_numpy()
    return values.astype("string").isin(pd.unique(keys.astype("string"))).to_numpy()


#: a last part of the export smaller than this share of the chunk before it joins that chunk: a chunk
#: costs a feature session over the history state plus every earlier chunk (with_rows), so a tail of a
#: few orders (1,000,001 lines at chunk_lines 1,000,000) would cost about as much as the first chunk again
TAIL_SHARE = 0.125


def whole_order_chunks(
    chunks: Iterator[pd.DataFrame], tail_share: float = TAIL_SHARE
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(row offset in the file, chunk) with every order's lines in one chunk (lines of an order contiguous).

    The trailing order of a chunk moves to the next chunk; the last chunk is yielded whole, and a last
    part of at most `tail_share` x the size of the part before it is joined to that one (`TAIL_SHARE`).
    """
    carry: pd.DataFrame | None = None
    offset = 0
    it = iter(chunks)
    current = next(it, None)
    following = next(it, None) if current is not None else None
    while current is not None:
        after = next(it, None) if following is not None else None
        if following is not None and after is None and len(following) <= tail_share * len(current):
            current, following = pd.concat([current, following], ignore_index=True), None
        chunk = current if carry is None or not len(carry) else pd.concat([carry, current], ignore_index=True)
        chunk = chunk.reset_index(drop=True)
        if following is None:
            head, carry = chunk, None
        else:
            head, carry = hold_back_last_order(chunk)
        if len(head) or following is None:
            yield offset, head.reset_index(drop=True)
            offset += len(head)
        current, following = following, after


def cut_sample(
    tables: Mapping[str, pd.DataFrame], start: pd.Timestamp, end: pd.Timestamp
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Split validated tables into (history as known at `end`, export of the orders placed in [start, end)).

    The export holds those orders and their lines, plus the customers and products that first appear in it
    (no earlier order / line): "new" ones. The history holds everything else recorded before `end`: earlier
    orders and lines (deliveries after `end` unknown), returns and reviews recorded before `end` (returns of
    export lines included: they are known at `end` and only count for orders placed after them).
    """
    orders, lines = tables["orders"], tables["order_lines"]
    in_window = ((orders["order_ts"] >= start) & (orders["order_ts"] < end)).to_numpy()
    before = (orders["order_ts"] < start).to_numpy()
    exp_orders = orders.loc[in_window].copy()
    if "delivered_ts" in exp_orders:
        exp_orders.loc[exp_orders["delivered_ts"] >= end, "delivered_ts"] = pd.NaT
    exp_lines = lines.loc[lines["order_id"].isin(exp_orders["order_id"]).to_numpy()]
    hist_orders = orders.loc[before].copy()
    if "delivered_ts" in hist_orders:
        hist_orders.loc[hist_orders["delivered_ts"] >= end, "delivered_ts"] = pd.NaT
    hist_lines = lines.loc[lines["order_id"].isin(hist_orders["order_id"]).to_numpy()]

    history: dict[str, pd.DataFrame] = {"orders": hist_orders, "order_lines": hist_lines}
    export: dict[str, pd.DataFrame] = {"orders": exp_orders, "order_lines": exp_lines}
    seen_customers = hist_orders["customer_id"].unique()
    customers = tables["customers"]
    new_c = customers["customer_id"].isin(exp_orders["customer_id"]) & ~customers["customer_id"].isin(
        seen_customers
    )
    export["customers"], history["customers"] = customers.loc[new_c], customers.loc[~new_c]
    products = tables["products"]
    new_p = products["product_id"].isin(exp_lines["product_id"]) & ~products["product_id"].isin(
        hist_lines["product_id"]
    )
    export["products"], history["products"] = products.loc[new_p], products.loc[~new_p]
    known_lines = pd.concat([hist_lines["line_id"], exp_lines["line_id"]])
    if tables.get("returns") is not None:
        r = tables["returns"]
        history["returns"] = r.loc[((r["return_ts"] < end) & r["line_id"].isin(known_lines)).to_numpy()]
    if tables.get("reviews") is not None:
        rv = tables["reviews"]
        history["reviews"] = rv.loc[(rv["review_ts"] < end).to_numpy()]
    if tables.get("warehouses") is not None:
        history["warehouses"] = tables["warehouses"]
    return (
        {k: v.reset_index(drop=True) for k, v in history.items()},
        {k: v.reset_index(drop=True) for k, v in export.items()},
    )


# ---------------------------------------------------------------------------------------------- reading
def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every contract table in a folder (Parquet or CSV), as stored (the validated history)."""
    from pipeline.io import find_table_file, read_any

    out: dict[str, pd.DataFrame] = {}
    for name in TABLES:
        f = find_table_file(folder, name)
        if f is not None:
            out[name] = read_any(f)
    return out


def _empty_raw(table: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str") for c in TABLES[table].required_columns})


def export_files(export: Path) -> dict[str, Path]:
    """The export's table files: a folder holding orders + order_lines (.parquet or .csv), maybe customers/products."""
    from pipeline.io import find_table_file, table_files

    export = Path(export)
    if not export.is_dir():
        raise ScoringError(f"{export}: not a folder; an export is a folder with orders and order_lines files")
    files: dict[str, Path] = {}
    for name in EXPORT_TABLES:
        f = find_table_file(export, name)
        if f is not None:
            files[name] = f
        elif name in REQUIRED_EXPORT:
            found = ", ".join(p.name for p in table_files(export, name)) or "nothing"
            raise ScoringError(
                f"{export}: no {name}.parquet or {name}.csv (found {found}); rule: an export holds orders and order_lines"
            )
    return files


def _read_whole(path: Path, table: str, notes: list[str]) -> pd.DataFrame:
    from pipeline.io import TableFileError, read_raw_table

    if path.stat().st_size == 0:
        notes.append(f"{path}: 0 bytes, read as an empty {table} table")
        return _empty_raw(table)
    try:
        return read_raw_table(path)
    except TableFileError as exc:
        raise ScoringError(str(exc)) from exc


def iter_raw_lines(path: Path, chunk_lines: int, notes: list[str]) -> Iterator[pd.DataFrame]:
    """order_lines in chunks of about `chunk_lines` rows, read like `read_raw_table` (CSV as text)."""
    path = Path(path)
    if path.stat().st_size == 0:
        notes.append(f"{path}: 0 bytes, read as an empty order_lines table")
        yield _empty_raw("order_lines")
        return
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            if pf.metadata.num_rows == 0:
                yield pf.schema_arrow.empty_table().to_pandas()
                return
            for batch in pf.iter_batches(batch_size=chunk_lines):
                yield batch.to_pandas()
            return
        reader = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8", chunksize=chunk_lines
        )
        empty = True
        for chunk in reader:
            empty = False
            yield chunk
        if empty:  # header only
            yield pd.read_csv(path, dtype=str, nrows=0)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ScoringError(
            f"{path}: not a readable {path.suffix[1:]} file ({type(exc).__name__}: {exc})"
        ) from exc


def n_lines_hint(path: Path) -> int | None:
    """Rows of a Parquet file from its footer (progress total); None for CSV."""
    if Path(path).suffix.lower() == ".parquet" and Path(path).stat().st_size > 0:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def load_or_build_state(
    folder: Path, history_dir: Path, history: Mapping[str, pd.DataFrame], params: Mapping[str, Any]
) -> tuple[Any, bool]:
    """(HistoryState of the history folder as of its meta.json cutoff, whether it was built now).

    The state in `folder` is reused when its fingerprint (content hash of the history's table files and
    meta.json, the featurize params, the cutoff) matches; otherwise it is built and saved there atomically.
    """
    from dataclasses import asdict

    from features.engine import FeaturizeParams
    from features.state import STATE_FILE, STATE_VERSION, HistoryState, build_state, fingerprint_files
    from pipeline.io import find_table_file, read_meta

    fparams = {"featurize": dict(params.get("featurize") or {}), "labels": dict(params.get("labels") or {})}
    cutoff = pd.Timestamp(read_meta(history_dir)["cutoff"])
    files = [f for name in TABLES if (f := find_table_file(history_dir, name)) is not None]
    fp = fingerprint_files(
        [*files, Path(history_dir) / "meta.json"],
        {
            "v": STATE_VERSION,
            "as_of": cutoff.isoformat(),
            "params": asdict(FeaturizeParams.from_params(fparams)),
        },
    )
    folder = Path(folder)
    if (folder / STATE_FILE).is_file():
        with contextlib.suppress(ValueError, OSError, KeyError):  # unreadable or old: rebuilt below
            state = HistoryState.load(folder)
            if state.fingerprint == fp:
                return state, False
    state = build_state(history, cutoff, fparams, fingerprint=fp)
    state.save(folder)
    return state, True


# ---------------------------------------------------------------------------------------------- writing
class StreamWriter:
    """Writes frames of a fixed schema into a hidden temporary file; `commit` renames it over the target.

    CSV (formula-escaped, header always written) or Parquet by the target's suffix. Without `commit`
    (an error, a kill) the target is untouched; `abort` removes the temporary file.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import os
        import tempfile

        self.path = Path(path)
        self.schema = schema
        self.suffix = self.path.suffix.lower()
        if self.suffix not in (".csv", ".parquet"):
            raise ScoringError(f"{self.path}: output must end in .csv or .parquet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = 0
        self._pq = None
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            # text columns dictionary-encoded (bands, tiers, reasons: few distinct values); numbers plain:
            # trying a dictionary on unique ids and probabilities first was a fifth of the write time.
            # Min/max statistics for the numbers (row-group skipping on ids, times), not for the text
            text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            other = [f.name for f in schema if f.name not in text]
            self._pq = pq.ParquetWriter(
                self.tmp,
                schema,
                compression="zstd",
                use_dictionary=text or False,
                write_statistics=other or False,
            )
        else:
            with open(self.tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(",".join(schema.names) + "\n")

    def write(self, df: pd.DataFrame) -> None:
        if len(df) == 0:
            return
        self.rows += len(df)
        if self._pq is not None:
            self._pq.write_table(
                pa.Table.from_pandas(df[self.schema.names], schema=self.schema, preserve_index=False)
            )
        else:
            from pipeline.io import escape_formulas

            with open(self.tmp, "a", encoding="utf-8", newline="") as fh:
                escape_formulas(df[self.schema.names]).to_csv(fh, header=False, index=False)

    def write_table(self, table: pa.Table) -> None:
        """An Arrow table with the schema's columns (cast to its types); CSV goes through `write`."""
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        if self._pq is None:
            self.write(table.to_pandas())
            return
        self.rows += table.num_rows
        self._pq.write_table(table)

    def commit(self) -> Path:
        import os

        if self._pq is not None:
            self._pq.close()
            self._pq = None
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o666 & ~mask)  # mkstemp makes 0600; the output is for other services to read
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._pq is not None:
            with contextlib.suppress(Exception):  # best effort while failing anyway
                self._pq.close()
            self._pq = None
        self.tmp.unlink(missing_ok=True)


def rejects_path(output: Path) -> Path:
    """Rejects beside the output: scored.parquet -> scored.rejects.parquet."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def _id_type(kind: str) -> pa.DataType:
    return pa.int64() if kind == "int" else pa.string()


def output_schema(id_kind: str, k: int = 3) -> pa.Schema:
    idt = _id_type(id_kind)
    fields = [("line_id", idt), ("order_id", idt), ("customer_id", idt), ("return_probability", pa.float64())]
    fields += [(c, pa.string()) for c in ("risk_band", "abuse_tier", "abuse_type")]
    fields += [(f"reason_{i}", pa.string()) for i in range(1, k + 1)]
    fields += [("model_name", pa.string()), ("model_version", pa.string()), ("scored_at", pa.timestamp("us"))]
    return pa.schema(fields)


REJECT_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("row", pa.int64()),
        ("key", pa.string()),
        ("rule", pa.string()),
        ("column", pa.string()),
        ("rules", pa.string()),
        ("record", pa.string()),
    ]
)


def reject_frame(table: str, rejects: pd.DataFrame, row_of: np.ndarray | None = None) -> pd.DataFrame:
    """validate_tables rejects -> the rejects file's rows (file row number, key, rule, the record as JSON)."""
    if len(rejects) == 0:
        return pd.DataFrame({c: [] for c in REJECT_COLUMNS})
    key = TABLES[table].key
    pos = rejects["_row"].to_numpy(dtype=np.int64) - 1
    rows = (row_of[pos] if row_of is not None else pos) + 1
    data = rejects.drop(columns=["_row", "_rule", "_column", "_rules"], errors="ignore")
    records = [
        json.dumps(
            {k: (None if pd.isna(v) else str(v)) for k, v in rec.items()}, ensure_ascii=False, sort_keys=True
        )
        for rec in data.to_dict(orient="records")
    ]
    keys = data[key].astype("string") if key in data else pd.Series([None] * len(data), dtype="string")
    return pd.DataFrame(
        {
            "table": table,
            "row": rows,
            "key": keys.to_numpy(dtype=object, na_value=None),
            "rule": rejects["_rule"].astype(str).to_numpy(),
            "column": rejects["_column"].astype("string").to_numpy(dtype=object, na_value=None),
            "rules": rejects["_rules"]
            .map(lambda r: "; ".join(r) if isinstance(r, list | tuple | np.ndarray) else str(r))
            .to_numpy(),
            "record": records,
        }
    )


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class ScoreResult:
    output: Path
    rejects: Path
    scored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    mean_probability: float | None = None
    bands: dict[str, int] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return int(sum(self.rejected.values()))

    def summary_line(self) -> str:
        by = ", ".join(f"{t} {n}" for t, n in self.rejected.items() if n) or "none"
        return (
            f"scored {self.scored} lines, rejected {self.n_rejected} rows ({by}) in {self.chunks} chunk(s) "
            f"with {self.model_name} {self.model_version} -> {self.output}"
            + (f"; rejects -> {self.rejects}" if self.n_rejected else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "rejects_file": str(self.rejects),
            "scored": self.scored,
            "rejected": self.n_rejected,
            "rejected_by_table": self.rejected,
            "chunks": self.chunks,
            "notes": self.notes,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "model_name": self.model_name,
            "model_version": self.model_version,
            "mean_probability": self.mean_probability,
            "risk_bands": self.bands,
        }


@dataclass
class Abuse:
    """customer_id -> (abuse tier, abuse type) from the flag stage's customer_scores.parquet."""

    index: pd.Index | None
    tier: np.ndarray
    kind: np.ndarray

    @classmethod
    def load(cls, path: Path | None) -> Abuse:
        if path is None:
            return cls(None, np.array([]), np.array([]))
        p = Path(path)
        f = p / "customer_scores.parquet" if p.is_dir() else p
        if not f.is_file():
            raise ScoringError(f"{f}: abuse flags not found (run the flag stage, or pass --no-flags)")
        df = pd.read_parquet(f, columns=["customer_id", "tier", "abuse_type"])
        return cls(
            pd.Index(df["customer_id"]),
            df["tier"].astype(str).to_numpy(dtype=object),
            df["abuse_type"].astype(str).to_numpy(dtype=object),
        )

    def lookup(self, customer_id: Any) -> tuple[pa.Array, pa.Array]:
        """(abuse tier, abuse type) per customer as Arrow text: UNKNOWN without flags, NO_FLAG for a customer
        without one. Codes into the few distinct values (no per-line Python strings)."""
        n = len(customer_id)
        if self.index is None:
            return _constant_text(UNKNOWN, n), _constant_text(UNKNOWN, n)
        pos = self.index.get_indexer(customer_id)
        return _coded_text(self.tier, pos), _coded_text(self.kind, pos)


def _coded_text(values: np.ndarray, pos: np.ndarray) -> pa.Array:
    """values[pos] as Arrow text, NO_FLAG where pos < 0 (a dictionary of the distinct values, then cast)."""
    codes, uniques = pd.factorize(values)
    dictionary = pa.array([*(str(u) for u in uniques), NO_FLAG], type=pa.string())
    none = len(uniques)
    idx = np.where(pos >= 0, codes[np.maximum(pos, 0)] if len(codes) else none, none).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(idx), dictionary).cast(pa.string())


def _gather_text(keys: pd.Series, values: pd.Series, want: pd.Series | np.ndarray) -> pd.Categorical:
    """values[key == want] per row of `want`, as a categorical (missing where the key is unknown or the value
    is missing): a hash look-up of the keys and a gather of codes, no per-row string copies."""
    uniq_keys = ~pd.Index(keys).duplicated(keep="last")
    index = pd.Index(np.asarray(keys)[uniq_keys])
    small = pd.Series(np.asarray(values, dtype=object)[uniq_keys]).astype("string")
    codes_small, cats = pd.factorize(small)
    pos = index.get_indexer(np.asarray(want))
    codes = np.where(pos >= 0, codes_small[np.maximum(pos, 0)] if len(codes_small) else -1, -1)
    return pd.Categorical.from_codes(codes, categories=pd.Index(cats, dtype="string"))


def _context(
    feats: pd.DataFrame, lines: pd.DataFrame, tables: Mapping[str, pd.DataFrame | None]
) -> pd.DataFrame:
    """Sentence context for reasons (size label, size type, countries): never model features.

    Categorical columns (the templates read them as text): a few distinct values gathered by key."""
    out = feats.copy(deep=False)  # new columns only: the features themselves are not copied
    if "size" in lines:
        out["size"] = pd.Categorical(lines["size"].to_numpy())
    products = tables.get("products")
    if products is not None and "size_type" in products:
        out["size_type"] = _gather_text(products["product_id"], products["size_type"], out["product_id"])
    orders = tables.get("orders")
    if orders is not None and "ship_country" in orders:
        out["ship_country"] = _gather_text(orders["order_id"], orders["ship_country"], out["order_id"])
        wh = tables.get("warehouses")
        if wh is not None and "warehouse_id" in orders and "country" in wh:
            pos = pd.Index(orders["order_id"]).get_indexer(out["order_id"])
            line_wh = orders["warehouse_id"].to_numpy(dtype=object)[np.maximum(pos, 0)]
            line_wh[pos < 0] = None
            out["warehouse_country"] = _gather_text(wh["warehouse_id"], wh["country"], line_wh)
    return out


def predict_proba(model: Any, feats: pd.DataFrame | None, matrix: np.ndarray | None = None) -> np.ndarray:
    """Calibrated probabilities: `ReturnModel.predict_proba`, the one definition (column-major encoding,
    compiled trees; the same numbers as the evaluate stage's predictions, tested). `matrix`: the rows
    already encoded (`ReturnModel.encode_table`), then calibrated `raw_from_matrix` (what predict_proba does)."""
    if matrix is not None:
        if len(matrix) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(model.calibrator.apply(model.raw_from_matrix(matrix)), dtype=np.float64)
    if feats is None or len(feats) == 0:
        return np.empty(0, dtype=np.float64)
    return np.asarray(model.predict_proba(feats), dtype=np.float64)


@dataclass
class ChunkPredictions:
    """A chunk's feature table in qi order with its calibrated probabilities (and model matrix, when kept)."""

    table: pa.Table
    p: np.ndarray | None  # None when the model cannot encode Arrow (then predicted from the frame)
    matrix: np.ndarray | None


def predict_pieces(
    model: Any, pieces: Iterator[pa.Table], keep_matrix: bool, timings: dict[str, float] | None = None
) -> ChunkPredictions:
    """Encode, predict and calibrate each feature piece in one worker thread while the caller's generator
    assembles the next (DuckDB, Arrow and the compiled trees release the GIL): the model's time hides
    behind the assembly's. Probabilities are elementwise, so they equal predicting the whole table at once.

    An error in either thread propagates after the worker stops; the pieces generator is closed either way
    (its DuckDB session ends). `timings` gets `assembled_s` (until the last piece), `predict_wait_s` (then
    until the worker is done: the model time not hidden) and `predict_worker_s` (the worker's own time)."""
    from concurrent.futures import ThreadPoolExecutor

    from features.state import qi_permutation

    can_encode = hasattr(model, "encode_table")

    timings = timings if timings is not None else {}

    def add(name: str, sec: float) -> None:
        timings[name] = timings.get(name, 0.0) + sec

    def work(piece: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        t = time.perf_counter()
        X = model.encode_table(piece)
        out = predict_proba(model, None, X), (X if keep_matrix else None)
        add("predict_worker_s", time.perf_counter() - t)
        return out

    tables: list[pa.Table] = []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if hasattr(pieces, "close"):  # a generator: end its session even when this fails half-way
            stack.callback(pieces.close)
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="score-predict"))
        futures = []
        for piece in pieces:
            if futures and futures[-1].done() and futures[-1].exception() is not None:
                break  # the worker failed: stop assembling (its error is raised below)
            tables.append(piece)
            if can_encode:
                futures.append(pool.submit(work, piece))
        t1 = time.perf_counter()
        done = [f.result() for f in futures]
    add("assembled_s", t1 - t0)
    add("predict_wait_s", time.perf_counter() - t1)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    p = matrix = None
    if can_encode:
        p = np.concatenate([d[0] for d in done]) if len(done) > 1 else done[0][0]
        if keep_matrix:
            matrix = _stack_rows([d[1] for d in done])
    order = qi_permutation(table)
    if order is not None:  # not expected (the engine assembles in qi order): put every part in order
        table = table.take(order)
        idx = order.to_numpy()
        p = p[idx] if p is not None else None
        matrix = np.asfortranarray(matrix[idx]) if matrix is not None else None
    return ChunkPredictions(table, p, matrix)


def _stack_rows(parts: list[Any]) -> np.ndarray:
    """Row blocks of column-major matrices -> one column-major matrix (what `encode_table` returns)."""
    if len(parts) == 1:
        return parts[0]
    X = np.empty((sum(len(x) for x in parts), parts[0].shape[1]), dtype=np.float64, order="F")
    at = 0
    for x in parts:
        X[at : at + len(x)] = x
        at += len(x)
    return X


def _concat(*frames: pd.DataFrame | None) -> pd.DataFrame | None:
    parts = [f for f in frames if f is not None and len(f.columns)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def score_export(
    export: Path,
    history: Mapping[str, pd.DataFrame],
    model: Any,
    output: Path,
    *,
    abuse: Abuse | None = None,
    settings: ScoreSettings | None = None,
    params: Mapping[str, Any] | None = None,
    model_name: str = "returnrisk",
    model_version: str = "unknown",
    scored_at: pd.Timestamp | None = None,
    as_of: pd.Timestamp | None = None,
    progress: Callable[[int], None] | None = None,
    state: Any = None,
) -> ScoreResult:
    """Validate, featurize, predict and explain every order line of `export`; write output + rejects atomically.

    `history`: the validated tables (features' events, foreign-key targets). `params`: the whole params dict
    (its `validate`, `featurize` and `labels` sections are used). `as_of`: orders dated later are rejected
    (default: scored_at). `state`: a `features.state.HistoryState` of `history` (e.g. loaded from
    `--state`); when absent, or later than a chunk's first order, one is built from `history` as of that
    order and reused for the following chunks. Raises ScoringError / ContractError on table-level problems
    (nothing written).
    """
    from features.build import to_frame
    from features.state import build_state, featurize_batch_pieces
    from models.explain import explain_lines
    from pipeline.validation import validate_tables

    settings = settings or ScoreSettings()
    params = dict(params or {})
    abuse = abuse or Abuse(None, np.array([]), np.array([]))
    scored_at = pd.Timestamp(scored_at) if scored_at is not None else pd.Timestamp.now(tz="UTC").floor("s")
    if scored_at.tzinfo is not None:
        scored_at = scored_at.tz_convert("UTC").tz_localize(None)
    as_of = pd.Timestamp(as_of) if as_of is not None else scored_at
    vparams = dict(params.get("validate") or {})
    fparams = {"featurize": dict(params.get("featurize") or {}), "labels": dict(params.get("labels") or {})}
    xparams = dict(params.get("explain") or {})  # TreeSHAP batch size and threads, as the explain stage
    k = settings.reasons
    threshold = getattr(model, "threshold", None)
    if threshold is None:
        raise ScoringError("the model has no decision threshold (model.json 'threshold'); retrain it")

    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    files = export_files(Path(export))
    result = ScoreResult(
        Path(output), rejects_path(Path(output)), model_name=model_name, model_version=model_version
    )
    notes = result.notes
    hist = {name: history[name] for name in TABLES if history.get(name) is not None}
    for name in ("customers", "products", "orders", "order_lines"):
        if name not in hist:
            raise ScoringError(
                f"history: table {name!r} missing (score against the validated tables of a repro)"
            )
    id_kind = "int" if pd.api.types.is_integer_dtype(hist["order_lines"]["line_id"]) else "str"
    vparams.setdefault("id_type", id_kind)

    t0 = time.perf_counter()
    raw_small = {
        name: _read_whole(files[name], name, notes)
        for name in ("customers", "products", "orders")
        if name in files
    }
    tick("read_s", t0)

    out = StreamWriter(Path(output), output_schema(id_kind, k))
    rej = StreamWriter(rejects_path(Path(output)), REJECT_SCHEMA)
    try:
        # new customers / products: validated once; rows of keys the history already has are left out
        t0 = time.perf_counter()
        ref = dict(hist)
        new_entities: dict[str, pd.DataFrame] = {}
        for name in ("customers", "products"):
            raw = raw_small.get(name)
            if raw is None or len(raw) == 0:
                continue
            key = TABLES[name].key
            r = validate_tables(
                {name: raw},
                None,
                vparams,
                reference={n: v for n, v in hist.items() if n != name},
                sources={name: str(files[name])},
            )
            rej.write(reject_frame(name, r.rejects[name]))
            result.rejected[name] = len(r.rejects[name])
            clean = r.clean[name]
            known = clean[key].isin(hist[name][key]).to_numpy()
            if known.any():
                notes.append(f"{name}: {int(known.sum())} rows already in the history (history version used)")
            new = clean.loc[~known]
            if len(new):
                ref[name] = pd.concat([hist[name], new], ignore_index=True)
                new_entities[name] = new.reset_index(drop=True)
        orders_raw = raw_small["orders"].reset_index(drop=True)
        if "order_id" not in orders_raw.columns:
            raise ScoringError(
                f"{files['orders']}: column 'order_id' is missing; rule: required column of orders"
            )
        tick("validate_s", t0)

        done_orders: list[pd.DataFrame] = []
        done_lines: list[pd.DataFrame] = []
        result.rejected.setdefault("orders", 0)
        result.rejected.setdefault("order_lines", 0)
        used_orders = np.zeros(len(orders_raw), dtype=bool)
        sum_p = 0.0
        band_counts = dict.fromkeys(RISK_BANDS, 0)
        t0 = time.perf_counter()
        for offset, lines_raw in whole_order_chunks(
            iter_raw_lines(files["order_lines"], settings.chunk_lines, notes)
        ):
            tick("read_s", t0)
            t0 = time.perf_counter()
            result.chunks += 1
            if "order_id" not in lines_raw.columns:
                raise ScoringError(
                    f"{files['order_lines']}: column 'order_id' is missing; rule: required column of order_lines"
                )
            want = _same_ids(orders_raw["order_id"], lines_raw["order_id"]) & ~used_orders
            used_orders |= want
            order_rows = np.flatnonzero(want)
            chunk_ref = dict(ref)
            if done_orders:
                chunk_ref["orders"] = pd.concat([ref["orders"], *done_orders], ignore_index=True)
                chunk_ref["order_lines"] = pd.concat([ref["order_lines"], *done_lines], ignore_index=True)
            v = validate_tables(
                {"orders": orders_raw.iloc[order_rows].reset_index(drop=True), "order_lines": lines_raw},
                {"cutoff": as_of.isoformat()},
                vparams,
                reference=chunk_ref,
                allow_unknown=("orders.customer_id",),
                sources={"orders": str(files["orders"]), "order_lines": str(files["order_lines"])},
            )
            orders, lines = v.clean["orders"], v.clean["order_lines"]
            # a line must belong to an order of this chunk (not a history order, not one already scored)
            foreign = ~lines["order_id"].isin(orders["order_id"]).to_numpy()
            line_rejects = [
                reject_frame("order_lines", v.rejects["order_lines"], np.arange(len(lines_raw)) + offset)
            ]
            if foreign.any():
                bad = lines.loc[foreign]
                line_rejects.append(
                    pd.DataFrame(
                        {
                            "table": "order_lines",
                            "row": -1,
                            "key": bad["line_id"].astype("string").to_numpy(dtype=object),
                            "rule": "order_lines.order_id is an order of this export (an order's lines contiguous)",
                            "column": "order_id",
                            "rules": "order_lines.order_id is an order of this export",
                            "record": [
                                json.dumps(
                                    {c: (None if pd.isna(x) else str(x)) for c, x in r.items()},
                                    sort_keys=True,
                                )
                                for r in bad.to_dict(orient="records")
                            ],
                        }
                    )
                )
                lines = lines.loc[~foreign].reset_index(drop=True)
            rej.write(reject_frame("orders", v.rejects["orders"], order_rows))
            for f in line_rejects:
                rej.write(f)
            result.rejected["orders"] += len(v.rejects["orders"])
            result.rejected["order_lines"] += sum(len(f) for f in line_rejects)
            tick("validate_s", t0)
            if len(lines) == 0:
                if progress is not None:
                    progress(len(lines_raw))
                t0 = time.perf_counter()
                continue

            t0 = time.perf_counter()
            orders_used = orders.loc[orders["order_id"].isin(lines["order_id"]).to_numpy()].reset_index(
                drop=True
            )
            first = pd.Timestamp(orders_used["order_ts"].min())
            if state is None or first < state.as_of:
                # the history's aggregates as of this chunk's first order (kept for the next chunks)
                t1 = time.perf_counter()
                state = build_state(hist, first, fparams)
                timings["state_s"] = timings.get("state_s", 0.0) + time.perf_counter() - t1
            chunk_state = (
                state.with_rows({"orders": _concat(*done_orders), "order_lines": _concat(*done_lines)})
                if done_orders
                else state
            )
            steps: dict[str, float] = {}
            pieces = featurize_batch_pieces(
                chunk_state,
                {"orders": orders_used, "order_lines": lines, **new_entities},
                fparams,
                rows=settings.piece_lines,
            )
            got = predict_pieces(model, pieces, keep_matrix=bool(k), timings=steps)
            table, p, X = got.table, got.p, got.matrix
            line_ids = table.column("line_id").to_pandas()
            pos = pd.Index(line_ids).get_indexer(lines["line_id"])
            if (pos < 0).any():  # cannot happen: every valid line has its order and product
                raise RuntimeError(
                    f"features missing for line {lines['line_id'].iloc[int(np.argmax(pos < 0))]!r}"
                )
            if not np.array_equal(pos, np.arange(len(pos))):  # features come in (order_ts, line_id) order
                table = table.take(pa.array(pos))
                p = p[pos] if p is not None else None
                X = np.asfortranarray(X[pos]) if X is not None else None
            keys = {c: table.column(c).to_numpy() for c in ("line_id", "order_id", "customer_id")}
            # features_s: the session and assembly; predict_s: the model time the assembly did not hide
            # (predict_wait_s) and what follows; predict_worker_s: the worker's own time, overlapped
            wait = steps.get("predict_wait_s", 0.0)
            timings["features_s"] = timings.get("features_s", 0.0) + time.perf_counter() - t0 - wait
            timings["predict_worker_s"] = timings.get("predict_worker_s", 0.0) + steps.get(
                "predict_worker_s", 0.0
            )
            timings["predict_s"] = timings.get("predict_s", 0.0) + wait

            t0 = time.perf_counter()
            feats = to_frame(table) if p is None or k else None
            if p is None:  # a model without Arrow encoding: predicted from the frame
                p = predict_proba(model, feats)
            band_codes = risk_band_codes(p, float(threshold), settings.medium_share)
            tier, kind = abuse.lookup(keys["customer_id"])
            tick("predict_s", t0)
            n_rows = len(p)
            # the output as Arrow columns (text by dictionary: no million Python strings per column)
            cols: dict[str, Any] = {c: table.column(c) for c in ("line_id", "order_id", "customer_id")}
            cols["return_probability"] = pa.array(p)
            cols["risk_band"] = pa.DictionaryArray.from_arrays(
                pa.array(band_codes), pa.array(list(RISK_BANDS))
            ).cast(pa.string())
            cols["abuse_tier"], cols["abuse_type"] = tier, kind
            if k:
                t0 = time.perf_counter()
                ctx = _context(
                    feats,
                    lines,
                    {
                        "products": ref["products"],
                        "orders": orders_used,
                        "warehouses": hist.get("warehouses"),
                    },
                )
                tick("reasons_context_s", t0)
                t1 = time.perf_counter()
                parts: dict[str, float] = {}
                reasons = explain_lines(
                    model,
                    ctx,
                    k=k,
                    matrix=X,
                    batch_size=int(xparams.get("batch_size", 100_000)),
                    num_threads=int(xparams.get("num_threads", 0)),
                    timings=parts,
                )
                for name, sec in parts.items():
                    timings[f"reasons_{name}"] = timings.get(f"reasons_{name}", 0.0) + sec
                tick("reasons_explain_s", t1)
                for i in range(1, k + 1):
                    cols[f"reason_{i}"] = _text_column(reasons[f"reason_{i}"])
                tick("reasons_s", t0)
            cols["model_name"] = _constant_text(model_name, n_rows)
            cols["model_version"] = _constant_text(model_version, n_rows)
            cols["scored_at"] = pa.array(np.full(n_rows, np.datetime64(scored_at.to_datetime64(), "us")))
            t0 = time.perf_counter()
            out.write_table(pa.table(cols).combine_chunks())  # the same bytes whatever the piece size
            tick("write_s", t0)
            result.scored += n_rows
            sum_p += float(p.sum())
            for b, n in zip(RISK_BANDS, np.bincount(band_codes, minlength=len(RISK_BANDS)), strict=True):
                band_counts[b] += int(n)
            done_orders.append(orders_used)
            done_lines.append(lines)
            if progress is not None:
                progress(len(lines_raw))
            t0 = time.perf_counter()
        unused = int((~used_orders).sum())
        if unused:
            notes.append(f"orders: {unused} orders without any line in order_lines (nothing to score)")
        t0 = time.perf_counter()
        out.commit()
        rej.commit()
        tick("write_s", t0)
    except BaseException:
        out.abort()
        rej.abort()
        raise
    result.mean_probability = sum_p / result.scored if result.scored else None
    result.bands = band_counts
    result.timings = timings
    return result


def resolve_model(model_uri: str) -> tuple[Any, str, str]:
    """(ReturnModel, name, version) from a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)
    or a plain folder from `returnrisk export-model` / the train stage (version from run.json beside it)."""
    from models.tracking import load_return_model

    p = Path(model_uri)
    is_folder = "://" not in model_uri and not model_uri.startswith("models:") and p.exists()
    if not is_folder and "://" not in model_uri and not model_uri.startswith("models:"):
        raise ScoringError(f"--model {model_uri}: no such folder, and not a models:/ or runs:/ URI")
    if not is_folder:
        from pipeline.config import configure_mlflow

        configure_mlflow()
    try:
        model = load_return_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - any load failure is a usage error for the caller
        raise ScoringError(f"--model {model_uri}: cannot load ({type(exc).__name__}: {exc})") from exc
    name = str(model.metadata.get("name", "returnrisk"))
    version = str(model.metadata.get("version", "")) or "unregistered"
    if is_folder:
        for f in ("run.json", "source.json"):
            rec = p / f
            if rec.is_file():
                v = json.loads(rec.read_text(encoding="utf-8")).get("model_version")
                if v:
                    version = str(v)
                    break
    elif model_uri.startswith("models:/"):
        rest = model_uri[len("models:/") :]
        if "@" in rest:
            reg, alias = rest.split("@", 1)
            from mlflow import MlflowClient

            version = str(MlflowClient().get_model_version_by_alias(reg, alias).version)
        elif "/" in rest:
            version = rest.split("/", 1)[1]
    return model, name, version
