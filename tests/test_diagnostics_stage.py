"""The diagnose stage end to end on the small generated project: outputs, metrics against the truth, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.commands import diagnose as C


@pytest.fixture(scope="module")
def diagnosed(small_project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diagnose")
    params = json.loads(json.dumps(small_project.params))
    params["diagnose"] = {
        **params["diagnose"],
        "min_lines": 20,
        "model": {**params["diagnose"]["model"], "num_boost_round": 150},
    }
    m = C.run_diagnose(
        small_project.path("features"),
        small_project.path("validated"),
        small_project.path("truth"),
        tmp / "out",
        tmp / "plots",
        tmp / "metrics.json",
        params,
    )
    return tmp, m, params


def test_outputs_and_metrics(diagnosed, small_project):
    tmp, m, params = diagnosed
    cells = pd.read_parquet(tmp / "out" / C.CELLS_FILE)
    assert set(cells["level"]) == {"product", "product_size", "product_color"}
    assert cells.loc[cells["tested"], "n_lines"].min() >= 20
    assert not cells.loc[~cells["tested"], "flagged"].any()
    assert (cells.loc[cells["flagged"], "qvalue"] <= params["diagnose"]["alpha"]).all()
    flagged = pd.read_csv(tmp / "out" / C.FLAGGED_FILE)
    assert len(flagged) == int(cells["flagged"].sum())
    assert flagged["cell"].str.startswith("product ").all()
    expected = pd.read_parquet(tmp / "out" / C.EXPECTED_FILE)
    features = pd.read_parquet(small_project.path("features") / "features.parquet")
    assert len(expected) == int(features["label_mature"].sum()) == m["n_lines"]
    assert expected["p_expected"].between(0, 1).all()
    # product cells cover every diagnosed line once
    rate = cells["test"] == "excess_returns"
    assert cells.loc[(cells["level"] == "product") & rate, "n_lines"].sum() == len(expected)
    # the calibrated, product-agnostic expectation adds up overall
    assert 0.9 < m["observed_over_expected"] < 1.1
    on_disk = json.loads((tmp / "metrics.json").read_text())
    assert on_disk["recall"] == m["recall"]
    for key in (
        "recall",
        "recall_testable",
        "false_discovery_share",
        "recall_size_bias",
        "recall_low_quality",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert (tmp / "plots" / C.PLOT_FILE).stat().st_size > 1000
    assert (tmp / "plots" / C.PLOT_DATA_FILE).is_file()


def test_reason_tests_run_and_type_the_findings(diagnosed):
    tmp, m, params = diagnosed
    from models.diagnostics import FINDINGS, RATE_TEST

    assert m["reason_tests_run"] == 1.0 and m["reviews_used"] == 1.0 and m["n_reviews"] > 0
    cells = pd.read_parquet(tmp / "out" / C.CELLS_FILE)
    prod = cells[cells["level"] == "product"]
    assert set(prod["test"]) == set(FINDINGS)
    assert set(cells.loc[cells["level"] != "product", "test"]) == {RATE_TEST}
    # one BH over all product-level tests: the q-values are those of the pooled p-values
    from models.diagnostics import benjamini_hochberg

    np.testing.assert_allclose(
        np.sort(prod["qvalue"].dropna().to_numpy()),
        np.sort(benjamini_hochberg(prod["pvalue"].to_numpy())[prod["pvalue"].notna()]),
    )
    products = pd.read_csv(tmp / "out" / C.PRODUCTS_FILE)
    words = {w for w, _a in FINDINGS.values()}
    assert len(products) == m["n_flagged_products"] and set(products["finding"]) <= words
    assert products["action"].str.len().gt(10).all()
    for t in FINDINGS:
        assert 0.0 <= m[f"{t}.recall"] <= 1.0, t
    # size-biased products are found by the size tests far more often than by the rate test alone
    assert m["runs_small.recall"] + m["runs_large.recall"] > 0
    report = (tmp / "out" / C.REPORT_FILE).read_text()
    assert "Reason tests per product" in report and "runs small" in report and "recall" in report


def test_flags_are_enriched_for_truly_abnormal_products(diagnosed, small_project):
    """Flagged products are far more often abnormal (size bias / low quality) than products at large."""
    tmp, m, params = diagnosed
    truth = pd.read_parquet(small_project.path("truth") / "products_truth.parquet")
    bad = (truth["size_bias"] != 0) | (truth["quality"] < params["diagnose"]["quality_threshold"])
    assert m["n_flagged_products"] >= 3
    assert 1 - m["false_discovery_share"] > bad.mean() + 0.2


def test_without_truth_no_truth_metrics(small_project, tmp_path):
    params = json.loads(json.dumps(small_project.params))
    params["diagnose"] = {
        **params["diagnose"],
        "levels": ["product"],
        "window_days": 120,
        "model": {**params["diagnose"]["model"], "num_boost_round": 40},
    }
    m = C.run_diagnose(
        small_project.path("features"),
        small_project.path("validated"),
        tmp_path / "no-truth",
        tmp_path / "out",
        tmp_path / "plots",
        tmp_path / "m.json",
        params,
    )
    assert "recall" not in m and "product.n_cells" in m and "product_size.n_cells" not in m
    features = pd.read_parquet(small_project.path("features") / "features.parquet")
    assert m["n_lines"] < features["label_mature"].sum()  # only the last 120 mature days


def test_without_reason_codes_only_the_rate_tests_run(small_project, tmp_path):
    """Like the UCI export: returns without a reason column; the report says the reason tests were skipped."""
    import shutil

    validated = tmp_path / "validated"
    shutil.copytree(small_project.path("validated"), validated)
    returns = pd.read_parquet(validated / "returns.parquet").drop(columns="reason")
    returns.to_parquet(validated / "returns.parquet")
    params = json.loads(json.dumps(small_project.params))
    params["diagnose"] = {
        **params["diagnose"],
        "levels": ["product"],
        "model": {**params["diagnose"]["model"], "num_boost_round": 40},
    }
    m = C.run_diagnose(
        small_project.path("features"),
        validated,
        None,
        tmp_path / "out",
        tmp_path / "plots",
        tmp_path / "m.json",
        params,
    )
    assert m["reason_tests_run"] == 0.0 and m["n_reviews"] == 0.0
    cells = pd.read_parquet(tmp_path / "out" / C.CELLS_FILE)
    assert set(cells["test"]) == {"excess_returns"}
    assert "Reason tests skipped" in (tmp_path / "out" / C.REPORT_FILE).read_text()


def test_missing_feature_table_is_a_clear_error(small_project, tmp_path):
    with pytest.raises(FileNotFoundError, match="featurize"):
        C.run_diagnose(
            tmp_path / "none",
            small_project.path("validated"),
            None,
            tmp_path / "o",
            tmp_path / "p",
            tmp_path / "m.json",
            small_project.params,
        )


def test_cli_help_describes_the_stage():
    from typer.testing import CliRunner

    from pipeline.cli import app

    r = CliRunner().invoke(app, ["diagnose", "--help"])
    assert r.exit_code == 0
    assert "Benjamini-Hochberg" in r.output and "--truth" in r.output and "runs small" in r.output
