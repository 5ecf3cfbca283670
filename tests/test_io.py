"""pipeline.io: strict raw reading, clear file errors, atomic files and folders, CSV formula escaping."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.io import (
    TableFileError,
    atomic_dir,
    atomic_path,
    escape_formulas,
    find_table_file,
    read_any,
    read_meta,
    read_raw_table,
    table_files,
    write_csv,
    write_json,
    write_parquet,
)


def test_raw_csv_is_text_and_only_empty_means_missing(tmp_path):
    p = tmp_path / "customers.csv"
    p.write_text("customer_id,country,lat\n007,NA,51.5\n8,,null\n")
    df = read_raw_table(p)
    assert df["customer_id"].tolist() == ["007", "8"]  # leading zeros kept: no number guessing
    assert df["country"].iloc[0] == "NA" and pd.isna(df["country"].iloc[1])  # Namibia is not missing
    assert df["lat"].tolist() == ["51.5", "null"]  # "null" is a value the validator will reject
    assert all(pd.api.types.is_string_dtype(df[c]) for c in df.columns)


def test_raw_parquet_keeps_stored_types(tmp_path):
    p = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1, 2], "b": pd.to_datetime(["2024-01-01", "2024-01-02"])}).to_parquet(p)
    df = read_raw_table(p)
    assert df["a"].dtype == "int64" and pd.api.types.is_datetime64_dtype(df["b"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.parquet", b"a,b\n1,2\n", "not a readable parquet file"),
        ("t.csv", b"", "file is empty (0 bytes)"),
        ("t.csv", b"a,b\n\xff\xfe\x00,1\n", "not a readable csv file"),
        ("t.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
    ],
)
def test_unusable_files_name_the_file_and_rule(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(TableFileError) as err:
        read_raw_table(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_read_any_still_reads_both_formats(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    write_parquet(df, tmp_path / "x.parquet")
    write_csv(df, tmp_path / "y.csv")
    assert read_any(tmp_path / "x.parquet")["a"].tolist() == [1, 2]
    assert read_any(tmp_path / "y.csv")["a"].tolist() == [1, 2]
    assert find_table_file(tmp_path, "x") == tmp_path / "x.parquet"
    assert find_table_file(tmp_path, "z") is None


def test_table_files_lists_every_extension(tmp_path):
    for n in ("orders.json", "orders.csv", "order_lines.parquet"):
        (tmp_path / n).write_text("x")
    assert [p.name for p in table_files(tmp_path, "orders")] == ["orders.csv", "orders.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "out.json"
    write_json({"v": 1}, p)
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "validated"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "stale.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("2")
    assert sorted(f.name for f in out.iterdir()) == ["a.txt"]  # nothing from the earlier run survives
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("3")
        raise RuntimeError("failed half way")
    assert (out / "a.txt").read_text() == "2"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["validated"]


def test_escape_formulas_only_touches_risky_text():
    df = pd.DataFrame(
        {
            "t": ["=1+1", "+cmd", "@SUM(A1)", "-x", "\tx", "ok", None],
            "n": [-1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "c": pd.Categorical(["=a", "b", "b", "b", "b", "b", "b"]),
        }
    )
    out = escape_formulas(df)
    assert out["t"].tolist()[:6] == ["'=1+1", "'+cmd", "'@SUM(A1)", "'-x", "'\tx", "ok"]
    assert pd.isna(out["t"].iloc[6])
    assert out["n"].tolist() == df["n"].tolist()  # a negative number is data
    assert out["c"].iloc[0] == "'=a"
    assert df["t"].iloc[0] == "=1+1"  # the input is not modified


def test_write_csv_escapes_by_default(tmp_path):
    p = write_csv(pd.DataFrame({"t": ["=HYPERLINK(1)"]}), tmp_path / "r.csv")
    assert "'=HYPERLINK(1)" in p.read_text()
    p = write_csv(pd.DataFrame({"t": ["=HYPERLINK(1)"]}), tmp_path / "raw.csv", escape=False)
    assert "'=" not in p.read_text()


def test_read_meta_requires_the_file(tmp_path):
    with pytest.raises(TableFileError, match="meta.json: missing"):
        read_meta(tmp_path)
    write_json({"cutoff": "2024-06-30"}, tmp_path / "meta.json")
    assert read_meta(tmp_path)["cutoff"] == "2024-06-30"
