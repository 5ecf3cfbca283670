"""Batch scoring (`returnrisk score`, pipeline/scoring.py): parity with training, chunks, bad input, atomicity."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.scoring import hold_back_last_order, rejects_path, risk_bands, whole_order_chunks

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ pure logic
def test_risk_bands_follow_the_threshold():
    p = np.array([0.0, 0.049, 0.05, 0.0999, 0.1, 0.9])
    assert list(risk_bands(p, 0.1, 0.5)) == ["low", "low", "medium", "medium", "high", "high"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=40), st.integers(1, 7))
def test_chunks_keep_orders_whole_and_in_input_order(sizes, chunk):
    order_ids = np.repeat(np.arange(len(sizes)), sizes)
    df = pd.DataFrame({"order_id": order_ids, "pos": np.arange(len(order_ids))})
    parts = [df.iloc[i : i + chunk] for i in range(0, len(df), chunk)]
    out = list(whole_order_chunks(iter(parts)))
    joined = pd.concat([c for _, c in out], ignore_index=True)
    assert joined["pos"].tolist() == df["pos"].tolist()  # every line once, input order
    seen: set[int] = set()
    for offset, c in out:
        assert c["pos"].iloc[0] == offset  # offsets are file rows
        ids = set(c["order_id"])
        assert not ids & seen  # no order split across chunks
        seen |= ids


def test_a_small_last_part_joins_the_chunk_before_it():
    """1,000 + 1,000 + 10 lines: the 10-line tail does not cost a chunk of its own (1 % <= TAIL_SHARE);
    orders stay whole and every line comes once, in input order."""
    order_ids = np.repeat(np.arange(1005), 2)
    df = pd.DataFrame({"order_id": order_ids, "pos": np.arange(len(order_ids))})
    parts = [df.iloc[:1000], df.iloc[1000:2000], df.iloc[2000:]]
    out = list(whole_order_chunks(iter(parts)))
    assert [len(c) for _, c in out] == [998, 1012] and [o for o, _ in out] == [0, 998]  # order 499 moves
    assert pd.concat([c for _, c in out])["pos"].tolist() == df["pos"].tolist()
    assert [len(c) for _, c in whole_order_chunks(iter(parts), tail_share=0.0)] == [998, 1000, 12]
    big_tail = [df.iloc[:1000], df.iloc[1000:1500], df.iloc[1500:]]  # 510 of 500: not a tail to join
    assert [len(c) for _, c in whole_order_chunks(iter(big_tail))] == [998, 500, 512]
    assert [len(c) for _, c in whole_order_chunks(iter([df.iloc[:2000], df.iloc[2000:]]))] == [2010]


def test_hold_back_keeps_the_last_order_for_the_next_chunk():
    head, tail = hold_back_last_order(pd.DataFrame({"order_id": [1, 1, 2, 3, 3]}))
    assert head["order_id"].tolist() == [1, 1, 2] and tail["order_id"].tolist() == [3, 3]


def test_abuse_lookup_gives_tiers_none_and_unknown_as_text():
    from pipeline.scoring import Abuse

    flags = Abuse(pd.Index([10, 11, 12]), np.array(["review", "watch", "review"], dtype=object),
                  np.array(["wardrober", "serial", "bracketer"], dtype=object))  # fmt: skip
    tier, kind = flags.lookup(np.array([12, 99, 10, 11, 99]))
    assert tier.to_pylist() == ["review", "none", "review", "watch", "none"]
    assert kind.to_pylist() == ["bracketer", "none", "wardrober", "serial", "none"]
    empty = Abuse(pd.Index([], dtype="int64"), np.array([], dtype=object), np.array([], dtype=object))
    assert empty.lookup(np.array([1, 2]))[0].to_pylist() == ["none", "none"]
    no_flags = Abuse(None, np.array([]), np.array([]))
    assert [c.to_pylist() for c in no_flags.lookup(np.array([1, 2]))] == [["unknown"] * 2] * 2


# ------------------------------------------------------------------------------------------ fixtures
@contextlib.contextmanager
def _cwd(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def sample(small_project, tmp_path_factory):
    """score-sample of the small project: the last 7 days of the test window (export + history)."""
    from pipeline.commands.score import run_score_sample, sample_window
    from pipeline.io import read_meta

    out = tmp_path_factory.mktemp("sample") / "sample"
    validated = small_project.path("validated")
    start, end = sample_window(small_project.path("model"), read_meta(validated), 7, "test")
    run_score_sample(validated, out, start, end)
    return out


def score_cli(project, export: Path, out: Path, *extra: str):
    from pipeline.cli import app

    args = ["score", str(export), "--out", str(out), "--model", str(project.path("model")), "--no-flags"]
    if "--history" not in extra:
        args += ["--history", str(project.path("validated"))]
    with _cwd(project.root):
        return CliRunner().invoke(app, [*args, "--scored-at", "2030-01-01", *extra])


def copy_export(sample: Path, dest: Path, fmt: str = "csv") -> Path:
    """The sample export as CSV (as a checkout service would send it) or Parquet, editable by tests."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in (sample / "export").glob("*.parquet"):
        df = pd.read_parquet(f)
        if fmt == "csv":
            df.to_csv(dest / f"{f.stem}.csv", index=False)
        else:
            df.to_parquet(dest / f.name, index=False)
    return dest


