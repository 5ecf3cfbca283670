"""The data contract: canonical input tables, their columns, types and which are required.

One place for it: validation, readers (generator, UCI ingest), featurization and batch scoring all
read these definitions. `docs/data-contract.md` is generated from them (`returnrisk contract`).

Types are logical: "id" (int64 or string; the same type in every table that holds that id),
"str", "int", "float", "ts" (timezone-naive UTC timestamp).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ID, STR, INT, FLOAT, TS = "id", "str", "int", "float", "ts"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool
    meaning: str
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None  # regular expression a text value must match in full


@dataclass(frozen=True)
class TableSpec:
    name: str
    required: bool
    key: str | None
    meaning: str
    columns: tuple[Column, ...]
    foreign_keys: dict[str, str] = field(default_factory=dict)  # column -> referenced table

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name}.{name} is not in the data contract")

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


SIZE_TYPES = ("alpha", "eu_shoe", "none")
# Ordinal scale per size type: position in the tuple is the size's rank.
SIZE_SCALES: dict[str, tuple[str, ...]] = {
    "alpha": ("XXS", "XS", "S", "M", "L", "XL", "XXL", "3XL"),
    "eu_shoe": tuple(str(s) for s in range(34, 49)),
}
RETURN_REASONS = (
    "too_small",
    "too_large",
    "not_as_described",
    "damaged",
    "quality",
    "late_delivery",
    "changed_mind",
    "other",
)
COUNTRY_PATTERN = "[A-Z]{2}"  # ISO 3166-1 alpha-2, upper case
CHANNELS = ("web", "app", "marketplace", "phone", "unknown")
PAYMENT_METHODS = ("card", "paypal", "invoice", "cod", "gift_card", "unknown")

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec(
            "customers",
            True,
            "customer_id",
            "One row per customer.",
            (
                Column("customer_id", ID, True, "Customer key."),
                Column("signup_ts", TS, False, "When the account was created (tenure)."),
                Column("country", STR, True, "Home country, ISO 3166-1 alpha-2.", pattern=COUNTRY_PATTERN),
                Column("lat", FLOAT, False, "Home latitude (degrees).", -90, 90),
                Column("lon", FLOAT, False, "Home longitude (degrees).", -180, 180),
            ),
        ),
        TableSpec(
            "products",
            True,
            "product_id",
            "One row per product (all sizes/colours of an article share one product_id).",
            (
                Column("product_id", ID, True, "Product key."),
                Column("category", STR, True, "Merchandise category (e.g. dresses, shoes, electronics)."),
                Column("brand", STR, False, "Brand name."),
                Column(
                    "size_type",
                    STR,
                    False,
                    "Size system: alpha (XS..3XL), eu_shoe (34..48), none.",
                    allowed=SIZE_TYPES,
                ),
                Column("description", STR, False, "Free-text product name/description."),
            ),
        ),
        TableSpec(
            "orders",
            True,
            "order_id",
            "One row per order (checkout).",
            (
                Column("order_id", ID, True, "Order key."),
                Column("customer_id", ID, True, "Who ordered."),
                Column("order_ts", TS, True, "When the order was placed: the as-of time of its features."),
                Column(
                    "ship_country", STR, True, "Destination country, ISO alpha-2.", pattern=COUNTRY_PATTERN
                ),
                Column("ship_lat", FLOAT, False, "Destination latitude.", -90, 90),
                Column("ship_lon", FLOAT, False, "Destination longitude.", -180, 180),
                Column("warehouse_id", ID, False, "Shipping warehouse."),
                Column("channel", STR, False, "Sales channel.", allowed=CHANNELS),
                Column("payment_method", STR, False, "Payment method.", allowed=PAYMENT_METHODS),
                Column("delivered_ts", TS, False, "When it was delivered (empty if not yet)."),
            ),
            {"customer_id": "customers", "warehouse_id": "warehouses"},
        ),
        TableSpec(
            "order_lines",
            True,
            "line_id",
            "One row per order line: the unit that is scored and labelled.",
            (
                Column("line_id", ID, True, "Order-line key."),
                Column("order_id", ID, True, "The order it belongs to."),
                Column("product_id", ID, True, "The product."),
                Column("size", STR, False, "Chosen size label on the product's size_type scale."),
                Column("color", STR, False, "Chosen colour."),
                Column("quantity", INT, True, "Units ordered.", 1, None),
                Column("unit_price", FLOAT, True, "Price paid per unit.", 0, None),
                Column("list_price", FLOAT, False, "Undiscounted price per unit.", 0, None),
            ),
            {"order_id": "orders", "product_id": "products"},
        ),
        TableSpec(
            "returns",
            True,
            None,
            "One row per return event; known from return_ts on (not from the order's time).",
            (
                Column("line_id", ID, True, "The returned order line."),
                Column("return_ts", TS, True, "When the return was recorded."),
                Column("quantity", INT, True, "Units returned (<= line quantity).", 1, None),
                Column("reason", STR, False, "Return reason code.", allowed=RETURN_REASONS),
            ),
            {"line_id": "order_lines"},
        ),
        TableSpec(
            "reviews",
            False,
            "review_id",
            "Product reviews; known from review_ts on.",
            (
                Column("review_id", ID, True, "Review key."),
                Column("product_id", ID, True, "Reviewed product."),
                Column("customer_id", ID, False, "Author."),
                Column("review_ts", TS, True, "When it was posted."),
                Column("rating", INT, False, "Stars 1-5.", 1, 5),
                Column("text", STR, True, "Review text (sentiment is read from it)."),
            ),
            {"product_id": "products", "customer_id": "customers"},
        ),
        TableSpec(
            "warehouses",
            False,
            "warehouse_id",
            "Shipping warehouses.",
            (
                Column("warehouse_id", ID, True, "Warehouse key."),
                Column("country", STR, True, "Country, ISO alpha-2.", pattern=COUNTRY_PATTERN),
                Column("lat", FLOAT, False, "Latitude.", -90, 90),
                Column("lon", FLOAT, False, "Longitude.", -180, 180),
            ),
        ),
    )
}

TABLE_ORDER = ("customers", "products", "warehouses", "orders", "order_lines", "returns", "reviews")
FILE_SUFFIXES = (".parquet", ".csv")
META_FILE = "meta.json"  # {"cutoff": ISO timestamp, "source": ..., ...} written beside the tables


@dataclass(frozen=True)
class FeatureNeeds:
    """What a feature family reads. When any of `needs` is missing (an optional table, or an optional
    column that is absent or entirely empty) the family is disabled, unless `fallback` says what is
    used instead (then it runs in a degraded form)."""

    family: str
    needs: tuple[str, ...]  # "table" or "table.column"
    fallback: str | None = None


# Names are "<family>[.<part>]" with the families of features/spec.py (plus abuse detection's signals).
FEATURE_NEEDS: tuple[FeatureNeeds, ...] = (
    FeatureNeeds("sentiment", ("reviews",)),
    FeatureNeeds("sentiment.rating", ("reviews", "reviews.rating")),
    FeatureNeeds("size", ("order_lines.size", "products.size_type")),
    FeatureNeeds("price.discount", ("order_lines.list_price",)),
    FeatureNeeds("shipping.delivery", ("orders.delivered_ts",)),
    FeatureNeeds("shipping.warehouse_distance", ("warehouses", "orders.warehouse_id")),
    FeatureNeeds("shipping.warehouse_location", ("warehouses.lat", "warehouses.lon"), "country centroids"),
    FeatureNeeds("shipping.customer_distance", ("customers.lat", "customers.lon"), "country centroids"),
    FeatureNeeds("shipping.ship_distance", ("orders.ship_lat", "orders.ship_lon"), "country centroids"),
    FeatureNeeds("past_returns.tenure", ("customers.signup_ts",)),
    FeatureNeeds("category.brand", ("products.brand",)),
    FeatureNeeds("basket.color", ("order_lines.color",)),
    FeatureNeeds("order.channel", ("orders.channel",)),
    FeatureNeeds("order.payment", ("orders.payment_method",)),
    FeatureNeeds("abuse.claims", ("returns.reason",)),
)
