"""Shared fixtures: a small generated dataset written once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SMALL = dict(n_customers=1500, n_products=300, months=12, seed=7)


@dataclass
class SmallData:
    raw: Path  # canonical tables + meta.json
    truth: Path  # ground truth


@pytest.fixture(scope="session")
def small_generated(tmp_path_factory) -> SmallData:
    """A small seeded generated dataset (tables + truth) on disk; read-only for tests (copy to modify)."""
    from pipeline.generator import generate, write_generated

    root = tmp_path_factory.mktemp("small")
    data = generate(**SMALL)
    write_generated(data, root / "raw", root / "truth")
    return SmallData(root / "raw", root / "truth")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip saying why."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only present beside the dev checkout)")
    return SHARED_DATA
