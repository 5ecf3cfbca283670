"""Hand-built histories per feature family, with the expected numbers worked out by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.geo import haversine_km
from features.sentiment import FIT_PROBLEM, RUNS_LARGE, RUNS_SMALL, sentiment_scores
from features.toy import Toy

PARAMS = {"labels": {"return_window_days": 30}, "featurize": {"threads": 1}}
P0, W0 = 0.2, 200.0  # default prior_return_rate and population_prior_weight


def feats(toy: Toy, cutoff: str = "2024-12-31", params=PARAMS) -> pd.DataFrame:
    df, _ = build_features(toy.tables(), cutoff, params)
    return df.set_index("line_id")


def base(**kw) -> Toy:
    t = Toy()
    t.customer(1, kw.get("signup", "2023-01-01"))
    t.product(10, "dresses", "alpha").product(11, "dresses", "alpha").product(20, "shoes", "eu_shoe")
    t.product(30, "electronics", "none")
    return t


# --- size ------------------------------------------------------------------------------------------


def test_kept_m_twice_then_orders_l_is_plus_one():
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "M"}])
    t.order(2, 1, "2024-01-05", [{"product_id": 11, "size": "M"}])
    (l_line,) = t.order(3, 1, "2024-03-01", [{"product_id": 10, "size": "L"}])
    (m_line,) = t.order(4, 1, "2024-03-02", [{"product_id": 10, "size": "m"}])
    f = feats(t)
    assert f.loc[l_line, "size_vs_kept_median"] == 1.0
    assert f.loc[l_line, "size_vs_kept_mode"] == 1.0
    assert f.loc[l_line, "size_ever_kept"] == 0.0
    assert f.loc[l_line, "n_sizes_kept"] == 1.0
    assert f.loc[l_line, "n_items_kept_sized"] == 2.0
    # sizes are matched case-insensitively; the L of 2024-03-01 is not kept yet on 03-02
    assert f.loc[m_line, "size_vs_kept_median"] == 0.0
    assert f.loc[m_line, "size_ever_kept"] == 1.0


def test_kept_needs_the_return_window_to_have_passed():
    t = base()
    t.order(1, 1, "2024-01-01 10:00", [{"product_id": 10, "size": "M"}])
    (before,) = t.order(
        2, 1, "2024-01-31 10:00", [{"product_id": 10, "size": "L"}]
    )  # window ends exactly now
    (after,) = t.order(3, 1, "2024-01-31 10:01", [{"product_id": 10, "size": "L"}])
    f = feats(t)
    assert f.loc[before, "n_items_kept_sized"] == 0.0
    assert np.isnan(f.loc[before, "size_vs_kept_median"])
    assert f.loc[after, "n_items_kept_sized"] == 1.0
    assert f.loc[after, "size_vs_kept_median"] == 1.0


def test_returned_sizes_are_not_kept_and_late_returns_withdraw_evidence():
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "S"}])
    t.ret(a, "2024-01-05", "too_small")  # returned within the window: never kept
    (b,) = t.order(2, 1, "2024-01-02", [{"product_id": 10, "size": "XL"}])
    t.ret(b, "2024-02-10", "too_large")  # kept from 02-01, withdrawn from 02-10
    (q1,) = t.order(3, 1, "2024-02-05", [{"product_id": 11, "size": "M"}])
    (q2,) = t.order(4, 1, "2024-02-11", [{"product_id": 11, "size": "M"}])
    f = feats(t)
    assert f.loc[q1, "n_items_kept_sized"] == 1.0
    assert f.loc[q1, "size_vs_kept_median"] == 3 - 5  # M (rank 3) vs XL (rank 5)
    assert f.loc[q2, "n_items_kept_sized"] == 0.0
    assert np.isnan(f.loc[q2, "size_vs_kept_mode"])


def test_median_of_two_sizes_and_mode_ties_take_the_smaller_size():
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "S"}])
    t.order(2, 1, "2024-01-02", [{"product_id": 11, "size": "L"}])
    (q,) = t.order(3, 1, "2024-03-01", [{"product_id": 10, "size": "M"}])
    f = feats(t)
    assert f.loc[q, "size_vs_kept_median"] == 0.0  # median of S (2) and L (4) is 3 = M
    assert f.loc[q, "size_vs_kept_mode"] == 1.0  # S and L tie: the smaller, S
    assert f.loc[q, "n_sizes_kept"] == 2.0


def test_size_types_do_not_mix_and_unsized_lines_get_no_size_features():
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 20, "size": "40"}])
    (q,) = t.order(
        2,
        1,
        "2024-03-01",
        [{"product_id": 10, "size": "M"}, {"product_id": 20, "size": "42"}, {"product_id": 30}],
    )[:1]
    f = feats(t)
    lines = f[f.order_id == 2]
    alpha, shoe, none = lines.iloc[0], lines.iloc[1], lines.iloc[2]
    assert alpha["n_items_kept_sized"] == 0.0 and np.isnan(alpha["size_vs_kept_median"])
    assert shoe["size_vs_kept_median"] == 2.0
    assert np.isnan(none["size_vs_kept_median"]) and np.isnan(none["size_ever_kept"])
    assert np.isnan(none["product_size_tendency"])


def test_product_size_tendency_from_earlier_reasons_and_reviews():
    t = base()
    t.customer(2)
    (a,) = t.order(1, 2, "2024-01-01", [{"product_id": 10, "size": "M"}])
    t.ret(a, "2024-01-10", "too_small")
    t.review(1, 10, "2024-01-12", "Runs a bit small, order one size up.")
    t.review(2, 10, "2024-01-20", "Lovely fabric.")
    (q,) = t.order(2, 1, "2024-01-15", [{"product_id": 10, "size": "M"}])
    t.ret(q, "2024-01-16", "too_large")  # after the order: does not count for it
    f = feats(t)
    assert f.loc[q, "product_size_tendency"] == pytest.approx((2 - 0) / (2 + 0 + 5))


# Inferred true size (normal posterior, features/size.py). Prior without shoe history: N(3.15, 1.40^2), i.e.
# precision 1 / 1.96 = 0.510204; evidence: ordered size weight 2, kept weight 1, size return weight 2 at the
# ordered rank +-1. Posterior precision = weights + 0.510204, mean = (sum w x + 0.510204 x 3.15) / precision.
# Probabilities use the normal CDF (the SQL's tanh approximation is within 3e-4: tolerance 1e-3).


def test_inferred_size_from_an_ordered_and_kept_m():
    # M (rank 3) ordered on 01-01 (w 2) and kept (w 1, window over 01-31): sum w 3, sum w x 9.
    # mean (9 + 1.607143) / 3.510204 = 3.021802, sd 1 / sqrt(3.510204) = 0.533745.
    # L (rank 4): P(3.5 < T < 4.5) = Phi(2.7697) - Phi(0.8958) = 0.18234; P(T > 4.5) 0.00281; P(T < 3.5) 0.81485.
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "M"}])
    (q,) = t.order(2, 1, "2024-03-01", [{"product_id": 11, "size": "L"}])
    f = feats(t).loc[q]
    assert f["size_fit_prob"] == pytest.approx(0.18234, abs=1e-3)
    assert f["size_prob_too_small"] == pytest.approx(0.00281, abs=1e-3)
    assert f["size_prob_too_large"] == pytest.approx(0.81485, abs=1e-3)
    assert f["size_vs_inferred"] == pytest.approx(4 - 3.021802, abs=1e-6)
    assert f["size_uncertainty"] == pytest.approx(0.533745, abs=1e-6)
    assert f["size_spread"] == pytest.approx(0.0, abs=1e-9)  # every sign says M
    assert f["n_items_ordered_sized"] == 1.0


def test_a_too_small_return_moves_the_inferred_size_up_from_when_it_is_recorded():
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "S"}])
    t.ret(a, "2024-01-05", "too_small")
    (before,) = t.order(2, 1, "2024-01-04", [{"product_id": 11, "size": "S"}])
    (after,) = t.order(3, 1, "2024-01-10", [{"product_id": 11, "size": "S"}])
    f = feats(t)
    # before the return: one S (rank 2, w 2): mean (4 + 1.607143) / 2.510204 = 2.233740, sd 0.631169
    # -> P(T = S) 0.54092, P(T > S) 0.33657
    assert f.loc[before, "size_fit_prob"] == pytest.approx(0.54092, abs=1e-3)
    assert f.loc[before, "size_prob_too_small"] == pytest.approx(0.33657, abs=1e-3)
    # after: two S ordered (the 01-04 line too: w 2 each) and the return (rank 3, w 2): sum w 6, sum w x 14,
    # sum w x^2 34 -> mean (14 + 1.607143) / 6.510204 = 2.397335, sd 0.391925; P(T = S) 0.59230,
    # P(T > S) 0.39668; spread sqrt(34/6 - (14/6)^2) = 0.471405
    assert f.loc[after, "size_fit_prob"] == pytest.approx(0.59230, abs=1e-3)
    assert f.loc[after, "size_prob_too_small"] == pytest.approx(0.39668, abs=1e-3)
    assert f.loc[after, "size_vs_inferred"] == pytest.approx(2 - 2.397335, abs=1e-6)
    assert f.loc[after, "size_spread"] == pytest.approx(0.471405, abs=1e-6)
    assert f.loc[after, "n_items_ordered_sized"] == 2.0


def test_shoe_sizes_give_the_prior_for_a_first_alpha_size():
    # two pairs of EU 42 (rank 8): standard scores (8 - 5.60) / 2.65 each, sum 1.811321. Alpha prior mean
    # 3.15 + 1.40 x 0.7 x 1.811321 / (2 + 1) = 3.741698, variance 1.96 x (1 - 0.49 x 2/3) = 1.319733 (sd
    # 1.148796). No alpha evidence: the posterior is the prior; L (rank 4): P(3.5 < T < 4.5) 0.32872,
    # P(T > 4.5) 0.25460, P(T < 3.5) 0.41668.
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 20, "size": "42"}])
    t.order(2, 1, "2024-02-01", [{"product_id": 20, "size": "42"}])
    (q,) = t.order(3, 1, "2024-03-01", [{"product_id": 10, "size": "L"}])
    f = feats(t).loc[q]
    assert f["n_items_ordered_sized"] == 0.0 and f["n_items_kept_sized"] == 0.0
    assert np.isnan(f["size_spread"])  # no evidence of its own in this size type
    assert f["size_fit_prob"] == pytest.approx(0.32872, abs=1e-3)
    assert f["size_prob_too_small"] == pytest.approx(0.25460, abs=1e-3)
    assert f["size_prob_too_large"] == pytest.approx(0.41668, abs=1e-3)
    assert f["size_vs_inferred"] == pytest.approx(4 - 3.741698, abs=1e-6)
    assert f["size_uncertainty"] == pytest.approx(1.148796, abs=1e-6)


# --- past returns -------------------------------------------------------------------------------------


def test_return_reason_mix_rates_count_resolved_returns_by_reason():
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    t.ret(a, "2024-01-05", "too_small")
    (b,) = t.order(2, 1, "2024-01-02", [{"product_id": 30}])
    t.ret(b, "2024-01-22", "damaged")  # 20 days after its order: late (>= 0.6 x 30 days)
    (c,) = t.order(3, 1, "2024-01-03", [{"product_id": 30}])
    t.ret(c, "2024-01-10", "changed_mind")
    t.order(4, 1, "2024-01-04", [{"product_id": 30}])  # kept: resolved on 02-03
    (early,) = t.order(5, 1, "2024-01-21", [{"product_id": 30}])
    (q,) = t.order(6, 1, "2024-03-01", [{"product_id": 30}])
    f = feats(t)
    # on 03-01: 5 resolved lines (a-d and the 01-21 line), shrunk with 10 pseudo-lines -> each 1 / 15
    for name in (
        "cust_fit_return_rate",
        "cust_claim_return_rate",
        "cust_mind_return_rate",
        "cust_late_return_rate",
    ):
        assert f.loc[q, name] == pytest.approx(1 / 15), name
    assert f.loc[q, "cust_quality_return_rate"] == 0.0
    # on 01-21 only a and c are resolved (the damaged return comes on 01-22)
    assert f.loc[early, "cust_fit_return_rate"] == pytest.approx(1 / 12)
    assert f.loc[early, "cust_claim_return_rate"] == 0.0 and f.loc[early, "cust_late_return_rate"] == 0.0


def test_a_return_recorded_after_the_order_does_not_count():
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30, "unit_price": 80.0, "quantity": 2}])
    t.ret(a, "2024-01-11 00:00", quantity=1)
    (b,) = t.order(2, 1, "2024-01-10", [{"product_id": 30}])
    (c,) = t.order(3, 1, "2024-01-11 00:00", [{"product_id": 30}])  # same instant as the return: not before
    (d,) = t.order(4, 1, "2024-01-12 00:00", [{"product_id": 30}])
    f = feats(t)
    assert f.loc[b, "cust_returns"] == 0 and f.loc[c, "cust_returns"] == 0
    assert f.loc[d, "cust_returns"] == 1
    assert f.loc[d, "cust_returned_value"] == 80.0
    assert f.loc[d, "cust_days_since_last_return"] == 1.0
    assert np.isnan(f.loc[c, "cust_days_since_last_return"])
    # at 01-12 the only resolved line is a (returned on 01-11): population rate as of 01-12 00:00
    pop = (1 + W0 * P0) / (1 + W0)
    assert f.loc[d, "cust_resolved_lines"] == 1
    assert f.loc[d, "cust_return_rate"] == pytest.approx((1 + 10 * pop) / (1 + 10))
    assert f.loc[d, "product_return_rate"] == pytest.approx((1 + 20 * pop) / (1 + 20))
    # on 01-11 the return is not known yet: rate is the population prior
    assert f.loc[c, "cust_return_rate"] == pytest.approx(P0)


def test_open_lines_are_not_evidence_of_keeping():
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    (q1,) = t.order(2, 1, "2024-01-20", [{"product_id": 30}])
    (q2,) = t.order(3, 1, "2024-02-15", [{"product_id": 30}])
    f = feats(t)
    assert f.loc[q1, "cust_resolved_lines"] == 0  # bought 19 days ago: outcome unknown
    assert f.loc[q2, "cust_resolved_lines"] == 1  # window over, not returned: kept
    pop = (0 + W0 * P0) / (1 + W0)
    assert f.loc[q2, "cust_return_rate"] == pytest.approx(10 * pop / 11)


# --- category -------------------------------------------------------------------------------------


def test_category_rate_counts_only_this_category_and_shrinks_to_the_customer_rate():
    t = base()
    a, _ = t.order(1, 1, "2024-01-01", [{"product_id": 10, "size": "M"}, {"product_id": 30}])
    t.ret(a, "2024-01-03")
    lines = t.order(2, 1, "2024-03-01", [{"product_id": 11, "size": "M"}, {"product_id": 30}])
    f = feats(t)
    dress, elec = f.loc[lines[0]], f.loc[lines[1]]
    assert dress["category"] == "dresses" and elec["category"] == "electronics"
    assert dress["cust_category_lines"] == 1 and elec["cust_category_lines"] == 1
    pop = (1 + W0 * P0) / (2 + W0)
    cust = (1 + 10 * pop) / (2 + 10)
    assert dress["cust_return_rate"] == pytest.approx(cust)
    assert dress["cust_category_return_rate"] == pytest.approx((1 + 5 * cust) / (1 + 5))
    assert elec["cust_category_return_rate"] == pytest.approx((0 + 5 * cust) / (1 + 5))


# --- price ----------------------------------------------------------------------------------------------


def test_discount_basket_value_and_price_vs_last_months_category_median():
    t = base()
    t.customer(2)
    for i, price in enumerate((10, 20, 30, 40, 50)):
        t.order(10 + i, 2, f"2024-01-{i + 2:02d}", [{"product_id": 30, "unit_price": price}])
    lines = t.order(
        1,
        1,
        "2024-02-10",
        [
            {"product_id": 30, "unit_price": 60.0, "list_price": 75.0},
            {"product_id": 10, "unit_price": 10.0, "quantity": 2, "size": "M"},
        ],
    )
    # a January line priced 30 keeps January's median at 30 (10, 20, 30, 30, 40, 50)
    (same_month,) = t.order(2, 1, "2024-01-20", [{"product_id": 30, "unit_price": 30.0}])
    f = feats(t)
    e = f.loc[lines[0]]
    assert e["discount"] == pytest.approx(0.2)
    assert e["price_vs_category_median"] == pytest.approx(60 / 30)
    assert e["basket_value"] == pytest.approx(60 + 2 * 10)
    assert np.isnan(f.loc[same_month, "price_vs_category_median"])  # no earlier month with 5 lines
    assert np.isnan(f.loc[lines[1], "price_vs_category_median"])  # dresses: no history
    assert np.isnan(f.loc[lines[1], "discount"])  # no list price on that line


# --- shipping ----------------------------------------------------------------------------------------


def test_distance_from_centroids_or_coordinates_and_cross_border():
    t = base()
    t.warehouse(1, "DE").warehouse(2, "FR", 48.85, 2.35)
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}], ship_country="FR", warehouse_id=1)
    (b,) = t.order(
        2,
        1,
        "2024-01-02",
        [{"product_id": 30}],
        ship_country="FR",
        warehouse_id=2,
        ship_lat=45.76,
        ship_lon=4.84,
    )
    f = feats(t)
    assert f.loc[a, "ship_distance_km"] == pytest.approx(float(haversine_km(51.1, 10.4, 46.6, 2.4)[()]))
    assert f.loc[a, "cross_border"] == 1.0
    assert f.loc[b, "ship_distance_km"] == pytest.approx(float(haversine_km(48.85, 2.35, 45.76, 4.84)[()]))
    assert 380 < f.loc[b, "ship_distance_km"] < 400  # Paris-Lyon
    assert f.loc[b, "cross_border"] == 0.0


def test_earlier_delivery_delays_count_only_deliveries_before_the_order():
    t = base()
    t.order(1, 1, "2024-01-01", [{"product_id": 30}], delivered="2024-01-03")
    t.order(2, 1, "2024-01-04", [{"product_id": 30}], delivered="2024-01-14")
    t.order(3, 1, "2024-01-10", [{"product_id": 30}], delivered="2024-01-30")  # still in transit on 01-20
    (q,) = t.order(4, 1, "2024-01-20", [{"product_id": 30}])
    f = feats(t)
    assert f.loc[q, "cust_mean_delivery_days"] == pytest.approx((2 + 10) / 2)
    assert f.loc[q, "cust_late_delivery_share"] == pytest.approx(0.5)  # 10 days > 7


# --- sentiment ----------------------------------------------------------------------------------------


def test_review_aggregates_use_reviews_posted_strictly_before():
    good, bad = "I love it, great quality and beautiful colour!", "Runs small and feels cheap. Disappointed."
    t = base()
    t.review(1, 10, "2024-01-01", good, 5).review(2, 10, "2024-01-02", bad, 1)
    t.review(3, 10, "2024-01-05", "Terrible, awful, worst purchase.", 1)  # same instant as the order
    (q,) = t.order(1, 1, "2024-01-05", [{"product_id": 10, "size": "M"}])
    f = feats(t)
    s_good, s_bad = sentiment_scores([good, bad])
    assert s_good > 0.5 and s_bad < -0.05
    assert f.loc[q, "product_review_count"] == 2
    assert f.loc[q, "product_sentiment_mean"] == pytest.approx((s_good + s_bad) / 2)
    assert f.loc[q, "product_negative_share"] == 0.5
    assert f.loc[q, "product_fit_mention_share"] == 0.5
    assert f.loc[q, "product_rating_mean"] == 3.0


def test_vader_worker_process_gives_the_in_process_scores_bit_for_bit(monkeypatch):
    from features import vader

    texts = ["I love it, great fit!", "Terrible. Runs small \u2014 sent it back \U0001f61e", "", "meh.\n\tok"]
    assert vader._unpack(vader._pack(texts)) == texts
    scores, seconds = vader.start_scoring(texts)()
    assert scores.tobytes() == sentiment_scores(texts).tobytes() and seconds > 0
    assert scores[0] > 0.5 and scores[1] < -0.05
    monkeypatch.setattr(vader.sys, "executable", "/bin/false")  # a worker that fails says so
    with pytest.raises(RuntimeError, match="VADER worker failed"):
        vader.start_scoring(texts)()


@pytest.mark.skipif(not hasattr(os, "nice"), reason="process priorities are a Unix feature")
def test_vader_worker_runs_at_the_lowest_cpu_priority():
    """The worker yields the cores to the scan's threads (its scores are needed only later)."""
    code = "import os; from features.vader import _yield_cpu; _yield_cpu(); print(os.nice(0))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert int(out.stdout) == 19


