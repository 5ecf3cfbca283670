"""One place for project configuration: params.yaml, paths and the MLflow store."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
DEFAULT_TRACKING_DB = "mlflow.db"
REGISTERED_MODEL_NAME = "returnrisk"
CHAMPION_ALIAS = "champion"


def project_root(start: Path | None = None) -> Path:
    """The nearest folder (from `start` or the cwd upwards) holding params.yaml; else the cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    return here


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def load_params(path: Path | str | None = None) -> dict[str, Any]:
    """params.yaml as a dict (cached per file version)."""
    p = Path(path) if path else project_root() / PARAMS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: params file not found (run from the project folder)")
    return _load(str(p), p.stat().st_mtime)


def path_of(key: str, params: dict[str, Any] | None = None) -> Path:
    """A path declared under `paths:` in params.yaml, resolved against the project root."""
    params = params if params is not None else load_params()
    try:
        rel = params["paths"][key]
    except KeyError as exc:
        raise KeyError(f"params.yaml: paths.{key} is not declared") from exc
    p = Path(rel)
    return p if p.is_absolute() else project_root() / p


def tracking_uri() -> str:
    """MLflow store: $MLFLOW_TRACKING_URI, else the embedded SQLite file at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root() / DEFAULT_TRACKING_DB}"


def configure_mlflow() -> str:
    """Point mlflow at the project's store; returns the URI used."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri
