"""MLflow: log a training run, register the model, move the champion alias by a measured rule.

The store is chosen by `pipeline.config.configure_mlflow()` (SQLite unless MLFLOW_TRACKING_URI).
Registry stages are deprecated, so the champion is an alias: `models:/returnrisk@champion`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.artifact import MODEL_FILE, ReturnModel

EXPERIMENT = "returnrisk"
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
PIP_REQUIREMENTS = [
    "lightgbm==4.7.0",
    "numba==0.68.1",  # the compiled predict path (models/treeeval.py); without it the booster predicts
    "numpy==2.4.6",
    "pandas==3.1.1",
    "scikit-learn==1.9.1",
    "mlflow==3.17.2",
]


# ---------------------------------------------------------------- provenance
def git_commit(root: Path) -> dict[str, str]:
    """The checkout's commit and whether tracked files differ from it."""

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def dvc_lock_hashes(root: Path, paths: Mapping[str, str]) -> dict[str, str]:
    """`data.<name>.md5` tags: the hash dvc.lock records for each named input path (when present)."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    wanted = {str(Path(p)).rstrip("/"): name for name, p in paths.items()}
    out: dict[str, str] = {}
    for stage in stages.values():
        for entry in stage.get("outs", []) or []:
            name = wanted.get(str(Path(entry.get("path", ""))).rstrip("/"))
            if name and entry.get("md5"):
                out[f"data.{name}.md5"] = str(entry["md5"])
    return out


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------- signature
def signature_example(frame: pd.DataFrame, model: ReturnModel, rows: int = 5) -> tuple[Any, pd.DataFrame]:
    """Signature + input example: numerics typed as in the feature table, categoricals typed `any`.

    `any` lets callers pass categoricals as text or pandas `category` (MLflow cannot type a category
    column); the artifact applies its own level lists. Output: one float64 probability per row.
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, Schema, TensorSpec

    example = frame[model.features].head(rows).copy()
    cols = []
    for name in model.features:
        s = example[name]
        if name in model.categorical:
            example[name] = s.astype(object).where(s.notna(), None)
            cols.append(ColSpec(AnyType(), name))
        elif pd.api.types.is_bool_dtype(s) and s.dtype == bool:
            cols.append(ColSpec(DataType.boolean, name))
        elif pd.api.types.is_integer_dtype(s) and s.dtype.kind == "i":
            example[name] = s.astype(np.int64)
            cols.append(ColSpec(DataType.long, name))
        else:
            example[name] = s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
            cols.append(ColSpec(DataType.double, name))
    sig = ModelSignature(inputs=Schema(cols), outputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]))
    return sig, example.reset_index(drop=True)


# ---------------------------------------------------------------- registry
def find_model_dir(folder: Path) -> Path:
    """The ReturnModel folder (holding model.json) inside a downloaded MLflow model."""
    hits = sorted(p.parent for p in Path(folder).rglob(MODEL_FILE))
    if not hits:
        raise FileNotFoundError(f"{folder}: no {MODEL_FILE} inside; is this a returnrisk MLflow model?")
    return hits[0]


