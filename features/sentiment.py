"""Review sentiment: what earlier reviewers said about the product, and whether they complained about fit.

Why it predicts returns: products whose reviews are negative (or mention that they run small/large)
disappoint the next buyer too. Each distinct review text is scored once with VADER (vaderSentiment
ships its lexicon: nothing is downloaded), the fit rule below is a documented regular expression, and
both are aggregated per product over the reviews posted strictly before the order.

Fit rule (case-insensitive, on the review text):
- runs small: "runs/fits/came/is ... (a bit/very/...) small|tight|short|narrow|snug", "too small/tight...",
  "size up", "a/one/half size up/bigger/larger";
- runs large: the same with large|big|loose|long|wide|baggy|roomy, "size down", "a size down/smaller";
- fit problem (the share feature): runs small or large, "does not/didn't/won't fit", "poor/bad/odd fit",
  "wrong size", "sizing is off/wrong/inconsistent".
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from features.engine import Context
from features.spec import FeatureSpec
from features.sql import regex_match
from features.streams import Events, Running
from features.vader import sentiment_scores, start_scoring

FAMILY = "sentiment"

_QUAL = r"(a\s+)?((bit|little|very|really|quite|slightly|way|too|so|rather|super)\s+)*"
_VERB = r"\b(runs?|running|ran|fits?|fitting|fitted|came|comes|is|was|are|were|feels?|felt)\s+"
RUNS_SMALL = (
    _VERB + _QUAL + r"(small|tight|short|narrow|snug)\b"
    r"|\btoo\s+(small|tight|short|narrow|snug)\b|\bsize\s+up\b|\b(a|one|half)\s+size\s+(up|bigger|larger)\b"
)
RUNS_LARGE = (
    _VERB + _QUAL + r"(large|big|loose|long|wide|baggy|roomy)\b"
    r"|\btoo\s+(large|big|loose|long|wide|baggy|roomy)\b|\bsize\s+down\b|\b(a|one|half)\s+size\s+(down|smaller)\b"
)
FIT_PROBLEM = (
    RUNS_SMALL
    + "|"
    + RUNS_LARGE
    + r"|\b(does\s*not|doesn[o'’]?t|did\s*not|didn[o'’]?t|won[o'’]?t|not|never)\s+fit\b"
    r"|\b(poor|bad|odd|weird|strange|awkward|terrible)\s+fit\b|\bwrong\s+size\b"
    r"|\bsizing\s+(is|was)\s+(off|wrong|inconsistent)\b"
)


#: `prepare` reads only the typed input views (t_reviews): featurize runs it before the base tables, so
#: the VADER worker starts seconds earlier (features.engine.stage's `early`)
PREPARE_EARLY = True


def prepare(ctx: Context) -> None:
    """Score each distinct review text once, flag fit mentions, and build `rv` (one row per review).

    VADER is pure Python (most of this family's time); with `ctx.background` it runs in a worker process
    (features/vader.py) while the streams run, without taking the GIL from them, and `rv` is created
    when the first stream that reads it asks for it (`ctx.need`). `sentiment_scoring_s`: from the text
    fetch to the scores' arrival (the worker's start and pipes included).
    """
    started = time.perf_counter()
    ctx.sql("""
        CREATE OR REPLACE TEMP TABLE review_text AS
        SELECT DISTINCT text FROM t_reviews WHERE text IS NOT NULL
    """)
    texts = ctx.con.sql("SELECT text FROM review_text").to_arrow_table().column(0).to_pylist()
    ctx.counts["review_distinct_texts"] = len(texts)
    fetch_s = time.perf_counter() - started
    if not ctx.background or not texts:
        t0 = time.perf_counter()
        compound = sentiment_scores(texts)
        ctx.timings["sentiment_scoring_s"] = time.perf_counter() - t0 + fetch_s
        _build_rv(ctx, texts, compound)
        return
    scores = start_scoring(texts)

    def finish() -> None:
        t0 = time.perf_counter()
        compound, worker_s = scores()
        ctx.timings["sentiment_wait_s"] = time.perf_counter() - t0
        ctx.timings["sentiment_scoring_s"] = worker_s + fetch_s
        _build_rv(ctx, texts, compound)

    ctx.pending["rv"] = finish


def _build_rv(ctx: Context, texts: list[str], compound: np.ndarray) -> None:
    scores = pa.table({"text": pa.array(texts, pa.string()), "compound": compound})
    ctx.con.register("review_scores_src", scores)
    low = "lower(s.text)"
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE rv AS
        WITH s AS (
            SELECT text, compound,
                   {regex_match(low, RUNS_SMALL)} AS fit_small,
                   {regex_match(low, RUNS_LARGE)} AS fit_large,
                   {regex_match(low, FIT_PROBLEM)} AS fit_problem
            FROM review_scores_src s
        )
        SELECT r.product_id, r.review_ts, CAST(r.rating AS DOUBLE) AS rating, s.compound,
               s.fit_small, s.fit_large, s.fit_problem
        FROM t_reviews r JOIN s ON s.text = r.text
        WHERE r.review_ts IS NOT NULL
    """)
    ctx.con.unregister("review_scores_src")


def _flag(col: str) -> str:
    return f"CASE WHEN {col} THEN 1.0 ELSE 0.0 END"


RUNNINGS = [Running("product", name) for name in ("p_rev", "p_sent", "p_neg", "p_fit", "p_rated", "p_rating")]

EVENTS = [
    Events(
        "product",
        "FROM rv",
        "review_ts",
        {
            "p_rev": "1.0",
            "p_sent": "compound",
            "p_neg": "CASE WHEN compound <= {negative_sentiment} THEN 1.0 ELSE 0.0 END",
            "p_fit": _flag("fit_problem"),
            "p_rated": "CASE WHEN rating IS NOT NULL THEN 1.0 ELSE 0.0 END",
            "p_rating": "coalesce(rating, 0.0)",
        },
    )
]

_REVIEWS = ("reviews",)

FEATURES = [
    FeatureSpec(
        "product_review_count",
        FAMILY,
        "numeric",
        "Reviews of the product posted before the order.",
        False,
        "s.p_rev",
        requires=_REVIEWS,
    ),
    FeatureSpec(
        "product_sentiment_mean",
        FAMILY,
        "numeric",
        "Mean VADER compound sentiment (-1..1) of the product's earlier reviews.",
        False,
        "CASE WHEN s.p_rev > 0 THEN s.p_sent / s.p_rev END",
        requires=_REVIEWS,
    ),
    FeatureSpec(
        "product_negative_share",
        FAMILY,
        "numeric",
        "Share of the product's earlier reviews with negative sentiment (compound <= negative_sentiment).",
        False,
        "CASE WHEN s.p_rev > 0 THEN s.p_neg / s.p_rev END",
        requires=_REVIEWS,
    ),
    FeatureSpec(
        "product_fit_mention_share",
        FAMILY,
        "numeric",
        "Share of the product's earlier reviews that mention a fit problem (runs small/large, does not fit...).",
        False,
        "CASE WHEN s.p_rev > 0 THEN s.p_fit / s.p_rev END",
        requires=_REVIEWS,
    ),
    FeatureSpec(
        "product_rating_mean",
        FAMILY,
        "numeric",
        "Mean star rating (1-5) of the product's earlier rated reviews.",
        False,
        "CASE WHEN s.p_rated > 0 THEN s.p_rating / s.p_rated END",
        requires=("reviews", "reviews.rating"),
    ),
]
