"""Every feature, in the order of the feature table: the single list the model, docs and SHAP read.

Protected attributes (gender, age, title and anything derived from them) are never features: no
family reads them (the SQL selects contract columns by name), and `check_registry` refuses a feature
whose name or inputs mention one.
"""

from __future__ import annotations

from collections.abc import Iterable

from features import basket, category, past_returns, price, sentiment, shipping, size
from features.spec import FAMILIES, FeatureSpec

__all__ = ["FAMILY_MODULES", "FEATURES", "FeatureSpec", "PROTECTED", "feature_names", "get", "skipped"]

FAMILY_MODULES = (size, category, price, shipping, past_returns, sentiment, basket)
FEATURES: list[FeatureSpec] = [f for module in FAMILY_MODULES for f in module.FEATURES]
PROTECTED = ("gender", "sex", "age", "birth", "title", "salutation")


def check_registry(features: Iterable[FeatureSpec]) -> None:
    """Names unique, families known, no protected attribute among names or inputs."""
    seen: set[str] = set()
    for f in features:
        if f.name in seen:
            raise ValueError(f"feature {f.name!r} is registered twice")
        seen.add(f.name)
        words = [f.name, *f.requires, *f.requires_any]
        for word in words:
            parts = word.replace(".", "_").split("_")
            bad = [p for p in PROTECTED if p in parts]
            if bad:
                raise ValueError(f"feature {f.name!r} uses protected attribute {bad[0]!r} ({word})")


check_registry(FEATURES)
_BY_NAME = {f.name: f for f in FEATURES}


def get(name: str) -> FeatureSpec:
    """The spec of one feature (KeyError names the feature)."""
    try:
        return _BY_NAME[name]
    except KeyError as exc:
        raise KeyError(f"{name!r} is not a registered feature") from exc


def feature_names(
    families: Iterable[str] | None = None,
    customer_blind: bool = False,
    available: Iterable[str] | None = None,
) -> list[str]:
    """Feature names in registry order, filtered by family, customer-blindness and available inputs.

    `available`: contract inputs present ("table" / "table.column"); None means everything is.
    `customer_blind=True` drops features computed from the same customer's history.
    """
    fams = set(families) if families is not None else set(FAMILIES)
    unknown = fams - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown feature families {sorted(unknown)}; expected some of {FAMILIES}")
    avail = set(available) if available is not None else None
    return [
        f.name
        for f in FEATURES
        if f.family in fams
        and not (customer_blind and f.uses_customer_history)
        and (avail is None or not f.missing_inputs(avail))
    ]


def skipped(available: Iterable[str]) -> dict[str, list[str]]:
    """Features that cannot be computed from `available` inputs -> the inputs they miss."""
    avail = set(available)
    return {f.name: miss for f in FEATURES if (miss := f.missing_inputs(avail))}