def download_return_model(model_uri: str, dest: Path) -> Path:
    """Download an MLflow model (e.g. models:/returnrisk@champion) and return its ReturnModel folder."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest))
    return find_model_dir(Path(local))


def load_return_model(model_uri: str) -> ReturnModel:
    """A ReturnModel from an MLflow model URI or a plain folder (booster.txt + model.json)."""
    p = Path(model_uri)
    if "://" not in model_uri and not model_uri.startswith("models:") and p.exists():
        return ReturnModel.load(p)
    with tempfile.TemporaryDirectory() as tmp:
        return ReturnModel.load(download_return_model(model_uri, Path(tmp)))


@dataclass(frozen=True)
class ChampionRule:
    """The new model replaces the champion when its test `metric` is better by more than `min_delta`."""

    metric: str = "roc_auc"
    min_delta: float = 0.0

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("roc_auc", "pr_auc", "lift_5", "lift_10")

    def beats(self, new: float, current: float) -> bool:
        if self.higher_is_better:
            return new > current + self.min_delta
        return new < current - self.min_delta


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str
    model_name: str
    model_version: str | None
    model_uri: str
    champion_moved: bool
    champion_version: str | None
    champion_reason: str
    tracking_uri: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide_champion(
    client: Any,
    name: str,
    alias: str,
    rule: ChampionRule,
    new_value: float,
    score: Callable[[ReturnModel], float],
) -> tuple[bool, str, str | None]:
    """Whether the new model should take `alias`; the current champion is re-scored on the same test window.

    Returns (move, reason, current champion version or None).
    """
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return True, f"no {alias} yet", None
    current_version = str(current.version)
    try:
        champ = load_return_model(f"models:/{name}@{alias}")
        champ_value = float(score(champ))
    except Exception as exc:  # noqa: BLE001 - a champion that cannot score today's features loses
        return (
            True,
            f"{alias} v{current_version} cannot score the current features ({type(exc).__name__}: {exc})",
            current_version,
        )
    if rule.beats(new_value, champ_value):
        return (
            True,
            f"test {rule.metric} {new_value:.5f} beats {alias} v{current_version} ({champ_value:.5f})",
            current_version,
        )
    return (
        False,
        f"test {rule.metric} {new_value:.5f} does not beat {alias} v{current_version} ({champ_value:.5f})",
        current_version,
    )


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite store (<db folder>/mlartifacts), not in ./mlruns of whatever the cwd is."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def ensure_experiment(client: Any, uri: str) -> str:
    """The returnrisk experiment's id (created with its artifact root on first use) and make it current."""
    import mlflow

    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(EXPERIMENT, artifact_location=artifact_root(uri))
    )
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_training_run(
    *,
    model_dir: Path,
    model: ReturnModel,
    example_frame: pd.DataFrame,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts: Mapping[str, Path],
    rule: ChampionRule,
    new_value: float,
    score: Callable[[ReturnModel], float],
    name: str,
    alias: str,
    run_name: str | None = None,
) -> RunRecord:
    """One MLflow run: params, metrics, tags, files, the pyfunc model (registered), champion decision."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.config import configure_mlflow

    uri = configure_mlflow()
    client = MlflowClient()
    ensure_experiment(client, uri)
    sig, example = signature_example(example_frame, model)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: ("null" if v is None else v) for k, v in flatten(params).items()})
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
        )
        mlflow.set_tags(dict(tags))
        for path in artifacts.values():
            mlflow.log_artifact(str(path))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={"model_dir": str(model_dir)},
            signature=sig,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=name,
        )
        version = None if info.registered_model_version is None else str(info.registered_model_version)
        move, reason, current = decide_champion(client, name, alias, rule, new_value, score)
        if move and version is not None:
            client.set_registered_model_alias(name, alias, version)
        mlflow.set_tags({"champion_moved": str(move).lower(), "champion_reason": reason})
        if version is not None:
            client.set_model_version_tag(name, version, f"test_{rule.metric}", f"{new_value:.6f}")
            client.set_model_version_tag(name, version, "run_id", run.info.run_id)
    return RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model_name=name,
        model_version=version,
        model_uri=f"models:/{name}/{version}" if version else info.model_uri,
        champion_moved=move,
        champion_version=version if move else current,
        champion_reason=reason,
        tracking_uri=uri,
    )


def log_to_run(run_id: str, metrics: Mapping[str, float], files: list[Path], artifact_path: str) -> bool:
    """Add metrics and files to an existing run; False (nothing logged) when the run is not in this store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.config import configure_mlflow

    configure_mlflow()
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path=artifact_path)
    return True


def write_run_record(record: RunRecord, path: Path) -> None:
    from pipeline.io import write_json

    write_json(record.to_json(), path)


def read_run_record(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
