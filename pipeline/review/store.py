"""Reviewer decisions: an append-only SQLite history (stdlib sqlite3), read back by the flag stage.

Why plain sqlite3: one small table, no ORM needed, and SQLite's own locking (WAL + busy timeout +
`BEGIN IMMEDIATE`) is what makes two reviewers writing at once lose nothing. UPDATE and DELETE are
refused by triggers, so a changed decision is a new row and the old one stays in the history.

The flag stage calls `current_decisions(db_path)`: the latest decision per customer, or an empty frame
with the same columns when no database exists yet.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

DB_FILENAME = "decisions.db"
SCHEMA_VERSION = 1
DECISIONS = ("abuse", "legitimate", "needs_info")
DECISION_LABELS = {
    "abuse": "Confirmed abuse",
    "legitimate": "Legitimate",
    "needs_info": "Needs more information",
}
COLUMNS = ("id", "customer_id", "decision", "note", "reviewer", "decided_at")
MAX_NOTE = 4000
MAX_REVIEWER = 120
BUSY_TIMEOUT_S = 30.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT NOT NULL,
    customer_id_type TEXT NOT NULL CHECK (customer_id_type IN ('int', 'str')),
    decision TEXT NOT NULL CHECK (decision IN ({", ".join(f"'{d}'" for d in DECISIONS)})),
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_decisions_customer ON decisions (customer_id, id);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: record a new decision instead'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: the history is never deleted'); END;
PRAGMA user_version = {SCHEMA_VERSION};
"""
_REQUIRED_COLUMNS = {"id", "customer_id", "customer_id_type", "decision", "note", "reviewer", "decided_at"}


class StoreError(RuntimeError):
    """The decision database is missing, corrupt or not ours; the message says what to do."""


def _init_hint(path: Path) -> str:
    return f"create it with `returnrisk review init --db {path}` (or start the app with `returnrisk review --init`)"


def _utcnow() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _id_type(customer_id: object) -> str:
    if isinstance(customer_id, bool):
        raise ValueError(f"customer_id {customer_id!r}: a boolean is not a customer id")
    if isinstance(customer_id, int):
        return "int"
    try:  # numpy integers
        import numpy as np

        if isinstance(customer_id, np.integer):
            return "int"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(customer_id, str) and customer_id != "":
        return "str"
    raise ValueError(f"customer_id {customer_id!r}: must be an int or a non-empty string")


@dataclass(frozen=True)
class Decision:
    id: int
    customer_id: str
    decision: str
    note: str
    reviewer: str
    decided_at: str

    @property
    def label(self) -> str:
        return DECISION_LABELS.get(self.decision, self.decision)


def init_db(path: Path | str) -> Path:
    """Create the database with its schema; a no-op on a valid existing one, an error on a broken one."""
    path = Path(path)
    if path.exists():
        DecisionStore.open(path)  # validates, raises StoreError when broken
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(_SCHEMA)
        con.commit()
    finally:
        con.close()
    return path


