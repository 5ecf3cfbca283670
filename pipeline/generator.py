"""Realistic synthetic order history with hidden causes of returns (the default data source).

Why synthetic: real exports rarely carry sizes, reviews or the *reason* a customer returned something, and
never the truth. Here every return is drawn from hidden causes (size mismatch, quality, damage/delay,
archetype, ...) that the model must learn from observable history, and the truth is written beside the
data so the pipeline can be judged against the best achievable model (the oracle).

Everything is vectorised numpy from one `np.random.default_rng(seed)`: the same arguments give identical
tables. Loops run only over a handful of categories or sentence pools, never over rows.

Model of the world, in short:
- customers: home country/location (a share outside the warehouse countries: cross-border), tenure,
  hidden true sizes (alpha and EU shoe ranks), fit uncertainty, awareness of "runs small" products,
  a personal return propensity and one hidden archetype (ordinary, honest_high, bracketer, wardrober,
  serial_abuser; wardrobers + serial abusers = `abuse_share`).
- products: category (base return rate, price level, size type), brand (brands share a size bias and a
  quality level), hidden size bias in ranks (<0 runs small), hidden quality, colours.
- orders: seasonal (Black Friday / Christmas peaks, January sales), 1-6 lines, shipped from the nearest
  (usually) of four warehouses; delivery time grows with distance, cross-border adds delay and damage.
- returns: competing hazards per line -> true probability p = 1 - prod(1 - h_k); the cause that fired sets
  the reason code and the return delay; returns after the cutoff are not (yet) known.
- reviews: written after delivery by some customers; rating and text follow hidden quality, the fit
  actually experienced (and the product's size bias), damage and delay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.geo import country_centroids, haversine_km
from pipeline.contract import META_FILE, RETURN_REASONS, SIZE_SCALES, TABLE_ORDER

TRUTH_TABLES = ("lines_truth", "customers_truth", "products_truth")
ARCHETYPES = ("ordinary", "honest_high", "bracketer", "wardrober", "serial_abuser")
ABUSIVE_ARCHETYPES = ("wardrober", "serial_abuser")
CAUSES = (
    "none",
    "size_mismatch",
    "quality",
    "not_as_described",
    "damage_delay",
    "abuse",
    "bracketing",
    "wardrobing",
    "changed_mind",
)
TS_DTYPE = "datetime64[us]"
_US_PER_DAY = 86_400 * 1_000_000

# --- catalogue ------------------------------------------------------------------------------------
# name, share of catalogue, size type, median list price (EUR), base "changed mind" return rate,
# fit sensitivity (how much a size mismatch matters), quality sensitivity, noun, material
_CATEGORY_ROWS = (
    ("dresses", 0.12, "alpha", 59.0, 0.15, 1.15, 1.0, "dress", "fabric"),
    ("tops", 0.15, "alpha", 24.0, 0.10, 0.85, 0.9, "top", "fabric"),
    ("jeans", 0.09, "alpha", 55.0, 0.10, 1.10, 0.8, "pair of jeans", "denim"),
    ("outerwear", 0.07, "alpha", 119.0, 0.09, 0.90, 0.9, "jacket", "material"),
    ("occasion_wear", 0.05, "alpha", 149.0, 0.14, 1.10, 1.0, "gown", "fabric"),
    ("shoes", 0.12, "eu_shoe", 79.0, 0.10, 1.20, 0.9, "pair of shoes", "leather"),
    ("accessories", 0.09, "none", 19.0, 0.05, 0.0, 0.45, "scarf", "material"),
    ("bags", 0.06, "none", 69.0, 0.06, 0.0, 0.7, "bag", "leather"),
    ("electronics", 0.08, "none", 129.0, 0.04, 0.0, 1.1, "gadget", "build"),
    ("home", 0.10, "none", 39.0, 0.035, 0.0, 0.45, "lamp", "finish"),
    ("beauty", 0.07, "none", 17.0, 0.004, 0.0, 0.12, "cream", "texture"),
)
CATEGORIES = tuple(r[0] for r in _CATEGORY_ROWS)
_CAT_SHARE = np.array([r[1] for r in _CATEGORY_ROWS])
_CAT_SIZE_TYPE = np.array([r[2] for r in _CATEGORY_ROWS], dtype=object)
_CAT_PRICE = np.array([r[3] for r in _CATEGORY_ROWS])
_CAT_BASE = np.array([r[4] for r in _CATEGORY_ROWS])
_CAT_FIT_SENS = np.array([r[5] for r in _CATEGORY_ROWS])
_CAT_QUAL_SENS = np.array([r[6] for r in _CATEGORY_ROWS])
_CAT_NOUN = np.array([r[7] for r in _CATEGORY_ROWS], dtype=object)
_CAT_MATERIAL = np.array([r[8] for r in _CATEGORY_ROWS], dtype=object)
_OCCASION = CATEGORIES.index("occasion_wear")
_APPAREL = np.array([CATEGORIES.index(c) for c in ("dresses", "tops", "jeans", "outerwear", "occasion_wear")])

_DESC_ADJ = {
    "dresses": ("wrap", "midi", "maxi", "shirt", "slip", "floral", "knitted", "linen"),
    "tops": ("cotton", "ribbed", "oversized", "cropped", "striped", "silk", "basic", "v-neck"),
    "jeans": ("slim-fit", "straight", "wide-leg", "bootcut", "skinny", "relaxed", "high-rise", "tapered"),
    "outerwear": ("puffer", "wool", "rain", "denim", "bomber", "trench", "quilted", "parka"),
    "occasion_wear": ("evening", "sequin", "satin", "cocktail", "lace", "velvet", "ball", "bridesmaid"),
    "shoes": ("leather", "running", "suede", "chelsea", "canvas", "heeled", "loafer", "ankle"),
    "accessories": ("wool", "silk", "patterned", "knitted", "leather", "cashmere", "printed", "woven"),
    "bags": ("tote", "crossbody", "leather", "canvas", "mini", "weekend", "shoulder", "clutch"),
    "electronics": (
        "wireless",
        "bluetooth",
        "smart",
        "portable",
        "noise-cancelling",
        "compact",
        "usb-c",
        "digital",
    ),
    "home": ("ceramic", "table", "floor", "rattan", "glass", "brass", "linen", "scented"),
    "beauty": ("hydrating", "night", "vitamin c", "matte", "organic", "repair", "day", "tinted"),
}
_DESC_NOUN = {
    "dresses": ("dress",),
    "tops": ("t-shirt", "blouse", "top", "sweater"),
    "jeans": ("jeans",),
    "outerwear": ("jacket", "coat"),
    "occasion_wear": ("gown", "dress", "jumpsuit"),
    "shoes": ("sneakers", "boots", "pumps", "shoes"),
    "accessories": ("scarf", "belt", "hat", "gloves"),
    "bags": ("bag", "backpack", "tote"),
    "electronics": ("headphones", "speaker", "smartwatch", "charger"),
    "home": ("lamp", "vase", "cushion", "candle"),
    "beauty": ("cream", "serum", "lipstick", "cleanser"),
}
COLORS = (
    "black", "white", "navy", "grey", "beige", "red", "green", "blue", "pink", "brown",
    "olive", "burgundy", "cream", "khaki", "camel", "silver", "gold", "yellow", "purple", "orange",
)  # fmt: skip
_BRAND_HEAD = (
    "Nord",
    "Vel",
    "Ast",
    "Mar",
    "Lum",
    "Kor",
    "Bel",
    "Sol",
    "Ter",
    "Ori",
    "Fen",
    "Iv",
    "Cal",
    "Zan",
)
_BRAND_TAIL = ("vik", "ora", "ello", "ique", "sen", "ano", "ity", "ara", "ström", "ley")

# --- geography ------------------------------------------------------------------------------------
_WAREHOUSES = (("DE", 50.11, 8.68), ("NL", 51.92, 4.48), ("ES", 40.42, -3.70), ("GB", 52.49, -1.89))
_DOMESTIC = (("DE", 0.40), ("GB", 0.25), ("ES", 0.20), ("NL", 0.15))
_ABROAD = (
    ("FR", 0.22), ("IT", 0.14), ("BE", 0.08), ("AT", 0.07), ("PL", 0.07), ("CH", 0.06), ("IE", 0.05),
    ("DK", 0.04), ("SE", 0.04), ("PT", 0.04), ("CZ", 0.03), ("NO", 0.03), ("US", 0.05), ("CA", 0.02),
    ("AU", 0.02), ("AE", 0.02), ("PL", 0.02),
)  # fmt: skip
_CHANNEL_P = {"web": 0.46, "app": 0.34, "marketplace": 0.13, "phone": 0.04, "unknown": 0.03}
_CHANNEL_EFFECT = {"web": 0.0, "app": -0.10, "marketplace": 0.20, "phone": -0.15, "unknown": 0.0}
_PAY_P = {"card": 0.42, "paypal": 0.30, "invoice": 0.14, "cod": 0.04, "gift_card": 0.04, "unknown": 0.06}
_PAY_EFFECT = {"card": 0.0, "paypal": 0.05, "invoice": 0.35, "cod": 0.30, "gift_card": -0.25, "unknown": 0.0}


@dataclass(frozen=True)
class GeneratorOptions:
    """Knobs of the generator beyond the sizes (params.yaml `generate:`; CLI options override)."""

    orders_per_customer: float = 6.0  # mean orders per customer over the whole period
    cross_border_share: float = 0.15  # customers living outside the warehouse countries
    abuse_share: float = 0.02  # wardrobers + serial abusers
    honest_high_share: float = 0.08  # fit-uncertain honest high returners
    bracketer_share: float = 0.03  # order 2-3 adjacent sizes, keep one
    review_rate: float = 0.07  # share of delivered lines that get a review (on average)
    mean_extra_lines: float = 1.0  # basket = 1 + min(Poisson(mean_extra_lines), 5)


@dataclass
class Generated:
    """The seven contract tables, the hidden truth and meta (cutoff, source, seed, sizes)."""

    tables: dict[str, pd.DataFrame]
    truth: dict[str, pd.DataFrame]
    meta: dict[str, Any] = field(default_factory=dict)


def options_from(params_section: dict[str, Any] | None) -> dict[str, Any]:
    """The GeneratorOptions keys of a params.yaml `generate:` section (sizes/start are passed separately)."""
    names = {f.name for f in fields(GeneratorOptions)}
    return {k: v for k, v in (params_section or {}).items() if k in names}


def generate(
    n_customers: int, n_products: int, months: int, seed: int, start: str = "2024-01-01", **opts: Any
) -> Generated:
    """Generate a seeded order history with returns, reviews and ground truth (see the module docstring)."""
    unknown = set(opts) - {f.name for f in fields(GeneratorOptions)}
    if unknown:
        raise TypeError(
            f"generate(): unknown option(s) {sorted(unknown)}; known: {list(GeneratorOptions.__annotations__)}"
        )
    o = GeneratorOptions(**opts)
    if n_customers < 1 or n_products < len(CATEGORIES) or months < 1:
        raise ValueError(
            f"generate(): need n_customers >= 1, n_products >= {len(CATEGORIES)}, months >= 1 "
            f"(got {n_customers}, {n_products}, {months})"
        )
    for name in ("cross_border_share", "abuse_share", "honest_high_share", "bracketer_share", "review_rate"):
        if not 0.0 <= getattr(o, name) <= 1.0:
            raise ValueError(f"generate(): {name} must be within [0, 1], got {getattr(o, name)}")
    for name in ("orders_per_customer", "mean_extra_lines"):
        if not getattr(o, name) >= 0.0:
            raise ValueError(f"generate(): {name} must be >= 0, got {getattr(o, name)}")
    if o.abuse_share + o.honest_high_share + o.bracketer_share > 1.0:
        raise ValueError("generate(): abuse_share + honest_high_share + bracketer_share must be <= 1")

    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    cutoff = t0 + pd.DateOffset(months=int(months))
    n_days = int((cutoff - t0).days)

    wh = _warehouses()
    cust = _customers(rng, n_customers, t0, n_days, o)
    prod = _products(rng, n_products)
    orders = _orders(rng, cust, wh, t0, n_days, o)
    lines = _lines(rng, cust, prod, orders, o)
    _hazards(rng, cust, prod, orders, lines)
    _returns(rng, orders, lines)
    reviews = _reviews(rng, cust, prod, orders, lines, o)

    tables = _assemble_tables(cust, prod, wh, orders, lines, reviews)
    truth = _assemble_truth(cust, prod, lines)
    meta = {
        "cutoff": cutoff.isoformat(),
        "start": t0.isoformat(),
        "source": "generated",
        "seed": int(seed),
        "months": int(months),
        "n_customers": int(n_customers),
        "n_products": int(n_products),
        "options": asdict(o),
        "rows": {name: len(df) for name, df in tables.items()},
    }
    return Generated(tables, truth, meta)


def write_generated(data: Generated, raw_dir: Path | str, truth_dir: Path | str) -> None:
    """Write `<table>.parquet` + meta.json into raw_dir and the truth files into truth_dir, atomically."""
    from pipeline.io import write_json, write_parquet

    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    for name in TABLE_ORDER:
        write_parquet(data.tables[name], raw_dir / f"{name}.parquet")
    for name in TRUTH_TABLES:
        write_parquet(data.truth[name], truth_dir / f"{name}.parquet")
    write_json(data.meta, raw_dir / META_FILE)


def return_rate(data: Generated) -> float:
    """Share of order lines with a recorded return (at or before the cutoff)."""
    n = len(data.tables["order_lines"])
    return float(data.tables["returns"]["line_id"].nunique() / n) if n else 0.0


# --- helpers --------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn from the discrete distribution p (vectorised inverse CDF)."""
    cdf = np.cumsum(np.asarray(p, dtype="float64"))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _days_to_ts(t0: pd.Timestamp, days: np.ndarray) -> np.ndarray:
    """start + fractional days -> datetime64[us] (NaN -> NaT)."""
    base = np.datetime64(t0.to_datetime64(), "us")
    us = np.round(np.asarray(days, dtype="float64") * _US_PER_DAY)
    out = np.full(us.shape, np.datetime64("NaT"), dtype=TS_DTYPE)
    ok = np.isfinite(us)
    out[ok] = base + us[ok].astype("int64").astype("timedelta64[us]")
    return out


