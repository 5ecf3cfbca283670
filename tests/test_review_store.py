"""The reviewer decision store: append-only history, concurrency, broken files, the flag-stage API."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import pandas as pd
import pytest

from pipeline.review.store import (
    COLUMNS,
    DecisionStore,
    StoreError,
    current_decisions,
    init_db,
)


@pytest.fixture
def db(tmp_path):
    return init_db(tmp_path / "decisions.db")


def test_missing_db_gives_empty_frame_with_columns(tmp_path):
    df = current_decisions(tmp_path / "nope.db")
    assert list(df.columns) == list(COLUMNS)
    assert df.empty


def test_changed_decision_keeps_history_and_latest_wins(db):
    store = DecisionStore.open(db)
    store.record("C1", "needs_info", "asked for photos", "ann")
    store.record("C1", "abuse", "photos show wear", "bob")
    store.record("C2", "legitimate", "", "ann")
    hist = store.history("C1")
    assert [h.decision for h in hist] == ["abuse", "needs_info"]  # newest first, old one kept
    assert hist[1].note == "asked for photos" and hist[1].reviewer == "ann"
    cur = current_decisions(db)
    assert list(cur.columns) == list(COLUMNS)
    assert dict(zip(cur["customer_id"], cur["decision"], strict=True)) == {"C1": "abuse", "C2": "legitimate"}
    assert str(cur["customer_id"].dtype) == "string"
    assert pd.api.types.is_datetime64_any_dtype(cur["decided_at"])


def test_integer_ids_round_trip_as_int64(db):
    store = DecisionStore.open(db)
    store.record(101, "abuse", "", "ann")
    store.record(7, "legitimate", "", "ann")
    cur = current_decisions(db)
    assert cur["customer_id"].dtype == "int64"
    assert set(cur["customer_id"]) == {101, 7}


def test_history_cannot_be_rewritten(db):
    DecisionStore.open(db).record("C1", "abuse", "", "ann")
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE decisions SET decision = 'legitimate'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM decisions")
    con.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(customer_id="C1", decision="ban", note="", reviewer="ann"), "must be one of"),
        (dict(customer_id="C1", decision="abuse", note="", reviewer="  "), "reviewer"),
        (dict(customer_id="", decision="abuse", note="", reviewer="ann"), "customer_id"),
        (dict(customer_id="C1", decision="abuse", note="x" * 5000, reviewer="ann"), "note"),
    ],
)
def test_invalid_decisions_are_refused(db, kwargs, message):
    store = DecisionStore.open(db)
    with pytest.raises(ValueError, match=message):
        store.record(**kwargs)
    assert store.count() == 0


def _write_many(db_path: str, prefix: str, n: int) -> None:
    store = DecisionStore.open(db_path)
    for i in range(n):
        store.record(f"{prefix}{i % 7}", ("abuse", "legitimate", "needs_info")[i % 3], f"note {i}", prefix)


def test_concurrent_writes_from_two_threads_lose_nothing(db):
    threads = [threading.Thread(target=_write_many, args=(str(db), p, 150)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store = DecisionStore.open(db)
    assert store.count() == 300
    frame = store.frame()
    assert frame["id"].is_unique
    assert (frame.groupby("reviewer").size() == 150).all()


def test_concurrent_writes_from_two_processes_lose_nothing(db):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(db), p, 100)) for p in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    frame = DecisionStore.open(db).frame()
    assert len(frame) == 200
    assert set(frame[frame["reviewer"] == "p"]["note"]) == {f"note {i}" for i in range(100)}


def test_missing_db_refused_with_how_to_create(tmp_path):
    with pytest.raises(StoreError, match=r"not found.*returnrisk review init"):
        DecisionStore.open(tmp_path / "missing.db")


def test_corrupt_db_refused_clearly(tmp_path):
    bad = tmp_path / "decisions.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"decisions.db: not a usable decision database"):
        DecisionStore.open(bad)
    with pytest.raises(StoreError):  # the flag stage must not silently ignore a broken store
        current_decisions(bad)
    with pytest.raises(StoreError):  # init refuses to paper over it
        init_db(bad)
    assert bad.read_bytes().startswith(b"this is not sqlite")


def test_truncated_db_refused(db):
    DecisionStore.open(db).record("C1", "abuse", "", "ann")
    # fold the WAL into the main file, then cut the file in half
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="not a usable decision database"):
        DecisionStore.open(db).frame()


def test_foreign_sqlite_file_refused(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="without a `decisions` table"):
        DecisionStore.open(other)


def test_init_is_idempotent(db):
    DecisionStore.open(db).record("C1", "abuse", "", "ann")
    init_db(db)
    assert DecisionStore.open(db).count() == 1
