"""The reviewer app over HTTP (in-process): token, CSRF, escaping, queue, customer page, decisions, export."""

from __future__ import annotations

import html as html_lib
import re
import shutil

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pipeline.review.app import create_app, customer_url
from pipeline.review.data import ReviewData, ReviewDataError
from pipeline.review.sample import FORMULA_ID, XSS_TEXT, write_sample
from pipeline.review.store import DecisionStore, StoreError, init_db

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("review"), n_customers=120, orders_per_customer=4, seed=3)


@pytest.fixture
def app_and_db(sample, tmp_path):
    db = init_db(tmp_path / "decisions.db")
    app = create_app(
        flags_dir=sample.flags,
        validated_dir=sample.validated,
        explain_dir=sample.explain,
        db_path=db,
        token=TOKEN,
    )
    return app, db


@pytest.fixture
def client(app_and_db):
    with TestClient(app_and_db[0]) as c:
        r = c.get(f"/queue?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303
        yield c


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _queue_ids(html: str) -> list[str]:
    return [html_lib.unescape(m) for m in re.findall(r'data-customer="([^"]*)"', html)]


# ---- access control -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/"),
        ("get", "/queue"),
        ("get", "/customers/C000000"),
        ("get", "/decisions.csv"),
        ("get", "/healthz"),
        ("get", "/no-such-page"),
        ("post", "/decisions"),
    ],
)
def test_everything_but_static_needs_the_token(app_and_db, method, path):
    c = TestClient(app_and_db[0])
    r = getattr(c, method)(path, follow_redirects=False)
    assert r.status_code == 401
    assert "C000000" not in r.text.replace("/customers/C000000", "")
    assert c.get("/static/style.css").status_code == 200
    bad = TestClient(app_and_db[0], headers={"X-Review-Token": "wrong-token-0123456789"})
    assert getattr(bad, method)(path, follow_redirects=False).status_code == 401