def _cat(values: np.ndarray, categories: tuple[str, ...] | list[str]) -> pd.Categorical:
    """Integer codes (-1 = missing) -> a pandas Categorical without copying strings per row."""
    return pd.Categorical.from_codes(np.asarray(values, dtype="int32"), categories=list(categories))


# --- entities -------------------------------------------------------------------------------------
def _warehouses() -> dict[str, np.ndarray]:
    return {
        "id": np.arange(1, len(_WAREHOUSES) + 1, dtype="int64"),
        "country": np.array([w[0] for w in _WAREHOUSES], dtype=object),
        "lat": np.array([w[1] for w in _WAREHOUSES]),
        "lon": np.array([w[2] for w in _WAREHOUSES]),
    }


def _customers(rng: np.random.Generator, n: int, t0: pd.Timestamp, n_days: int, o: GeneratorOptions) -> dict:
    """Customers: location, tenure, hidden sizes, fit behaviour, propensity and archetype."""
    cent = country_centroids().set_index("country")
    dom = [c for c, _ in _DOMESTIC]
    abroad = list(dict.fromkeys(c for c, _ in _ABROAD))
    abroad_p = np.array([sum(w for c2, w in _ABROAD if c2 == c) for c in abroad])
    countries = tuple(dom + abroad)
    cross = rng.random(n) < o.cross_border_share
    code = np.where(
        cross,
        len(dom) + _draw(rng, abroad_p, n),
        _draw(rng, np.array([w for _, w in _DOMESTIC]), n),
    )
    clat = cent.loc[list(countries), "lat"].to_numpy(dtype="float64")[code]
    clon = cent.loc[list(countries), "lon"].to_numpy(dtype="float64")[code]
    lat = np.clip(clat + np.clip(rng.normal(0, 1.1, n), -2.5, 2.5), -89.0, 89.0)
    lon = np.clip(clon + np.clip(rng.normal(0, 1.6, n), -3.5, 3.5), -179.0, 179.0)

    # archetypes: abuse_share split between serial abusers (60%) and wardrobers (40%)
    shares = np.array(
        [
            1.0 - o.abuse_share - o.honest_high_share - o.bracketer_share,
            o.honest_high_share,
            o.bracketer_share,
            0.4 * o.abuse_share,
            0.6 * o.abuse_share,
        ]
    )
    arche = _draw(rng, shares, n).astype("int8")

    # tenure: 65% signed up before the period (up to 4 years), the rest during it
    new = rng.random(n) < 0.35
    start_day = np.where(new, np.floor(rng.random(n) * n_days * 0.92), 0.0)
    signup_days = np.where(new, start_day, -rng.random(n) * 4 * 365.25)

    # hidden true sizes (ranks): alpha 0..7 (XXS..3XL), shoe 0..14 (EU 34..48), correlated
    z = rng.normal(0, 1, n)
    size_alpha = np.clip(np.round(3.1 + 1.25 * z), 0, 7).astype("int8")
    size_shoe = np.clip(np.round(5.5 + 2.0 * z + rng.normal(0, 1.6, n)), 0, 14).astype("int8")
    fit_sd = np.where(arche == 1, 0.75, rng.uniform(0.12, 0.4, n))  # honest_high: fit-uncertain
    aware = rng.beta(3, 3, n)  # chance of correcting for a product's known size bias
    propensity = rng.normal(0, 0.5, n) + np.where(arche == 1, 0.9, 0.0)  # personal return habit (log-odds)
    fav_cat = _draw(rng, _CAT_SHARE, n).astype("int8")
    channel_pref = _draw(rng, np.array(list(_CHANNEL_P.values())), n).astype("int8")
    pay_pref = _draw(rng, np.array(list(_PAY_P.values())), n).astype("int8")
    activity = rng.gamma(1.3, 1 / 1.3, n) * np.where(arche >= 3, 1.3, 1.0)
    review_propensity = rng.lognormal(0, 0.8, n)
    return {
        "n": n,
        "id": np.arange(1, n + 1, dtype="int64"),
        "countries": countries,
        "country": code.astype("int16"),
        "lat": lat,
        "lon": lon,
        "signup_ts": _days_to_ts(t0, signup_days),
        "start_day": start_day.astype("int32"),
        "signup_day": signup_days,
        "arche": arche,
        "size_alpha": size_alpha,
        "size_shoe": size_shoe,
        "fit_sd": fit_sd.astype("float32"),
        "aware": aware.astype("float32"),
        "propensity": propensity.astype("float32"),
        "fav_cat": fav_cat,
        "channel_pref": channel_pref,
        "pay_pref": pay_pref,
        "activity": activity,
        "review_propensity": review_propensity.astype("float32"),
    }


