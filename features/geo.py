"""Geography helpers: country centroids (used when only a country is known) and great-circle distance."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088


@lru_cache(maxsize=1)
def country_centroids() -> pd.DataFrame:
    """ISO alpha-2 country -> (lat, lon) of its approximate centroid; shipped with the package."""
    with resources.files("features.data").joinpath("country_centroids.csv").open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, keep_default_na=False, dtype={"country": str, "name": str})


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Vectorised great-circle distance in km between arrays of points (degrees)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype="float64")) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
