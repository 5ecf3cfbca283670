"""The reviewer app in a real browser: Playwright driving Debian's headless Chromium (no browser download).

Queue -> filter -> customer -> decision -> reload shows it persisted and in the history; hostile text
renders as text; no token, no page. Screenshots land in test-artifacts/ for a human look.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline.review.app import create_app
from pipeline.review.sample import XSS_TEXT, write_sample
from pipeline.review.store import DecisionStore, init_db

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing: `make browser-deps` installs Debian's chromium"
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app served by uvicorn in a thread on a free 127.0.0.1 port; always shut down."""
    import uvicorn

    root = tmp_path_factory.mktemp("review-browser")
    sample = write_sample(root, n_customers=80, orders_per_customer=6, seed=11)
    db = init_db(root / "decisions.db")
    app = create_app(
        flags_dir=sample.flags,
        validated_dir=sample.validated,
        explain_dir=sample.explain,
        db_path=db,
        token=TOKEN,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            srv.should_exit = True
            pytest.fail("the review server did not start within 20 s")
        time.sleep(0.05)
    try:
        yield {"base": f"http://127.0.0.1:{port}", "sample": sample, "db": db}
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    try:
        yield pg
    finally:
        ctx.close()


def test_review_flow_queue_filter_customer_decision_history(server, page):
    ARTIFACTS.mkdir(exist_ok=True)
    base = server["base"]
    page.goto(f"{base}/?token={TOKEN}")
    assert page.url == f"{base}/queue"  # the token left the address bar
    rows = page.locator("#queue tbody tr[data-customer]")
    assert rows.count() == 50
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)

    # filter by tier and type
    page.select_option("#f-tier", "restrict")
    page.click("#f-apply")
    page.wait_for_url(re.compile(r"tier=restrict"))
    tiers = page.locator("#queue tbody td .badge[class*=tier-]").all_inner_texts()
    assert tiers and set(tiers) == {"restrict"}
    page.select_option("#f-type", "bracketer")
    page.click("#f-apply")
    page.wait_for_url(re.compile(r"type=bracketer"))
    types = page.locator("#queue tbody td.type").all_inner_texts()
    assert types and {t.lower() for t in types} == {"bracketer"}

    # open the top customer (the sample's bracketer whose review and reasons carry a <script> text)
    target = str(server["sample"].xss_customer)
    page.locator(f'#queue a.cust:text-is("{target}")').click()
    page.wait_for_url(re.compile(r"/customers/"))
    assert page.locator("#customer-id").inner_text() == target
    assert page.locator("#evidence tr[data-col=n_returned]").count() == 1
    assert page.locator("svg.timeline circle.pt").count() == 12
    assert page.locator("svg.timeline rect.bracket").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "review-customer.png"), full_page=True)

    # hostile text is shown as text and never runs
    assert XSS_TEXT in page.locator(".review-text").all_inner_texts()
    assert XSS_TEXT in page.locator("#reasons li").all_inner_texts()
    assert page.locator("main script").count() == 0
    assert page.dialogs == []

    # record a decision, reload, see it persisted and in the history; then change it
    page.check("#dec-needs_info")
    page.fill("#reviewer", "Ana Reviewer")
    page.fill("#note", "asked for photos <b>of tags</b>")
    page.click("#record")
    page.wait_for_selector("#saved")
    page.reload()
    assert page.locator("#current-decision").inner_text() == "Needs more information"
    assert page.locator("#history tr.hist").count() == 1
    assert "asked for photos <b>of tags</b>" in page.locator("#history td.note").first.inner_text()

    page.check("#dec-abuse")
    assert page.input_value("#reviewer") == "Ana Reviewer"  # remembered
    page.fill("#note", "tags removed, worn")
    page.click("#record")
    page.wait_for_selector("#saved")
    page.reload()
    assert page.locator("#current-decision").inner_text() == "Confirmed abuse"
    hist = page.locator("#history tr.hist").all_inner_texts()
    assert len(hist) == 2 and "Confirmed abuse" in hist[0] and "Needs more information" in hist[1]
    assert [d.decision for d in DecisionStore.open(server["db"]).history(target)] == ["abuse", "needs_info"]

    # the queue shows the status, and the status filter finds it
    page.goto(f"{base}/queue?status=abuse")
    assert page.locator("#queue tbody tr[data-customer]").count() == 1
    assert page.locator("#queue td.status").inner_text() == "Confirmed abuse"


def test_search_and_pagination(server, page):
    base = server["base"]
    page.goto(f"{base}/?token={TOKEN}")
    page.click("#next")
    page.wait_for_url(re.compile(r"page=2"))
    assert page.locator("#queue tbody tr[data-customer]").count() == 30
    page.fill("#f-q", "c00007")
    page.click("#f-apply")
    ids = page.locator("#queue a.cust").all_inner_texts()
    assert ids and all("C00007" in i for i in ids)


def test_requests_without_token_are_refused(server, browser):
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        for path in ("/queue", "/customers/C000000", "/decisions.csv"):
            resp = pg.goto(server["base"] + path)
            assert resp.status == 401
            assert "Access token required" in pg.content()
            assert "C000000" not in pg.locator("main").inner_text()
        assert pg.request.post(server["base"] + "/decisions", form={"customer_id": "C000000"}).status == 401
        assert pg.goto(server["base"] + "/static/style.css").status == 200
        bad = pg.goto(server["base"] + "/queue?token=not-the-token-at-all")
        assert bad.status == 401
    finally:
        ctx.close()