def _products(rng: np.random.Generator, n: int) -> dict:
    """Products: category, brand (shared bias/quality), hidden size bias and quality, price, colours."""
    # every category gets at least one product; the rest by catalogue share
    cat = np.concatenate([np.arange(len(CATEGORIES)), _draw(rng, _CAT_SHARE, n - len(CATEGORIES))])
    cat = rng.permutation(cat).astype("int8")
    brand_names = tuple(f"{h}{t}" for h in _BRAND_HEAD for t in _BRAND_TAIL)
    n_brands = int(min(len(brand_names), max(8, n // 25)))
    brand_names = brand_names[:n_brands]
    b_bias = rng.choice(np.array([-1, 0, 1]), n_brands, p=[0.22, 0.66, 0.12])
    b_quality = np.clip(rng.beta(5, 2.5, n_brands), 0.15, 0.95)
    b_price = rng.lognormal(0, 0.3, n_brands)
    brand = rng.integers(0, n_brands, n)
    own_bias = rng.choice(np.array([-2, -1, 0, 1]), n, p=[0.04, 0.18, 0.66, 0.12])
    bias = np.where(rng.random(n) < 0.65, b_bias[brand], own_bias)
    sized = _CAT_SIZE_TYPE[cat] != "none"
    bias = np.where(sized, bias, 0).astype("int8")
    quality = np.clip(b_quality[brand] + rng.normal(0, 0.14, n), 0.02, 0.99)
    price = _CAT_PRICE[cat] * b_price[brand] * rng.lognormal(0, 0.4, n)
    price = np.maximum(np.floor(price), 1.0) + 0.99
    # hidden "not as described" hazard (photos/description off), worse for poor products
    nad = (rng.beta(1.2, 50, n) + 0.03 * (1 - quality)) * _CAT_QUAL_SENS[cat]
    popularity = rng.lognormal(0, 1.0, n)
    n_colors = rng.integers(1, 5, n)
    color0 = rng.integers(0, len(COLORS), n)
    color_step = rng.integers(1, 6, n)
    # descriptions: brand + style adjective + noun, per category
    desc = np.empty(n, dtype=object)
    for k, c in enumerate(CATEGORIES):
        m = np.flatnonzero(cat == k)
        adj = np.array(_DESC_ADJ[c], dtype=object)[rng.integers(0, len(_DESC_ADJ[c]), m.size)]
        noun = np.array(_DESC_NOUN[c], dtype=object)[rng.integers(0, len(_DESC_NOUN[c]), m.size)]
        desc[m] = np.array(brand_names, dtype=object)[brand[m]] + " " + adj + " " + noun
    base_rate = 1 - (1 - _CAT_BASE[cat]) * (1 - _quality_hazard(cat, quality)) * (1 - nad)
    return {
        "n": n,
        "id": np.arange(1, n + 1, dtype="int64"),
        "cat": cat,
        "brand": brand.astype("int32"),
        "brand_names": brand_names,
        "sized": sized,
        "bias": bias,
        "quality": quality,
        "price": price,
        "nad": nad,
        "popularity": popularity,
        "n_colors": n_colors,
        "color0": color0,
        "color_step": color_step,
        "desc": desc,
        "base_rate": base_rate,
    }


def _quality_hazard(cat: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Chance of a return because the item is poor: grows with (1 - quality)^2."""
    return 0.3 * _CAT_QUAL_SENS[cat] * (1 - quality) ** 2


def _season_weights(t0: pd.Timestamp, n_days: int) -> np.ndarray:
    """Daily order intensity: growth, weekends, Black Friday, Christmas and January sales."""
    days = pd.date_range(t0, periods=n_days, freq="D")
    doy = days.day_of_year.to_numpy().astype("float64")

    def bump(center: float, width: float, height: float) -> np.ndarray:
        d = np.abs(doy - center)
        d = np.minimum(d, 365.25 - d)
        return height * np.exp(-((d / width) ** 2))

    w = 1.0 + bump(332, 6, 1.2) + bump(350, 10, 0.7) + bump(8, 9, 0.45) + bump(196, 12, 0.2)
    w *= np.where(days.day_of_week.to_numpy() >= 5, 1.12, 1.0)
    w *= 1.0 + 0.25 * np.arange(n_days) / max(n_days, 1)
    return w


def _orders(
    rng: np.random.Generator, cust: dict, wh: dict, t0: pd.Timestamp, n_days: int, o: GeneratorOptions
) -> dict:
    """Orders: count per customer, seasonal timestamps after signup, warehouse, channel, payment, delivery."""
    w = _season_weights(t0, n_days)
    cdf = np.concatenate([[0.0], np.cumsum(w)])
    cdf /= cdf[-1]
    mass = 1.0 - cdf[cust["start_day"]]  # share of the season mass after signup
    lam = cust["activity"] * mass
    lam *= o.orders_per_customer / max(lam.mean(), 1e-9)
    n_orders = rng.poisson(lam)
    cidx = np.repeat(np.arange(cust["n"], dtype="int32"), n_orders)
    m = cidx.size
    lo = cdf[cust["start_day"][cidx]]
    u = lo + rng.random(m) * (1.0 - lo)
    day = np.minimum(np.searchsorted(cdf, u, side="right") - 1, n_days - 1)
    hour_w = np.array(
        [2, 1, 1, 1, 1, 2, 3, 5, 6, 7, 7, 7, 8, 8, 7, 7, 7, 8, 9, 10, 11, 10, 7, 4], dtype="float64"
    )
    hour = _draw(rng, hour_w, m)
    frac = (hour + rng.random(m)) / 24.0
    order_day = day + frac
    order_day = np.minimum(order_day, n_days - 1e-6)
    order_idx = np.argsort(order_day, kind="stable")  # order ids follow time
    cidx, order_day = cidx[order_idx], order_day[order_idx]

    # ship to home (small jitter); warehouse: nearest 80%, else any (stock)
    slat = cust["lat"][cidx] + rng.normal(0, 0.05, m)
    slon = cust["lon"][cidx] + rng.normal(0, 0.05, m)
    dist_c = np.stack(
        [haversine_km(cust["lat"], cust["lon"], wh["lat"][k], wh["lon"][k]) for k in range(len(wh["id"]))],
        axis=1,
    )
    nearest = np.argmin(dist_c, axis=1)[cidx]
    widx = np.where(rng.random(m) < 0.8, nearest, rng.integers(0, len(wh["id"]), m))
    dist = haversine_km(slat, slon, wh["lat"][widx], wh["lon"][widx])
    ship_country = cust["country"][cidx]
    countries = np.array(cust["countries"], dtype=object)
    cross = countries[ship_country] != wh["country"][widx]

    # delivery: processing + road/air transit + cross-border customs; hidden excess delay drives returns
    transit = np.where(dist < 2500, dist / 650.0, 3.0 + dist / 3000.0)
    delay = _transit_delay(rng, cross)  # hidden: customs + carrier trouble
    deliver_days = 0.4 + rng.gamma(2.0, 0.3, m) + transit + delay
    delivered = order_day + deliver_days
    delivered = np.where(delivered <= n_days, delivered, np.nan)  # still in transit at the cutoff

    channel = np.where(
        rng.random(m) < 0.75, cust["channel_pref"][cidx], _draw(rng, np.array(list(_CHANNEL_P.values())), m)
    )
    pay = np.where(
        rng.random(m) < 0.85, cust["pay_pref"][cidx], _draw(rng, np.array(list(_PAY_P.values())), m)
    )
    doy = (t0 + pd.to_timedelta(np.floor(order_day), unit="D")).day_of_year.to_numpy()
    sale = ((doy >= 325) & (doy <= 360)) | (doy <= 14)  # Black Friday to Christmas, January sales
    return {
        "n": m,
        "t0": t0,
        "n_days": n_days,
        "sale": sale,
        "id": np.arange(1, m + 1, dtype="int64"),
        "cidx": cidx,
        "day": order_day,
        "ship_lat": slat,
        "ship_lon": slon,
        "ship_country": ship_country,
        "widx": widx.astype("int8"),
        "dist": dist,
        "cross": cross,
        "delay": delay,  # days beyond the normal transit (hidden)
        "delivered": delivered,
        "channel": channel.astype("int8"),
        "pay": pay.astype("int8"),
    }


def _lines(rng: np.random.Generator, cust: dict, prod: dict, orders: dict, o: GeneratorOptions) -> dict:
    """Order lines: basket, product choice, size choice (with bracketing), colour, quantity, price."""
    basket = 1 + np.minimum(rng.poisson(o.mean_extra_lines, orders["n"]), 5)
    oidx = np.repeat(np.arange(orders["n"], dtype="int64"), basket)
    n = oidx.size
    cidx = orders["cidx"][oidx]
    arche = cust["arche"][cidx]

    # category: the customer's favourite (35%), occasion wear for wardrobers (45%), else the catalogue mix
    cat = _draw(rng, _CAT_SHARE, n)
    r = rng.random(n)
    cat = np.where(r < 0.35, cust["fav_cat"][cidx], cat)
    cat = np.where((arche == 3) & (r > 0.55), _OCCASION, cat)
    pidx = np.empty(n, dtype="int64")
    for k in range(len(CATEGORIES)):
        m = np.flatnonzero(cat == k)
        members = np.flatnonzero(prod["cat"] == k)
        if m.size:
            pidx[m] = members[_draw(rng, prod["popularity"][members], m.size)]
    pcat = prod["cat"][pidx]
    sized = prod["sized"][pidx]
    shoe = _CAT_SIZE_TYPE[pcat] == "eu_shoe"
    n_ranks = np.where(shoe, len(SIZE_SCALES["eu_shoe"]), len(SIZE_SCALES["alpha"]))
    true = np.where(shoe, cust["size_shoe"][cidx], cust["size_alpha"][cidx]).astype("int64")
    bias = prod["bias"][pidx].astype("int64")
    # chosen size = true - (bias, if the customer knows it) + rounded personal noise
    knows = rng.random(n) < cust["aware"][cidx]
    noise = np.round(rng.normal(0, 1, n) * cust["fit_sd"][cidx] * np.where(shoe, 1.3, 1.0)).astype("int64")
    chosen = np.clip(true - np.where(knows, bias, 0) + noise, 0, n_ranks - 1)

    # bracketing: the same product in 2-3 adjacent sizes as separate lines
    p_br = np.select([arche == 2, arche == 1], [0.45, 0.05], 0.008)
    bracket = sized & (rng.random(n) < p_br)
    k = np.where(bracket, np.where(rng.random(n) < 0.6, 2, 3), 1)
    rep = np.repeat(np.arange(n), k)
    pos = np.arange(rep.size) - np.repeat(np.cumsum(k) - k, k)
    lo = np.select([k == 3, k == 2], [chosen - 1, chosen - (rng.random(n) < 0.5)], chosen)
    lo = np.clip(lo, 0, n_ranks - k)
    size = np.where(sized[rep], lo[rep] + pos, chosen[rep])
    group = rep  # bracket group = original line
    oidx, cidx, pidx, pcat, sized, true, bias, shoe, k = (
        a[rep] for a in (oidx, cidx, pidx, pcat, sized, true, bias, shoe, k)
    )
    n = rep.size
    fit = np.where(sized, size + bias - true, 0)  # experienced fit: <0 too small, >0 too large
    offset = np.where(sized, size - true, 0)
    # in a bracket group the best-fitting size is kept
    in_bracket = k > 1
    absfit = np.abs(fit) + rng.random(n) * 0.1  # random tie-break
    best = np.full(group.max() + 1 if n else 0, np.inf)
    np.minimum.at(best, group[in_bracket], absfit[in_bracket])
    bracket_extra = in_bracket & (absfit > best[group])

    # colour from the product's palette, quantity, price and discount
    pick = rng.integers(0, 1 << 30, n) % prod["n_colors"][pidx]
    color = (prod["color0"][pidx] + pick * prod["color_step"][pidx]) % len(COLORS)
    multi = np.isin(pcat, [CATEGORIES.index(c) for c in ("accessories", "home", "beauty", "tops")])
    quantity = 1 + np.where(
        ~in_bracket & (rng.random(n) < np.where(multi, 0.18, 0.05)), 1 + rng.poisson(0.35, n), 0
    )
    list_price = prod["price"][pidx]
    day = orders["day"][oidx]
    sale = orders["sale"][oidx]
    p_disc = np.where(sale, 0.55, 0.2)
    disc = np.where(
        rng.random(n) < p_disc,
        rng.choice(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), n, p=[0.3, 0.3, 0.2, 0.12, 0.08]),
        0.0,
    )
    unit_price = np.round(list_price * (1 - disc), 2)
    return {
        "n": n,
        "id": np.arange(1, n + 1, dtype="int64"),
        "oidx": oidx,
        "cidx": cidx,
        "pidx": pidx,
        "cat": pcat,
        "sized": sized,
        "shoe": shoe,
        "size": size,
        "fit": fit.astype("int8"),
        "offset": offset.astype("int8"),
        "in_bracket": in_bracket,
        "bracket_extra": bracket_extra,
        "color": color.astype("int16"),
        "quantity": quantity.astype("int16"),
        "list_price": list_price,
        "unit_price": unit_price,
        "disc": disc,
        "day": day,
        "sale": sale,
    }


def _hazards(rng: np.random.Generator, cust: dict, prod: dict, orders: dict, lines: dict) -> None:
    """Competing hazards per line -> true return probability, drawn return and the cause that fired."""
    n = lines["n"]
    cidx, pidx, oidx, cat = lines["cidx"], lines["pidx"], lines["oidx"], lines["cat"]
    arche = cust["arche"][cidx]
    quality = prod["quality"][pidx]
    cat_med = _CAT_PRICE[cat]
    chan_eff = np.array(list(_CHANNEL_EFFECT.values()))[orders["channel"][oidx]]
    pay_eff = np.array(list(_PAY_EFFECT.values()))[orders["pay"][oidx]]
    # changed mind: category base x personal habit x price/discount x payment/channel x quantity
    logit0 = (
        _logit(_CAT_BASE[cat])
        + cust["propensity"][cidx]
        + 0.25 * np.log(lines["list_price"] / cat_med)
        + 0.9 * lines["disc"]
        + chan_eff
        + pay_eff
        + 0.25 * (lines["quantity"] > 1)
        + 0.3 * (lines["day"] - cust["signup_day"][cidx] < 60)  # new accounts still learn the fit/shop
    )
    h = np.zeros((n, len(CAUSES)), dtype="float32")
    c = {name: i for i, name in enumerate(CAUSES)}
    h[:, c["changed_mind"]] = _sigmoid(logit0)
    fit = np.abs(lines["fit"]).astype("float64")
    sens = _CAT_FIT_SENS[cat] * np.where(arche == 1, 1.15, 1.0)
    h[:, c["size_mismatch"]] = np.where(lines["sized"], 1 - np.exp(-sens * (0.55 * fit + 0.25 * fit**2)), 0.0)
    h[:, c["quality"]] = _quality_hazard(cat, quality)
    h[:, c["not_as_described"]] = prod["nad"][pidx]
    # delivery: damage (more when cross-border and far), lateness beyond normal transit
    cross = orders["cross"][oidx]
    p_dmg = 0.008 + 0.02 * cross + 0.0000025 * orders["dist"][oidx]
    damaged = rng.random(n) < p_dmg
    delay = orders["delay"][oidx]
    h_dd = np.where(damaged, 0.8, _delay_hazard(delay))
    dd_sens = np.minimum(_CAT_QUAL_SENS[cat] * 1.2, 1.0)  # beauty: rarely worth it
    h[:, c["damage_delay"]] = h_dd * dd_sens
    h[:, c["abuse"]] = np.where(arche == 4, 0.7, 0.0)
    wardrobe = (arche == 3) & (
        (cat == _OCCASION) | (np.isin(cat, _APPAREL) & (lines["list_price"] > 1.5 * cat_med))
    )
    h[:, c["wardrobing"]] = np.where(wardrobe, 0.8, 0.0)
    h[:, c["bracketing"]] = np.where(lines["bracket_extra"], 0.95, 0.0)
    p = 1.0 - np.prod(1.0 - h.astype("float64"), axis=1)
    # Order-time (ex-ante) probability: transit damage and delay happen after the order is placed, so the
    # best any model scoring at checkout can know is the expectation over them. That is the oracle.
    h_dd_ex = (p_dmg * 0.8 + (1 - p_dmg) * _EXPECTED_DELAY_HAZARD[cross.astype("int8")]) * dd_sens
    keep = 1.0 - h.astype("float64")
    keep[:, c["damage_delay"]] = 1.0
    p_ex = 1.0 - np.prod(keep, axis=1) * (1.0 - h_dd_ex)
    drawn = rng.random(n) < p
    # the cause that fired: proportional to its hazard
    cum = np.cumsum(h, axis=1)
    u = rng.random(n) * cum[:, -1]
    fired = np.minimum((cum < u[:, None]).sum(axis=1), len(CAUSES) - 1).astype("int8")
    likeliest = np.argmax(h, axis=1).astype("int8")
    main = np.where(drawn, fired, np.where(p < 0.05, c["none"], likeliest)).astype("int8")
    lines.update(
        p=p.astype("float32"),
        p_ex=p_ex.astype("float32"),
        drawn=drawn,
        cause=main,
        damaged=damaged,
        late=delay > 2.0,
    )


def _delay_hazard(delay: np.ndarray) -> np.ndarray:
    """Return hazard from a late delivery: grows with days beyond normal transit, capped."""
    return np.minimum(0.03 * np.maximum(delay - 2.0, 0.0), 0.2)


def _transit_delay(rng: np.random.Generator, cross: np.ndarray) -> np.ndarray:
    """Days beyond the normal transit: customs when cross-border, plus carrier trouble."""
    m = cross.size
    customs = np.where(cross, rng.gamma(1.6, 0.9, m), 0.0)
    excess = rng.exponential(0.6, m) * np.where(rng.random(m) < 0.12, 4.0, 1.0)
    return customs + excess


def _expected_delay_hazard_table(draws: int = 400_000) -> np.ndarray:
    """E[delay hazard] for [domestic, cross-border] orders, by a fixed-seed Monte Carlo (deterministic)."""
    rng = np.random.default_rng(20240101)
    return np.array(
        [_delay_hazard(_transit_delay(rng, np.full(draws, flag))).mean() for flag in (False, True)]
    )


_EXPECTED_DELAY_HAZARD = _expected_delay_hazard_table()


def _returns(rng: np.random.Generator, orders: dict, lines: dict) -> None:
    """Return timing, reason code and quantity for the drawn returns; drop those after the cutoff."""
    n = lines["n"]
    cause = lines["cause"]
    c = {name: i for i, name in enumerate(CAUSES)}
    wait = rng.gamma(2.0, 3.2, n) + 0.5  # days after delivery
    wait = np.where(np.isin(cause, [c["size_mismatch"], c["bracketing"]]), rng.gamma(2.0, 1.8, n) + 0.7, wait)
    wait = np.where(cause == c["damage_delay"], rng.gamma(1.5, 1.0, n) + 0.3, wait)
    wait = np.where(cause == c["wardrobing"], rng.uniform(17, 25, n), wait)  # near the deadline
    delivered = orders["delivered"][lines["oidx"]]
    ret_day = delivered + wait
    known = lines["drawn"] & np.isfinite(ret_day) & (ret_day < orders["n_days"])  # later: not yet known
    lines["ret_day"] = np.where(known, ret_day, np.nan)

    # reason codes (contract RETURN_REASONS order)
    r = {name: i for i, name in enumerate(RETURN_REASONS)}
    u = rng.random(n)
    fit = lines["fit"]
    size_reason = np.where(fit < 0, r["too_small"], np.where(fit > 0, r["too_large"], r["changed_mind"]))
    reason = np.full(n, r["changed_mind"], dtype="int8")
    reason = np.where(u < 0.15, r["other"], reason)
    is_size = np.isin(cause, [c["size_mismatch"], c["bracketing"]])
    reason = np.where(is_size, np.where(u < 0.04, r["other"], size_reason), reason)
    reason = np.where(cause == c["quality"], np.where(u < 0.7, r["quality"], r["not_as_described"]), reason)
    reason = np.where(
        cause == c["not_as_described"], np.where(u < 0.85, r["not_as_described"], r["other"]), reason
    )
    dd = np.where(lines["damaged"], r["damaged"], r["late_delivery"])
    reason = np.where(cause == c["damage_delay"], np.where(u < 0.9, dd, r["other"]), reason)
    claims = np.select(
        [u < 0.4, u < 0.75, u < 0.85, u < 0.95],
        [r["damaged"], r["not_as_described"], r["quality"], r["changed_mind"]],
        r["other"],
    )
    reason = np.where(cause == c["abuse"], claims, reason)
    ward = np.select([u < 0.55, u < 0.8], [r["changed_mind"], r["not_as_described"]], r["other"])
    reason = np.where(cause == c["wardrobing"], ward, reason)
    lines["reason"] = reason.astype("int8")
    q = lines["quantity"].astype("int64")
    partial = rng.random(n) < 0.5
    lines["ret_qty"] = np.where((q > 1) & partial, 1 + (rng.random(n) * (q - 1)).astype("int64"), q).astype(
        "int16"
    )


# --- reviews --------------------------------------------------------------------------------------
_INTENS = ("", "really ", "very ", "super ", "extremely ", "quite ", "so ", "incredibly ", "truly ")
_SOFT = ("", "a bit ", "slightly ", "somewhat ", "a little ", "rather ")
_POS_ADJ = (
    "lovely",
    "beautiful",
    "comfortable",
    "gorgeous",
    "elegant",
    "stylish",
    "flattering",
    "great",
    "nice",
    "perfect",
    "wonderful",
    "excellent",
)
_NEG_ADJ = (
    "disappointing",
    "awful",
    "uncomfortable",
    "terrible",
    "ugly",
    "bad",
    "horrible",
    "poor",
    "useless",
    "overpriced",
    "frustrating",
)
_MID = (
    "It's okay.",
    "Does the job.",
    "Not bad, not great.",
    "Fine for the price.",
    "Mixed feelings.",
    "Average at best.",
    "It is alright I suppose.",
    "Nothing special.",
)
_POS_TAIL = (
    "Would definitely buy again!",
    "Highly recommend.",
    "Five stars from me.",
    "Can't fault it.",
    "No complaints at all.",
    "Exceeded my expectations.",
    "Great value for money.",
    "So happy with this purchase.",
)
_NEG_TAIL = (
    "Would not recommend.",
    "Waste of money.",
    "Never again.",
    "Returned it straight away.",
    "Very disappointed.",
    "Avoid.",
    "Not worth it.",
    "I regret buying this.",
)
_I_LOVE = (
    "I love it!",
    "I absolutely love it.",
    "Love it!",
    "I really like it.",
    "I'm thrilled with it.",
    "Really pleased with it.",
)
_I_HATE = (
    "I hate it.",
    "I really dislike it.",
    "I don't like it at all.",
    "Not happy with it.",
    "I'm so disappointed.",
    "I can't stand it.",
)
_Q_POS = ("premium", "soft", "solid", "durable", "well made", "high quality", "luxurious", "sturdy")
_Q_NEG = ("cheap", "flimsy", "thin", "scratchy", "rough", "fragile", "plasticky", "poorly finished")
_Q_POS_S = (
    "Excellent stitching.",
    "Great build quality.",
    "Well made and sturdy.",
    "The quality is superb.",
    "Still like new after many washes.",
    "Solid craftsmanship.",
)
_Q_NEG_S = (
    "Cheap fabric.",
    "Poor stitching.",
    "Fell apart after two washes.",
    "The seams came apart.",
    "Stopped working after a week.",
    "Not durable at all.",
    "Started falling apart quickly.",
    "Bad quality.",
)
_SMALL = (
    "Runs small.",
    "Runs {i}small, order a size up.",
    "{I}tight.",
    "Much smaller than expected.",
    "Size up!",
    "Too small for me.",
    "The sizing is off, it runs small.",
    "Had to go a size up.",
)
_LARGE = (
    "Runs large.",
    "Runs {i}big, size down.",
    "{I}baggy.",
    "Much bigger than expected.",
    "Size down!",
    "Too loose for me.",
    "The sizing is off, it runs large.",
    "Had to go a size down.",
)
_TRUE = (
    "True to size.",
    "Fits perfectly.",
    "Fit as expected.",
    "Perfect fit.",
    "The size chart is accurate.",
    "Sizing is spot on.",
)
_LATE = (
    "Delivery took ages.",
    "Arrived very late.",
    "Shipping was slow.",
    "Took forever to arrive.",
    "Delivery was delayed for days.",
)
_DAMAGED = (
    "Arrived damaged.",
    "The box was crushed and the item was scratched.",
    "It came broken.",
    "Packaging was torn and it was dirty.",
)
_FAST = ("Arrived quickly.", "Fast delivery.", "Delivered on time.", "Quick shipping.")
_OCCASIONS = (
    "a wedding",
    "work",
    "my holiday",
    "my sister",
    "a party",
    "everyday use",
    "the winter",
    "a gift",
    "my partner",
    "a festival",
)


def _pool(rng: np.random.Generator, pool: tuple[str, ...] | list[str] | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(pool, dtype=object)
    return arr[rng.integers(0, len(arr), n)]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _expand(templates: tuple[str, ...], modifiers: tuple[str, ...]) -> list[str]:
    """Fill {i}/{I} (modifier, lower/capitalised) in every template with every modifier."""
    out: list[str] = []
    for t in templates:
        if "{i}" in t or "{I}" in t:
            out += [_cap(t.replace("{i}", m).replace("{I}", _cap(m))) for m in modifiers]
        else:
            out.append(t)
    return out


def _reviews(
    rng: np.random.Generator, cust: dict, prod: dict, orders: dict, lines: dict, o: GeneratorOptions
) -> dict:
    """Reviews after delivery; rating and text follow hidden quality, experienced fit, damage and delay."""
    delivered = orders["delivered"][lines["oidx"]]
    unhappy = lines["drawn"] & np.isin(
        lines["cause"], [CAUSES.index(c) for c in ("quality", "damage_delay", "size_mismatch")]
    )
    p = o.review_rate * cust["review_propensity"][lines["cidx"]] / 1.38 * np.where(unhappy, 1.6, 1.0)
    wrote = np.isfinite(delivered) & (rng.random(lines["n"]) < np.minimum(p, 1.0))
    idx = np.flatnonzero(wrote)
    rday = delivered[idx] + rng.gamma(1.5, 5.0, idx.size) + 0.2
    keep = np.isfinite(rday) & (rday < orders["n_days"])
    idx, rday = idx[keep], rday[keep]
    order = np.argsort(rday, kind="stable")
    idx, rday = idx[order], rday[order]
    m = idx.size
    pidx = lines["pidx"][idx]
    cat = lines["cat"][idx]
    quality = prod["quality"][pidx]
    fit = lines["fit"][idx].astype("int64")
    damaged = lines["damaged"][idx]
    late = lines["late"][idx]
    returned = lines["drawn"][idx]
    latent = (
        3.8
        + 3.2 * (quality - 0.65)
        - 0.75 * np.abs(fit)
        - 1.4 * damaged
        - 0.5 * late
        - 0.35 * returned
        + rng.normal(0, 0.85, m)
    )
    rating = np.clip(np.round(latent), 1, 5).astype("int8")
    # text sentiment follows the rating with noise (the text can disagree a little with the stars)
    tone = latent + rng.normal(0, 0.5, m)
    text = np.full(m, "", dtype=object)
    noun = _CAT_NOUN[cat]
    intens_adj_pos = np.array([_cap(i + a) for i in _INTENS for a in _POS_ADJ], dtype=object)
    intens_adj_neg = np.array([_cap(i + a) for i in _INTENS for a in _NEG_ADJ], dtype=object)
    not_pos = np.array(
        [
            f"{s}{a}{t}"
            for s in ("Not ", "It is not ", "Honestly not ", "Definitely not ")
            for a in _POS_ADJ
            for t in (".", " at all.")
        ],
        dtype=object,
    )
    not_neg = np.array(
        [
            f"{s}{a}{t}"
            for s in ("Not ", "It is not ", "Honestly not ", "Definitely not ")
            for a in _NEG_ADJ
            for t in (".", " at all.")
        ],
        dtype=object,
    )

    u = rng.integers(0, 4, m)
    pos = tone >= 3.6
    neg = tone < 2.6
    mid = ~pos & ~neg
    s_pos = np.select(
        [u == 0, u == 1, u == 2],
        [_pool(rng, _I_LOVE, m), _pool(rng, intens_adj_pos, m) + " " + noun + ".", _pool(rng, not_neg, m)],
        _pool(rng, _POS_TAIL, m),
    )
    s_neg = np.select(
        [u == 0, u == 1, u == 2],
        [_pool(rng, _I_HATE, m), _pool(rng, intens_adj_neg, m) + " " + noun + ".", _pool(rng, not_pos, m)],
        _pool(rng, _NEG_TAIL, m),
    )
    s_mid = _pool(rng, _MID, m)
    text = np.where(pos, s_pos, np.where(neg, s_neg, s_mid))

    # opener
    opener = np.where(
        rng.random(m) < 0.5,
        "Bought this for " + _pool(rng, _OCCASIONS, m) + ".",
        "Ordered it in " + np.asarray(COLORS, dtype=object)[lines["color"][idx]] + ".",
    )
    text = np.where(rng.random(m) < 0.3, opener + " " + text, text)

    # quality sentence, read from the hidden quality (noisy)
    q_obs = quality + rng.normal(0, 0.12, m)
    material = _CAT_MATERIAL[cat]
    q_good = np.where(
        rng.random(m) < 0.5,
        "The " + material + " feels " + _pool(rng, [i + q for i in _INTENS for q in _Q_POS], m) + ".",
        _pool(rng, _Q_POS_S, m),
    )
    q_bad = np.where(
        rng.random(m) < 0.5,
        "The " + material + " feels " + _pool(rng, [i + q for i in _INTENS for q in _Q_NEG], m) + ".",
        _pool(rng, _Q_NEG_S, m),
    )
    say_q = rng.random(m) < 0.6
    text = np.where(say_q & (q_obs >= 0.7), text + " " + q_good, text)
    text = np.where(say_q & (q_obs <= 0.45), text + " " + q_bad, text)

    # size sentence: the fit experienced, or the product's bias when the reviewer sized around it
    sized = lines["sized"][idx]
    signal = np.where(
        fit != 0, np.sign(fit), np.sign(prod["bias"][pidx].astype("int64")) * (rng.random(m) < 0.6)
    )
    small = np.array(_expand(_SMALL, _INTENS + _SOFT), dtype=object)
    large = np.array(_expand(_LARGE, _INTENS + _SOFT), dtype=object)
    size_s = np.where(
        signal < 0, _pool(rng, small, m), np.where(signal > 0, _pool(rng, large, m), _pool(rng, _TRUE, m))
    )
    say_s = sized & (rng.random(m) < np.where(signal != 0, 0.75, 0.35))
    text = np.where(say_s, text + " " + size_s, text)

    # delivery sentence
    deliv = np.where(
        damaged, _pool(rng, _DAMAGED, m), np.where(late, _pool(rng, _LATE, m), _pool(rng, _FAST, m))
    )
    say_d = rng.random(m) < np.where(damaged, 0.8, np.where(late, 0.45, 0.12))
    text = np.where(say_d, text + " " + deliv, text)
    # closing remark sometimes
    close = np.where(pos, _pool(rng, _POS_TAIL, m), np.where(neg, _pool(rng, _NEG_TAIL, m), ""))
    text = np.where((rng.random(m) < 0.3) & ~mid, text + " " + close, text)
    lower = np.flatnonzero(rng.random(m) < 0.15)  # some reviewers do not use capitals
    text[lower] = pd.Series(text[lower], dtype="str").str.lower().to_numpy(dtype=object)
    return {
        "n": m,
        "id": np.arange(1, m + 1, dtype="int64"),
        "pidx": pidx,
        "cidx": lines["cidx"][idx],
        "day": rday,
        "rating": rating,
        "text": text,
    }


# --- assembly -------------------------------------------------------------------------------------
def _assemble_tables(
    cust: dict, prod: dict, wh: dict, orders: dict, lines: dict, reviews: dict
) -> dict[str, pd.DataFrame]:
    """Contract tables with memory-lean dtypes (category for low-cardinality text, int16/int8, float32 geo)."""
    t0 = orders["t0"]
    customers = pd.DataFrame(
        {
            "customer_id": cust["id"],
            "signup_ts": cust["signup_ts"],
            "country": _cat(cust["country"], cust["countries"]),
            "lat": cust["lat"].astype("float32"),
            "lon": cust["lon"].astype("float32"),
        }
    )
    size_type = np.where(prod["sized"], np.where(_CAT_SIZE_TYPE[prod["cat"]] == "eu_shoe", 1, 0), 2)
    products = pd.DataFrame(
        {
            "product_id": prod["id"],
            "category": _cat(prod["cat"], CATEGORIES),
            "brand": _cat(prod["brand"], prod["brand_names"]),
            "size_type": _cat(size_type, ("alpha", "eu_shoe", "none")),
            "description": pd.array(prod["desc"], dtype="str"),
        }
    )
    warehouses = pd.DataFrame(
        {
            "warehouse_id": wh["id"],
            "country": pd.Categorical(wh["country"]),
            "lat": wh["lat"].astype("float32"),
            "lon": wh["lon"].astype("float32"),
        }
    )
    oc = orders["cidx"]
    orders_df = pd.DataFrame(
        {
            "order_id": orders["id"],
            "customer_id": cust["id"][oc],
            "order_ts": _days_to_ts(t0, orders["day"]),
            "ship_country": _cat(orders["ship_country"], cust["countries"]),
            "ship_lat": orders["ship_lat"].astype("float32"),
            "ship_lon": orders["ship_lon"].astype("float32"),
            "warehouse_id": wh["id"][orders["widx"]],
            "channel": _cat(orders["channel"], tuple(_CHANNEL_P)),
            "payment_method": _cat(orders["pay"], tuple(_PAY_P)),
            "delivered_ts": _days_to_ts(t0, orders["delivered"]),
        }
    )
    n_alpha = len(SIZE_SCALES["alpha"])
    size_code = np.where(lines["sized"], lines["size"] + np.where(lines["shoe"], n_alpha, 0), -1)
    order_lines = pd.DataFrame(
        {
            "line_id": lines["id"],
            "order_id": orders["id"][lines["oidx"]],
            "product_id": prod["id"][lines["pidx"]],
            "size": _cat(size_code, SIZE_SCALES["alpha"] + SIZE_SCALES["eu_shoe"]),
            "color": _cat(lines["color"], COLORS),
            "quantity": lines["quantity"],
            "unit_price": lines["unit_price"],
            "list_price": lines["list_price"],
        }
    )
    ret = np.flatnonzero(np.isfinite(lines["ret_day"]))
    ret = ret[np.argsort(lines["ret_day"][ret], kind="stable")]
    returns = pd.DataFrame(
        {
            "line_id": lines["id"][ret],
            "return_ts": _days_to_ts(t0, lines["ret_day"][ret]),
            "quantity": lines["ret_qty"][ret],
            "reason": _cat(lines["reason"][ret], RETURN_REASONS),
        }
    )
    reviews_df = pd.DataFrame(
        {
            "review_id": reviews["id"],
            "product_id": prod["id"][reviews["pidx"]],
            "customer_id": cust["id"][reviews["cidx"]],
            "review_ts": _days_to_ts(t0, reviews["day"]),
            "rating": reviews["rating"],
            "text": pd.array(reviews["text"], dtype="str"),
        }
    )
    return {
        "customers": customers,
        "products": products,
        "warehouses": warehouses,
        "orders": orders_df,
        "order_lines": order_lines,
        "returns": returns,
        "reviews": reviews_df,
    }


def _assemble_truth(cust: dict, prod: dict, lines: dict) -> dict[str, pd.DataFrame]:
    """Hidden truth: per line probability/cause/size offsets, customer archetypes, product bias/quality."""
    return {
        "lines_truth": pd.DataFrame(
            {
                "line_id": lines["id"],
                "true_return_prob": lines["p_ex"],
                "realized_return_prob": lines["p"],
                "main_cause": _cat(lines["cause"], CAUSES),
                "size_offset": lines["offset"],
                "fit_offset": lines["fit"],
            }
        ),
        "customers_truth": pd.DataFrame(
            {
                "customer_id": cust["id"],
                "archetype": _cat(cust["arche"], ARCHETYPES),
                "true_size_alpha": _cat(cust["size_alpha"], SIZE_SCALES["alpha"]),
                "true_size_eu_shoe": _cat(cust["size_shoe"], SIZE_SCALES["eu_shoe"]),
            }
        ),
        "products_truth": pd.DataFrame(
            {
                "product_id": prod["id"],
                "size_bias": prod["bias"],
                "quality": prod["quality"].astype("float32"),
                "base_return_rate": prod["base_rate"].astype("float32"),
            }
        ),
    }