# ------------------------------------------------------------------------------------------ parity
def test_scored_sample_equals_the_training_predictions(small_project, sample, tmp_path):
    """Acceptance: lines scored as a checkout export get the training pipeline's probabilities (1e-9)."""
    out = tmp_path / "scored.parquet"
    res = score_cli(small_project, sample / "export", out, "--history", str(sample / "history"))
    assert res.exit_code == 0, res.output
    scored = pd.read_parquet(out)
    preds = pd.read_parquet(small_project.path("model") / "predictions.parquet")
    both = scored.merge(preds[["line_id", "p_model"]], on="line_id")
    assert len(both) == len(scored) > 50  # every sample line is in the evaluate stage's test window
    assert np.abs(both["return_probability"] - both["p_model"]).max() <= 1e-9
    exported = pd.read_parquet(sample / "export" / "order_lines.parquet")
    assert scored["line_id"].tolist() == exported["line_id"].tolist()  # input order
    assert set(scored["risk_band"]) <= {"low", "medium", "high"}
    assert scored["reason_1"].notna().all()
    assert (scored["model_name"] == "returnrisk").all()
    assert f"scored {len(scored)} lines, rejected 0 rows" in res.output


def test_chunks_csv_and_reruns_give_identical_output(small_project, sample, tmp_path):
    """Chunks of whole orders give the same rows as one chunk; a re-run is byte-identical."""
    export = copy_export(sample, tmp_path / "csv")
    hist = ["--history", str(sample / "history")]
    one, many, again = tmp_path / "one.parquet", tmp_path / "many.parquet", tmp_path / "again.parquet"
    assert score_cli(small_project, export, one, *hist).exit_code == 0
    res = score_cli(small_project, export, many, *hist, "--chunk-lines", "150")
    assert res.exit_code == 0, res.output
    assert "chunk(s)" in res.output and " 1 chunk(s)" not in res.output
    a, b = pd.read_parquet(one), pd.read_parquet(many)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-12)
    assert score_cli(small_project, export, again, *hist).exit_code == 0
    assert one.read_bytes() == again.read_bytes()


