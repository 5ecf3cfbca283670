"""The served model's pip requirements and the project's pins must agree with the lock file.

MLflow re-creates a serving environment from `models.tracking.PIP_REQUIREMENTS`; a pin that drifts from
requirements.lock would serve the model with other library versions than it was trained and tested with.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from models.tracking import PIP_REQUIREMENTS

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", text, flags=re.M)
    }


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", req.split("#")[0].strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_served_model_requirements_match_the_lock() -> None:
    locked = _locked()
    pins = _pins(PIP_REQUIREMENTS)
    assert set(pins) >= {"lightgbm", "numba", "numpy", "pandas"}
    for name, version in pins.items():
        assert locked.get(name) == version, (
            f"PIP_REQUIREMENTS pins {name}=={version}, lock has {locked.get(name)}"
        )


def test_exact_pins_in_pyproject_match_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    pins = _pins(project["dependencies"])
    assert "numba" in pins, "numba is imported directly (features/scan.py, models/treeeval.py): pin it"
    for name, version in pins.items():
        if version.endswith(".*"):  # a release series: the locked version must be one of it
            assert locked.get(name, "").startswith(version[:-1]), f"pyproject pins {name}=={version}"
            continue
        assert locked.get(name) == version, f"pyproject pins {name}=={version}, lock has {locked.get(name)}"
