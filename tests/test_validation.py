"""Validation stage: table-level errors stop with one message, bad rows are quarantined and counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.commands.contract import render_markdown
from pipeline.contract import FEATURE_NEEDS, TABLES
from pipeline.validation import ContractError, disabled_features, id_kind, validate_tables

CUTOFF = "2024-06-30T00:00:00"
META = {"cutoff": CUTOFF, "source": "test"}


def mini_tables() -> dict[str, pd.DataFrame]:
    """A valid dataset of all 7 tables: 3 customers, 3 products, 4 orders, 6 lines, 3 returns, 2 reviews."""
    ts = pd.to_datetime
    return {
        "customers": pd.DataFrame(
            {
                "customer_id": [1, 2, 3],
                "signup_ts": ts(["2023-01-01", "2023-05-01", "2024-01-01"]),
                "country": ["GB", "DE", "NA"],
                "lat": [51.5, 52.5, -22.6],
                "lon": [-0.1, 13.4, 17.1],
            }
        ),
        "products": pd.DataFrame(
            {
                "product_id": [10, 11, 12],
                "category": ["dresses", "shoes", "electronics"],
                "brand": ["A", "B", "C"],
                "size_type": ["alpha", "eu_shoe", "none"],
                "description": ["red dress", "=HYPERLINK(1)", "usb cable"],
            }
        ),
        "warehouses": pd.DataFrame(
            {"warehouse_id": [100, 101], "country": ["GB", "DE"], "lat": [52.0, 50.1], "lon": [-1.0, 8.7]}
        ),
        "orders": pd.DataFrame(
            {
                "order_id": [1000, 1001, 1002, 1003],
                "customer_id": [1, 1, 2, 3],
                "order_ts": ts(
                    ["2024-02-01 10:00", "2024-03-01 12:00", "2024-04-01 09:00", "2024-06-01 08:00"]
                ),
                "ship_country": ["GB", "GB", "DE", "NA"],
                "ship_lat": [51.5, 51.5, 52.5, -22.6],
                "ship_lon": [-0.1, -0.1, 13.4, 17.1],
                "warehouse_id": [100, 100, 101, pd.NA],
                "channel": ["web", "app", "web", "phone"],
                "payment_method": ["card", "paypal", "invoice", "card"],
                "delivered_ts": ts(["2024-02-03", "2024-03-04", "2024-04-03", None]),
            }
        ).astype({"warehouse_id": "Int64"}),
        "order_lines": pd.DataFrame(
            {
                "line_id": [1, 2, 3, 4, 5, 6],
                "order_id": [1000, 1000, 1001, 1002, 1002, 1003],
                "product_id": [10, 10, 11, 12, 11, 10],
                "size": ["M", "L", "40", None, "38", "S"],
                "color": ["red", "red", "black", "white", "black", "blue"],
                "quantity": [1, 1, 2, 1, 1, 3],
                "unit_price": [49.9, 49.9, 89.0, 9.5, 79.0, 45.0],
                "list_price": [59.9, 59.9, 89.0, 9.5, 99.0, 45.0],
            }
        ),
        "returns": pd.DataFrame(
            {
                "line_id": [1, 3, 5],
                "return_ts": ts(["2024-02-10", "2024-03-15", "2024-04-20"]),
                "quantity": [1, 2, 1],
                "reason": ["too_large", "too_small", "changed_mind"],
            }
        ),
        "reviews": pd.DataFrame(
            {
                "review_id": [1, 2],
                "product_id": [10, 11],
                "customer_id": [1, pd.NA],
                "review_ts": ts(["2024-02-20", "2024-03-20"]),
                "rating": [2, 5],
                "text": ["runs small, cheap fabric", "love it"],
            }
        ).astype({"customer_id": "Int64"}),
    }


def write_mini(folder: Path, tables: dict[str, pd.DataFrame] | None = None, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in (tables if tables is not None else mini_tables()).items():
        if fmt == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        else:
            df.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "meta.json").write_text(json.dumps(META))
    return folder


def run_validate(raw: Path, tmp_path: Path, *extra: str):
    out, report = tmp_path / "validated", tmp_path / "metrics" / "validation.json"
    res = CliRunner().invoke(app, ["validate", str(raw), "--out", str(out), "--report", str(report), *extra])
    return res, out, report


def rejects_of(result, table: str) -> pd.DataFrame:
    return result.rejects[table]


# --------------------------------------------------------------------------- the clean case


def test_valid_mini_dataset_passes_untouched():
    tables = mini_tables()
    res = validate_tables(tables, META)
    assert res.n_rejected == 0
    assert res.report["rejected"] == 0
    for name, df in tables.items():
        assert len(res.clean[name]) == len(df), name
        assert res.report["tables"][name]["rows_in"] == len(df)
    assert res.report["id_type"] == "int"
    assert res.clean["order_lines"]["line_id"].dtype == np.int64
    assert res.clean["orders"]["warehouse_id"].dtype == "Int64"  # an optional id with gaps keeps them
    assert res.clean["customers"]["country"].tolist() == ["GB", "DE", "NA"]  # Namibia is not missing
    assert res.report["disabled_features"] == {}


def test_csv_copy_gives_the_same_clean_tables(tmp_path):
    raw = write_mini(tmp_path / "raw", fmt="csv")
    res, out, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    ref = validate_tables(mini_tables(), META).clean
    for name, df in ref.items():
        got = pd.read_parquet(out / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, df, check_dtype=False, check_exact=False)
        assert list(got.columns) == list(df.columns)


# --------------------------------------------------------------------------- acceptance cases


def test_missing_required_column_stops_with_one_message(tmp_path):
    tables = mini_tables()
    tables["order_lines"] = tables["order_lines"].drop(columns="unit_price")
    with pytest.raises(ContractError, match=r"order_lines.*'unit_price' is missing; rule: required column"):
        validate_tables(tables, META)
    raw = write_mini(tmp_path / "raw", tables)
    res, out, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "order_lines.parquet" in msg and "'unit_price'" in msg and "rule: required column" in msg
    assert not out.exists()


def test_duplicate_line_id_conflicting_copies_are_all_rejected_with_their_returns():
    tables = mini_tables()
    lines = tables["order_lines"]
    lines.loc[2, "line_id"] = 1  # line 3 now claims id 1 with other content
    res = validate_tables(tables, META)
    rej = rejects_of(res, "order_lines")
    assert sorted(rej["_row"]) == [1, 3]
    assert set(rej["_rule"]) == {"order_lines.line_id unique"}
    assert set(rej["_column"]) == {"line_id"}
    assert 1 not in set(res.clean["order_lines"]["line_id"])
    ret = rejects_of(res, "returns").set_index("line_id")["_rule"].to_dict()
    assert ret == {
        1: "parent rejected: order_lines.line_id",  # which line 1 was returned is unknowable now
        3: "returns.line_id exists in order_lines",  # line 3 no longer exists at all
    }
    assert res.report["tables"]["returns"]["cascaded"] == 1
    assert res.report["tables"]["order_lines"]["conflicting_keys"] == 1


def test_exact_duplicate_row_keeps_the_first_copy():
    tables = mini_tables()
    tables["order_lines"] = pd.concat(
        [tables["order_lines"], tables["order_lines"].iloc[[3]]], ignore_index=True
    )
    res = validate_tables(tables, META)
    rej = rejects_of(res, "order_lines")
    assert rej["_row"].tolist() == [7]
    assert rej["_rule"].tolist() == ["order_lines duplicate row"]
    assert (res.clean["order_lines"]["line_id"] == 4).sum() == 1
    assert res.report["tables"]["order_lines"]["duplicate_rows"] == 1


def test_return_dated_before_its_order_is_rejected():
    tables = mini_tables()
    tables["returns"].loc[1, "return_ts"] = pd.Timestamp("2024-02-15")  # line 3's order is 2024-03-01
    res = validate_tables(tables, META)
    rej = rejects_of(res, "returns")
    assert rej["_rule"].tolist() == ["returns.return_ts >= orders.order_ts"]
    assert rej["_row"].tolist() == [2] and rej["_column"].tolist() == ["return_ts"]
    assert res.report["tables"]["returns"]["rejected_by_rule"] == {"returns.return_ts >= orders.order_ts": 1}
    assert len(res.clean["returns"]) == 2


def test_negative_price_is_rejected_and_only_that_row(tmp_path):
    tables = mini_tables()
    tables["order_lines"].loc[3, "unit_price"] = -9.5
    raw = write_mini(tmp_path / "raw", tables)
    res, out, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    rej = pd.read_parquet(out / "rejects" / "order_lines.parquet")
    assert rej["_rule"].tolist() == ["order_lines.unit_price >= 0"]
    assert rej["_row"].tolist() == [4] and rej["unit_price"].tolist() == [-9.5]
    assert len(pd.read_parquet(out / "order_lines.parquet")) == 5
    rep = json.loads(report.read_text())
    assert rep["tables"]["order_lines"]["rejected_by_rule"] == {"order_lines.unit_price >= 0": 1}
    assert rep["rejected"] == 1 and rep["rows_in"] - rep["rows_out"] == 1
    assert "1 order_lines rows: order_lines.unit_price >= 0" in " ".join(res.output.split())


def test_line_whose_order_does_not_exist_is_rejected_and_its_return_cascades():
    tables = mini_tables()
    tables["order_lines"].loc[2, "order_id"] = 9999  # line 3 (which has a return)
    res = validate_tables(tables, META)
    assert rejects_of(res, "order_lines")["_rule"].tolist() == ["order_lines.order_id exists in orders"]
    ret = rejects_of(res, "returns")
    assert ret["_rule"].tolist() == ["parent rejected: order_lines.line_id"] and ret["line_id"].tolist() == [
        3
    ]
    assert res.report["cascaded"] == 1


@pytest.mark.parametrize("bad", ["garbage_parquet", "other_extension", "empty_csv"])
def test_file_that_is_not_parquet_or_csv_stops(tmp_path, bad):
    raw = write_mini(tmp_path / "raw")
    (raw / "orders.parquet").unlink()
    if bad == "garbage_parquet":
        (raw / "orders.parquet").write_text("order_id,customer_id\n1,2\n")
        expect = "orders.parquet: not a readable parquet file"
    elif bad == "other_extension":
        pd.DataFrame({"a": [1]}).to_json(raw / "orders.json")
        expect = "orders.json: not a Parquet or CSV file"
    else:
        (raw / "orders.csv").write_text("")
        expect = "orders.csv: file is empty"
    res, out, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 2
    assert expect in " ".join(res.output.split())
    assert not out.exists()


# --------------------------------------------------------------------------- other rules


def test_cascade_from_a_rejected_order_to_its_lines_and_returns():
    tables = mini_tables()
    tables["orders"].loc[0, "channel"] = "fax"  # order 1000: lines 1, 2; return of line 1
    res = validate_tables(tables, META)
    assert rejects_of(res, "orders")["_rule"].tolist() == [
        "orders.channel in {web, app, marketplace, phone, unknown}"
    ]
    assert sorted(rejects_of(res, "order_lines")["line_id"]) == [1, 2]
    assert set(rejects_of(res, "order_lines")["_rule"]) == {"parent rejected: orders.order_id"}
    assert rejects_of(res, "returns")["_rule"].tolist() == ["parent rejected: order_lines.line_id"]
    assert res.report["cascaded"] == 3 and res.report["rejected"] == 4


def test_csv_text_is_parsed_strictly(tmp_path):
    raw = write_mini(tmp_path / "raw", fmt="csv")
    lines = (raw / "order_lines.csv").read_text().splitlines()
    lines[2] = lines[2].replace("49.9,59.9", "abc,59.9")  # row 2: price is text
    (raw / "order_lines.csv").write_text("\n".join(lines) + "\n")
    orders = (raw / "orders.csv").read_text().replace("2024-03-01 12:00:00", "01/03/2024 noon")
    (raw / "orders.csv").write_text(orders)
    res, out, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    rl = pd.read_parquet(out / "rejects" / "order_lines.parquet")
    assert rl.loc[rl["_row"] == 2, "_rule"].tolist() == ["order_lines.unit_price is a number"]
    assert rl.loc[rl["_row"] == 2, "unit_price"].tolist() == ["abc"]  # the value as written
    ro = pd.read_parquet(out / "rejects" / "orders.parquet")
    assert ro["_rule"].tolist() == ["orders.order_ts is an ISO 8601 timestamp"] and ro["_row"].tolist() == [2]
    clean = pd.read_parquet(out / "order_lines.parquet")
    assert clean["unit_price"].dtype == np.float64 and clean["quantity"].dtype == np.int64


def test_a_column_of_the_wrong_kind_is_a_table_level_error():
    tables = mini_tables()
    tables["orders"]["order_ts"] = tables["orders"]["order_ts"].astype("int64") // 10**6  # epoch numbers
    with pytest.raises(
        ContractError, match=r"orders table: column 'order_ts' has type int64; rule: a timestamp"
    ):
        validate_tables(tables, META)
    tables = mini_tables()
    tables["order_lines"]["unit_price"] = ["n/a"] * 6  # text where every value fails: not six rejects
    with pytest.raises(ContractError, match=r"'unit_price': none of its 6 values parses \(row 1: 'n/a'\)"):
        validate_tables(tables, META, sources={"order_lines": "raw/order_lines.csv"})


def test_timezone_aware_timestamps_become_naive_utc():
    tables = mini_tables()
    tables["orders"]["order_ts"] = tables["orders"]["order_ts"].dt.tz_localize("Europe/Berlin")
    res = validate_tables(tables, META)
    assert res.n_rejected == 0
    assert res.clean["orders"]["order_ts"].iloc[0] == pd.Timestamp("2024-02-01 09:00")
    assert "naive UTC" in res.report["tables"]["orders"]["conversions"]["order_ts"]


def test_empty_tables_are_valid(tmp_path):
    tables = mini_tables()
    tables["returns"] = tables["returns"].iloc[:0]
    raw = write_mini(tmp_path / "raw", tables, fmt="csv")
    res, out, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(out / "returns.parquet")) == 0
    assert json.loads(report.read_text())["tables"]["returns"]["rows_in"] == 0


def test_required_value_missing_and_fractional_quantity():
    tables = mini_tables()
    lines = tables["order_lines"].astype({"quantity": "float64"})
    lines.loc[0, "quantity"] = 1.5
    lines.loc[1, "quantity"] = np.nan
    tables["order_lines"] = lines
    res = validate_tables(tables, META)
    rules = dict(
        zip(rejects_of(res, "order_lines")["_row"], rejects_of(res, "order_lines")["_rule"], strict=True)
    )
    assert rules == {1: "order_lines.quantity is a whole number", 2: "order_lines.quantity not null"}
    assert res.clean["order_lines"]["quantity"].dtype == np.int64


def test_ranges_allowed_values_and_country_codes():
    tables = mini_tables()
    tables["customers"].loc[0, "lat"] = 91.0
    tables["customers"].loc[1, "country"] = "Germany"
    tables["returns"].loc[2, "reason"] = "bored"
    tables["reviews"].loc[0, "rating"] = 6
    tables["order_lines"].loc[4, "quantity"] = 0
    res = validate_tables(tables, META)
    got = {t: rejects_of(res, t)["_rule"].tolist() for t in ("customers", "returns", "reviews")}
    assert got["customers"] == ["customers.lat in [-90, 90]", "customers.country matches [A-Z]{2}"]
    assert got["reviews"][0] == "reviews.rating in [1, 5]"
    lines = rejects_of(res, "order_lines")
    assert lines.loc[lines["line_id"] == 5, "_rule"].tolist() == ["order_lines.quantity >= 1"]
    assert "returns.reason in {" in got["returns"][0] or got["returns"][0].startswith("parent rejected")


def test_a_row_failing_several_rules_lists_them_all():
    tables = mini_tables()
    tables["order_lines"].loc[0, ["unit_price", "quantity"]] = [-1.0, 0]
    res = validate_tables(tables, META)
    rej = rejects_of(res, "order_lines")
    assert rej["_rules"].tolist() == ["order_lines.quantity >= 1; order_lines.unit_price >= 0"]
    assert res.report["tables"]["order_lines"]["rejected"] == 1


def test_nothing_may_be_dated_after_the_cutoff():
    tables = mini_tables()
    tables["returns"].loc[2, "return_ts"] = pd.Timestamp("2024-07-05")
    tables["reviews"].loc[1, "review_ts"] = pd.Timestamp("2025-01-01")
    res = validate_tables(tables, META)
    assert rejects_of(res, "returns")["_rule"].tolist() == ["returns.return_ts <= cutoff"]
    assert rejects_of(res, "reviews")["_rule"].tolist() == ["reviews.review_ts <= cutoff"]
    res = validate_tables(tables, META, {"max_future_days": 400})
    assert res.n_rejected == 0


def test_delivery_before_order_is_rejected():
    tables = mini_tables()
    tables["orders"].loc[2, "delivered_ts"] = pd.Timestamp("2024-03-30")
    res = validate_tables(tables, META)
    assert rejects_of(res, "orders")["_rule"].tolist() == ["orders.delivered_ts >= orders.order_ts"]


def test_returned_quantity_cannot_exceed_the_line_quantity():
    tables = mini_tables()
    extra = pd.DataFrame(
        {
            "line_id": [6, 6, 6],
            "return_ts": pd.to_datetime(["2024-06-10", "2024-06-05", "2024-06-20"]),
            "quantity": [1, 1, 2],
            "reason": ["other"] * 3,
        }
    )
    tables["returns"] = pd.concat([tables["returns"], extra], ignore_index=True)
    res = validate_tables(tables, META)  # line 6 has quantity 3: the last event (2024-06-20) is one too many
    rej = rejects_of(res, "returns")
    assert rej["_row"].tolist() == [6]
    assert rej["_rule"].tolist() == ["returns.quantity (summed per line) <= order_lines.quantity"]


def test_size_must_be_on_the_products_scale():
    tables = mini_tables()
    tables["order_lines"].loc[2, "size"] = "M"  # product 11 is an eu_shoe
    tables["order_lines"].loc[3, "size"] = "one size"  # product 12 has no size system: not checked
    res = validate_tables(tables, META)
    rej = rejects_of(res, "order_lines")
    assert rej["line_id"].tolist() == [3]
    assert rej["_rule"].tolist() == ["order_lines.size on its product's size_type scale"]


def test_allowed_categories_from_params():
    res = validate_tables(mini_tables(), META, {"allowed_categories": ["dresses", "shoes"]})
    assert rejects_of(res, "products")["_rule"].tolist() == [
        "products.category in validate.allowed_categories"
    ]
    assert res.report["tables"]["order_lines"]["cascaded"] == 1  # line 4 is an electronics item


# --------------------------------------------------------------------------- optional data


def test_missing_optional_table_and_columns_disable_only_their_features(tmp_path):
    tables = mini_tables()
    del tables["reviews"], tables["warehouses"]
    tables["order_lines"] = tables["order_lines"].drop(columns=["size"])
    tables["customers"] = tables["customers"].drop(columns=["lat", "lon"])
    tables["orders"]["channel"] = None
    raw = write_mini(tmp_path / "raw", tables)
    res, out, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["rejected"] == 0
    assert rep["missing_optional_tables"] == ["warehouses", "reviews"]
    assert set(rep["missing_optional_columns"]) == {"customers.lat", "customers.lon", "order_lines.size"}
    assert rep["empty_optional_columns"] == ["orders.channel"]
    assert set(rep["disabled_features"]) == {
        "sentiment",
        "sentiment.rating",
        "size",
        "order.channel",
        "shipping.warehouse_distance",
    }
    assert rep["fallback_features"] == {"shipping.customer_distance": "country centroids"}
    assert rep["unchecked_foreign_keys"] == ["orders.warehouse_id -> warehouses (table absent)"]
    assert not (out / "reviews.parquet").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cutoff"] == CUTOFF and "size" in meta["validation"]["disabled_features"]
    said = " ".join(res.output.split())
    assert said.count("sentiment.rating") == 1 and "disabled" in said


def test_two_files_for_one_table_stop_and_unknown_files_are_listed(tmp_path):
    raw = write_mini(tmp_path / "raw")
    (raw / "notes.txt").write_text("export of 2024-06-30")
    res, _, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0 and json.loads(report.read_text())["ignored_files"] == ["notes.txt"]
    mini_tables()["orders"].to_csv(raw / "orders.csv", index=False)
    res, _, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 2 and "rule: exactly one file per table" in " ".join(res.output.split())


def test_missing_required_table_stops(tmp_path):
    raw = write_mini(tmp_path / "raw")
    (raw / "customers.parquet").unlink()
    res, _, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 2
    assert "table 'customers' is required" in " ".join(res.output.split())


def test_disabled_features_mapping():
    disabled, fallback = disabled_features({"reviews", "orders.delivered_ts", "orders.ship_lat"})
    assert disabled == {
        "sentiment": ["reviews"],
        "sentiment.rating": ["reviews"],
        "shipping.delivery": ["orders.delivered_ts"],
    }
    assert fallback == {"shipping.ship_distance": "country centroids"}


# --------------------------------------------------------------------------- ids, reference tables


def test_ids_are_one_type_across_tables():
    assert id_kind(pd.Series(["1", "22", None])) == "int"
    assert id_kind(pd.Series(["007", "22"])) == "str"
    assert id_kind(pd.Series([1.0, 2.0])) == "int"
    tables = mini_tables()
    tables["customers"]["customer_id"] = ["C1", "C2", "C3"]
    tables["orders"]["customer_id"] = ["C1", "C1", "C2", "C3"]
    tables["reviews"]["customer_id"] = ["C1", None]
    res = validate_tables(tables, META)
    assert res.report["id_type"] == "str" and res.n_rejected == 0
    assert res.clean["order_lines"]["line_id"].tolist() == ["1", "2", "3", "4", "5", "6"]
    assert res.report["tables"]["order_lines"]["conversions"]["line_id"] == "integer -> text id"
    with pytest.raises(ContractError, match="validate.id_type"):
        validate_tables(mini_tables(), META, {"id_type": "uuid"})


def test_integer_ids_forced_reject_text_ids():
    tables = mini_tables()
    tables["customers"]["customer_id"] = ["1", "2", "x3"]
    res = validate_tables(tables, META, {"id_type": "int"})
    assert rejects_of(res, "customers")["_rule"].tolist() == ["customers.customer_id is an integer id"]
    assert rejects_of(res, "orders")["_rule"].tolist() == ["orders.customer_id exists in customers"]


def test_batch_against_reference_tables():
    """Scoring: new orders + lines checked against validated history; unknown customers allowed on request."""
    history = validate_tables(mini_tables(), META).clean
    batch = {
        "orders": pd.DataFrame(
            {
                "order_id": [2000, 2001, 1000],
                "customer_id": [1, 77, 2],
                "order_ts": pd.to_datetime(["2024-07-01"] * 3),
                "ship_country": ["GB"] * 3,
            }
        ),
        "order_lines": pd.DataFrame(
            {
                "line_id": [50, 51, 52],
                "order_id": [2000, 2001, 2000],
                "product_id": [10, 12, 999],
                "quantity": [1, 1, 1],
                "unit_price": [10.0, 5.0, 3.0],
            }
        ),
    }
    res = validate_tables(batch, None, reference=history, allow_unknown={"orders.customer_id"})
    assert res.clean["orders"]["order_id"].tolist() == [2000, 2001]
    assert rejects_of(res, "orders")["_rule"].tolist() == [
        "orders.order_id not already in the reference tables"
    ]
    assert res.unknown_keys["orders.customer_id"].tolist() == [77]
    assert res.report["unknown_references"] == {"orders.customer_id": 1}
    assert rejects_of(res, "order_lines")["_rule"].tolist() == ["order_lines.product_id exists in products"]
    strict = validate_tables(batch, None, reference=history)
    assert "orders.customer_id exists in customers" in set(rejects_of(strict, "orders")["_rule"])


# --------------------------------------------------------------------------- command outputs


def test_rejects_csv_is_formula_escaped_and_strict_exits_nonzero(tmp_path):
    tables = mini_tables()
    tables["products"].loc[1, "category"] = None  # the product whose description is a formula
    raw = write_mini(tmp_path / "raw", tables)
    res, out, _ = run_validate(raw, tmp_path, "--strict")
    assert res.exit_code == 1
    text = (out / "rejects" / "products.csv").read_text()
    assert "'=HYPERLINK(1)" in text and "products.category not null" in text
    assert (out / "rejects" / "reviews.parquet").exists()  # written (empty) for every present table


def test_rerun_leaves_no_stale_tables(tmp_path):
    raw = write_mini(tmp_path / "raw")
    assert run_validate(raw, tmp_path)[0].exit_code == 0
    (raw / "reviews.parquet").unlink()
    res, out, _ = run_validate(raw, tmp_path)
    assert res.exit_code == 0
    assert not (out / "reviews.parquet").exists() and not (out / "rejects" / "reviews.parquet").exists()


def test_validate_help():
    res = CliRunner().invoke(app, ["validate", "--help"])
    assert res.exit_code == 0 and "--strict" in res.output and "rejects" in res.output


def test_contract_tables_cover_the_issue_columns():
    names = {"customers", "products", "orders", "order_lines", "returns", "reviews", "warehouses"}
    assert set(TABLES) == names
    for need in FEATURE_NEEDS:  # every input a feature family names exists in the contract
        for item in need.needs:
            table, _, column = item.partition(".")
            assert table in TABLES and (not column or TABLES[table].column(column))


def test_contract_document_is_up_to_date():
    """docs/data-contract.md is generated; regenerate with `returnrisk contract --out docs/data-contract.md`."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "data-contract.md"
    assert doc.read_text(encoding="utf-8") == render_markdown()
    res = CliRunner().invoke(app, ["contract"])
    assert res.exit_code == 0 and "| `unit_price` | number | yes | >= 0 |" in res.output
    assert CliRunner().invoke(app, ["contract", "--check", "--out", str(doc)]).exit_code == 0