# ------------------------------------------------------------------------------------------ new entities
def test_new_customer_and_new_product_are_scored(small_project, sample, tmp_path):
    """A customer and a product with no history get sensible (population-level) scores, abuse tier none."""
    from models.artifact import ReturnModel
    from pipeline.scoring import Abuse, ScoreSettings, read_tables, score_export

    hist = read_tables(small_project.path("validated"))
    cust, prod = (
        int(hist["customers"]["customer_id"].max()) + 1,
        int(hist["products"]["product_id"].max()) + 1,
    )
    known = hist["products"].iloc[[0]].copy()
    exp = tmp_path / "exp"
    exp.mkdir()
    pd.DataFrame({"customer_id": [cust], "country": ["DE"]}).to_csv(exp / "customers.csv", index=False)
    newp = known.assign(product_id=prod)
    newp.to_parquet(exp / "products.parquet", index=False)
    last = hist["orders"]["order_ts"].max() + pd.Timedelta(hours=1)
    oid, lid = int(hist["orders"]["order_id"].max()) + 1, int(hist["order_lines"]["line_id"].max()) + 1
    orders = pd.DataFrame(
        {
            "order_id": [oid, oid + 1],
            "customer_id": [cust, cust + 1],
            "order_ts": [last, last],
            "ship_country": ["DE", "DE"],
        }
    )
    orders.to_parquet(exp / "orders.parquet", index=False)
    lines = pd.DataFrame(
        {
            "line_id": [lid, lid + 1, lid + 2],
            "order_id": [oid, oid, oid + 1],
            "product_id": [prod, int(known["product_id"].iloc[0]), prod],
            "quantity": [1, 1, 2],
            "unit_price": [30.0, 30.0, 30.0],
        }
    )
    lines.to_parquet(exp / "order_lines.parquet", index=False)
    scores = pd.DataFrame(
        {
            "customer_id": [int(hist["customers"]["customer_id"].iloc[0])],
            "tier": ["review"],
            "abuse_type": ["wardrober"],
        }
    )
    scores.to_parquet(tmp_path / "customer_scores.parquet", index=False)
    model = ReturnModel.load(small_project.path("model"))
    out = tmp_path / "scored.csv"
    res = score_export(
        exp,
        hist,
        model,
        out,
        abuse=Abuse.load(tmp_path / "customer_scores.parquet"),
        settings=ScoreSettings(reasons=3),
        params=small_project.params,
        scored_at=pd.Timestamp("2030-01-01"),
    )
    assert res.scored == 3 and res.n_rejected == 0
    df = pd.read_csv(out)
    assert df["line_id"].tolist() == [lid, lid + 1, lid + 2]
    p = df["return_probability"].to_numpy()
    assert np.isfinite(p).all() and ((p > 0.02) & (p < 0.98)).all()
    assert (df["abuse_tier"] == "none").all() and (
        df["abuse_type"] == "none"
    ).all()  # no flags for new customers
    assert df["reason_1"].notna().all()


