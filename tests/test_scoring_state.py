"""The history state (features/state.py): batch features from the state equal `build_features` over everything."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, build_features_for_batch
from features.registry import FEATURES
from features.state import HistoryState, build_state, featurize_batch

NAMES = [f.name for f in FEATURES]
CATS = [f.name for f in FEATURES if f.kind == "categorical"]
SPAN_DAYS = 75  # longer than the return window and than a month: batch lines resolve inside the batch


@pytest.fixture(scope="module")
def tables(small_generated):
    from pipeline.io import read_meta

    tabs = {p.stem: pd.read_parquet(p) for p in small_generated.raw.glob("*.parquet")}
    return tabs, pd.Timestamp(read_meta(small_generated.raw)["cutoff"])


@pytest.fixture(scope="module")
def full(tables):
    tabs, cutoff = tables
    return build_features(tabs, cutoff)[0]


@pytest.fixture(scope="module")
def split(tables):
    """(history, batch, T): the batch = every order of the last SPAN_DAYS days; the history = the rest,
    with every return and review up to the cutoff (returns of batch lines included: they are events for
    later batch orders)."""
    tabs, cutoff = tables
    t = cutoff - pd.Timedelta(days=SPAN_DAYS)
    in_batch = (tabs["orders"]["order_ts"] >= t).to_numpy()
    batch_ids = tabs["orders"]["order_id"][in_batch]
    line_in = tabs["order_lines"]["order_id"].isin(batch_ids).to_numpy()
    history = dict(tabs)
    history["orders"] = tabs["orders"].loc[~in_batch]
    history["order_lines"] = tabs["order_lines"].loc[~line_in]
    batch = {"orders": tabs["orders"].loc[in_batch], "order_lines": tabs["order_lines"].loc[line_in]}
    return history, batch, pd.Timestamp(batch["orders"]["order_ts"].min())


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    out = df.sort_values("line_id").set_index("line_id")[["order_id", "customer_id", "order_ts", *NAMES]]
    return out.astype({c: "str" for c in CATS})


def _assert_same(got: pd.DataFrame, full: pd.DataFrame) -> None:
    want = full[full["line_id"].isin(got["line_id"])]
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(
        _comparable(got), _comparable(want), check_exact=False, rtol=1e-9, atol=1e-9
    )


def test_state_path_equals_featurize_over_a_long_batch(tables, full, split):
    """Returns, kept sizes, deliveries and month medians that happen inside the batch all count."""
    history, batch, t = split
    tabs, _ = tables
    # the batch really exercises the in-batch events
    returned_batch_lines = tabs["returns"]["line_id"].isin(batch["order_lines"]["line_id"])
    assert returned_batch_lines.sum() > 20
    assert batch["orders"]["order_ts"].dt.to_period("M").nunique() >= 3
    state = build_state(history, t)
    assert len(state.pending["order_lines"]) < len(history["order_lines"]) / 2  # the point of the state
    got = featurize_batch(state, batch)
    assert list(got.columns) == [c for c in full.columns if c not in ("returned", "label_mature")]
    _assert_same(got, full)
    # customers seen only in the history do carry history into the batch
    assert (got["cust_resolved_lines"] > 0).mean() > 0.5


def test_chunks_on_a_state_equal_one_batch(full, split):
    """Chunk 2 sees chunk 1 as pending rows (`with_rows`), like score_export does."""
    history, batch, t = split
    orders = batch["orders"].sort_values(["order_ts", "order_id"])
    first = orders["order_id"].iloc[: len(orders) // 2]
    parts = []
    state = build_state(history, t)
    for ids, st in ((first, state), (orders["order_id"].iloc[len(orders) // 2 :], None)):
        o = batch["orders"][batch["orders"]["order_id"].isin(ids)]
        li = batch["order_lines"][batch["order_lines"]["order_id"].isin(ids)]
        if st is None:
            done = batch["orders"]["order_id"].isin(first)
            st = state.with_rows(
                {
                    "orders": batch["orders"][done],
                    "order_lines": batch["order_lines"][batch["order_lines"]["order_id"].isin(first)],
                }
            )
        parts.append(build_features_for_batch(None, {"orders": o, "order_lines": li}, state=st))
    _assert_same(pd.concat(parts, ignore_index=True), full)


def test_saved_state_gives_the_same_rows(tmp_path, full, split):
    history, batch, t = split
    state = build_state(history, t, fingerprint="abc")
    state.save(tmp_path / "state")
    loaded = HistoryState.load(tmp_path / "state")
    assert loaded.as_of == state.as_of and loaded.fingerprint == "abc"
    assert loaded.available == state.available
    _assert_same(featurize_batch(loaded, batch), full)


def test_state_refuses_earlier_orders_and_redefined_products(split):
    history, batch, t = split
    state = build_state(history, t + pd.Timedelta(days=1))
    with pytest.raises(ValueError, match="before the history state's as_of"):
        featurize_batch(state, batch)
    with pytest.raises(ValueError, match="orders dated before"):
        state.with_rows({"orders": batch["orders"]})
    late = build_state(history, t)
    redefined = history["products"].iloc[:1].assign(category="other")
    with pytest.raises(ValueError, match="already in the history"):
        featurize_batch(late, {**batch, "products": redefined})
    with pytest.raises(ValueError, match="featurize params"):
        featurize_batch(late, batch, {"featurize": {"customer_prior_weight": 3.0}})


def test_redefined_product_takes_the_direct_route(tables, split):
    """build_features_for_batch falls back to history + batch when the batch changes a history product."""
    history, batch, _ = split
    redefined = history["products"].iloc[:1].assign(category="other")
    out = build_features_for_batch(history, {**batch, "products": redefined})
    pid = redefined["product_id"].iloc[0]
    lines = out[out["product_id"] == pid]
    if len(lines):
        assert (lines["category"].astype(str) == "other").all()
    assert len(out) == len(batch["order_lines"])


def test_state_summaries_are_one_row_per_key(split):
    history, _, t = split
    state = build_state(history, t)
    for name, tbl in state.streams.items():
        df = tbl.to_pandas()
        keys = [c for c in df.columns if c.endswith("_id") or c in ("category", "size_type")]
        assert not df.duplicated(keys).any(), name
    assert np.all(np.diff(state.pop_daily.column("d").to_numpy()) > np.timedelta64(0))
    months = state.cat_month.column("month").to_pandas()
    assert (months < t.to_period("M").to_timestamp()).all()


def test_empty_batch_gives_no_rows(split):
    history, batch, t = split
    state = build_state(history, t)
    out = featurize_batch(
        state, {"orders": batch["orders"].iloc[:0], "order_lines": batch["order_lines"].iloc[:0]}
    )
    assert len(out) == 0 and "cust_return_rate" in out.columns


def test_pieces_are_the_rows_of_one_table_bit_for_bit(split):
    """`featurize_batch_pieces` with small pieces: consecutive qi ranges whose rows equal the one-piece
    table exactly (the scorer predicts piece by piece)."""
    import pyarrow as pa

    from features.state import featurize_batch_pieces, featurize_batch_table

    history, batch, t = split
    state = build_state(history, t)
    whole = featurize_batch_table(state, batch)
    pieces = list(featurize_batch_pieces(state, batch, rows=97))
    assert len(pieces) == -(-whole.num_rows // 97) > 3
    assert all(p.num_rows == 97 for p in pieces[:-1])
    assert pa.concat_tables(pieces).equals(whole)
