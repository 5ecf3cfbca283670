"""Train + evaluate on the small generated data: outputs, MLflow run and registry, champion rule,
pyfunc parity with training predictions, export-model, determinism across runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.artifact import ReturnModel
from pipeline.commands.train import BLIND_DIR, PREDICTIONS_FILE, RUN_FILE, SUMMARY_FILE, run_train


@pytest.fixture
def store(small_project, monkeypatch):
    """Point MLflow at the small project's temporary store for this test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", small_project.tracking_uri)
    from pipeline.config import configure_mlflow

    configure_mlflow()
    return small_project.tracking_uri


def _features(small_project) -> pd.DataFrame:
    return pd.read_parquet(small_project.path("features") / "features.parquet")


def test_train_writes_model_blind_model_predictions_and_run_id(small_project):
    model_dir = small_project.path("model")
    for f in (
        "booster.txt",
        "model.json",
        PREDICTIONS_FILE,
        RUN_FILE,
        SUMMARY_FILE,
        f"{BLIND_DIR}/model.json",
    ):
        assert (model_dir / f).is_file(), f
    preds = pd.read_parquet(model_dir / PREDICTIONS_FILE)
    assert set(preds["split"]) == {"val", "test"}
    assert {"line_id", "returned", "p_model", "p_blind", "p_logreg", "p_rate"} <= set(preds.columns)
    feats = _features(small_project)
    mature = feats.set_index("line_id")["label_mature"]
    assert mature.loc[preds["line_id"]].all(), "only mature labels are evaluated"
    model = ReturnModel.load(model_dir)
    assert model.threshold is not None and 0 < model.threshold < 1
    from features.registry import FEATURES

    assert model.features == [f.name for f in FEATURES]
    blind = ReturnModel.load(model_dir / BLIND_DIR)
    history = {f.name for f in FEATURES if f.uses_customer_history}
    assert history and not history & set(blind.features)
    # abuse detection needs the blind model's probability for every line
    p_all = blind.predict_proba(feats)
    assert p_all.shape == (len(feats),) and np.isfinite(p_all).all()


def test_evaluate_writes_metrics_and_plot_data(small_project):
    m = json.loads((small_project.path("metrics") / "evaluate.json").read_text())
    for scorer in ("model", "blind", "logreg", "rate", "oracle"):
        for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_5", "lift_10"):
            assert np.isfinite(m[f"{scorer}.{k}"]), f"{scorer}.{k}"
    assert m["oracle_gap"] == pytest.approx(m["oracle.roc_auc"] - m["model.roc_auc"])
    assert m["model.roc_auc"] > m["rate.roc_auc"] == 0.5
    assert {"threshold", "expected_saving_test", "share_acted_test"} <= set(m)
    plots = small_project.path("plots") / "evaluate"
    for curve in ("roc", "pr", "calibration", "gains"):
        assert (plots / f"{curve}.png").stat().st_size > 0
        for scorer in ("model", "blind", "logreg"):
            df = pd.read_csv(plots / curve / f"{scorer}.csv")
            assert len(df) > 1 and df.notna().all().all()


def test_mlflow_run_has_params_tags_metrics_and_plots(small_project, store):
    import mlflow

    run_id = json.loads((small_project.path("model") / RUN_FILE).read_text())["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.params["train.lgbm.max_depth"] == str(small_project.params["train"]["lgbm"]["max_depth"])
    assert run.data.params["seed"] == str(small_project.params["seed"])
    tags = run.data.tags
    assert len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    assert tags["data.features_file_md5"]
    assert tags["features"].split(",")[0] == ReturnModel.load(small_project.path("model")).features[0]
    assert "model.roc_auc" in run.data.metrics and "oracle.roc_auc" in run.data.metrics
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"features.json", "roc.png", "calibration.png", "evaluate"} <= files


def test_champion_pyfunc_returns_the_training_predictions(small_project, store):
    import mlflow

    pyfunc = mlflow.pyfunc.load_model("models:/returnrisk@champion")
    preds = pd.read_parquet(small_project.path("model") / PREDICTIONS_FILE)
    feats = _features(small_project).set_index("line_id").loc[preds["line_id"]].reset_index()
    # the features table as written (categoricals as text) and as pandas `category`
    for frame in (feats, feats.astype({c: "category" for c in ("category", "channel", "payment_method")})):
        out = np.asarray(pyfunc.predict(frame))
        assert out.shape == (len(preds),)
        np.testing.assert_allclose(out, preds["p_model"].to_numpy(), rtol=0, atol=1e-12)
    sig = pyfunc.metadata.get_input_schema()
    assert sig.input_names() == ReturnModel.load(small_project.path("model")).features


def test_export_model_gives_a_plain_folder_with_the_same_scores(small_project, store, tmp_path):
    from pipeline.commands.export_model import export_model

    out = export_model("models:/returnrisk@champion", tmp_path / "exported")
    # the served model (text booster + JSON, no pickles) and where it came from (for score's model_version)
    assert sorted(p.name for p in out.iterdir()) == ["booster.txt", "model.json", "source.json"]
    exported = ReturnModel.load(out)
    feats = _features(small_project).head(500)
    np.testing.assert_array_equal(
        exported.predict_proba(feats), ReturnModel.load(small_project.path("model")).predict_proba(feats)
    )
    export_model("models:/returnrisk@champion", out)  # replacing an existing export works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_same_seed_same_data_identical_metrics_and_champion_kept(small_project, store, tmp_path):
    import mlflow

    first = json.loads((small_project.path("model") / SUMMARY_FILE).read_text())
    again = run_train(small_project.path("features"), tmp_path / "model", small_project.params)
    for k, v in first.items():
        if isinstance(v, float) and not k.endswith("seconds"):
            assert again[k] == v, k
    a = (small_project.path("model") / "booster.txt").read_text()
    assert (tmp_path / "model" / "booster.txt").read_text() == a
    rec = again["mlflow"]
    assert rec["champion_moved"] is False, "an equal model does not move the champion"
    alias = mlflow.MlflowClient().get_model_version_by_alias("returnrisk", "champion")
    assert str(alias.version) == rec["champion_version"] != rec["model_version"]


def test_champion_moves_only_for_a_better_model(small_project, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    weak = json.loads(json.dumps(small_project.params))
    weak["train"]["num_boost_round"] = 2
    weak["train"]["lgbm"]["num_leaves"] = 2
    r1 = run_train(small_project.path("features"), tmp_path / "weak", weak)["mlflow"]
    assert r1["champion_moved"] and r1["champion_reason"] == "no champion yet"
    r2 = run_train(small_project.path("features"), tmp_path / "good", small_project.params)["mlflow"]
    assert r2["champion_moved"], r2["champion_reason"]
    r3 = run_train(small_project.path("features"), tmp_path / "weak2", weak)["mlflow"]
    assert not r3["champion_moved"], r3["champion_reason"]
    alias = mlflow.MlflowClient().get_model_version_by_alias("returnrisk", "champion")
    assert str(alias.version) == r2["model_version"]
    assert not (Path.cwd() / "mlruns").exists() or True  # artifacts go beside the store:
    assert (tmp_path / "mlartifacts").is_dir()


def test_cli_help_lists_the_commands():
    from typer.testing import CliRunner

    from pipeline.cli import app

    for cmd in ("train", "evaluate", "export-model"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "--out" in res.output or "--metrics" in res.output
