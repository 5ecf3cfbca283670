"""The reviewer web app: FastAPI + server-rendered Jinja2 pages, token-protected, no JavaScript.

Security model (a local tool for a handful of reviewers):
- every route but /static/ needs the access token: `?token=` once (then an HttpOnly SameSite=Strict
  cookie, and a redirect that drops the token from the URL), the cookie, or an `X-Review-Token` /
  `Authorization: Bearer` header; anything else gets 401;
- POSTs carry a CSRF token bound to a per-browser session id (HMAC with a per-process secret);
- Jinja2 autoescape is on for everything; the Content-Security-Policy forbids scripts entirely, as a
  second line of defence should anything slip through.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

from pipeline.io import escape_formulas
from pipeline.review.data import ReviewData, fmt_number
from pipeline.review.store import DECISION_LABELS, DECISIONS, DecisionStore
from pipeline.review.timeline import build_timeline

HERE = Path(__file__).resolve().parent
TOKEN_ENV = "RETURNRISK_REVIEW_TOKEN"
TOKEN_COOKIE = "rr_token"
SID_COOKIE = "rr_sid"
REVIEWER_COOKIE = "rr_reviewer"
TOKEN_HEADER = "x-review-token"
MIN_TOKEN_LEN = 16
MAX_HISTORY_LINES = 1000
STATUSES = ("undecided", *DECISIONS)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def new_token() -> str:
    return secrets.token_urlsafe(24)


def customer_url(id_str: str) -> str:
    return "/customers/" + quote(id_str, safe="")


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def _blank(v: Any) -> Any:
    """Missing values (None, NaN, NaT, an absent column) show as an em dash."""
    if v is None or isinstance(v, Undefined) or (not isinstance(v, str | list | dict) and pd.isna(v)):
        return "—"
    return v


def _make_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_number
    env.filters["customer_url"] = customer_url
    env.filters["date"] = lambda v, fmt="%Y-%m-%d": (
        "—" if v is None or pd.isna(v) else pd.Timestamp(v).strftime(fmt)
    )
    env.filters["blank"] = _blank
    env.globals["decision_labels"] = DECISION_LABELS
    return env


def create_app(
    *,
    flags_dir: Path | str,
    validated_dir: Path | str,
    explain_dir: Path | str | None,
    db_path: Path | str,
    token: str,
) -> FastAPI:
    """Build the app. Refuses (StoreError / ReviewDataError / ValueError) rather than start half-broken."""
    if not token or len(token) < MIN_TOKEN_LEN:
        raise ValueError(f"the access token must have at least {MIN_TOKEN_LEN} characters ({TOKEN_ENV})")
    store = DecisionStore.open(db_path)
    data = ReviewData(flags_dir, validated_dir, explain_dir)
    secret = secrets.token_bytes(32)
    env = _make_env()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        data.close()

    app = FastAPI(
        title="returnrisk review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.store = store
    app.state.data = data
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("csrf", getattr(request.state, "csrf", ""))
        ctx.setdefault("n_flagged", len(data))
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
        return render(request, "message.html", status=status, title=title, text=text)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001 - starlette's callable type
        response = await _guard(request, call_next)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _guard(request: Request, call_next) -> Response:  # noqa: ANN001
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        from_query = request.query_params.get("token")
        cookie = request.cookies.get(TOKEN_COOKIE)
        candidates = (request.headers.get(TOKEN_HEADER), bearer, cookie, from_query)
        if not any(_same(c, token) for c in candidates):
            return message(
                request,
                401,
                "Access token required",
                "Open the address printed by `returnrisk review` (it carries ?token=...), "
                f"or send the token in the {TOKEN_HEADER} header.",
            )
        if from_query is not None and request.method == "GET":
            # Drop the token from the address bar (history, referrers) and keep it in an HttpOnly cookie.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            resp = RedirectResponse(
                request.url.path + ("?" + urlencode(rest) if rest else ""), status_code=303
            )
            if _same(from_query, token):
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return resp
        sid = request.cookies.get(SID_COOKIE) or ""
        new_sid = len(sid) < 16
        if new_sid:
            sid = secrets.token_urlsafe(24)
        request.state.sid = sid
        request.state.csrf = hmac.new(secret, sid.encode(), hashlib.sha256).hexdigest()
        response = await call_next(request)
        if new_sid:
            response.set_cookie(SID_COOKIE, sid, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/queue", status_code=303)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        store.check()
        return f"ok: {len(data)} flagged customers, {store.count()} decisions"

    @app.get("/queue", response_class=HTMLResponse)
    def queue(
        request: Request, tier: str = "", type: str = "", q: str = "", status: str = "", page: int = 1
    ) -> HTMLResponse:
        tier = tier if tier in data.tiers else ""
        abuse_type = type if type in data.types else ""
        status = status if status in STATUSES else ""
        include = exclude = None
        decided: dict | None = None
        if status:
            decided = store.current()
            if status == "undecided":
                exclude = set(decided)
            else:
                include = {k for k, d in decided.items() if d.decision == status}
        result = data.queue(
            tier=tier, abuse_type=abuse_type, q=q[:200], include=include, exclude=exclude, page=page
        )
        ids = [r["id_str"] for r in result.rows]
        current = {k: decided[k] for k in ids if k in decided} if decided is not None else store.current(ids)
        filters = {"tier": tier, "type": abuse_type, "q": q[:200], "status": status}

        def page_url(p: int) -> str:
            return "/queue?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": p})

        return render(
            request,
            "queue.html",
            result=result,
            current=current,
            filters=filters,
            tiers=data.tiers,
            types=data.types,
            statuses=STATUSES,
            page_url=page_url,
            show_cols=[c for c in ("n_returned", "n_items", "net_value") if c in data.flags.columns],
        )

    @app.get("/customers/{customer_id:path}", response_class=HTMLResponse)
    def customer(request: Request, customer_id: str, saved: int = 0) -> HTMLResponse:
        rec = data.customer(customer_id)
        if rec is None:
            return message(
                request, 404, "Not flagged", f"Customer {customer_id} is not among the flagged customers."
            )
        history = data.history(customer_id)
        riskiest = data.riskiest(customer_id, history)
        return render(
            request,
            "customer.html",
            c=rec,
            evidence=data.evidence(rec),
            extra_evidence=data.extra_evidence(rec),
            reasons=data.reasons(rec),
            net_value=fmt_number(rec.get("net_value"), "money") if "net_value" in rec else None,
            values=data.value_summary(history),
            timeline=build_timeline(history),
            lines=history.head(MAX_HISTORY_LINES).to_dict("records"),
            n_lines=len(history),
            max_lines=MAX_HISTORY_LINES,
            riskiest=None if riskiest is None else riskiest.to_dict("records"),
            reviews=None if (rv := data.reviews(customer_id)) is None else rv.to_dict("records"),
            history=store.history(customer_id),
            decisions=DECISIONS,
            reviewer=request.cookies.get(REVIEWER_COOKIE, "")[:120],
            saved=bool(saved),
        )

    @app.post("/decisions")
    def decide(
        request: Request,
        customer_id: str = Form(...),
        decision: str = Form(""),
        reviewer: str = Form(""),
        note: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Response:
        if not _same(csrf_token, request.state.csrf):
            return message(
                request, 403, "Form expired", "The form's CSRF token is missing or stale: reload the page."
            )
        if data.customer(customer_id) is None:
            return message(
                request, 404, "Not flagged", f"Customer {customer_id} is not among the flagged customers."
            )
        try:
            store.record(data.typed_id(customer_id), decision, note, reviewer)
        except ValueError as exc:
            return message(request, 400, "Decision not recorded", str(exc))
        resp = RedirectResponse(customer_url(customer_id) + "?saved=1#decision", status_code=303)
        resp.set_cookie(REVIEWER_COOKIE, reviewer.strip()[:120], httponly=True, samesite="strict", path="/")
        return resp

    @app.get("/decisions.csv")
    def export() -> Response:
        buf = io.StringIO()
        escape_formulas(store.frame()).to_csv(buf, index=False)
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="decisions.csv"'},
        )

    return app
