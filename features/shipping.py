"""Shipping: how far the parcel travels, whether it crosses a border, and how deliveries went before.

Why it predicts returns: long and cross-border shipments arrive later and more often damaged, and
customers who waited long on earlier orders return more (late_delivery, damaged). Coordinates come
from the order / warehouse when given, else from the shipped country-centroid table
(features/data/country_centroids.csv), so data with only countries still gets a distance. Earlier
delivery delays count only deliveries that happened before the order (an earlier order still in
transit at that time has an unknown delay).
"""

from __future__ import annotations

from features.engine import Context
from features.geo import EARTH_RADIUS_KM, country_centroids
from features.spec import FeatureSpec
from features.sql import days_between
from features.streams import Events, Running

FAMILY = "shipping"


def haversine_sql(lat1: str, lon1: str, lat2: str, lon2: str) -> str:
    """Great-circle distance in km between two points given in degrees (same formula as features.geo)."""
    a = (
        f"power(sin((radians({lat2}) - radians({lat1})) / 2), 2) + "
        f"cos(radians({lat1})) * cos(radians({lat2})) * power(sin((radians({lon2}) - radians({lon1})) / 2), 2)"
    )
    return f"(2 * {EARTH_RADIUS_KM} * asin(sqrt(least(1.0, greatest(0.0, {a})))))"


def finish(ctx: Context) -> None:
    """Per target order: distance from the warehouse to the destination and the cross-border flag.

    A `finish` (after the streams): only the assembly reads `ship` (see features.basket.finish).
    """
    ctx.con.register("centroids_src", country_centroids()[["country", "lat", "lon"]])
    ctx.sql(
        "CREATE OR REPLACE TEMP TABLE centroids AS SELECT CAST(country AS VARCHAR) AS country, "
        "CAST(lat AS DOUBLE) AS lat, CAST(lon AS DOUBLE) AS lon FROM centroids_src"
    )
    both = "{t}.lat IS NOT NULL AND {t}.lon IS NOT NULL"
    wlat = f"CASE WHEN {both.format(t='w')} THEN w.lat ELSE wc.lat END"
    wlon = f"CASE WHEN {both.format(t='w')} THEN w.lon ELSE wc.lon END"
    dlat = "CASE WHEN o.ship_lat IS NOT NULL AND o.ship_lon IS NOT NULL THEN o.ship_lat ELSE dc.lat END"
    dlon = "CASE WHEN o.ship_lat IS NOT NULL AND o.ship_lon IS NOT NULL THEN o.ship_lon ELSE dc.lon END"
    ctx.sql(f"""
        CREATE OR REPLACE TEMP TABLE ship AS
        SELECT o.order_id, o.order_ts,
               {haversine_sql(wlat, wlon, dlat, dlon)} AS distance_km,
               CASE WHEN w.country IS NULL OR o.ship_country IS NULL THEN NULL
                    WHEN w.country <> o.ship_country THEN 1.0 ELSE 0.0 END AS cross_border
        FROM ord o
        LEFT JOIN t_warehouses w ON w.warehouse_id = o.warehouse_id
        LEFT JOIN centroids wc ON wc.country = w.country
        LEFT JOIN centroids dc ON dc.country = o.ship_country
        WHERE o.is_target
    """)


#: Per-order table (with order_ts), read per order_ts range by the chunked assembly.
ORDER_TABLES = ["ship"]

JOINS = ["LEFT JOIN ship sh ON sh.order_id = l.order_id"]

RUNNINGS = [
    Running("customer", "c_deliv"),
    Running("customer", "c_deliv_days"),
    Running("customer", "c_late"),
]


def _delivery_days() -> str:
    return days_between("delivered_ts", "order_ts")


EVENTS = [
    Events(
        "customer",
        "FROM ord WHERE delivered_ts IS NOT NULL AND delivered_ts >= order_ts",
        "delivered_ts",
        {
            "c_deliv": "1.0",
            "c_deliv_days": _delivery_days(),
            # the threshold is a param: formatted at assembly like the feature expressions
            "c_late": f"CASE WHEN {_delivery_days()} > {{late_delivery_days}} THEN 1.0 ELSE 0.0 END",
        },
    ),
]

_WAREHOUSE = ("orders.warehouse_id", "warehouses")

FEATURES = [
    FeatureSpec(
        "ship_distance_km",
        FAMILY,
        "numeric",
        "Great-circle distance from the shipping warehouse to the destination (coordinates, else country centroids).",
        False,
        "sh.distance_km",
        requires=_WAREHOUSE,
    ),
    FeatureSpec(
        "cross_border",
        FAMILY,
        "numeric",
        "1 when the warehouse and the destination are in different countries.",
        False,
        "sh.cross_border",
        requires=_WAREHOUSE,
    ),
    FeatureSpec(
        "cust_mean_delivery_days",
        FAMILY,
        "numeric",
        "Mean delivery time (days) of the customer's earlier orders delivered before this one.",
        True,
        "CASE WHEN s.c_deliv > 0 THEN s.c_deliv_days / s.c_deliv END",
        requires=("orders.delivered_ts",),
    ),
    FeatureSpec(
        "cust_late_delivery_share",
        FAMILY,
        "numeric",
        "Share of the customer's earlier delivered orders that took longer than late_delivery_days.",
        True,
        "CASE WHEN s.c_deliv > 0 THEN s.c_late / s.c_deliv END",
        requires=("orders.delivered_ts",),
    ),
]
