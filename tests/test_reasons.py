"""Reason templates: coverage of every feature, sentences with the actual values, dominant cause first."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pandas as pd
import pytest

from models import explain as E
from models import reasons as R


def _all_feature_specs():
    """The registry's FEATURES; before features/registry.py exists, every features module's FEATURES."""
    try:
        from features.registry import FEATURES

        return list(FEATURES)
    except ImportError:
        import features

        specs = []
        for info in pkgutil.iter_modules(features.__path__):
            mod = importlib.import_module(f"features.{info.name}")
            specs.extend(getattr(mod, "FEATURES", []))
        return specs


def test_every_feature_has_a_template_or_a_deliberate_fallback():
    specs = _all_feature_specs()
    assert len(specs) >= 20, "feature list not found"
    missing = R.unassigned([s.name for s in specs])
    assert not missing, (
        f"features without a reason template: {missing}. Add each to a Reason in models/reasons.py, "
        "or list it in GENERIC_FALLBACK on purpose."
    )
    # reasons group features of one family only (a reason is one story)
    family = {s.name: s.family for s in specs}
    for reason in R.REASONS.values():
        fams = {family[f] for f in reason.features if f in family}
        assert fams <= {reason.family}, f"reason {reason.code} mixes families {fams}"


def test_a_new_feature_without_template_is_reported():
    assert R.unassigned(["size_vs_kept_mode", "brand_new_feature"]) == ["brand_new_feature"]
    assert R.reason_of("brand_new_feature") == "feature:brand_new_feature"
    lines = R.Lines(pd.DataFrame({"brand_new_feature": [1.5, 2.25]}), np.array([0, 1]))
    assert R.render("feature:brand_new_feature", lines).tolist() == [
        "Brand new feature: 1.50",
        "Brand new feature: 2.25",
    ]


def _lines(**cols) -> R.Lines:
    df = pd.DataFrame(cols)
    return R.Lines(df, np.arange(len(df)))


def test_size_sentence_names_the_sizes_and_the_kept_count():
    lines = _lines(
        size=["L", "S", "40"],
        size_type=["alpha", "alpha", "eu_shoe"],
        size_vs_kept_mode=[1.0, -2.0, 3.0],
        size_vs_kept_median=[1.0, -2.0, 3.0],
        size_ever_kept=[0.0, 0.0, 0.0],
        n_items_kept_sized=[4.0, 1.0, 2.0],
    )
    assert R.render("size", lines).tolist() == [
        "Size L is one larger than the M this customer usually keeps (4 items of this size type kept)",
        "Size S is two smaller than the L this customer usually keeps (1 item of this size type kept)",
        "Size 40 is three larger than the 37 this customer usually keeps (2 items of this size type kept)",
    ]
    # without the size labels the sentence speaks in steps
    bare = _lines(size_vs_kept_mode=[1.0], n_items_kept_sized=[4.0])
    assert R.render("size", bare).tolist() == [
        "Ordered one size larger than this customer usually keeps (4 items of this size type kept)"
    ]


def test_other_sentences_carry_the_values():
    assert R.render(
        "customer_returns", _lines(cust_resolved_lines=[9.0, 0.0], cust_returns=[7.0, 0.0])
    ).tolist() == [
        "This customer returned 7 of their 9 earlier items",
        "This customer has no earlier purchase whose outcome is known yet",
    ]
    ship = _lines(
        ship_distance_km=[2347.0, 80.0],
        cross_border=[1.0, 0.0],
        warehouse_country=["DE", "DE"],
        ship_country=["ES", "DE"],
    )
    assert R.render("shipping", ship).tolist() == [
        "Ships 2,300 km across a border (DE -> ES)",
        "Ships 100 km (DE -> DE)",
    ]
    reviews = R.Lines(
        pd.DataFrame(
            {
                "product_review_count": [30.0],
                "product_fit_mention_share": [0.4],
                "product_negative_share": [0.1],
            }
        ),
        np.array([0]),
        contrib=np.array([[0.0, 0.5, 0.1]]),
        features=["product_review_count", "product_fit_mention_share", "product_negative_share"],
    )
    assert R.render("reviews", reviews).tolist() == [
        "Reviews of this product mention fit problems (12 of 30)"
    ]
    assert R.render("checkout", _lines(channel=["app"], payment_method=["cod"])).tolist() == [
        "Ordered via app, paid by cash on delivery"
    ]
    never = _lines(size=["S"], size_type=["alpha"], size_ever_kept=[0.0], n_items_kept_sized=[3.0])
    assert R.render("size", never).tolist() == [
        "This customer has never kept size S (3 items of this size type kept)"
    ]
    price = R.Lines(
        pd.DataFrame({"unit_price": [50.0], "price_vs_category_median": [1.02], "discount": [0.1]}),
        np.array([0]),
        contrib=np.array([[0.3, 0.2, 0.1]]),  # the price level, not the discount, drove this line
        features=["unit_price", "price_vs_category_median", "discount"],
    )
    assert R.render("price", price).tolist() == ["Priced 50.00, about the category's typical price"]
    assert R.render("bracketing", _lines(same_product_lines=[3.0], same_product_sizes=[3.0])).tolist() == [
        "Ordered in 3 sizes in the same order (size bracketing)"
    ]
    assert R.render(
        "category", _lines(category=["dresses"], cust_category_lines=[6.0], cust_category_return_rate=[0.45])
    ).tolist() == ["This customer returns 45% of their dresses (6 earlier)"]


def test_render_reasons_no_reason_and_slots():
    frame = pd.DataFrame(
        {"cust_resolved_lines": [9.0, 4.0], "cust_returns": [7.0, 1.0], "quantity": [1.0, 3.0]}
    )
    codes = ["customer_returns", "basket"]
    idx = np.array([[0, -1], [-1, -1]])
    s1, s2 = R.render_reasons(idx, codes, frame)
    assert s1.tolist() == ["This customer returned 7 of their 9 earlier items", R.NO_REASON]
    assert s2.tolist() == [None, None]


@pytest.fixture(scope="module")
def size_driven_model():
    """A model on all real feature names where a size mismatch drives returns (and past returns too)."""
    import lightgbm as lgb

    from models.artifact import ReturnModel, encode_frame
    from models.calibration import Calibrator

    specs = _all_feature_specs()
    names = [s.name for s in specs]
    cats = {s.name: ["a", "b", "c"] for s in specs if s.kind == "categorical"}
    rng = np.random.default_rng(4)
    n = 6000
    df = pd.DataFrame({f: rng.normal(size=n) for f in names if f not in cats})
    for c in cats:
        df[c] = rng.choice(["a", "b", "c"], n)
    df["size_vs_kept_mode"] = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0, 2.0], n)
    df["size_vs_kept_median"] = df["size_vs_kept_mode"]
    df["n_items_kept_sized"] = rng.integers(0, 8, n).astype(float)
    df["cust_return_rate"] = rng.uniform(0, 0.6, n)
    z = -1.5 + 2.2 * (df["size_vs_kept_mode"].abs() > 0) + 2.0 * df["cust_return_rate"]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    X = encode_frame(df, names, cats)
    booster = lgb.train(
        dict(
            objective="binary",
            num_leaves=7,
            max_depth=3,
            learning_rate=0.1,
            verbose=-1,
            seed=1,
            num_threads=1,
        ),
        lgb.Dataset(X, y, feature_name=names, categorical_feature=[names.index(c) for c in cats]),
        num_boost_round=60,
    )
    return ReturnModel(booster, names, cats, Calibrator("identity")), df


def test_customer_keeping_m_ordering_l_gets_a_size_reason_first(size_driven_model):
    model, train = size_driven_model
    line = train.median(numeric_only=True).to_frame().T
    for c in model.categorical:
        line[c] = "a"
    line["size_vs_kept_mode"] = line["size_vs_kept_median"] = 1.0  # kept M, orders L
    line["size_ever_kept"], line["n_items_kept_sized"] = 0.0, 4.0
    line["size"], line["size_type"], line["line_id"] = "L", "alpha", 1
    out = E.explain_lines(model, line, k=3)
    assert out.loc[0, "reason_1_code"] == "size"
    assert out.loc[0, "reason_1"] == (
        "Size L is one larger than the M this customer usually keeps (4 items of this size type kept)"
    )
    # the same customer ordering their kept size has no size reason at all
    line["size_vs_kept_mode"] = line["size_vs_kept_median"] = 0.0
    line["size_ever_kept"], line["size"] = 1.0, "M"
    out = E.explain_lines(model, line, k=3)
    assert "size" not in out.loc[0, ["reason_1_code", "reason_2_code", "reason_3_code"]].tolist()


def test_grouped_reason_contributions_sum_to_ungrouped(size_driven_model):
    model, train = size_driven_model
    frame = train.iloc[:500].assign(line_id=np.arange(500))
    contrib = model.contributions(frame)
    codes, g = E.group_matrix(model.features)
    assert "size" in codes and len(codes) < len(model.features)  # grouping really merges features
    grouped = E.group_contributions(contrib, g)
    np.testing.assert_allclose(grouped.sum(axis=1), contrib[:, :-1].sum(axis=1), atol=1e-10)
    size_cols = [model.features.index(f) for f in R.REASONS["size"].features]
    np.testing.assert_allclose(grouped[:, codes.index("size")], contrib[:, size_cols].sum(axis=1), atol=1e-10)
    out = E.explain_lines(model, frame, k=3)
    for j in (1, 2, 3):  # each reported contribution is its reason's grouped value
        has = out[f"reason_{j}_code"].notna().to_numpy()
        cols = [codes.index(c) for c in out.loc[has, f"reason_{j}_code"]]
        np.testing.assert_allclose(out.loc[has, f"reason_{j}_contrib"], grouped[has, cols], atol=1e-12)


def test_inferred_size_and_return_mix_sentences_when_they_drove_the_score():
    names = ["size_fit_prob", "size_prob_too_small", "size_prob_too_large", "n_items_ordered_sized"]
    size = R.Lines(
        pd.DataFrame(
            {
                "size": ["M", "40"],
                "size_type": ["alpha", "eu_shoe"],
                "size_fit_prob": [0.3, 0.4],
                "size_prob_too_small": [0.62, 0.3],
                "size_prob_too_large": [0.08, 0.3],
                "n_items_ordered_sized": [5.0, 1.0],
            }
        ),
        np.array([0, 1]),
        contrib=np.array([[0.4, 0.2, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]]),
        features=names,
    )
    assert R.render("size", size).tolist() == [
        "Size M is probably too small for this customer (62% likely) (from 5 earlier orders and returns)",
        "This customer's size is uncertain: 40% likely that size 40 fits (from 1 earlier order and returns)",
    ]
    mix = R.Lines(
        pd.DataFrame(
            {"cust_resolved_lines": [25.0], "cust_returns": [6.0], "cust_claim_return_rate": [0.12]}
        ),
        np.array([0]),
        contrib=np.array([[0.0, 0.1, 0.5]]),
        features=["cust_resolved_lines", "cust_returns", "cust_claim_return_rate"],
    )
    assert R.render("customer_returns", mix).tolist() == [
        "This customer returned 12% of their 25 earlier items as damaged or not as described"
    ]