def test_precomputed_state_is_built_once_then_loaded_and_scores_the_same(small_project, tmp_path):
    """`--state`: new checkout orders after the history's cutoff, scored from a saved history state."""
    from pipeline.io import read_meta
    from pipeline.scoring import read_tables

    validated = small_project.path("validated")
    hist = read_tables(validated)
    cutoff = pd.Timestamp(read_meta(validated)["cutoff"])
    # 40 orders of known customers, re-placed after the cutoff (new ids), spread over 45 days
    src = hist["orders"].sort_values("order_ts").tail(40).reset_index(drop=True)
    oid0, lid0 = int(hist["orders"]["order_id"].max()) + 1, int(hist["order_lines"]["line_id"].max()) + 1
    new_ids = dict(zip(src["order_id"], range(oid0, oid0 + len(src)), strict=True))
    orders = src.assign(
        order_id=src["order_id"].map(new_ids),
        order_ts=cutoff + pd.to_timedelta(np.arange(len(src)) * 27, unit="h"),
        delivered_ts=pd.NaT,
    )
    lines = hist["order_lines"][hist["order_lines"]["order_id"].isin(new_ids)].copy()
    lines["order_id"] = lines["order_id"].map(new_ids)
    lines = lines.sort_values("order_id", kind="stable")
    lines["line_id"] = np.arange(lid0, lid0 + len(lines))
    exp = tmp_path / "exp"
    exp.mkdir()
    orders.to_parquet(exp / "orders.parquet", index=False)
    lines.to_parquet(exp / "order_lines.parquet", index=False)
    state_dir = tmp_path / "state"
    late = ["--as-of", str(cutoff + pd.Timedelta(days=60)), "--reasons", "0"]
    first = score_cli(small_project, exp, tmp_path / "a.parquet", "--state", str(state_dir), *late)
    assert first.exit_code == 0, first.output
    assert "history state built" in first.output and (state_dir / "state.json").is_file()
    again = score_cli(small_project, exp, tmp_path / "b.parquet", "--state", str(state_dir), *late)
    assert again.exit_code == 0 and "history state loaded" in again.output
    plain = score_cli(small_project, exp, tmp_path / "c.parquet", *late)
    assert plain.exit_code == 0, plain.output
    a, b, c = (pd.read_parquet(tmp_path / f"{x}.parquet") for x in "abc")
    assert len(a) == len(lines) > 40
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c, check_exact=False, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_export(sample, tmp_path_factory):
    """A CSV export with one row per rule: wrong type, duplicate line_id, unknown customer, negative price,
    a formula-like customer id."""
    d = copy_export(sample, tmp_path_factory.mktemp("bad") / "exp")
    lines = pd.read_csv(d / "order_lines.csv", dtype=str, keep_default_na=False)
    orders = pd.read_csv(d / "orders.csv", dtype=str, keep_default_na=False)
    lines.loc[0, "unit_price"] = "abc"  # wrong type
    lines.loc[1, "unit_price"] = "-5"  # negative price
    dup = lines.iloc[[5]].copy()
    dup["unit_price"] = "999"  # conflicting copy of line 5
    lines = pd.concat([lines.iloc[:6], dup, lines.iloc[6:]], ignore_index=True)
    orders.loc[3, "customer_id"] = "987654321"  # unknown customer: scored as new
    orders.loc[4, "customer_id"] = '=HYPERLINK("http://x")'  # formula-like id, not an integer id
    lines.to_csv(d / "order_lines.csv", index=False)
    orders.to_csv(d / "orders.csv", index=False)
    return d


def test_bad_rows_are_rejected_with_their_rule_and_the_rest_scored(
    small_project, sample, bad_export, tmp_path
):
    out = tmp_path / "scored.csv"
    res = score_cli(small_project, bad_export, out, "--history", str(sample / "history"), "--reasons", "0")
    assert res.exit_code == 0, res.output
    rej = pd.read_csv(rejects_path(out), dtype=str, keep_default_na=False)
    rules = set(rej["rule"])
    assert "order_lines.unit_price is a number" in rules
    assert any(r.startswith("order_lines.unit_price") and ">= 0" in r for r in rules), rules
    assert "order_lines.line_id unique" in rules
    assert "orders.customer_id is an integer id" in rules
    assert any(r.startswith("parent rejected: orders") for r in rules)
    assert not rej.apply(lambda c: c.str.startswith(("=", "+", "@"))).any().any()  # CSV formula-escaped
    scored = pd.read_csv(out)
    orders = pd.read_csv(bad_export / "orders.csv", dtype=str)
    new_customer_order = int(orders.loc[3, "order_id"])
    assert new_customer_order in set(scored["order_id"])  # unknown customer scored as new
    assert not set(rej.loc[rej["table"] == "order_lines", "key"].astype(int)) & set(scored["line_id"])
    n_lines = len(pd.read_csv(bad_export / "order_lines.csv"))
    assert len(scored) + (rej["table"] == "order_lines").sum() == n_lines
    assert f"scored {len(scored)} lines, rejected {len(rej)} rows" in res.output
    strict = score_cli(
        small_project,
        bad_export,
        tmp_path / "s.csv",
        "--history",
        str(sample / "history"),
        "--reasons",
        "0",
        "--strict",
    )
    assert strict.exit_code == 1 and (tmp_path / "s.csv").is_file()


def test_missing_required_column_is_a_table_error(small_project, sample, tmp_path):
    d = copy_export(sample, tmp_path / "exp")
    pd.read_csv(d / "order_lines.csv").drop(columns=["quantity"]).to_csv(d / "order_lines.csv", index=False)
    out = tmp_path / "scored.parquet"
    res = score_cli(small_project, d, out, "--history", str(sample / "history"))
    assert res.exit_code == 2
    assert "quantity" in res.output and "order_lines.csv" in res.output
    assert not out.exists() and not list(tmp_path.glob(".scored*"))