# --------------------------------------------------------------------------- the generated default data


def test_generated_data_validates_cleanly(small_generated, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(small_generated.raw, raw)
    res, out, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["rejected"] == 0, rep["tables"]
    assert rep["missing_optional_tables"] == [] and rep["disabled_features"] == {}


def test_generated_data_with_injected_faults(small_generated, tmp_path):
    """The acceptance list on a copy of the default data: every fault is quarantined with its rule."""
    raw = tmp_path / "raw"
    shutil.copytree(small_generated.raw, raw)
    lines = pd.read_parquet(raw / "order_lines.parquet")
    orders = pd.read_parquet(raw / "orders.parquet").set_index("order_id")
    returns = pd.read_parquet(raw / "returns.parquet")
    touched = set(lines.loc[[10, 20, 30, 31], "line_id"])
    lines.loc[10, "unit_price"] = -1.0
    lines.loc[20, "order_id"] = orders.index.max() + 1
    lines.loc[30, "line_id"] = lines.loc[31, "line_id"]
    victim = returns.index[~returns["line_id"].isin(touched)][0]
    order_of = lines.set_index("line_id").loc[returns.loc[victim, "line_id"], "order_id"]
    returns.loc[victim, "return_ts"] = orders.loc[order_of, "order_ts"] - pd.Timedelta(days=1)
    lines.to_parquet(raw / "order_lines.parquet", index=False)
    returns.to_parquet(raw / "returns.parquet", index=False)
    res, out, report = run_validate(raw, tmp_path)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["tables"]["order_lines"]["rejected_by_rule"] == {
        "order_lines.unit_price >= 0": 1,
        "order_lines.order_id exists in orders": 1,
        "order_lines.line_id unique": 2,
    }
    assert rep["tables"]["order_lines"]["rows_out"] == len(lines) - 4
    ret_rules = rep["tables"]["returns"]["rejected_by_rule"]
    assert ret_rules["returns.return_ts >= orders.order_ts"] == 1
    n_child = int(returns["line_id"].isin(touched).sum())  # returns of the rejected lines follow them
    assert rep["tables"]["returns"]["rejected"] == 1 + n_child
    assert (
        rep["tables"]["returns"]["cascaded"] + ret_rules.get("returns.line_id exists in order_lines", 0)
        == n_child
    )
    rej = pd.read_parquet(out / "rejects" / "returns.parquet")
    assert rej.loc[rej["_rule"] == "returns.return_ts >= orders.order_ts", "_row"].tolist() == [victim + 1]


# --------------------------------------------------------------------------- invariants under random faults

FAULTS = st.lists(
    st.tuples(
        st.sampled_from(["neg_price", "orphan_line", "dup_line", "future_return", "bad_channel", "zero_qty"]),
        st.integers(0, 5),
    ),
    max_size=6,
)


@settings(max_examples=20, deadline=None)
@given(faults=FAULTS)
def test_quarantine_invariants_under_random_faults(faults):
    """Whatever breaks: rows_in = rows_out + rejected per table, every reject names a rule, the clean
    tables satisfy every foreign key, and no clean key repeats."""
    tables = mini_tables()
    lines, orders, returns = tables["order_lines"], tables["orders"], tables["returns"]
    for kind, i in faults:
        if kind == "neg_price":
            lines.loc[i, "unit_price"] = -1.0
        elif kind == "orphan_line":
            lines.loc[i, "order_id"] = 5555
        elif kind == "dup_line":
            lines.loc[i, "line_id"] = lines.loc[(i + 1) % len(lines), "line_id"]
        elif kind == "future_return":
            returns.loc[i % len(returns), "return_ts"] = pd.Timestamp("2030-01-01")
        elif kind == "bad_channel":
            orders.loc[i % len(orders), "channel"] = "fax"
        else:
            lines.loc[i, "quantity"] = 0
    res = validate_tables(tables, META)
    for name, df in tables.items():
        rep = res.report["tables"][name]
        assert rep["rows_in"] == len(df) == rep["rows_out"] + rep["rejected"]
        assert len(res.rejects[name]) == rep["rejected"] == sum(rep["rejected_by_rule"].values())
        assert res.rejects[name]["_rule"].notna().all()
        key = TABLES[name].key
        if key:
            assert not res.clean[name][key].duplicated().any()
    clean = res.clean
    assert clean["order_lines"]["order_id"].isin(clean["orders"]["order_id"]).all()
    assert clean["returns"]["line_id"].isin(clean["order_lines"]["line_id"]).all()
    assert clean["orders"]["customer_id"].isin(clean["customers"]["customer_id"]).all()
    assert (clean["order_lines"]["unit_price"] >= 0).all() and (clean["order_lines"]["quantity"] >= 1).all()
    assert (clean["returns"]["return_ts"] <= pd.Timestamp(CUTOFF)).all()
