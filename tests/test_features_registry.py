"""Registry invariants, generated docs in sync, params, and the featurize command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features import registry
from features.docs import render
from features.engine import FeaturizeParams
from features.spec import FAMILIES, FeatureSpec

ROOT = Path(__file__).resolve().parents[1]


def test_every_family_has_features_and_names_are_unique():
    names = [f.name for f in registry.FEATURES]
    assert len(names) == len(set(names))
    assert {f.family for f in registry.FEATURES} == set(FAMILIES)


def test_protected_attributes_are_refused():
    with pytest.raises(ValueError, match="protected"):
        registry.check_registry([FeatureSpec("customer_age", "basket", "numeric", "x", True, "1")])
    with pytest.raises(ValueError, match="protected"):
        registry.check_registry(
            [FeatureSpec("x", "basket", "numeric", "x", True, "1", requires=("customers.gender",))]
        )
    assert not [f for f in registry.FEATURES if any(w in f.expr for w in ("gender", "title", " age"))]


def test_feature_names_filters():
    blind = registry.feature_names(customer_blind=True)
    assert "product_return_rate" in blind and "cust_return_rate" not in blind
    assert registry.feature_names(["sentiment"])[0] == "product_review_count"
    no_reviews = registry.feature_names(available={"orders", "order_lines"})
    assert "product_review_count" not in no_reviews and "unit_price" in no_reviews
    with pytest.raises(ValueError, match="unknown feature families"):
        registry.feature_names(["nope"])


def test_docs_are_generated_from_the_registry():
    assert (ROOT / "docs" / "features.md").read_text(encoding="utf-8") == render(), (
        "docs/features.md is stale: run `.venv/bin/python -m features.docs > docs/features.md`"
    )


def test_params_yaml_featurize_section_matches_the_defaults():
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    p = FeaturizeParams.from_params(params)
    assert p == FeaturizeParams(
        **{**params["featurize"], "return_window_days": params["labels"]["return_window_days"]}
    )
    with pytest.raises(ValueError, match="unknown keys"):
        FeaturizeParams.from_params({"featurize": {"tread": 2}})


def test_featurize_command_end_to_end(small_generated, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    report = tmp_path / "metrics" / "featurize.json"
    # CSV inputs are accepted too: one table as CSV
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in small_generated.raw.iterdir():
        (raw / p.name).write_bytes(p.read_bytes())
    (raw / "reviews.parquet").unlink()  # a dataset without reviews
    customers = raw / "customers.parquet"
    pd.read_parquet(customers).to_csv(raw / "customers.csv", index=False)
    customers.unlink()
    res = CliRunner().invoke(
        app, ["featurize", str(raw), "--out", str(tmp_path / "features"), "--report", str(report)]
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert set(rep["skipped_features"]) == set(registry.feature_names(["sentiment"]))
    df = pd.read_parquet(tmp_path / "features" / "features.parquet")
    assert len(df) == rep["rows"] == len(pd.read_parquet(raw / "order_lines.parquet"))
    assert list(df.columns[5:-2]) == [f.name for f in registry.FEATURES]
    assert df["product_review_count"].isna().all() and df["cust_return_rate"].notna().all()
    assert "skipped" in res.output