def test_review_scoring_starts_before_the_base_tables(monkeypatch):
    """featurize starts VADER between the input views and the joins and sorts of the base tables."""
    from features import sentiment

    seen = []
    original = sentiment.prepare

    def prepare(ctx):
        tables = {n for (n,) in ctx.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        views = {n for (n,) in ctx.con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        seen.append(("ln" in tables, "t_reviews" in views, ctx.background))
        original(ctx)

    monkeypatch.setattr(sentiment, "prepare", prepare)
    t = base()
    t.review(1, 10, "2024-01-01", "I love it, great quality!", 5)
    (q,) = t.order(1, 1, "2024-01-05", [{"product_id": 10, "size": "M"}])
    f = feats(t)
    assert seen == [(False, True, True)]  # once, before `ln`, in the background
    assert f.loc[q, "product_sentiment_mean"] > 0.5


@pytest.mark.parametrize(
    ("text", "small", "large", "problem"),
    [
        ("It runs a bit small, size up!", True, False, True),
        ("Way too big on me", False, True, True),
        ("Fits true to size, lovely", False, False, False),
        ("Sadly it didn't fit.", False, False, True),
        ("I ordered one size down and it is perfect", False, True, True),
        ("Small scratch on the screen", False, False, False),
    ],
)
def test_fit_rule(text, small, large, problem):
    low = text.lower()
    assert bool(re.search(RUNS_SMALL, low)) is small
    assert bool(re.search(RUNS_LARGE, low)) is large
    assert bool(re.search(FIT_PROBLEM, low)) is problem


# --- basket -----------------------------------------------------------------------------------------


def test_bracketing_and_basket_counts():
    t = base()
    lines = t.order(
        1,
        1,
        "2024-01-01",
        [
            {"product_id": 10, "size": "M", "color": "red"},
            {"product_id": 10, "size": "L", "color": "red"},
            {"product_id": 11, "size": "M", "color": "blue", "quantity": 3},
        ],
    )
    f = feats(t)
    first = f.loc[lines[0]]
    assert (first["basket_lines"], first["basket_units"]) == (3, 5)
    assert (first["same_product_lines"], first["same_product_sizes"], first["same_product_colors"]) == (
        2,
        2,
        1,
    )
    assert first["same_category_lines"] == 3
    assert f.loc[lines[2], "same_product_sizes"] == 1 and f.loc[lines[2], "quantity"] == 3


def test_tenure_and_order_frequency():
    t = base(signup="2023-01-01")
    t.customer(2)  # no signup date: tenure from the first earlier order
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    t.order(2, 1, "2024-01-01", [{"product_id": 30}])  # same instant as order 1: neither sees the other
    (b,) = t.order(3, 1, "2024-03-01", [{"product_id": 30}])
    (c,) = t.order(4, 2, "2024-01-01", [{"product_id": 30}])
    (d,) = t.order(5, 2, "2024-01-11", [{"product_id": 30}])
    f = feats(t)
    assert f.loc[a, "cust_tenure_days"] == 365 and f.loc[a, "cust_prior_orders"] == 0
    assert f.loc[b, "cust_prior_orders"] == 2
    assert f.loc[b, "cust_orders_per_30d"] == pytest.approx(30 * 2 / (365 + 60))
    assert f.loc[c, "cust_tenure_days"] == 0 and f.loc[c, "cust_orders_per_30d"] == 0
    assert f.loc[d, "cust_tenure_days"] == 10
    assert f.loc[d, "cust_orders_per_30d"] == pytest.approx(1.0)  # 1 order / max(10, 30) days * 30


# --- labels -------------------------------------------------------------------------------------------


def test_labels_use_the_cutoff():
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    (b,) = t.order(2, 1, "2024-01-20", [{"product_id": 30}])
    t.ret(a, "2024-01-25").ret(b, "2024-02-05")
    f = feats(t, cutoff="2024-02-01")
    assert f.loc[a, "returned"] == 1 and f.loc[b, "returned"] == 0  # b's return is after the cutoff
    assert bool(f.loc[a, "label_mature"]) and not bool(f.loc[b, "label_mature"])
    assert f["returned"].dtype == np.int8 and f["label_mature"].dtype == bool


def test_a_return_after_the_window_does_not_flip_a_mature_label():
    # window 30 days: a's return on day 29 counts, b's on day 45 (a late cancellation, common in real exports)
    # does not, so every mature label has the same hindsight whatever the cutoff
    t = base()
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    (b,) = t.order(2, 1, "2024-01-01", [{"product_id": 30}])
    t.ret(a, "2024-01-30").ret(b, "2024-02-15")
    early = feats(t, cutoff="2024-02-05")
    late = feats(t, cutoff="2024-06-01")
    for f in (early, late):
        assert f.loc[a, "returned"] == 1 and f.loc[b, "returned"] == 0
        assert bool(f.loc[b, "label_mature"])
