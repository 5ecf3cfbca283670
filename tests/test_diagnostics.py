"""Product diagnostics: expectation without product history, cross-fitting, cell tests, BH, truth metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from models import diagnostics as D

P = D.DiagnoseParams(min_lines=20, alpha=0.05)


# ---------------------------------------------------------------- which features the expectation uses
def test_expectation_drops_every_product_history_feature_and_keeps_the_rest():
    from features.registry import FEATURES
    from models.train import specs_from_registry

    specs = specs_from_registry()
    kept = {s.name for s in D.expectation_specs(specs)}
    dropped = {s.name for s in specs} - kept
    # the product's own past: return rate, size tendency, review sentiment/ratings
    assert {"product_return_rate", "product_resolved_lines", "product_size_tendency"} <= dropped
    assert {f.name for f in FEATURES if f.family == "sentiment"} <= dropped
    # basket facts about the same product in one order, customers, prices, category stay
    assert {"same_product_sizes", "category", "unit_price", "cust_return_rate"} <= kept
    assert all(D.is_product_history(n) for n in dropped)


def test_expectation_specs_refuses_an_empty_list():
    with pytest.raises(ValueError, match="product history"):
        D.expectation_specs([SimpleNamespace(name="product_return_rate")])


# ---------------------------------------------------------------- folds
def test_product_folds_keep_a_product_together_and_are_seeded():
    pid = pd.Series(np.repeat(np.arange(30), 5))
    f = D.product_folds(pid, 3, seed=1)
    assert (pd.Series(f).groupby(pid).nunique() == 1).all()
    assert set(f) == {0, 1, 2} and np.bincount(f).tolist() == [50, 50, 50]
    assert np.array_equal(f, D.product_folds(pid, 3, seed=1))
    assert not np.array_equal(f, D.product_folds(pid, 3, seed=2))


def test_product_folds_errors():
    with pytest.raises(ValueError, match="missing"):
        D.product_folds(pd.Series([1.0, None, 2.0]), 2, 0)
    with pytest.raises(ValueError, match="cannot be split"):
        D.product_folds(pd.Series([1, 1, 2]), 3, 0)


# ---------------------------------------------------------------- Benjamini-Hochberg
def test_benjamini_hochberg_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan])
    q = D.benjamini_hochberg(p)
    # m = 4: sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.06, 0.0533, 0.20 -> step-up min from the top
    assert q[0] == pytest.approx(0.04)
    assert q[2] == pytest.approx(0.16 / 3) and q[1] == pytest.approx(0.16 / 3)
    assert q[3] == pytest.approx(0.20)
    assert np.isnan(q[4])
    assert (q[:4] >= p[:4]).all()


def test_benjamini_hochberg_controls_false_discoveries_under_the_null():
    rng = np.random.default_rng(0)
    flagged = [(D.benjamini_hochberg(rng.random(200)) <= 0.05).sum() for _ in range(200)]
    # all nulls: FDR = P(any flag) <= alpha
    assert np.mean(np.array(flagged) > 0) <= 0.08


# ---------------------------------------------------------------- cell tests
def _lines() -> pd.DataFrame:
    rows = []
    # product 1: 40 lines expected 0.2, 20 returned (way above); sizes S/M
    rows += [(1, "S" if i % 2 else "M", "red", int(i < 20), 0.2) for i in range(40)]
    # product 2: 40 lines expected 0.2, 8 returned (as expected)
    rows += [(2, "M", "blue", int(i < 8), 0.2) for i in range(40)]
    # product 3: 10 lines, all returned but too few to test
    rows += [(3, None, None, 1, 0.2) for _ in range(10)]
    return pd.DataFrame(rows, columns=["product_id", "size", "color", "returned", "p_expected"])


def test_cell_tests_counts_pvalue_and_flag():
    cells = D.cell_tests(_lines(), ["product_id"], P).set_index("product_id")
    assert cells.loc[1, "n_lines"] == 40 and cells.loc[1, "observed"] == 20
    assert cells.loc[1, "expected"] == pytest.approx(8.0)
    assert cells.loc[1, "ratio"] == pytest.approx(2.5)
    # equal probabilities: the Poisson-binomial tail is the binomial tail P(X >= 20)
    assert cells.loc[1, "pvalue"] == pytest.approx(binom.sf(19, 40, 0.2), rel=1e-9)
    assert cells.loc[2, "pvalue"] == pytest.approx(binom.sf(7, 40, 0.2), rel=1e-9)
    assert bool(cells.loc[1, "flagged"]) and not bool(cells.loc[2, "flagged"])
    assert not bool(cells.loc[3, "tested"]) and np.isnan(cells.loc[3, "pvalue"])
    assert not bool(cells.loc[3, "flagged"])


def test_cell_tests_leave_out_lines_without_the_key():
    cells = D.cell_tests(_lines(), ["product_id", "size"], P)
    assert set(map(tuple, cells[["product_id", "size"]].to_numpy())) == {(1, "M"), (1, "S"), (2, "M")}
    assert cells["n_lines"].sum() == 80


def test_min_ratio_is_an_effect_size_floor():
    strict = D.DiagnoseParams(min_lines=20, min_ratio=3.0)
    assert not D.cell_tests(_lines(), ["product_id"], strict)["flagged"].any()


def test_cell_tests_need_their_columns_and_expectations():
    with pytest.raises(ValueError, match="p_expected"):
        D.cell_tests(_lines().drop(columns="p_expected"), ["product_id"], P)
    bad = _lines()
    bad.loc[0, "p_expected"] = np.nan
    with pytest.raises(ValueError, match="missing on some lines"):
        D.cell_tests(bad, ["product_id"], P)


def test_diagnose_cells_all_levels_and_skips_a_level_without_data():
    cells = D.diagnose_cells(_lines(), P)
    assert list(cells.columns) == D.CELL_COLUMNS
    assert set(cells["level"]) == {"product", "product_size", "product_color"}
    assert cells["flagged"].iloc[0]  # flagged first
    no_sizes = _lines().assign(size=None)
    assert "product_size" not in set(D.diagnose_cells(no_sizes, P)["level"])
    fp = D.flagged_products(cells)
    assert fp["product_id"].tolist() == [1]
    assert fp.loc[0, "n_lines"] == 40


def test_params_are_checked():
    with pytest.raises(ValueError, match="alpha"):
        D.DiagnoseParams(alpha=0)
    with pytest.raises(ValueError, match="folds"):
        D.DiagnoseParams(folds=1)
    with pytest.raises(ValueError, match="levels"):
        D.DiagnoseParams(levels=("brand",))
    p = D.DiagnoseParams.from_params({"diagnose": {"alpha": 0.1, "window_days": 90, "model": {"a": 1}}})
    assert p.alpha == 0.1 and p.window_days == 90 and p.model == {"calibration_ece_bins": 15, "a": 1}


def test_expectation_model_selects_its_calibrator_with_the_evaluate_stage_bins():
    params = {"evaluate": {"ece_bins": 10}, "diagnose": {"model": {"calibration": "auto"}}}
    assert D.DiagnoseParams.from_params(params).model == {"calibration_ece_bins": 10, "calibration": "auto"}


# ---------------------------------------------------------------- evaluation against the hidden truth
def test_evaluate_against_truth_recall_and_false_discovery_share():
    cells = pd.DataFrame(
        {
            "level": ["product"] * 4 + ["product_size"],
            "product_id": [1, 2, 3, 4, 3],
            "n_lines": [50, 50, 50, 5, 20],
            "flagged": [True, True, False, False, True],
        }
    )
    truth = pd.DataFrame(
        {"product_id": [1, 2, 3, 4, 5], "size_bias": [-1, 0, 0, 1, 0], "quality": [0.9, 0.9, 0.2, 0.8, 0.9]}
    )
    m = D.evaluate_against_truth(cells, truth, quality_threshold=0.4, min_lines=30)
    # abnormal: 1 (size), 3 (quality), 4 (size, untestable); flagged products: 1, 2, 3 (via a size cell)
    assert m["n_abnormal"] == 3 and m["n_flagged_products"] == 3
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["recall_testable"] == pytest.approx(1.0)
    assert m["recall_size_bias"] == pytest.approx(0.5)
    assert m["false_discovery_share"] == pytest.approx(1 / 3)
    assert m["product.false_discovery_share"] == pytest.approx(0.5)
    assert m["product_size.false_discovery_share"] == 0.0


# ---------------------------------------------------------------- the cross-fitted expectation
def _world(seed: int = 0, n_products: int = 60, per_product: int = 120):
    """Returns depend on a line feature x and, for products 0-5, on a hidden product defect. The feature
    product_return_rate leaks each product's true rate (as a product-history feature would)."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_products), per_product)
    x = rng.normal(size=len(pid))
    defect = np.isin(pid, np.arange(6))
    logit = -1.3 + 0.8 * x + 1.4 * defect
    y = (rng.random(len(pid)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    rate = pd.Series(y).groupby(pid).transform("mean").to_numpy()
    frame = pd.DataFrame({"product_id": pid, "x": x, "product_return_rate": rate, "returned": y})
    return frame, defect


SPECS = [SimpleNamespace(name="x", categorical=False, uses_customer_history=False),
         SimpleNamespace(name="product_return_rate", categorical=False, uses_customer_history=False)]  # fmt: skip
FAST = D.DiagnoseParams(
    min_lines=30,
    folds=3,
    model={"num_boost_round": 60, "early_stopping_rounds": 10, "calibration": "platt",
           "lgbm": {"learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 50, "num_threads": 1}},
)  # fmt: skip


def test_cross_fitted_expectation_finds_the_defective_products():
    frame, defect = _world()
    specs = D.expectation_specs(SPECS)
    assert [s.name for s in specs] == ["x"]
    usable = np.ones(len(frame), dtype=bool)
    p = D.cross_fitted_expectation(frame, usable, specs, FAST, seed=3)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    lines = frame.assign(p_expected=p)
    cells = D.cell_tests(lines, ["product_id"], FAST).set_index("product_id")
    flagged = set(cells.index[cells["flagged"]])
    assert flagged >= {0, 1, 2, 3, 4, 5}  # a 0.25 -> 0.55 return rate on 120 lines each
    assert len(flagged - set(range(6))) <= 1
    # expected counts add up overall (calibrated), within a few percent
    assert p.sum() == pytest.approx(frame["returned"].sum(), rel=0.08)


def test_a_products_own_labels_never_move_its_expectation():
    """Out-of-fold by product: flipping every label of one product leaves its expected probabilities as is."""
    frame, _ = _world(seed=1)
    specs = D.expectation_specs(SPECS)
    usable = np.ones(len(frame), dtype=bool)
    base = D.cross_fitted_expectation(frame, usable, specs, FAST, seed=3)
    changed = frame.copy()
    mine = (changed["product_id"] == 7).to_numpy()
    changed.loc[mine, "returned"] = 1 - changed.loc[mine, "returned"]
    again = D.cross_fitted_expectation(changed, usable, specs, FAST, seed=3)
    np.testing.assert_allclose(again[mine], base[mine], rtol=0, atol=1e-12)
    assert not np.allclose(again[~mine], base[~mine])  # other folds did learn from those labels


def test_unusable_lines_get_no_expectation():
    frame, _ = _world(seed=2, n_products=30)
    usable = (np.arange(len(frame)) % 4) != 0
    p = D.cross_fitted_expectation(frame, usable, D.expectation_specs(SPECS), FAST, seed=3)
    assert np.isnan(p[~usable]).all() and np.isfinite(p[usable]).all()
    with pytest.raises(ValueError, match="no line"):
        D.cross_fitted_expectation(frame, np.zeros(len(frame), bool), SPECS, FAST, seed=3)


def test_product_history_would_explain_the_defect_away():
    """Why the expectation leaves product history out: with it, the defective products look normal."""
    frame, _ = _world()
    usable = np.ones(len(frame), dtype=bool)
    leaky = D.cross_fitted_expectation(frame, usable, SPECS, FAST, seed=3)
    cells = D.cell_tests(frame.assign(p_expected=leaky), ["product_id"], FAST).set_index("product_id")
    assert cells.loc[list(range(6)), "flagged"].sum() <= 2


# ---------------------------------------------------------------- reason tests
def test_leave_product_out_share_matches_hand_computation():
    # products 0,1 in category 0; product 2 in category 1
    hit = np.array([1, 0, 1, 1, 0, 0, 1], dtype=float)
    trials = np.ones(7)
    product = np.array([0, 0, 1, 1, 1, 2, 2])
    group = np.array([0, 0, 0, 0, 0, 1, 1])
    s = D.leave_product_out_share(hit, trials, product, group, prior_weight=0.0)
    # product 0: category 0 without it = 2 hits / 3 trials; product 1: 1 / 2; product 2: alone -> overall
    assert s[0] == pytest.approx(2 / 3) and s[2] == pytest.approx(1 / 2)
    # product 2's category has no other product: the share of every other product (3 / 5)
    assert s[5] == pytest.approx(3 / 5)
    shrunk = D.leave_product_out_share(hit, trials, product, group, prior_weight=3.0)
    # (2 + 3 * overall) / (3 + 3), overall without product 0 = 3 hits / 5 trials
    assert shrunk[0] == pytest.approx((2 + 3 * 3 / 5) / 6)


def _reason_lines(
    seed: int = 0, n_products: int = 40, per_product: int = 100, planted: bool = True
) -> pd.DataFrame:
    """Every product returns 30 % of its lines (as expected); reasons split 20 % too_small, 20 % too_large,
    10 % quality, the rest changed_mind. When `planted`, product 0 runs small: 65 % of its returns are
    too_small, at the same return rate, so the rate test cannot see it."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_products), per_product)
    returned = (rng.random(len(pid)) < 0.3).astype(np.int8)
    reasons = np.array(["too_small", "too_large", "quality", "changed_mind"])
    r = reasons[rng.choice(4, len(pid), p=[0.2, 0.2, 0.1, 0.5])]
    small = (pid == 0) & planted
    r[small] = reasons[rng.choice(4, small.sum(), p=[0.65, 0.05, 0.05, 0.25])]
    return pd.DataFrame(
        {
            "product_id": pid,
            "category": np.where(pid % 2 == 0, "tops", "jeans"),
            "returned": returned,
            "p_expected": 0.3,
            "reason": pd.Series(r, dtype="string").where(returned == 1),
        }
    )


def test_planted_too_small_excess_is_found_and_typed_runs_small():
    lines = _reason_lines()
    cells = D.diagnose_cells(lines, P)
    prod = cells[cells["level"] == "product"]
    flagged = prod[prod["flagged"]]
    assert set(flagged["product_id"]) == {0}
    assert flagged["test"].tolist() == ["runs_small"]
    assert flagged["finding"].tolist() == ["runs small"] and "size chart" in flagged["action"].iloc[0]
    # the rate test alone misses it: the return rate is normal
    rate0 = prod[(prod["product_id"] == 0) & (prod["test"] == D.RATE_TEST)].iloc[0]
    assert not rate0["flagged"]
    fp = D.flagged_products(cells)
    assert fp[["product_id", "finding"]].values.tolist() == [[0, "runs small"]]
    # Benjamini-Hochberg ran over every product-level test together (4 tests x 40 products)
    q = D.benjamini_hochberg(prod["pvalue"].to_numpy())
    np.testing.assert_allclose(np.sort(prod["qvalue"].to_numpy()), np.sort(q))


def test_reason_test_expectation_is_line_probability_times_category_share_of_other_products():
    lines = _reason_lines()
    rt = D.reason_tests(lines, P).set_index(["product_id", "test"])
    other = lines[(lines["category"] == "tops") & (lines["product_id"] != 2) & (lines["returned"] == 1)]
    share = (other["reason"] == "too_small").mean()  # prior_weight 20 pulls it toward all other products
    everyone = lines[(lines["product_id"] != 2) & (lines["returned"] == 1)]
    overall = (everyone["reason"] == "too_small").mean()
    shrunk = (share * len(other) + 20 * overall) / (len(other) + 20)
    assert rt.loc[(2, "runs_small"), "expected"] == pytest.approx(100 * 0.3 * shrunk)
    own = lines[(lines["product_id"] == 2) & (lines["reason"] == "too_small")]
    assert rt.loc[(2, "runs_small"), "observed"] == len(own)
    assert np.isnan(rt.loc[(2, "runs_small"), "review_observed"])  # no reviews given


def test_normal_reasons_are_not_flagged_and_no_reasons_means_rate_tests_only():
    lines = _reason_lines(planted=False)
    assert not D.diagnose_cells(lines, P)["flagged"].any()
    no_reason = _reason_lines().assign(reason=pd.Series(pd.NA, dtype="string"))
    assert not D.has_reasons(no_reason)
    cells = D.diagnose_cells(no_reason, P)
    assert set(cells["test"]) == {D.RATE_TEST}
    m = D.summary_metrics(cells, no_reason)
    assert m["reason_tests_run"] == 0.0 and m["findings.runs_small"] == 0.0


def test_review_marks_fit_rule_and_negative_rating():
    reviews = pd.DataFrame(
        {
            "product_id": [1, 1, 2, 2],
            "rating": [1, 5, None, 3],
            "text": ["Runs a bit small, size up.", "Perfect, love it", "Way too big", None],
        }
    )
    m = D.review_marks(reviews, negative_rating=2)
    assert m["runs_small"].tolist() == [True, False, False, False]
    assert m["runs_large"].tolist() == [False, False, True, False]
    assert m["negative"].tolist()[:2] == [True, False] and pd.isna(m["negative"].iloc[2])
    assert m["negative"].iloc[3] is np.False_ or not m["negative"].iloc[3]


def test_reviews_add_evidence_to_the_reason_test():
    lines = _reason_lines(planted=False)
    # product 0's returns are ordinary, but 20 of its 30 reviews say it runs small (others: 1 in 10)
    pids = np.concatenate([np.zeros(30, dtype=int), np.repeat(np.arange(1, 40), 10)])
    text = np.where(np.arange(len(pids)) % 10 == 0, "runs small", "lovely")
    text[:20], text[20:30] = "runs small", "lovely"
    reviews = D.review_marks(pd.DataFrame({"product_id": pids, "rating": 4, "text": text}), negative_rating=2)
    without = D.reason_tests(lines, P).set_index(["product_id", "test"])
    with_rv = D.reason_tests(lines, P, reviews).set_index(["product_id", "test"])
    row = with_rv.loc[(0, "runs_small")]
    assert row["review_observed"] == 20
    # 30 reviews x the share among the other products of its category (tops: 19 x 10 reviews, 19 marked)
    shrunk = (19 + 20 * 39 / 390) / (190 + 20)
    assert row["review_expected"] == pytest.approx(30 * shrunk)
    assert row["observed"] == without.loc[(0, "runs_small"), "observed"] + 20
    assert row["expected"] == pytest.approx(without.loc[(0, "runs_small"), "expected"] + 30 * shrunk)
    assert row["pvalue"] < 1e-3 and without.loc[(0, "runs_small"), "pvalue"] > 0.05
    cells = D.diagnose_cells(lines, P, reviews)
    assert cells.loc[cells["flagged"], ["product_id", "test"]].values.tolist() == [[0, "runs_small"]]
    no_reviews = D.DiagnoseParams(min_lines=20, use_reviews=False)
    assert D.reason_tests(lines, no_reviews, reviews)["review_observed"].isna().all()


def test_reason_test_params_are_checked():
    with pytest.raises(ValueError, match="unknown test"):
        D.DiagnoseParams(reason_tests={"colour_off": ("other",)})
    with pytest.raises(ValueError, match="unknown reason"):
        D.DiagnoseParams(reason_tests={"quality": ("broken",)})
    p = D.DiagnoseParams.from_params(
        {"diagnose": {"reason_tests": {"quality": ["quality", "not_as_described"]}, "use_reviews": False}}
    )
    assert p.reason_tests == {"quality": ("quality", "not_as_described")} and not p.use_reviews


def test_typed_recall_against_the_truth():
    cells = pd.DataFrame(
        {
            "level": ["product"] * 6,
            "product_id": [1, 2, 3, 1, 2, 3],
            "test": [D.RATE_TEST] * 3 + ["runs_small", "runs_small", "quality"],
            "n_lines": [50] * 6,
            "qvalue": [0.01, 0.5, 0.5, 0.001, 0.01, 0.02],
            "flagged": [True, False, False, True, True, True],
        }
    )
    truth = pd.DataFrame({"product_id": [1, 2, 3], "size_bias": [-1, 0, 1], "quality": [0.9, 0.9, 0.2]})
    m = D.evaluate_against_truth(cells, truth, quality_threshold=0.4, min_lines=30)
    assert m["runs_small.recall"] == 1.0 and m["runs_small.n_flagged"] == 2
    assert m["runs_small.false_share"] == 0.5  # product 2 has no size bias
    assert m["runs_large.recall"] == 0.0 and m["quality.recall"] == 1.0
    assert m["recall"] == 1.0 and m["false_discovery_share"] == pytest.approx(1 / 3)
    fp = D.flagged_products(cells.assign(size=None, color=None, observed=1, expected=1.0, ratio=1.0))
    # the most specific finding first: product 1 is "runs small" (and excess returns)
    assert fp.set_index("product_id").loc[1, "findings"] == "runs small, excess returns"