class DecisionStore:
    """Open with `DecisionStore.open(path)`, which refuses a missing or broken file with a clear message.

    Each call uses its own short-lived connection, so one store is safe to share between threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> DecisionStore:
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: decision database not found; {_init_hint(path)}")
        if not path.is_file():
            raise StoreError(f"{path}: is not a file; expected the SQLite decision database")
        store = cls(path)
        store.check()
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the decision database ({exc})") from exc
        try:
            yield con
        finally:
            con.close()

    def check(self) -> None:
        """Raise StoreError unless the file is a healthy SQLite database holding our `decisions` table."""
        broken = (
            f"{self.path}: not a usable decision database (corrupt or not SQLite); move it aside, "
            f"restore a backup, or {_init_hint(self.path)}"
        )
        try:
            with self._connect() as con:
                status = con.execute("PRAGMA quick_check").fetchone()
                if not status or status[0] != "ok":
                    raise StoreError(f"{broken} [integrity check: {status[0] if status else 'no answer'}]")
                cols = {row[1] for row in con.execute("PRAGMA table_info(decisions)")}
                version = con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{broken} [{exc}]") from exc
        if not cols:
            raise StoreError(f"{self.path}: SQLite file without a `decisions` table; {_init_hint(self.path)}")
        missing = _REQUIRED_COLUMNS - cols
        if missing:
            raise StoreError(
                f"{self.path}: table `decisions` lacks columns {sorted(missing)}; not our schema"
            )
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this code reads {SCHEMA_VERSION}")

    def record(self, customer_id: int | str, decision: str, note: str, reviewer: str) -> Decision:
        """Append one decision (never overwrites); returns it with its id and UTC timestamp."""
        id_type = _id_type(customer_id)
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ValueError("reviewer: a name is required so every decision can be traced")
        if len(reviewer) > MAX_REVIEWER:
            raise ValueError(f"reviewer: at most {MAX_REVIEWER} characters")
        note = (note or "").strip()
        if len(note) > MAX_NOTE:
            raise ValueError(f"note: at most {MAX_NOTE} characters")
        decided_at = _utcnow()
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
                cur = con.execute(
                    "INSERT INTO decisions (customer_id, customer_id_type, decision, note, reviewer, decided_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (str(customer_id), id_type, decision, note, reviewer, decided_at),
                )
                con.commit()
            except sqlite3.Error as exc:
                con.rollback()
                raise StoreError(f"{self.path}: could not record the decision ({exc})") from exc
        return Decision(int(cur.lastrowid), str(customer_id), decision, note, reviewer, decided_at)

    def history(self, customer_id: int | str) -> list[Decision]:
        """Every decision for one customer, newest first."""
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE customer_id = ? ORDER BY id DESC",
                (str(customer_id),),
            ).fetchall()
        return [Decision(*r) for r in rows]

    def current(self, customer_ids: Iterable[int | str] | None = None) -> dict[str, Decision]:
        """Latest decision per customer (keys are ids as text), for the given ids or all of them."""
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id IN "
            "(SELECT max(id) FROM decisions {where} GROUP BY customer_id)"
        )
        with self._connect() as con:
            if customer_ids is None:
                rows = con.execute(sql.format(where="")).fetchall()
            else:
                ids = [str(c) for c in customer_ids]
                rows = []
                for start in range(0, len(ids), 500):  # stay below SQLite's parameter limit
                    chunk = ids[start : start + 500]
                    marks = ", ".join("?" * len(chunk))
                    rows += con.execute(sql.format(where=f"WHERE customer_id IN ({marks})"), chunk).fetchall()
        return {r[1]: Decision(*r) for r in rows}

    def frame(self, *, latest_only: bool = False) -> pd.DataFrame:
        """All decisions (or the latest per customer) as a DataFrame; see `current_decisions`."""
        where = "WHERE id IN (SELECT max(id) FROM decisions GROUP BY customer_id)" if latest_only else ""
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(COLUMNS)}, customer_id_type FROM decisions {where} ORDER BY id"
            ).fetchall()
        return _to_frame(rows)

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT count(*) FROM decisions").fetchone()[0])


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([], dtype="int64"),
            "customer_id": pd.Series([], dtype="string"),
            "decision": pd.Series([], dtype="string"),
            "note": pd.Series([], dtype="string"),
            "reviewer": pd.Series([], dtype="string"),
            "decided_at": pd.Series([], dtype="datetime64[us]"),
        }
    )


def _to_frame(rows: list[tuple]) -> pd.DataFrame:
    if not rows:
        return _empty_frame()
    df = pd.DataFrame(rows, columns=[*COLUMNS, "customer_id_type"])
    # Ids come back with the type they were written with: int64 when every id was an int, else text.
    if (df["customer_id_type"] == "int").all():
        df["customer_id"] = df["customer_id"].astype("int64")
    else:
        df["customer_id"] = df["customer_id"].astype("string")
    for col in ("decision", "note", "reviewer"):
        df[col] = df[col].astype("string")
    df["id"] = df["id"].astype("int64")
    df["decided_at"] = pd.to_datetime(df["decided_at"]).astype("datetime64[us]")
    return df.drop(columns="customer_id_type")


def current_decisions(db_path: Path | str) -> pd.DataFrame:
    """Latest decision per customer: id, customer_id, decision, note, reviewer, decided_at.

    A missing database gives an empty frame with these columns (no reviews yet); a corrupt one raises
    StoreError, because silently ignoring confirmed decisions would re-flag cleared customers.
    customer_id is int64 when every stored id was an int, else a string column.
    """
    path = Path(db_path)
    if not path.exists():
        return _empty_frame()
    return DecisionStore.open(path).frame(latest_only=True)


def default_db_path() -> Path:
    """`${paths.decisions}/decisions.db` from params.yaml."""
    from pipeline.config import path_of

    return path_of("decisions") / DB_FILENAME
