"""The UCI Online Retail reader: mapping rules on hand-made frames (both column namings), the
vectorised cancellation matching against a plain reference loop, the CLI, and a slice of the real file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.contract import TABLES
from pipeline.sources.uci import (
    CATEGORIES,
    NAMINGS,
    UCIFormatError,
    categorize,
    detect_naming,
    map_online_retail,
    map_with_outcomes,
    match_cancellations,
)

REAL_FILE = Path("uci_online_retail") / "online_retail_2010-12_2011-12.parquet"
COLS = ("invoice", "stock_code", "description", "quantity", "invoice_ts", "unit_price", "customer", "country")


def export(rows: list[tuple], naming: str = "online_retail") -> pd.DataFrame:
    """A tiny export: rows of (invoice, code, description, qty, 'YYYY-MM-DD HH:MM', price, customer, country)."""
    df = pd.DataFrame(rows, columns=list(COLS))
    df["invoice_ts"] = pd.to_datetime(df["invoice_ts"])
    df["customer"] = df["customer"].astype("float64")  # as in the real export: float with NaN
    return df.rename(columns=NAMINGS[naming])


def buy(
    inv,
    code,
    qty,
    ts,
    cust=17850,
    price=2.5,
    country="United Kingdom",
    desc="WHITE HANGING HEART T-LIGHT HOLDER",
):
    return (inv, code, desc, qty, ts, price, cust, country)


def cancel(inv, code, qty, ts, cust=17850, price=2.5, country="United Kingdom"):
    return ("C" + inv, code, "WHITE HANGING HEART T-LIGHT HOLDER", -qty, ts, price, cust, country)


def returns_by_line(tables) -> dict[str, int]:
    r = tables["returns"]
    return r.groupby("line_id")["quantity"].sum().to_dict()


def assert_reconciles(report):
    rows = report["rows"]
    assert report["input_rows"] == rows["order_lines"] + rows["matched_cancellations"] + sum(
        rows["excluded"].values()
    )
    assert report["reconciles"] is True


# --- column namings ------------------------------------------------------------------------------


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_detects_both_public_namings(naming):
    df = export([buy("536365", "85123A", 6, "2010-12-01 08:26")], naming)
    assert detect_naming(df.columns) == naming
    tables, report = map_online_retail(df)
    assert report["column_naming"] == naming
    assert tables["order_lines"]["order_id"].tolist() == ["536365"]


def test_both_namings_give_identical_tables():
    rows = [
        buy("536365", "85123A", 6, "2010-12-01 08:26"),
        buy("536366", "22633", 4, "2010-12-02 09:00", cust=13047, country="EIRE"),
        cancel("536370", "85123A", 2, "2010-12-03 10:00"),
    ]
    a, ra = map_online_retail(export(rows, "online_retail"))
    b, rb = map_online_retail(export(rows, "online_retail_ii"))
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert {k: v for k, v in ra.items() if k != "column_naming"} == {
        k: v for k, v in rb.items() if k != "column_naming"
    }


def test_missing_columns_are_named():
    df = export([buy("1", "A", 1, "2011-01-01 10:00")]).drop(columns=["UnitPrice", "Country"])
    with pytest.raises(UCIFormatError, match=r"\['Country', 'UnitPrice'\]"):
        map_online_retail(df)


def test_unparseable_quantity_names_column_and_row():
    df = export([buy("1", "A", 1, "2011-01-01 10:00"), buy("2", "A", 1, "2011-01-01 11:00")])
    df["Quantity"] = df["Quantity"].astype(object)
    df.loc[1, "Quantity"] = "two"
    with pytest.raises(UCIFormatError, match=r"column 'Quantity', row 1: value 'two' is not a whole number"):
        map_online_retail(df)


# --- ids, tables and the contract ----------------------------------------------------------------


def test_ids_are_text_without_float_suffix_and_codes_are_case_normalised():
    df = export(
        [buy("536365", "85123a", 1, "2010-12-01 08:26"), buy("536366", "85123A", 2, "2010-12-01 09:00")]
    )
    tables, _ = map_online_retail(df)
    assert tables["customers"]["customer_id"].tolist() == ["17850"]
    assert tables["orders"]["customer_id"].tolist() == ["17850", "17850"]
    assert tables["products"]["product_id"].tolist() == ["85123A"]
    assert tables["order_lines"]["line_id"].tolist() == ["0", "1"]
    assert tables["order_lines"]["line_id"].is_unique


def test_tables_carry_the_contract_columns_and_types():
    df = export([buy("1", "A1", 3, "2011-01-01 10:00"), cancel("2", "A1", 1, "2011-01-02 10:00")])
    tables, _ = map_online_retail(df)
    assert set(tables) == {"customers", "products", "warehouses", "orders", "order_lines", "returns"}
    for name, t in tables.items():
        spec = TABLES[name]
        assert set(spec.required_columns) <= set(t.columns), name
        assert set(t.columns) <= {c.name for c in spec.columns}, name
    assert tables["warehouses"].to_dict("records") == [{"warehouse_id": "UK", "country": "GB"}]
    assert (tables["orders"]["warehouse_id"] == "UK").all()
    assert tables["returns"]["quantity"].dtype == "int64"
    assert tables["returns"]["reason"].isna().all()


def test_order_ts_is_the_earliest_line_of_the_invoice():
    df = export([buy("9", "A1", 1, "2011-01-01 10:01"), buy("9", "B2", 1, "2011-01-01 10:00")])
    tables, _ = map_online_retail(df)
    assert tables["orders"]["order_ts"].tolist() == [pd.Timestamp("2011-01-01 10:00")]


# --- returns: cancellations matched to earlier purchases -----------------------------------------


def test_cancellation_across_two_earlier_purchases_splits_oldest_first():
    df = export(
        [
            buy("100", "22423", 3, "2011-01-01 10:00"),
            buy("101", "22423", 5, "2011-01-05 10:00"),
            cancel("102", "22423", 6, "2011-01-09 12:00"),
        ]
    )
    tables, report = map_online_retail(df)
    r = tables["returns"].sort_values("line_id")
    assert r["line_id"].tolist() == ["0", "1"]
    assert r["quantity"].tolist() == [3, 3]  # the whole oldest line, then the rest from the next one
    assert (r["return_ts"] == pd.Timestamp("2011-01-09 12:00")).all()  # dated at the cancellation
    c = report["cancellations"]
    assert (c["rows_fully_matched"], c["units_matched"], c["units_unmatched"]) == (1, 6, 0)
    assert report["rows"]["order_lines"] == 2 and report["rows"]["matched_cancellations"] == 1
    assert_reconciles(report)


def test_cancellation_with_no_earlier_purchase_is_counted_not_invented():
    df = export(
        [
            cancel("200", "22423", 2, "2011-01-01 09:00"),  # before any purchase of the product
            buy("201", "22423", 4, "2011-01-02 10:00"),
            cancel("202", "21212", 1, "2011-01-03 10:00"),  # a product the customer never bought
            cancel("203", "22423", 1, "2011-01-03 10:00", cust=99999),  # another customer's cancellation
        ]
    )
    tables, report, outcomes = map_with_outcomes(df)
    assert tables["returns"].empty
    assert report["rows"]["excluded"]["unmatched_cancellation"] == 3
    assert report["cancellations"]["rows_unmatched"] == 3
    assert report["cancellations"]["units_unmatched"] == 4
    assert outcomes.tolist() == [
        "unmatched_cancellation",
        "order_line",
        "unmatched_cancellation",
        "unmatched_cancellation",
    ]
    assert_reconciles(report)


def test_partial_match_is_capped_and_the_remainder_counted():
    df = export([buy("300", "22423", 2, "2011-01-01 10:00"), cancel("301", "22423", 5, "2011-01-02 10:00")])
    tables, report = map_online_retail(df)
    assert tables["returns"]["quantity"].tolist() == [2]  # capped at the purchased quantity
    c = report["cancellations"]
    assert (c["rows_partially_matched"], c["units_matched"], c["units_unmatched"]) == (1, 2, 3)


def test_later_cancellations_take_what_earlier_ones_left():
    df = export(
        [
            buy("400", "22423", 4, "2011-01-01 10:00"),
            cancel("401", "22423", 3, "2011-01-02 10:00"),
            buy("402", "22423", 4, "2011-01-03 10:00"),
            cancel("403", "22423", 3, "2011-01-04 10:00"),
            cancel("404", "22423", 9, "2011-01-05 10:00"),
        ]
    )
    tables, report = map_online_retail(df)
    r = tables["returns"]
    got = {(row.line_id, row.return_ts.day): row.quantity for row in r.itertuples()}
    assert got == {("0", 2): 3, ("0", 4): 1, ("2", 4): 2, ("2", 5): 2}
    assert report["cancellations"]["units_unmatched"] == 7
    assert returns_by_line(tables) == {"0": 4, "2": 4}  # never more than bought


def test_repeated_cancellation_rows_become_one_return_event():
    df = export(
        [
            buy("500", "22423", 6, "2011-01-01 10:00"),
            cancel("501", "22423", 2, "2011-01-02 10:00"),
            cancel("501", "22423", 2, "2011-01-02 10:00"),  # the export repeats some rows verbatim
        ]
    )
    tables, report = map_online_retail(df)
    assert tables["returns"][["line_id", "quantity"]].to_dict("records") == [{"line_id": "0", "quantity": 4}]
    assert report["rows"]["matched_cancellations"] == 2


def reference_match(purchases: pd.DataFrame, cancels: pd.DataFrame):
    """The plain loop the vectorised matcher must equal: per (customer, product), oldest first."""
    left: dict[int, int] = dict(zip(purchases["row"], purchases["quantity"], strict=True))
    by_key = defaultdict(list)
    for p in purchases.sort_values(["ts", "row"]).itertuples():
        by_key[(p.customer, p.product_id)].append(p)
    pairs, matched = {}, {}
    for c in cancels.sort_values(["ts", "row"]).itertuples():
        need, got = c.quantity, 0
        for p in by_key[(c.customer, c.product_id)]:
            if p.ts > c.ts or need == 0:
                break
            take = min(left[p.row], need)
            if take:
                pairs[(p.row, c.row)] = take
                left[p.row] -= take
                need -= take
                got += take
        matched[c.row] = got
    return pairs, matched


def check_against_reference(purchases, cancels):
    pairs, matched = match_cancellations(purchases, cancels)
    want_pairs, want_matched = reference_match(purchases, cancels)
    got_pairs = {(r.purchase_row, r.cancel_row): r.quantity for r in pairs.itertuples()}
    assert got_pairs == want_pairs
    assert matched.to_dict() == want_matched
    return got_pairs


events = st.lists(
    st.tuples(
        st.booleans(),  # purchase or cancellation
        st.integers(0, 2),  # customer
        st.integers(0, 2),  # product
        st.integers(0, 6),  # day (ties on purpose)
        st.integers(1, 7),  # units
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_vectorised_matching_equals_the_reference_loop(evts):
    rows = [
        {
            "row": i,
            "is_cancel": c,
            "customer": f"c{cu}",
            "product_id": f"p{pr}",
            "ts": pd.Timestamp("2011-01-01") + pd.Timedelta(days=d),
            "quantity": q,
        }
        for i, (c, cu, pr, d, q) in enumerate(evts)
    ]
    df = pd.DataFrame(rows, columns=["row", "is_cancel", "customer", "product_id", "ts", "quantity"])
    df["ts"] = df["ts"].astype("datetime64[us]")
    purchases = df[~df["is_cancel"].astype(bool)].drop(columns="is_cancel")
    cancels = df[df["is_cancel"].astype(bool)].drop(columns="is_cancel")
    check_against_reference(purchases, cancels)


# --- exclusions ----------------------------------------------------------------------------------


def test_every_excluded_row_is_counted_by_reason():
    rows = [
        buy("600", "85123A", 2, "2011-02-01 10:00"),  # order line
        buy("600", "POST", 1, "2011-02-01 10:00", price=18.0, desc="POSTAGE"),  # non-goods: postage
        buy(
            "600", "gift_0001_20", 1, "2011-02-01 10:00", desc="Dotcomgiftshop Gift Voucher £20.00"
        ),  # voucher
        buy(
            "600", "23444", 1, "2011-02-01 10:00", desc="Next Day Carriage"
        ),  # postage under a goods-like code
        buy("A601", "B", 1, "2011-02-01 11:00", cust=None, price=-11062.06, desc="Adjust bad debt"),
        buy("602", "21000", -5, "2011-02-01 12:00", cust=None, price=0.0, desc="damaged"),  # stock adjustment
        buy("603", "22000", 3, "2011-02-01 13:00", cust=None),  # no customer
        cancel("604", "22000", 1, "2011-02-02 13:00", cust=None),  # cancellation without a customer
        buy("605", "22001", 3, "2011-02-01 14:00", price=-1.0),  # negative price
        ("C606", "22002", "X", 4, "2011-02-01 15:00", 1.0, 17850, "France"),  # "C" invoice with qty > 0
        cancel("607", "D", 1, "2011-02-03 10:00", price=5.0),  # a discount: non-goods
        cancel("608", "85123A", 1, "2011-01-01 10:00"),  # before the purchase: unmatched
        cancel("609", "85123A", 1, "2011-02-05 10:00"),  # matched
        buy("610", "85123A", 1, "2011-02-06 10:00", price=0.0),  # a free line: kept and counted
    ]
    df = export(rows)
    df.loc[len(df)] = ["611", "22003", "X", 1, pd.NaT, 1.0, 17850.0, "France"]  # missing date
    tables, report, outcomes = map_with_outcomes(df)
    assert report["rows"]["excluded"] == {
        "missing_required_value": 1,
        "non_goods": 5,
        "stock_adjustment": 1,
        "invalid_cancellation": 1,
        "missing_customer": 2,
        "negative_price": 1,
        "unmatched_cancellation": 1,
    }
    assert report["rows"]["order_lines"] == 2 and report["rows"]["matched_cancellations"] == 1
    assert report["non_goods"]["by_kind"] == {"gift_voucher": 1, "manual_adjustment": 2, "postage": 2}
    assert report["cancellations"]["without_customer"] == 1
    assert report["order_lines"]["zero_price"] == 1
    assert tables["order_lines"]["line_id"].tolist() == ["0", "13"]
    assert len(outcomes) == len(df)
    assert_reconciles(report)


# --- countries -----------------------------------------------------------------------------------


def test_country_names_map_to_iso_codes_with_a_rule_for_unknown_ones():
    df = export(
        [
            buy("1", "A1", 1, "2011-01-01 10:00", cust=1, country="EIRE"),
            buy("2", "A1", 1, "2011-01-01 10:00", cust=2, country="RSA"),
            buy("3", "A1", 1, "2011-01-01 10:00", cust=3, country="USA"),
            buy("4", "A1", 1, "2011-01-01 10:00", cust=4, country="Channel Islands"),
            buy("5", "A1", 1, "2011-01-01 10:00", cust=5, country="Germany"),
            buy("6", "A1", 1, "2011-01-02 10:00", cust=5, country="Unspecified"),  # customer known elsewhere
            buy("7", "A1", 1, "2011-01-01 10:00", cust=7, country="Unspecified"),
            buy("8", "A1", 1, "2011-01-01 10:00", cust=8, country="European Community"),
        ]
    )
    tables, report = map_online_retail(df)
    ship = dict(zip(tables["orders"]["order_id"], tables["orders"]["ship_country"], strict=True))
    assert ship == {"1": "IE", "2": "ZA", "3": "US", "4": "JE", "5": "DE", "6": "DE", "7": "ZZ", "8": "EU"}
    home = dict(zip(tables["customers"]["customer_id"], tables["customers"]["country"], strict=True))
    assert home["5"] == "DE"
    assert report["countries"]["unknown_resolved_from_customer"] == 1


def test_customer_country_is_the_most_frequent():
    df = export(
        [
            buy("1", "A1", 1, "2011-01-01 10:00", country="Belgium"),
            buy("2", "A1", 1, "2011-01-02 10:00", country="Spain"),
            buy("3", "A1", 1, "2011-01-03 10:00", country="Spain"),
        ]
    )
    tables, _ = map_online_retail(df)
    assert tables["customers"]["country"].tolist() == ["ES"]


# --- categories ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "category"),
    [
        ("WHITE HANGING HEART T-LIGHT HOLDER", "candles_lights"),
        ("JUMBO BAG RED RETROSPOT", "bags"),
        ("PAPER CHAIN KIT 50'S CHRISTMAS", "christmas"),
        ("REGENCY CAKESTAND 3 TIER", "kitchen_dining"),
        ("PACK OF 72 RETROSPOT CAKE CASES", "kitchen_dining"),
        ("SET OF 3 CAKE TINS PANTRY DESIGN", "kitchen_dining"),
        ("SPACEBOY BIRTHDAY CARD", "toys_party"),
        ("PACK OF 12 COLOURED PENCILS", "stationery_cards"),
        ("ASSORTED COLOUR BIRD ORNAMENT", "home_decor"),
        ("TUSCAN VILLA BIRD TABLE", "garden_outdoor"),
        ("RED ROSE AND LACE C/COVER", "home_textiles_bath"),
        ("VINTAGE WOODEN BAR STOOL", "furniture"),
        ("HEADPHONES", "other"),
        (None, "other"),
    ],
)
def test_keyword_categories(description, category):
    assert categorize(pd.Series([description], dtype="str")).tolist() == [category]


def test_keywords_match_whole_words_only():
    # "POTTERY"/"SPOT" must not match the garden word "POT"; "LEDGER" not the light word "LED"
    assert categorize(pd.Series(["GREEN POTTERY", "RED SPOT", "LEDGER", "GREEN TEAPOT"])).tolist() == [
        "other",
        "other",
        "other",
        "kitchen_dining",
    ]


# --- the command ---------------------------------------------------------------------------------


def _write_csv_ii(path: Path) -> None:
    """A tiny Online Retail II CSV as the UCI site serves it (month-first dates, float customer ids)."""
    path.write_text(
        "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
        "489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,12/1/2009 7:45,6.95,13085.0,United Kingdom\n"
        "489434,79323P,PINK CHERRY LIGHTS,12,12/1/2009 7:45,6.75,13085.0,United Kingdom\n"
        "489435,POST,POSTAGE,1,12/1/2009 7:46,18.0,13085.0,United Kingdom\n"
        "C489449,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,-5,12/2/2009 10:33,6.95,13085.0,United Kingdom\n"
        '489436,22041,RECORD FRAME 7" SINGLE SIZE,48,12/1/2009 9:06,2.1,,United Kingdom\n',
        encoding="utf-8",
    )


def test_cli_ingest_writes_tables_meta_and_report(tmp_path):
    from pipeline.cli import app

    src = tmp_path / "online_retail_II.csv"
    _write_csv_ii(src)
    out = tmp_path / "raw"
    out.mkdir()
    (out / "reviews.parquet").write_bytes(b"stale")  # from an earlier generated run: must go
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--source",
            "uci-online-retail",
            str(src),
            "--out",
            str(out),
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "customers.parquet",
        "meta.json",
        "order_lines.parquet",
        "orders.parquet",
        "products.parquet",
        "returns.parquet",
        "warehouses.parquet",
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "uci-online-retail" and meta["cutoff"] == "2009-12-02T10:33:00"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["column_naming"] == "online_retail_ii"
    assert (
        report["rows"]["excluded"]["non_goods"] == 1 and report["rows"]["excluded"]["missing_customer"] == 1
    )
    returns = pd.read_parquet(out / "returns.parquet")
    assert returns[["line_id", "quantity"]].to_dict("records") == [{"line_id": "0", "quantity": 5}]
    assert pd.read_parquet(out / "orders.parquet")["order_ts"].tolist() == [pd.Timestamp("2009-12-01 07:45")]
    assert pd.read_parquet(out / "customers.parquet")["customer_id"].tolist() == ["13085"]


def test_cli_ingest_bad_file_is_a_clear_error(tmp_path):
    from pipeline.cli import app

    src = tmp_path / "x.csv"
    src.write_text("a,b\n1,2\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ingest", str(src), "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2
    text = "".join(result.output.split())  # rich wraps long lines
    assert "x.csv:notanOnlineRetailexport:columns" in text


def test_ingest_with_no_order_lines_left_is_an_error_not_an_empty_dataset(tmp_path):
    from pipeline.commands.ingest import ingest_uci
    from pipeline.io import TableFileError

    src = tmp_path / "only_postage.parquet"
    export([buy("1", "POST", 1, "2011-01-01 10:00", desc="POSTAGE")]).to_parquet(src)
    with pytest.raises(TableFileError, match=r"only_postage.parquet: no order lines left .*'non_goods': 1"):
        ingest_uci(src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_from_params_uci_writes_tables_and_an_empty_truth_with_readme(tmp_path):
    from pipeline.commands.ingest import ingest_from_params

    src = tmp_path / "export.csv"
    _write_csv_ii(src)
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "lines_truth.parquet").write_bytes(b"stale generator truth")
    params = {"seed": 1, "data": {"source": "uci-online-retail", "uci_path": str(src)}}
    report = ingest_from_params(params, tmp_path / "raw", truth, tmp_path / "ingest.json")
    assert report["tables"]["order_lines"] == 2
    assert [p.name for p in truth.iterdir()] == ["README.md"]
    assert json.loads((tmp_path / "raw" / "meta.json").read_text())["source"] == "uci-online-retail"


def test_from_params_generated_calls_the_generator(tmp_path):
    from pipeline.commands.ingest import ingest_from_params

    params = {
        "seed": 3,
        "data": {"source": "generated"},
        "generate": {"n_customers": 60, "n_products": 40, "months": 2, "start": "2024-01-01"},
    }
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "README.md").write_text("# No ground truth for real data\n", encoding="utf-8")
    report = ingest_from_params(params, tmp_path / "raw", truth)
    assert report["source"] == "generated" and report["tables"]["order_lines"] > 0
    assert json.loads((tmp_path / "raw" / "meta.json").read_text())["source"] == "generated"
    assert (truth / "lines_truth.parquet").is_file() and not (truth / "README.md").exists()


def test_from_params_rejects_an_unknown_source(tmp_path):
    import typer

    from pipeline.commands.ingest import ingest_from_params

    with pytest.raises(typer.BadParameter, match="data.source is 'sql'"):
        ingest_from_params({"data": {"source": "sql"}}, tmp_path / "raw", tmp_path / "truth")


# --- a slice of the real file (skips with a reason when ../shared/data is absent) ----------------


@pytest.fixture(scope="module")
def real_slice(shared_data):
    path = shared_data / REAL_FILE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    df = pd.read_parquet(path)
    return df.iloc[:80_000].reset_index(drop=True)  # about the first seven weeks: Dec 2010 - mid Jan 2011


@pytest.mark.realdata
def test_real_slice_counts_reconcile(real_slice):
    tables, report, outcomes = map_with_outcomes(real_slice)
    assert report["input_rows"] == len(real_slice) == len(outcomes)
    assert_reconciles(report)
    by_outcome = outcomes.value_counts()
    assert by_outcome["order_line"] == len(tables["order_lines"]) == report["rows"]["order_lines"]
    for reason, n in report["rows"]["excluded"].items():
        assert by_outcome.get(reason, 0) == n, reason
    # the excluded rows are the ones the rules name, checked from the raw columns
    no_customer = real_slice["CustomerID"].isna()
    assert (outcomes[no_customer.to_numpy()] != "order_line").all()
    assert report["rows"]["excluded"]["missing_customer"] > 0 and report["rows"]["excluded"]["non_goods"] > 0
    assert sum(report["products_per_category"].values()) == len(tables["products"])
    assert report["products_per_category"]["other"] < 0.05 * len(tables["products"])
    c = report["cancellations"]
    assert c["units"] == c["units_matched"] + c["units_unmatched"]
    assert c["rows_considered"] == c["rows_fully_matched"] + c["rows_partially_matched"] + c["rows_unmatched"]


@pytest.mark.realdata
def test_real_slice_matching_equals_the_reference_loop(real_slice):
    from pipeline.sources.uci import normalise

    _, _, outcomes = map_with_outcomes(real_slice)
    x, _ = normalise(real_slice)
    x = x.rename(columns={"invoice_ts": "ts", "stock_code": "product_id"})
    cols = ["row", "customer", "product_id", "ts", "quantity"]
    purchases = x.loc[(outcomes == "order_line").to_numpy(), cols].assign(
        quantity=lambda d: d["quantity"].astype("int64")
    )
    is_c = outcomes.isin(["matched_cancellation", "unmatched_cancellation"]).to_numpy()
    cancels = x.loc[is_c, cols].assign(quantity=lambda d: -d["quantity"].astype("int64"))
    pairs = check_against_reference(purchases, cancels)
    # a real cancellation that was split across two (or more) earlier purchases
    per_cancel = defaultdict(list)
    for (p, c), q in pairs.items():
        per_cancel[c].append((p, q))
    split = {c: ps for c, ps in per_cancel.items() if len(ps) >= 2}
    assert split, "the slice should hold a cancellation matched across several purchases"
    c_row, ps = next(iter(sorted(split.items())))
    bought = x.set_index("row").loc[[p for p, _ in ps]]
    assert all(bought["customer"] == x.loc[c_row, "customer"])
    assert all(bought["ts"] <= x.loc[c_row, "ts"])
    assert sum(q for _, q in ps) <= -x.loc[c_row, "quantity"]


@pytest.mark.realdata
def test_real_slice_cancellations_without_earlier_purchase_are_counted(real_slice):
    tables, report, outcomes = map_with_outcomes(real_slice)
    df = real_slice.assign(code=real_slice["StockCode"].str.upper())
    is_c = outcomes.isin(["matched_cancellation", "unmatched_cancellation"]).to_numpy()
    bought = df[(outcomes == "order_line").to_numpy()]
    first_buy = bought.groupby(["CustomerID", "code"])["InvoiceDate"].min()
    cancels = df[is_c]
    key = pd.MultiIndex.from_frame(cancels[["CustomerID", "code"]])
    earliest = first_buy.reindex(key).to_numpy()
    never = pd.isna(earliest) | (earliest > cancels["InvoiceDate"].to_numpy())
    assert never.sum() > 0
    assert (outcomes[cancels.index[never]] == "unmatched_cancellation").all()
    assert never.sum() <= report["cancellations"]["rows_unmatched"]
    # no return is invented: every return points at a purchase line at or before it
    lines = tables["order_lines"].merge(tables["orders"][["order_id", "order_ts"]], on="order_id")
    r = tables["returns"].merge(lines, on="line_id", how="left", validate="many_to_one")
    assert r["order_ts"].notna().all() and (r["return_ts"] >= r["order_ts"]).all()
    assert (r.groupby("line_id")["quantity_x"].sum() <= r.groupby("line_id")["quantity_y"].first()).all()


def test_categories_are_declared():
    assert CATEGORIES[-1] == "other" and len(set(CATEGORIES)) == len(CATEGORIES)
    assert 10 <= len(CATEGORIES) <= 15
    assert set(categorize(pd.Series(["MUG", "BAG", "X"]))) <= set(CATEGORIES)
    assert np.array_equal(categorize(pd.Series([], dtype="str")).to_numpy(), np.array([], dtype=object))