def test_empty_and_zero_byte_exports_give_an_empty_output_with_header(small_project, sample, tmp_path):
    d = copy_export(sample, tmp_path / "exp")
    pd.read_csv(d / "orders.csv").iloc[:0].to_csv(d / "orders.csv", index=False)
    pd.read_csv(d / "order_lines.csv").iloc[:0].to_csv(d / "order_lines.csv", index=False)
    out = tmp_path / "scored.csv"
    res = score_cli(small_project, d, out)
    assert res.exit_code == 0, res.output
    from pipeline.scoring import output_columns

    assert out.read_text().strip() == ",".join(output_columns(3))
    (d / "order_lines.csv").write_bytes(b"")  # 0-byte file: read as empty, said in a note
    out2 = tmp_path / "zero.parquet"
    res = score_cli(small_project, d, out2)
    assert res.exit_code == 0, res.output
    assert "0 bytes" in res.output
    empty = pd.read_parquet(out2)
    assert len(empty) == 0 and list(empty.columns) == output_columns(3)


# ------------------------------------------------------------------------------------------ atomicity
def test_a_failing_run_leaves_the_previous_output(small_project, sample, tmp_path, monkeypatch):
    import features.state

    out = tmp_path / "scored.parquet"
    hist = ["--history", str(sample / "history"), "--reasons", "0"]
    assert score_cli(small_project, sample / "export", out, *hist).exit_code == 0
    before = out.read_bytes()
    real = features.state.featurize_batch_pieces  # what the scorer featurizes each chunk with
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("simulated crash in the second chunk")
        return real(*a, **k)

    monkeypatch.setattr(features.state, "featurize_batch_pieces", flaky)
    res = score_cli(
        small_project, sample / "export", out, *hist, "--chunk-lines", "200", "--scored-at", "2031-01-01"
    )
    assert res.exit_code != 0 and calls["n"] == 2
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _score_sample(project, sample: Path, out: Path, **settings):
    from models.artifact import ReturnModel
    from pipeline.scoring import ScoreSettings, read_tables, score_export

    return score_export(
        sample / "export",
        read_tables(sample / "history"),
        ReturnModel.load(project.path("model")),
        out,
        settings=ScoreSettings(**settings),
        params=project.params,
        scored_at=pd.Timestamp("2030-01-01"),
    )


@pytest.mark.parametrize("reasons", [0, 3])
def test_pieces_predicted_in_the_worker_give_the_bytes_of_one_piece(small_project, sample, tmp_path, reasons):
    """A chunk assembled and predicted in many pieces (the worker thread overlapping the assembly) writes
    the same file, byte for byte, as one piece; with reasons the model matrix is stacked from the pieces."""
    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    a = _score_sample(small_project, sample, one, reasons=reasons, piece_lines=1_000_000)
    b = _score_sample(small_project, sample, many, reasons=reasons, piece_lines=23)
    assert a.scored == b.scored > 4 * 23
    assert b.timings["predict_worker_s"] > 0
    assert one.read_bytes() == many.read_bytes()


def test_an_error_in_the_predict_worker_aborts_the_run(small_project, sample, tmp_path, monkeypatch):
    """The worker's exception reaches the caller; nothing is written, no temporary is left."""
    from models.artifact import ReturnModel

    real = ReturnModel.encode_table
    calls = {"n": 0}

    def flaky(self, table):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated failure in the predict worker")
        return real(self, table)

    monkeypatch.setattr(ReturnModel, "encode_table", flaky)
    out = tmp_path / "scored.parquet"
    with pytest.raises(MemoryError, match="predict worker"):
        _score_sample(small_project, sample, out, reasons=0, piece_lines=23)
    assert calls["n"] >= 3
    assert not out.exists() and not list(tmp_path.iterdir())


