"""The description of one feature: what the registry, the docs, the model and the SQL assembly share."""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("size", "category", "price", "shipping", "past_returns", "sentiment", "basket")
KINDS = ("numeric", "categorical")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature. `expr` is its SQL over the final assembly (aliases documented in features/build.py).

    `requires` lists contract inputs ("table" or "table.column") that must all be present (and not
    entirely empty); `requires_any` lists inputs of which at least one must be. When they are not met
    the feature is emitted as an all-null column and listed as skipped in the report.
    """

    name: str
    family: str
    kind: str
    description: str
    uses_customer_history: bool
    expr: str
    requires: tuple[str, ...] = ()
    requires_any: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"feature {self.name}: unknown family {self.family!r}; expected one of {FAMILIES}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name}: unknown kind {self.kind!r}; expected one of {KINDS}")

    def missing_inputs(self, available: set[str]) -> list[str]:
        """The required inputs absent from `available` (empty when the feature can be computed)."""
        missing = [r for r in self.requires if r not in available]
        if self.requires_any and not any(r in available for r in self.requires_any):
            missing.append(" or ".join(self.requires_any))
        return missing