def test_query_token_becomes_httponly_cookie_and_leaves_the_url(app_and_db):
    c = TestClient(app_and_db[0])
    r = c.get(f"/queue?tier=restrict&token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/queue?tier=restrict"
    cookie = r.headers["set-cookie"]
    assert "rr_token=" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert c.get("/queue").status_code == 200  # the cookie now authenticates


def test_header_token_and_security_headers(app_and_db):
    c = TestClient(app_and_db[0], headers={"X-Review-Token": TOKEN})
    r = c.get("/queue")
    assert r.status_code == 200
    assert "script-src" not in r.headers["content-security-policy"]  # falls back to default-src 'none'
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    bearer = TestClient(app_and_db[0], headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.get("/healthz").text.startswith("ok: 120 flagged customers")


def test_short_token_refused(sample, tmp_path):
    db = init_db(tmp_path / "d.db")
    with pytest.raises(ValueError, match="at least 16"):
        create_app(
            flags_dir=sample.flags, validated_dir=sample.validated, explain_dir=None, db_path=db, token="abc"
        )


# ---- queue --------------------------------------------------------------------------------------------------
def test_queue_sorted_by_score_and_paginated(client, sample):
    r1, r2 = client.get("/queue"), client.get("/queue?page=2")
    ids1, ids2 = _queue_ids(r1.text), _queue_ids(r2.text)
    assert ids1 == [str(c) for c in sample.customer_ids[:50]]  # the sample is written in score order
    assert ids2 == [str(c) for c in sample.customer_ids[50:100]]
    assert "page 1 of 3" in r1.text
    assert _queue_ids(client.get("/queue?page=99").text) == [str(c) for c in sample.customer_ids[100:]]


def test_queue_filters_by_tier_type_and_search(client, sample):
    flags = pd.read_parquet(sample.flags / "flagged_customers.parquet")
    r = client.get("/queue?tier=restrict")
    expected = flags[flags["tier"] == "restrict"].sort_values("abuse_score", ascending=False)["customer_id"]
    assert _queue_ids(r.text) == list(expected.astype(str))[:50]
    r = client.get("/queue?type=bracketer&tier=watch")
    sel = flags[(flags["abuse_type"] == "bracketer") & (flags["tier"] == "watch")]
    assert sorted(_queue_ids(r.text)) == sorted(sel["customer_id"].astype(str))
    assert f"{len(sel):,} of 120 flagged" in r.text
    r = client.get("/queue?q=c00001")  # case-insensitive substring of the id
    assert sorted(_queue_ids(r.text)) == sorted(c for c in flags["customer_id"] if "C00001" in c)
    assert "No flagged customer matches" in client.get("/queue?q=zzz").text
    # unknown filter values are ignored, not errors
    assert client.get("/queue?tier=<b>&type=nope").status_code == 200


def test_queue_shows_and_filters_decision_status(client, sample):
    cid = str(sample.customer_ids[2])
    r = client.get(customer_url(cid))
    client.post(
        "/decisions",
        data={"customer_id": cid, "decision": "legitimate", "reviewer": "ann", "csrf_token": _csrf(r.text)},
    )
    q = client.get("/queue")
    row = re.search(rf'data-customer="{re.escape(cid)}">.*?</tr>', q.text, re.S).group(0)
    assert "Legitimate" in row
    assert _queue_ids(client.get("/queue?status=legitimate").text) == [cid]
    assert cid not in _queue_ids(client.get("/queue?status=undecided").text)


# ---- customer page --------------------------------------------------------------------------------------------
def test_customer_page_shows_evidence_timeline_reviews_and_escapes(client, sample):
    cid = str(sample.xss_customer)
    r = client.get(customer_url(cid))
    assert r.status_code == 200
    html = r.text
    assert XSS_TEXT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    for label in ("Items returned", "Returns expected for these items", "Net value"):
        assert label in html
    assert "Bracketed" in html  # a reason sentence
    lines = ReviewData(sample.flags, sample.validated, sample.explain).history(cid)
    assert html.count('<circle class="pt') == len(lines)
    assert html.count('class="ret"') == int(lines["return_ts"].notna().sum())
    assert 'class="bracket"' in html  # the sample's first customer brackets orders
    assert "Return probability" in html  # riskiest lines with reason codes
    assert "Product reviews they wrote" in html


def test_customer_page_without_line_reasons_or_evidence(sample, tmp_path):
    flags = pd.read_parquet(sample.flags / "flagged_customers.parquet")
    (tmp_path / "flags").mkdir()
    slim = flags[["customer_id", "abuse_score", "tier", "abuse_type"]].assign(s_excess=0.25, suppressed=False)
    slim.to_parquet(tmp_path / "flags" / "flagged_customers.parquet")
    app = create_app(
        flags_dir=tmp_path / "flags",
        validated_dir=sample.validated,
        explain_dir=tmp_path / "no-explain",
        db_path=init_db(tmp_path / "d.db"),
        token=TOKEN,
    )
    c = TestClient(app, headers={"X-Review-Token": TOKEN})
    html = c.get(customer_url(str(sample.customer_ids[5]))).text
    assert "Line reasons are not available" in html
    assert "No evidence columns" in html
    assert "More signals from the flag stage (1)" in html and 'data-col="s_excess"' in html
    assert 'data-col="suppressed"' not in html
    assert c.get("/queue").status_code == 200


def test_unknown_customer_is_404(client):
    assert client.get("/customers/nobody").status_code == 404


def test_customer_with_formula_and_slash_characters_is_reachable(client):
    r = client.get(customer_url(FORMULA_ID))  # quotes, slashes, parentheses in the id
    assert r.status_code == 200
    assert "&#34;click&#34;" in r.text or "&quot;click&quot;" in r.text


# ---- decisions ---------------------------------------------------------------------------------------------------
def test_decision_needs_csrf_token(client, app_and_db):
    cid = "C000003"
    form = {"customer_id": cid, "decision": "abuse", "reviewer": "ann"}
    assert client.post("/decisions", data=form).status_code == 403
    assert client.post("/decisions", data={**form, "csrf_token": "0" * 64}).status_code == 403
    # a token from another browser session does not carry over
    other = TestClient(app_and_db[0], headers={"X-Review-Token": TOKEN})
    foreign = _csrf(other.get(customer_url(cid)).text)
    assert client.post("/decisions", data={**form, "csrf_token": foreign}).status_code == 403
    assert DecisionStore.open(app_and_db[1]).count() == 0


def test_decision_recorded_with_history_and_exported_safely(client, app_and_db):
    cid = FORMULA_ID
    page = client.get(customer_url(cid)).text
    for decision, note in (("needs_info", "asked for photos"), ("abuse", "=1+1 worn <b>tags</b> removed")):
        r = client.post(
            "/decisions",
            data={
                "customer_id": cid,
                "decision": decision,
                "reviewer": "Ann",
                "note": note,
                "csrf_token": _csrf(page),
            },
            follow_redirects=False,
        )
        assert r.status_code == 303
        page = client.get(r.headers["location"]).text
    assert "Decision recorded." in page
    assert page.count('class="hist"') == 2
    assert "&lt;b&gt;tags&lt;/b&gt;" in page and "<b>tags" not in page
    assert 'value="Ann"' in page  # the reviewer name is remembered for the next form
    cur = DecisionStore.open(app_and_db[1]).current()
    assert cur[cid].decision == "abuse"
    csv = client.get("/decisions.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    body = csv.text
    assert "'=HYPERLINK" in body and "\n1,=HYPERLINK" not in body and ",=HYPERLINK" not in body
    assert "'=1+1 worn" in body


def test_invalid_decision_is_400_and_not_stored(client, app_and_db):
    page = client.get(customer_url("C000004")).text
    r = client.post(
        "/decisions",
        data={"customer_id": "C000004", "decision": "ban", "reviewer": "ann", "csrf_token": _csrf(page)},
    )
    assert r.status_code == 400 and "must be one of" in r.text
    assert DecisionStore.open(app_and_db[1]).count() == 0


# ---- refusing to start ----------------------------------------------------------------------------------------
def test_app_refuses_missing_or_corrupt_store(sample, tmp_path):
    kw = dict(flags_dir=sample.flags, validated_dir=sample.validated, explain_dir=sample.explain, token=TOKEN)
    with pytest.raises(StoreError, match="returnrisk review init"):
        create_app(db_path=tmp_path / "missing.db", **kw)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(StoreError, match="not a usable decision database"):
        create_app(db_path=bad, **kw)


def test_app_refuses_missing_or_bad_flags(sample, tmp_path):
    db = init_db(tmp_path / "d.db")
    with pytest.raises(ReviewDataError, match="flagged_customers.parquet: flagged customers not found"):
        create_app(
            flags_dir=tmp_path, validated_dir=sample.validated, explain_dir=None, db_path=db, token=TOKEN
        )
    flags = pd.read_parquet(sample.flags / "flagged_customers.parquet")
    (tmp_path / "f").mkdir()
    pd.concat([flags, flags.head(1)]).to_parquet(tmp_path / "f" / "flagged_customers.parquet")
    with pytest.raises(ReviewDataError, match="row 120: column customer_id: duplicate"):
        ReviewData(tmp_path / "f", sample.validated, None)
    flags.drop(columns="tier").to_parquet(tmp_path / "f" / "flagged_customers.parquet")
    with pytest.raises(ReviewDataError, match="missing required column"):
        ReviewData(tmp_path / "f", sample.validated, None)


def test_integer_customer_ids(tmp_path):
    s = write_sample(tmp_path / "int", n_customers=10, orders_per_customer=3, string_ids=False)
    db = init_db(tmp_path / "d.db")
    app = create_app(
        flags_dir=s.flags, validated_dir=s.validated, explain_dir=s.explain, db_path=db, token=TOKEN
    )
    c = TestClient(app, headers={"X-Review-Token": TOKEN})
    cid = str(s.customer_ids[0])
    # header-authenticated clients still need the session cookie for CSRF: take it from a page
    page = c.get(customer_url(cid))
    assert page.status_code == 200 and page.text.count('<circle class="pt') == 6
    c.post(
        "/decisions",
        data={"customer_id": cid, "decision": "abuse", "reviewer": "ann", "csrf_token": _csrf(page.text)},
    )
    from pipeline.review.store import current_decisions

    cur = current_decisions(db)
    assert cur["customer_id"].tolist() == [int(cid)]


# ---- command line ---------------------------------------------------------------------------------------------
def test_cli_export_and_refusal(tmp_path, sample):
    from pipeline.cli import app

    runner = CliRunner()
    db = tmp_path / "decisions.db"
    r = runner.invoke(
        app, ["review", "--db", str(db), "--flags", str(sample.flags), "--validated", str(sample.validated)]
    )
    assert r.exit_code == 2 and "returnrisk review init" in " ".join(r.output.split())
    assert runner.invoke(app, ["review", "init", "--db", str(db)]).exit_code == 0
    DecisionStore.open(db).record(FORMULA_ID, "abuse", "@SUM(A1)", "ann")
    out = tmp_path / "out.csv"
    r = runner.invoke(app, ["decisions", "export", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    back = pd.read_csv(out)
    assert back.loc[0, "customer_id"] == "'" + FORMULA_ID and back.loc[0, "note"] == "'@SUM(A1)"
    shutil.copy(out, tmp_path / "bad.db")
    r = runner.invoke(app, ["decisions", "export", "--out", str(out), "--db", str(tmp_path / "bad.db")])
    assert r.exit_code == 2 and "not a usable decision database" in " ".join(r.output.split())