def test_predict_pieces_puts_pieces_and_probabilities_in_qi_order():
    """Pieces that come out of (order_ts, line_id) order are reordered with their probabilities and rows."""
    import pyarrow as pa

    from pipeline.scoring import predict_pieces

    class Calib:
        def apply(self, raw):
            return raw / 100.0

    class Model:
        calibrator = Calib()

        def encode_table(self, table):
            return np.asfortranarray(table.column("line_id").to_numpy().astype(np.float64)[:, None])

        def raw_from_matrix(self, X):
            return X[:, 0].copy()

    ts = pd.Timestamp("2030-01-01")
    piece = lambda ids: pa.table({"line_id": ids, "order_ts": [ts] * len(ids)})  # noqa: E731
    got = predict_pieces(Model(), iter([piece([5, 6, 7]), piece([1, 2]), piece([3, 4])]), keep_matrix=True)
    assert got.table.column("line_id").to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(got.p, np.arange(1, 8) / 100.0)
    np.testing.assert_array_equal(got.matrix[:, 0], np.arange(1, 8))
    assert got.matrix.flags.f_contiguous
    assert predict_pieces(Model(), iter([piece([1, 2])]), keep_matrix=False).matrix is None


def test_a_killed_run_leaves_no_partial_file(small_project, sample, tmp_path):
    """SIGKILL mid-way (after the temporary file exists): no output file, or only a complete earlier one."""
    out = tmp_path / "scored.csv"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "score",
        str(sample / "export"),
        "--out",
        str(out),
        "--model",
        str(small_project.path("model")),
        "--history",
        str(sample / "history"),
        "--no-flags",
        "--chunk-lines",
        "100",
        "--reasons",
        "0",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=small_project.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(p.name.startswith(".scored.csv.") for p in tmp_path.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()  # the hidden temporary may remain; nothing that looks whole does


def test_exported_model_folder_scores_like_the_registry_model(small_project, tmp_path, monkeypatch):
    """`export-model` writes a folder that scores without MLflow and knows its registry name and version."""
    from pipeline.commands.export_model import export_model
    from pipeline.scoring import resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_project.tracking_uri)
    reg, reg_name, reg_version = resolve_model("models:/returnrisk@champion")
    folder = export_model("models:/returnrisk@champion", tmp_path / "model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "nothing.db"))  # no registry now
    served, name, version = resolve_model(str(folder))
    assert (name, version) == (reg_name, reg_version) and version.isdigit()
    frame = pd.read_parquet(small_project.path("features") / "features.parquet").tail(200)
    np.testing.assert_array_equal(served.predict_proba(frame), reg.predict_proba(frame))


def test_column_major_predict_equals_the_artifact(small_project):
    """The scorer's predictions are ReturnModel.predict_proba's, whose compiled trees give the booster's own
    raw scores (1e-12) on the real model, with unseen levels and missing values among the rows."""
    from models.artifact import ReturnModel, compiled_forest, encode_frame
    from pipeline.scoring import predict_proba

    model = ReturnModel.load(small_project.path("model"))
    assert compiled_forest(model.booster) is not None
    frame = pd.read_parquet(small_project.path("features") / "features.parquet").tail(3000).copy()
    cats = model.categorical_features
    assert cats, "the real model has categorical features"
    for i, c in enumerate(cats):  # unseen levels and missing values in every categorical
        frame[c] = frame[c].astype(object)
        frame.iloc[i * 7 : i * 7 + 5, frame.columns.get_loc(c)] = "never-seen-level"
        frame.iloc[500 + i * 7 : 500 + i * 7 + 5, frame.columns.get_loc(c)] = None
    numeric = [f for f in model.features if f not in model.categorical]
    frame.iloc[1000:1100, [frame.columns.get_loc(f) for f in numeric[:10]]] = np.nan
    got = predict_proba(model, frame)
    np.testing.assert_array_equal(got, model.predict_proba(frame))
    X = encode_frame(frame, model.features, model.categorical)  # row-major, as training encodes
    np.testing.assert_allclose(
        model.predict_raw(frame), model.booster.predict(X, raw_score=True), atol=1e-12, rtol=0
    )
    assert len(np.unique(got)) > 100
    assert len(predict_proba(model, frame.iloc[:0])) == 0
