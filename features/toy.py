"""A tiny hand-made history builder (contract tables as DataFrames) for tests and worked examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Toy:
    """Collects rows table by table; `tables()` returns the canonical tables with contract dtypes."""

    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            t: []
            for t in ("customers", "products", "warehouses", "orders", "order_lines", "returns", "reviews")
        }
    )
    _line: int = 0

    def customer(self, customer_id: int, signup: str | None = None, country: str = "DE") -> Toy:
        self.rows["customers"].append(
            {
                "customer_id": customer_id,
                "signup_ts": pd.Timestamp(signup) if signup else pd.NaT,
                "country": country,
            }
        )
        return self

    def product(self, product_id: int, category: str = "dresses", size_type: str = "alpha") -> Toy:
        self.rows["products"].append({"product_id": product_id, "category": category, "size_type": size_type})
        return self

    def warehouse(
        self, warehouse_id: int, country: str, lat: float | None = None, lon: float | None = None
    ) -> Toy:
        self.rows["warehouses"].append(
            {"warehouse_id": warehouse_id, "country": country, "lat": lat, "lon": lon}
        )
        return self

    def order(
        self,
        order_id: int,
        customer_id: int,
        ts: str,
        lines: list[dict[str, Any]],
        ship_country: str = "DE",
        warehouse_id: int | None = None,
        delivered: str | None = None,
        **extra: Any,
    ) -> list[int]:
        """Add an order and its lines (dicts with product_id, and optional size, color, unit_price,
        list_price, quantity, line_id); returns the line ids."""
        self.rows["orders"].append(
            {
                "order_id": order_id,
                "customer_id": customer_id,
                "order_ts": pd.Timestamp(ts),
                "ship_country": ship_country,
                "warehouse_id": warehouse_id,
                "delivered_ts": pd.Timestamp(delivered) if delivered else pd.NaT,
                **extra,
            }
        )
        ids = []
        for spec in lines:
            self._line += 1
            line_id = spec.get("line_id", order_id * 100 + self._line)
            self.rows["order_lines"].append(
                {
                    "line_id": line_id,
                    "order_id": order_id,
                    "product_id": spec["product_id"],
                    "size": spec.get("size"),
                    "color": spec.get("color"),
                    "quantity": spec.get("quantity", 1),
                    "unit_price": float(spec.get("unit_price", 50.0)),
                    "list_price": spec.get("list_price"),
                }
            )
            ids.append(line_id)
        return ids

    def ret(self, line_id: int, ts: str, reason: str | None = None, quantity: int = 1) -> Toy:
        self.rows["returns"].append(
            {"line_id": line_id, "return_ts": pd.Timestamp(ts), "quantity": quantity, "reason": reason}
        )
        return self

    def review(self, review_id: int, product_id: int, ts: str, text: str, rating: int | None = None) -> Toy:
        self.rows["reviews"].append(
            {
                "review_id": review_id,
                "product_id": product_id,
                "customer_id": None,
                "review_ts": pd.Timestamp(ts),
                "rating": rating,
                "text": text,
            }
        )
        return self

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables with explicit dtypes (empty optional tables are left out)."""
        dtypes = {
            "customer_id": "int64",
            "product_id": "int64",
            "order_id": "int64",
            "line_id": "int64",
            "warehouse_id": "Int64",
            "review_id": "int64",
            "quantity": "int64",
            "rating": "Int64",
            "unit_price": "float64",
            "list_price": "float64",
            "lat": "float64",
            "lon": "float64",
            "signup_ts": "datetime64[us]",
            "order_ts": "datetime64[us]",
            "delivered_ts": "datetime64[us]",
            "return_ts": "datetime64[us]",
            "review_ts": "datetime64[us]",
        }
        out = {}
        for name, rows in self.rows.items():
            if not rows and name in ("reviews", "warehouses"):
                continue
            df = pd.DataFrame(rows)
            if name == "reviews" and not rows:
                continue
            for col in df.columns:
                if col in dtypes and not (name == "reviews" and col == "customer_id"):
                    df[col] = df[col].astype(dtypes[col])
                elif col == "customer_id" and name == "reviews":
                    df[col] = df[col].astype("Int64")
                elif df[col].dtype == object:
                    df[col] = df[col].astype("str").where(df[col].notna(), None)
            if name == "returns" and df.empty:
                df = pd.DataFrame(
                    {
                        "line_id": pd.Series(dtype="int64"),
                        "return_ts": pd.Series(dtype="datetime64[us]"),
                        "quantity": pd.Series(dtype="int64"),
                        "reason": pd.Series(dtype="str"),
                    }
                )
            out[name] = df
        return out
