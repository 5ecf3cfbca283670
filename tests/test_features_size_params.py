"""Size priors and the late-return share are params (params.yaml `featurize:`), not constants measured on the
generated data: they reach both feature paths, bad values are clear errors, and the featurize report
measures the data's size moments next to the configured ones (features/size.py, pipeline/commands/featurize.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.build import build_features
from features.engine import FeaturizeParams
from features.size import MEAN_TOLERANCE, MIN_LINES, compare_moments
from features.state import build_state, featurize_batch
from features.toy import Toy
from pipeline.commands.featurize import size_priors_report

ROOT = Path(__file__).resolve().parents[1]
CUSTOM = {
    "size_moments": {"alpha": [2.0, 1.0], "eu_shoe": [7.0, 2.0]},
    "size_cross_type_rho": 0.5,
    "size_evidence_weights": {"ordered": 4.0, "kept": 0.5, "returned": 3.0},
}


def _params(**featurize) -> dict:
    return {"labels": {"return_window_days": 30}, "featurize": {"threads": 1, **featurize}}


def _feats(toy: Toy, params: dict) -> pd.DataFrame:
    df, _ = build_features(toy.tables(), "2024-12-31", params)
    return df.set_index("line_id")


def _posterior(
    p: dict, evidence: list[tuple[float, float]], other_z: list[float]
) -> tuple[float, float, float]:
    """Reference for an alpha line (features/size.py docstring): the prior from the shoe sizes' standard
    scores, the normal posterior's mean and sd, and the spread of the customer's own (weight, rank) evidence."""
    mean, sd = p["size_moments"]["alpha"]
    rho, n = p["size_cross_type_rho"], len(other_z)
    prior_mean = mean + sd * rho * sum(other_z) / (n + 1)
    prior_prec = 1 / (sd * sd * (1 - rho * rho * n / (n + 1)))
    sw = sum(w for w, _ in evidence)
    swx = sum(w * x for w, x in evidence)
    swx2 = sum(w * x * x for w, x in evidence)
    spread = math.sqrt(swx2 / sw - (swx / sw) ** 2)
    return (swx + prior_prec * prior_mean) / (sw + prior_prec), 1 / math.sqrt(sw + prior_prec), spread


def _history() -> tuple[Toy, int]:
    """One customer: shoes EU 42 (rank 8), alpha S returned as too small, alpha M kept; then orders L."""
    t = Toy()
    t.customer(1, "2023-01-01")
    t.product(10, "dresses", "alpha").product(20, "shoes", "eu_shoe")
    t.order(1, 1, "2024-01-01", [{"product_id": 20, "size": "42"}])
    (s_line,) = t.order(2, 1, "2024-01-10", [{"product_id": 10, "size": "S"}])
    t.ret(s_line, "2024-01-20", "too_small")
    t.order(3, 1, "2024-02-01", [{"product_id": 10, "size": "M"}])  # kept from 03-02
    (q,) = t.order(4, 1, "2024-04-01", [{"product_id": 10, "size": "L"}])
    return t, q


def test_params_yaml_and_the_dataclass_carry_the_same_defaults():
    section = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["featurize"]
    defaults = FeaturizeParams()
    for key in ("size_moments", "size_cross_type_rho", "size_evidence_weights", "late_return_share"):
        assert section[key] == getattr(defaults, key), key


@pytest.mark.parametrize("params", [{}, CUSTOM], ids=["defaults", "custom"])
def test_size_priors_and_weights_come_from_params(params):
    t, q = _history()
    p = {**FeaturizeParams().__dict__, **params}
    w = p["size_evidence_weights"]
    shoe_mean, shoe_sd = p["size_moments"]["eu_shoe"]
    # ordered S (rank 2), the too-small return (rank 3), ordered M (rank 3) and M kept
    evidence = [(w["ordered"], 2), (w["returned"], 3), (w["ordered"], 3), (w["kept"], 3)]
    mean, sd, spread = _posterior(p, evidence, [(8 - shoe_mean) / shoe_sd])
    f = _feats(t, _params(**params)).loc[q]
    assert f["size_vs_inferred"] == pytest.approx(4 - mean, abs=1e-9)
    assert f["size_uncertainty"] == pytest.approx(sd, abs=1e-9)
    assert f["size_spread"] == pytest.approx(spread, abs=1e-9)


def test_custom_priors_change_the_features_and_the_state_path_reads_the_same_params():
    t, q = _history()
    tables = t.tables()
    full = _feats(t, _params(**CUSTOM))
    assert full.loc[q, "size_vs_inferred"] != pytest.approx(_feats(t, _params()).loc[q, "size_vs_inferred"])
    # batch scoring from a history state built with the same params: the same row
    orders = tables["orders"]
    history = {**tables, "orders": orders[orders["order_id"] != 4]}
    history["order_lines"] = tables["order_lines"][tables["order_lines"]["order_id"] != 4]
    batch = {
        "orders": orders[orders["order_id"] == 4],
        "order_lines": tables["order_lines"][lambda d: d["order_id"] == 4],
    }
    state = build_state(history, "2024-04-01", _params(**CUSTOM))
    got = featurize_batch(state, batch).set_index("line_id")
    for name in ("size_vs_inferred", "size_uncertainty", "size_fit_prob", "size_spread"):
        assert got.loc[q, name] == pytest.approx(full.loc[q, name], abs=1e-12), name
    with pytest.raises(ValueError, match="rebuild it"):
        featurize_batch(state, batch, _params())  # a state built with other priors is refused


def test_late_return_share_decides_what_counts_as_late():
    t = Toy()
    t.customer(1, "2023-01-01")
    t.product(30, "electronics", "none")
    (a,) = t.order(1, 1, "2024-01-01", [{"product_id": 30}])
    t.ret(a, "2024-01-22", "changed_mind")  # 21 of 30 days: 0.7 of the window
    (q,) = t.order(2, 1, "2024-03-01", [{"product_id": 30}])
    # one resolved earlier line, shrunk with customer_prior_weight 10 pseudo-lines
    assert _feats(t, _params()).loc[q, "cust_late_return_rate"] == pytest.approx(1 / 11)
    assert _feats(t, _params(late_return_share=0.8)).loc[q, "cust_late_return_rate"] == 0.0


@pytest.mark.parametrize(
    ("featurize", "message"),
    [
        ({"size_moments": {"alpha": [3.0, 1.0]}}, "size_moments: needs exactly"),
        ({"size_moments": {"alpha": [3.0, 0.0], "eu_shoe": [5.0, 2.0]}}, r"size_moments\.alpha"),
        ({"size_moments": {"alpha": [3.0, 1.0], "eu_shoe": ["5", 2.0]}}, r"size_moments\.eu_shoe"),
        ({"size_cross_type_rho": 1.0}, "size_cross_type_rho"),
        ({"size_evidence_weights": {"ordered": 2.0, "kept": 1.0}}, "size_evidence_weights: needs exactly"),
        (
            {"size_evidence_weights": {"ordered": 2.0, "kept": -1.0, "returned": 2.0}},
            r"size_evidence_weights\.kept",
        ),
        ({"late_return_share": 0.0}, "late_return_share"),
        ({"late_return_share": "0.6"}, "late_return_share"),
    ],
)
def test_bad_priors_are_clear_errors(featurize, message):
    with pytest.raises(ValueError, match=f"params.yaml featurize.{message}"):
        FeaturizeParams.from_params({"featurize": featurize})


def test_compare_moments_warns_only_past_the_tolerances():
    p = FeaturizeParams()  # alpha 3.15 / 1.40, eu_shoe 5.60 / 2.65
    close = [
        ("alpha", 5000, 3.15 + MEAN_TOLERANCE * 0.9, 1.40 * 1.25, 0.7, 900),
        ("eu_shoe", 800, 5.6, 2.65, 0.7, 900),
    ]
    assert compare_moments(close, p)["warnings"] == []
    off = [
        ("alpha", 5000, 3.15 + MEAN_TOLERANCE * 1.1, 1.40, 0.7, 900),
        ("eu_shoe", 800, 5.6, 2.65 * 0.6, 0.7, 900),
    ]
    report = compare_moments(off, p)
    assert [w.split(":")[0] for w in report["warnings"][:2]] == ["size_moments.alpha", "size_moments.eu_shoe"]
    assert "mean rank 3.70" in report["warnings"][0] and "sd 1.59" in report["warnings"][1]
    assert report["measured"]["size_moments"]["alpha"] == {"n": 5000, "mean": 3.7, "sd": 1.4}
    # too few lines to say: reported, not warned about
    few = [("alpha", MIN_LINES - 1, 6.0, 0.2, None, 0)]
    assert compare_moments(few, p)["warnings"] == []
    assert compare_moments(few, p)["measured"]["size_moments"]["alpha"]["n"] == MIN_LINES - 1
    # no sized lines at all (e.g. UCI Online Retail): nothing measured, nothing to warn about
    none = compare_moments([], p)
    assert none["measured"]["size_moments"] == {} and none["measured"]["size_cross_type_rho"] is None
    assert none["warnings"] == []


def _shop() -> Toy:
    """A shop whose customers order small: alpha ranks 0 and 2 (XXS, S) half each, shoes EU 36 and 40."""
    t = Toy()
    t.product(10, "dresses", "alpha").product(20, "shoes", "eu_shoe")
    for c in range(1, 121):
        t.customer(c, "2023-01-01")
        big = c % 2
        t.order(
            c,
            c,
            f"2024-01-{1 + c % 28:02d}",
            [
                {"product_id": 10, "size": "S" if big else "xxs"},
                {"product_id": 20, "size": "40" if big else "36"},
            ],
        )
    return t


def test_report_measures_the_data_and_the_command_warns(tmp_path, monkeypatch):
    tables = _shop().tables()
    report = size_priors_report(tables, _params())
    m = report["measured"]["size_moments"]
    ranks = np.array([0, 2] * 60)
    assert m["alpha"]["n"] == 120 and m["alpha"]["mean"] == pytest.approx(1.0)
    assert m["alpha"]["sd"] == pytest.approx(ranks.std(ddof=1), abs=1e-4)
    assert m["eu_shoe"]["mean"] == pytest.approx(4.0)  # EU 36 / 40 = ranks 2 / 6
    assert report["measured"]["size_cross_type_rho"] == pytest.approx(1.0)  # big alpha, big shoes
    assert any(w.startswith("size_moments.alpha: measured mean rank 1.00") for w in report["warnings"])
    # the shop's own moments: no warning
    own = {"alpha": [1.0, 1.0], "eu_shoe": [4.0, 2.0]}
    assert size_priors_report(tables, _params(size_moments=own))["warnings"] == []

    # the featurize command: measured next to configured in the JSON report, a printed warning
    from typer.testing import CliRunner

    from pipeline.cli import app

    val = tmp_path / "validated"
    val.mkdir()
    for name, df in tables.items():
        df.to_parquet(val / f"{name}.parquet", index=False)
    (val / "meta.json").write_text(json.dumps({"cutoff": "2024-12-31T00:00:00"}), encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["featurize"]["threads"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(
        app, ["featurize", str(val), "--out", str(tmp_path / "f"), "--report", str(tmp_path / "r.json")]
    )
    assert out.exit_code == 0, out.output
    assert "warning" in out.output and "size_moments.alpha" in out.output
    written = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["size_priors"]
    assert written["configured"]["size_moments"]["alpha"] == [3.15, 1.4]
    assert written["measured"]["size_moments"]["alpha"]["mean"] == pytest.approx(1.0)
