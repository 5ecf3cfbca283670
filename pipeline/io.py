"""File I/O at the edge: find/read canonical tables, write outputs atomically, neutralise CSV formulas."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.contract import FILE_SUFFIXES, META_FILE

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class TableFileError(ValueError):
    """A table file that cannot be used at all (unreadable, wrong format)."""


def find_table_file(folder: Path | str, table: str) -> Path | None:
    """The file holding `table` in `folder` (<table>.parquet or <table>.csv), or None."""
    folder = Path(folder)
    for suffix in FILE_SUFFIXES:
        p = folder / f"{table}{suffix}"
        if p.is_file():
            return p
    return None


def read_any(path: Path | str) -> pd.DataFrame:
    """Read a Parquet or CSV file; a clear TableFileError names the file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise TableFileError(f"{path}: file is empty (0 bytes); expected {suffix or 'Parquet/CSV'} data")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path, low_memory=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and rule
        raise TableFileError(
            f"{path}: not a readable {suffix[1:]} file ({type(exc).__name__}: {exc})"
        ) from exc
    raise TableFileError(f"{path}: unsupported file type {suffix!r}; use .parquet or .csv")


def table_files(folder: Path | str, table: str) -> list[Path]:
    """Every file in `folder` named `<table>.<anything>` (to say what was found when no usable file is)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(f"{table}.*") if p.is_file())


def read_raw_table(path: Path | str) -> pd.DataFrame:
    """Read a table for validation without any silent coercion.

    Parquet keeps its stored types. CSV is read as text in every column (the validator parses each
    column strictly by its contract type), with only the empty field meaning missing: pandas' default
    NA strings are off, so the country code "NA" (Namibia) or a product called "null" stay as written.
    """
    path = Path(path)
    if not path.is_file():
        raise TableFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise TableFileError(f"{path}: unsupported file type {suffix!r}; use .parquet or .csv")
    if path.stat().st_size == 0:
        raise TableFileError(f"{path}: file is empty (0 bytes); expected {suffix[1:]} data")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and rule
        raise TableFileError(
            f"{path}: not a readable {suffix[1:]} file ({type(exc).__name__}: {exc})"
        ) from exc


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; it replaces `path` only if the block succeeds.

    Used for stage outputs that are folders: a failed run leaves the previous complete folder, and no
    file from an earlier run (e.g. a table that is now absent) survives into the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A killed or failing writer therefore leaves either no file or the previous complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a DataFrame to Parquet atomically (no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def escape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Neutralise spreadsheet formula injection: prefix text cells starting with = + - @ TAB CR with '.

    Numbers are left alone (a negative number is data, not a formula); only text columns change.
    """
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_string_dtype(s) or s.dtype == object or isinstance(s.dtype, pd.CategoricalDtype):
            text = s.astype("string")
            risky = text.str.startswith(FORMULA_PREFIXES).fillna(False)
            if risky.any():
                out[col] = text.where(~risky, "'" + text)
    return out


def write_csv(df: pd.DataFrame, path: Path | str, *, escape: bool = True) -> Path:
    """Write CSV atomically, formula-escaped by default (for spreadsheets)."""
    with atomic_path(path) as tmp:
        (escape_formulas(df) if escape else df).to_csv(tmp, index=False)
    return Path(path)


def write_json(obj: Any, path: Path | str) -> Path:
    """Write JSON atomically, pretty and key-sorted (stable diffs for DVC metrics)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(path)


def read_meta(folder: Path | str) -> dict[str, Any]:
    """meta.json beside the tables (cutoff, source)."""
    p = Path(folder) / META_FILE
    if not p.is_file():
        raise TableFileError(f"{p}: missing; every table folder carries meta.json with the data cutoff")
    return json.loads(p.read_text(encoding="utf-8"))
