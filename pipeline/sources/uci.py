"""UCI "Online Retail" / "Online Retail II" exports -> the canonical tables of `pipeline.contract`.

The export is one row per invoice line; cancellations are lines of invoices numbered "C...", with a
negative quantity. There is no "returned" flag, so returns are rebuilt here: every cancellation is
matched back to earlier purchases of the same customer and product, oldest purchase first, in partial
quantities, and dated at the cancellation. Every input row ends in exactly one outcome (an order line, a
matched cancellation, or an exclusion reason) and the report counts them, so input rows reconcile.
The decisions are documented in docs/uci-online-retail.md.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

SOURCE = "uci-online-retail"
WAREHOUSE_ID = "UK"
WAREHOUSE_COUNTRY = "GB"

# Internal column name -> public column name, for each of the shop's two public exports.
NAMINGS: dict[str, dict[str, str]] = {
    "online_retail": {
        "invoice": "InvoiceNo",
        "stock_code": "StockCode",
        "description": "Description",
        "quantity": "Quantity",
        "invoice_ts": "InvoiceDate",
        "unit_price": "UnitPrice",
        "customer": "CustomerID",
        "country": "Country",
    },
    "online_retail_ii": {
        "invoice": "Invoice",
        "stock_code": "StockCode",
        "description": "Description",
        "quantity": "Quantity",
        "invoice_ts": "InvoiceDate",
        "unit_price": "Price",
        "customer": "Customer ID",
        "country": "Country",
    },
}
# A null in any of these makes the row unusable (Description and CustomerID have their own rules).
REQUIRED_VALUES = ("invoice", "stock_code", "quantity", "invoice_ts", "unit_price", "country")

# Stock codes that are not merchandise: postage, fees, manual adjustments (both exports).
NON_GOODS_CODES: dict[str, str] = {
    "POST": "postage",
    "DOT": "postage",  # DOTCOM POSTAGE
    "C2": "postage",  # CARRIAGE
    "BANK CHARGES": "fee",
    "AMAZONFEE": "fee",
    "CRUK": "fee",  # CRUK Commission
    "M": "manual_adjustment",
    "D": "manual_adjustment",  # Discount
    "S": "manual_adjustment",  # SAMPLES
    "B": "manual_adjustment",  # Adjust bad debt
    "ADJUST": "manual_adjustment",
    "ADJUST2": "manual_adjustment",
    "TEST001": "manual_adjustment",
    "TEST002": "manual_adjustment",
}
GIFT_VOUCHER = re.compile(r"^GIFT_\d")  # gift_0001_10 .. : vouchers, money not goods
# Services sold under ordinary-looking stock codes, recognised by their exact description.
NON_GOODS_DESCRIPTIONS: dict[str, str] = {
    "NEXT DAY CARRIAGE": "postage",
    "PACKING CHARGE": "fee",
    "HIGH RESOLUTION IMAGE": "fee",
}

# Row outcomes, in the precedence in which they are decided (the first that applies wins).
ORDER_LINE = "order_line"
MATCHED_CANCELLATION = "matched_cancellation"
EXCLUSION_REASONS = (
    "missing_required_value",  # a null invoice, stock code, quantity, date, price or country
    "non_goods",  # postage, fees, manual adjustments, gift vouchers, "A" (bad-debt) invoices
    "stock_adjustment",  # non-cancellation line with quantity <= 0 (damaged, lost, re-counted stock)
    "invalid_cancellation",  # "C" invoice line with quantity >= 0
    "missing_customer",  # no customer id: no history, cannot be matched to returns
    "negative_price",  # a goods line with unit price < 0
    "unmatched_cancellation",  # cancellation with no earlier purchase left to match
)

# UCI country names that are not the plain English names of `features/data/country_centroids.csv`.
COUNTRY_ALIASES: dict[str, str] = {
    "EIRE": "IE",
    "RSA": "ZA",
    "USA": "US",
    "UK": "GB",
    "CHANNEL ISLANDS": "JE",
    "KOREA": "KR",
    "NIGERIA": "NG",
    "THAILAND": "TH",
    "BERMUDA": "BM",
    "BRAZIL": "BR",
}
# Names that say "not known" rather than a country. Rule: use the customer's country from their other
# lines when they have one; else these codes ("EU" is ISO's exceptionally reserved code for the union,
# "ZZ" the conventional user-assigned "unknown"; neither has a centroid, so distances stay missing).
UNKNOWN_COUNTRIES: dict[str, str] = {
    "UNSPECIFIED": "ZZ",
    "EUROPEAN COMMUNITY": "EU",
    "WEST INDIES": "ZZ",
}
FALLBACK_COUNTRY = "ZZ"

# Ordered keyword rules over the product description (upper-cased, whole words; the first rule that
# matches wins, so specific phrases come before the generic words they contain).
CATEGORY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "christmas",
        (
            "CHRISTMAS",
            "XMAS",
            "ADVENT",
            "SANTA",
            "REINDEER",
            "SNOWFLAKE",
            "SNOWMAN",
            "NATIVITY",
            "BAUBLE",
            "BAUBLES",
            "JINGLE",
            "ELF",
            "TINSEL",
            "NOEL",
            "ROBIN",
            "MISTLETOE",
            "STOCKING",
            "BLACKCHRISTMAS",
            "ICICLE",
            "YULETIDE",
        ),
    ),
    (
        "candles_lights",
        (
            "CANDLE",
            "CANDLES",
            "T-LIGHT",
            "T-LIGHTS",
            "TLIGHT",
            "TEA LIGHT",
            "TEALIGHT",
            "TEALIGHTS",
            "CANDLEHOLDER",
            "CANDLESTICK",
            "CANDLEPOT",
            "CANDLESTAND",
            "LIGHT",
            "LIGHTS",
            "LANTERN",
            "LAMP",
            "LAMPSHADE",
            "INCENSE",
            "OIL BURNER",
            "CHANDELIER",
            "LED",
            "NIGHTLIGHT",
            "LIGHTBULB",
            "UBO-LIGHT",
            "FRAGRANCE",
            "MATCHES",
        ),
    ),
    (
        "bags",
        (
            "BAG",
            "BAGS",
            "HANDBAG",
            "PURSE",
            "WALLET",
            "WASHBAG",
            "TOTE",
            "SHOPPER",
            "BACKPACK",
            "RUCKSACK",
            "CASE",
            "SATCHEL",
            "HOLDALL",
            "PASSPORT COVER",
            "VIPPASSPORT",
        ),
    ),
    (
        "jewellery_accessories",
        (
            "NECKLACE",
            "NECKL",
            "BRACELET",
            "BRACLET",
            "EARRINGS",
            "EARRING",
            "RING",
            "PENDANT",
            "BROOCH",
            "BANGLE",
            "CHARM",
            "CHARMS",
            "DIAMANTE",
            "BEAD",
            "BEADS",
            "BEADED",
            "HAIR",
            "HAIRCLIP",
            "HAIRCLIPS",
            "HAIRBAND",
            "HAIRSLIDE",
            "LARIAT",
            "SCARF",
            "GLOVES",
            "UMBRELLA",
            "SUNGLASSES",
            "JEWELLERY",
            "KEYRING",
            "KEYRINGS",
            "KEY FOB",
            "KEY-CHAINS",
            "WATCH",
            "LIP GLOSS",
            "PONCHO",
            "RAIN MAC",
            "RAIN HAT",
            "TIARAS",
            "CLIPS",
        ),
    ),
    (
        "toys_party",
        (
            "TOY",
            "TOYS",
            "GAME",
            "GAMES",
            "JIGSAW",
            "PUZZLE",
            "DOLL",
            "DOLLS",
            "DOLLY",
            "TEDDY",
            "PLAYING CARDS",
            "DOMINOES",
            "DOMINO",
            "SKIPPING",
            "BALLOON",
            "BALLOONS",
            "PARTY",
            "BIRTHDAY",
            "BUBBLES",
            "SPINNING",
            "MARBLES",
            "KNITTING",
            "CRAYONS",
            "COLOURING",
            "PAINT",
            "PAINTING",
            "MAGIC",
            "FELTCRAFT",
            "SOLDIER",
            "RACING",
            "CIRCUS",
            "KIT",
            "PLAYHOUSE",
            "STICKER",
            "STICKERS",
            "TATTOOS",
            "HELICOPTER",
            "RATTLE",
            "FANCY DRESS",
            "INFLATABLE",
            "PUPPET",
            "SKITTLES",
            "LUDO",
            "BINGO",
            "SNAKES",
            "CROSSES",
            "MODELLING",
            "FLYING DISC",
            "ROCKING HORSE",
            "STENCIL",
            "BUILDING BLOCK",
            "GLIDERS",
            "BADGES",
            "PATCHES",
            "TOOL SET",
            "COOKING SET",
            "GRASS SKIRT",
            "SOMBRERO",
            "LOLLY MAKERS",
            "CREEPY CRAWLIES",
            "EIGHT PIECE",
            "FARM ANIMAL",
            "SEWING",
            "PIGGY BANK",
            "MONEY BOX",
        ),
    ),
    (
        "stationery_cards",
        (
            "CARD",
            "CARDS",
            "PAPER",
            "WRAP",
            "NOTEBOOK",
            "NOTEBOOKS",
            "NOTEPAD",
            "PENCIL",
            "PENCILS",
            "PEN",
            "PENS",
            "TAPE",
            "TAPES",
            "CALENDAR",
            "SKETCHBOOK",
            "ENVELOPE",
            "ENVELOPES",
            "ERASER",
            "ERASERS",
            "RUBBER",
            "RUBBERS",
            "RULER",
            "BOOK",
            "BOOKS",
            "DIARY",
            "JOURNAL",
            "CHALK",
            "TAG",
            "TAGS",
            "TISSUE",
            "TISSUES",
            "STATIONERY",
            "MEMO",
            "MEMOBOARD",
            "POSTCARD",
            "LETTER",
            "LETTERS",
            "ORIGAMI",
            "CONFETTI",
            "GIFTWRAP",
            "SCISSORS",
            "SCISSOR",
            "RIBBON",
            "RIBBONS",
            "PAPERWEIGHT",
            "STAMP",
            "HOLE PUNCH",
            "WRITING SET",
            "TOAST ITS",
        ),
    ),
    (
        "kitchen_dining",
        (
            "MUG",
            "MUGS",
            "CUP",
            "CUPS",
            "SAUCER",
            "SAUCERS",
            "BOWL",
            "BOWLS",
            "PLATE",
            "PLATES",
            "TEA",
            "TEAPOT",
            "TEACUP",
            "COFFEE",
            "CAKE",
            "CAKES",
            "CAKESTAND",
            "BAKING",
            "CUTLERY",
            "SPOON",
            "SPOONS",
            "FORK",
            "KNIFE",
            "JAR",
            "JARS",
            "JUG",
            "TRAY",
            "TRAYS",
            "LUNCH",
            "NAPKIN",
            "NAPKINS",
            "KITCHEN",
            "PANTRY",
            "APRON",
            "COASTER",
            "COASTERS",
            "PICNIC",
            "BOTTLE",
            "BEAKER",
            "BEAKERS",
            "DISH",
            "SUGAR",
            "MILK",
            "BISCUIT",
            "CHOPPING",
            "OVEN",
            "TOWEL",
            "STRAWS",
            "EGG",
            "GLASSES",
            "TUMBLER",
            "CHOCOLATE",
            "RECIPE",
            "BREAD",
            "BUTTER",
            "JAM",
            "FOOD",
            "SNACK",
            "DOILY",
            "DOILIES",
            "TEATIME",
            "BREAKFAST",
            "DINNER",
            "PAN",
            "COOKIE",
            "CUTTER",
            "MOULD",
            "MOULDS",
            "WINE",
            "GLASS",
            "PLACEMAT",
            "PLACEMATS",
            "PLATTER",
            "FRUITBOWL",
            "COLANDER",
            "SQUEEZER",
            "CHOPSTICKS",
            "TOASTRACK",
            "SALT",
            "PEPPER",
            "CANNISTER",
            "FLASK",
            "PETIT FOUR",
            "COCKTAIL",
            "TABLECLOTH",
        ),
    ),
    (
        "home_textiles_bath",
        (
            "CUSHION",
            "CUSHIONS",
            "SQUARECUSHION",
            "C COVER",
            "FILLER PAD",
            "BLANKET",
            "THROW",
            "QUILT",
            "DOORMAT",
            "MAT",
            "RUG",
            "CURTAIN",
            "BATH",
            "BATHROOM",
            "SOAP",
            "FLANNEL",
            "SPONGE",
            "TOILET",
            "COSMETIC",
            "WARMER",
            "SLIPPERS",
            "SLIPPER",
            "SOCK",
            "HOT WATER",
            "PILLOW",
            "EIDERDOWN",
            "LAVENDER",
            "SHOWER",
            "BIB",
            "IRONING",
        ),
    ),
    (
        "garden_outdoor",
        (
            "GARDEN",
            "GARDENERS",
            "PLANT",
            "PLANTER",
            "PLANTERS",
            "POT",
            "POTS",
            "WATERING",
            "BIRD FEEDER",
            "BIRDHOUSE",
            "BIRD HOUSE",
            "BIRD TABLE",
            "PARASOL",
            "SEED",
            "SEEDS",
            "SHED",
            "HEN HOUSE",
            "BEACH",
            "OUTDOOR",
            "HERB",
            "HERBS",
            "TROWEL",
            "FLOWERPOT",
            "GNOME",
            "WINDMILL",
            "SECATEURS",
            "WINDSOCK",
            "SANDCASTLE",
            "HAMMOCK",
            "WHEELBARROW",
            "BUCKET",
            "FLY SWAT",
            "BICYCLE",
            "CAR FLAG",
        ),
    ),
    (
        "storage",
        (
            "BOX",
            "BOXES",
            "STORAGE",
            "BASKET",
            "BASKETS",
            "TIN",
            "TINS",
            "DRAWER",
            "DRAWERS",
            "CABINET",
            "HOOK",
            "HOOKS",
            "HANGER",
            "HANGERS",
            "RACK",
            "SHELF",
            "BIN",
            "CONTAINER",
            "TRINKET",
            "CRATE",
            "CRATES",
            "CHEST",
            "TIDY",
            "ORGANISER",
            "POUFFE",
            "HOLDER",
            "STAND",
            "PEG",
            "PEGS",
        ),
    ),
    (
        "home_decor",
        (
            "DECORATION",
            "DECORATIONS",
            "HANGING",
            "SIGN",
            "DOORSIGN",
            "FRAME",
            "PHOTOFRAME",
            "MIRROR",
            "CLOCK",
            "GARLAND",
            "BUNTING",
            "WREATH",
            "ORNAMENT",
            "DOORSTOP",
            "WALL",
            "PHOTO",
            "PICTURE",
            "VASE",
            "TILE",
            "MOBILE",
            "CHIME",
            "CHIMES",
            "WINDCHIME",
            "BELL",
            "BELLS",
            "HEART",
            "HEARTS",
            "PLAQUE",
            "DOORKNOB",
            "DRAWERKNOB",
            "KNOB",
            "ART",
            "FIGURE",
            "BLACKBOARD",
            "BLACK BOARD",
            "CHALKBOARD",
            "FLOWER",
            "FLOWERS",
            "STAR",
            "STARS",
            "BIRD",
            "BIRDS",
            "BUTTERFLY",
            "BUTTERFLIES",
            "FEATHER",
            "CROCHET",
            "CANVAS",
            "MAGNET",
            "MAGNETS",
            "FAN",
            "FLYING DUCKS",
            "BUDDHA",
            "PENNANT",
            "ROSETTE",
            "FLAG",
            "EASTER",
            "BUNNY",
            "BUNNIES",
            "CHICKS",
            "HEN",
            "RABBIT",
            "TOADSTOOL",
            "MUSHROOM",
            "PRINT",
            "DISCO BALL",
            "SHELL",
            "ASHTRAY",
            "SCREEN",
            "DEC",
            "CAT",
            "DOG",
            "GEISHA",
            "ROSE",
            "DAISY",
            "PORTOBELLO",
            "PEARS",
            "RETRO RADIO",
            "ANGEL",
        ),
    ),
    ("furniture", ("STOOL", "CHAIR", "TABLE", "SEAT", "BENCH", "SOFA", "DESK", "LADDER", "BASIN")),
)
OTHER_CATEGORY = "other"
CATEGORIES = tuple(name for name, _ in CATEGORY_RULES) + (OTHER_CATEGORY,)


class UCIFormatError(ValueError):
    """The frame is not a usable Online Retail export (missing columns, unparseable values)."""


def detect_naming(columns: pd.Index | list[str]) -> str:
    """Which public export the columns come from; a clear error lists what is missing otherwise."""
    cols = set(map(str, columns))
    missing_by_naming = {name: [c for c in m.values() if c not in cols] for name, m in NAMINGS.items()}
    for name, missing in missing_by_naming.items():
        if not missing:
            return name
    closest = min(missing_by_naming, key=lambda n: len(missing_by_naming[n]))
    raise UCIFormatError(
        f"not an Online Retail export: columns {sorted(missing_by_naming[closest])} are missing "
        f"(closest naming {closest!r}; expected either "
        + " or ".join(str(list(m.values())) for m in NAMINGS.values())
        + ")"
    )


def _per_unique(s: pd.Series, fn) -> pd.Series:
    """Apply `fn` (Series -> Series of text) once per distinct value; nulls stay null.

    Exports repeat a few thousand codes, names and countries over ~10^6 rows, so this is much faster
    than string operations over every row.
    """
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    mapped = pd.array(fn(pd.Series(uniques)).to_numpy(dtype=object), dtype="str")
    return pd.Series(mapped.take(codes, allow_fill=True), index=s.index)  # code -1 (null) -> null


def _id_text_unique(u: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(u):
        num = pd.to_numeric(u)
        whole = num == np.floor(num)
        return pd.Series(
            np.where(whole, num.round().astype("int64").astype("str"), num.astype("str")),
            index=u.index,
            dtype="str",
        )
    text = u.astype("str").str.strip().str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    return text.mask(text.isin(["", "nan", "NaN", "None", "<NA>"]))


def _id_text(s: pd.Series) -> pd.Series:
    """IDs as text: numbers without a trailing '.0' (CustomerID arrives as float), stripped strings."""
    return _per_unique(s, _id_text_unique)


def _clean_text(u: pd.Series) -> pd.Series:
    text = u.astype("str").str.strip()
    return text.mask(text == "")


def _parse_numbers(s: pd.Series, column: str, *, integer: bool) -> pd.Series:
    """Numbers from a numeric or text column; values that are present but not numbers are an error."""
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna()
    if integer:
        bad |= num.notna() & (num != np.floor(num))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        rule = "a whole number" if integer else "a number"
        raise UCIFormatError(
            f"column {column!r}, row {row}: value {s.iloc[row]!r} is not {rule} ({int(bad.sum())} such rows)"
        )
    return num.astype("Int64") if integer else num.astype("float64")


def _parse_timestamps(s: pd.Series, column: str) -> pd.Series:
    """Timezone-naive timestamps; text is parsed (US month-first when ambiguous, as the UCI CSVs are)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(s):
        return s
    ts = pd.to_datetime(s, errors="coerce", format="mixed")
    bad = ts.isna() & s.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UCIFormatError(
            f"column {column!r}, row {row}: value {s.iloc[row]!r} is not a date/time ({int(bad.sum())} such rows)"
        )
    return ts


def normalise(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rename to internal names and type every column; `row` keeps the input position (0-based)."""
    naming = detect_naming(df.columns)
    m = NAMINGS[naming]
    raw = df.reset_index(drop=True)
    out = pd.DataFrame({"row": np.arange(len(raw), dtype="int64")})
    out["invoice"] = _per_unique(raw[m["invoice"]], lambda u: _id_text_unique(u).str.upper())
    out["stock_code"] = _per_unique(raw[m["stock_code"]], lambda u: _id_text_unique(u).str.upper())
    out["description"] = _per_unique(raw[m["description"]], _clean_text)
    out["quantity"] = _parse_numbers(raw[m["quantity"]], m["quantity"], integer=True)
    out["invoice_ts"] = _parse_timestamps(raw[m["invoice_ts"]], m["invoice_ts"])
    out["unit_price"] = _parse_numbers(raw[m["unit_price"]], m["unit_price"], integer=False)
    out["customer"] = _id_text(raw[m["customer"]])
    out["country"] = _per_unique(raw[m["country"]], _clean_text)
    return out, naming


def non_goods_kind(x: pd.DataFrame) -> pd.Series:
    """Why a normalised row is not merchandise (postage, fee, manual_adjustment, gift_voucher,
    adjustment_invoice), or <NA> for goods."""

    def by_code(u: pd.Series) -> pd.Series:
        kind = u.map(NON_GOODS_CODES)
        return kind.mask(kind.isna() & u.str.match(GIFT_VOUCHER.pattern), "gift_voucher")

    kind = _per_unique(x["stock_code"], by_code)
    kind = kind.fillna(_per_unique(x["description"], lambda u: u.str.upper().map(NON_GOODS_DESCRIPTIONS)))
    return kind.mask(kind.isna() & x["invoice"].str.startswith("A").fillna(False), "adjustment_invoice")


def country_codes(names: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ISO alpha-2 per UCI country name, and a flag for names that mean "unknown" (code still filled)."""
    from features.geo import country_centroids

    lookup = {
        str(n).upper(): str(c)
        for n, c in zip(country_centroids()["name"], country_centroids()["country"], strict=True)
    }
    lookup.update(COUNTRY_ALIASES)
    known = _per_unique(names, lambda u: u.str.upper().map(lookup))
    unknown = known.isna()
    marker = _per_unique(names, lambda u: u.str.upper().map(UNKNOWN_COUNTRIES))
    codes = known.fillna(marker).fillna(FALLBACK_COUNTRY)
    return codes.astype("str"), unknown


def categorize(descriptions: pd.Series) -> pd.Series:
    """Merchandise category per description by the ordered keyword rules (first match wins)."""
    text = descriptions.fillna("").astype("str").str.upper().str.replace(r"[^A-Z0-9\-]+", " ", regex=True)
    text = " " + text.str.strip() + " "
    out = pd.Series(OTHER_CATEGORY, index=descriptions.index, dtype="str")
    undecided = pd.Series(True, index=descriptions.index)
    for name, words in CATEGORY_RULES:
        pattern = "|".join(rf" {re.escape(w)} " for w in sorted(words, key=len, reverse=True))
        hit = undecided & text.str.contains(pattern, regex=True)
        out[hit] = name
        undecided &= ~hit
    return out


def match_cancellations(purchases: pd.DataFrame, cancels: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Allocate cancelled units to earlier purchases of the same (customer, product), oldest first.

    purchases: row, customer, product_id, ts, quantity (> 0). cancels: the same with quantity = units
    cancelled (> 0). A purchase counts as earlier when its ts <= the cancellation's. Cancellations are
    served in time order; each takes units from the oldest purchase with units left, then the next.
    Returns (pairs: purchase_row, cancel_row, quantity, return_ts; matched units per cancel row).

    Vectorised: with P_k the units bought up to cancellation k and S_k the units cancelled up to it, the
    units consumed after k are C_k = min(C_{k-1} + q_k, P_k) = S_k + min(0, cummin_j<=k(P_j - S_j)), so
    each cancellation is an interval of the group's purchase-unit axis, intersected by binary search.
    """
    empty_pairs = pd.DataFrame(
        {
            "purchase_row": pd.Series(dtype="int64"),
            "cancel_row": pd.Series(dtype="int64"),
            "quantity": pd.Series(dtype="int64"),
            "return_ts": pd.Series(dtype="datetime64[us]"),
        }
    )
    matched = pd.Series(0, index=cancels["row"].to_numpy(), dtype="int64")
    if cancels.empty or purchases.empty:
        return empty_pairs, matched
    key_cols = ["customer", "product_id"]
    keys = cancels[key_cols].drop_duplicates()
    p = purchases.merge(keys, on=key_cols, how="inner")
    ev = pd.concat([p.assign(kind=np.int8(0)), cancels.assign(kind=np.int8(1))], ignore_index=True)[
        [*key_cols, "ts", "kind", "row", "quantity"]
    ]
    ev = ev.sort_values([*key_cols, "ts", "kind", "row"], kind="stable", ignore_index=True)
    g = ev.groupby(key_cols, sort=False).ngroup().to_numpy()
    is_c = ev["kind"].to_numpy() == 1
    q = ev["quantity"].to_numpy(dtype="int64")
    pq = np.where(is_c, 0, q)
    cq = np.where(is_c, q, 0)
    global_p = np.cumsum(pq)  # purchase units up to and including this event, over all groups
    p_in_group = pd.Series(pq).groupby(g).cumsum().to_numpy()
    base = global_p - p_in_group  # purchase units of the groups before this one
    s_in_group = pd.Series(cq).groupby(g).cumsum().to_numpy()

    c_g = g[is_c]
    slack = pd.Series((p_in_group - s_in_group)[is_c]).groupby(c_g).cummin().to_numpy()
    consumed = s_in_group[is_c] + np.minimum(0, slack)
    consumed_before = pd.Series(consumed).groupby(c_g).shift(1, fill_value=0).to_numpy()
    c_rows = ev["row"].to_numpy()[is_c]
    units = consumed - consumed_before
    matched = pd.Series(units, index=c_rows, dtype="int64").reindex(cancels["row"].to_numpy(), fill_value=0)

    c_start = base[is_c] + consumed_before
    c_end = base[is_c] + consumed
    p_end = global_p[~is_c]
    p_start = p_end - pq[~is_c]
    p_rows = ev["row"].to_numpy()[~is_c]
    has = units > 0
    c_start, c_end, c_rows_m = c_start[has], c_end[has], c_rows[has]
    c_ts = ev["ts"].to_numpy()[is_c][has]
    first = np.searchsorted(p_end, c_start, side="right")
    last = np.searchsorted(p_start, c_end, side="left") - 1
    n = last - first + 1
    ci = np.repeat(np.arange(len(first)), n)
    offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    pi = first[ci] + offsets
    overlap = np.minimum(c_end[ci], p_end[pi]) - np.maximum(c_start[ci], p_start[pi])
    pairs = pd.DataFrame(
        {
            "purchase_row": p_rows[pi].astype("int64"),
            "cancel_row": c_rows_m[ci].astype("int64"),
            "quantity": overlap.astype("int64"),
            "return_ts": c_ts[ci],
        }
    )
    return pairs, matched


def _mode_per_key(df: pd.DataFrame, key: str, value: str, ts: str) -> pd.Series:
    """Most frequent `value` per `key`; ties go to the value seen latest, then alphabetically."""
    stats = df.groupby([key, value], sort=False).agg(n=(ts, "size"), last=(ts, "max")).reset_index()
    stats = stats.sort_values([key, "n", "last", value], ascending=[True, False, False, True], kind="stable")
    return stats.drop_duplicates(key).set_index(key)[value]


def map_online_retail(df: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Map an Online Retail (I or II) export to the canonical tables, with an ingest report.

    Pure: no I/O. The report counts every input row by outcome; `report["reconciles"]` states that
    input rows == order lines + matched cancellations + excluded rows.
    """
    tables, report, _ = map_with_outcomes(df)
    return tables, report


def map_with_outcomes(df: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict[str, Any], pd.Series]:
    """`map_online_retail` plus each input row's outcome (by input position), for audits and tests."""
    x, naming = normalise(df)
    is_cancel = x["invoice"].str.startswith("C").fillna(False).to_numpy()
    missing = x[list(REQUIRED_VALUES)].isna().any(axis=1).to_numpy()
    ng_kind = non_goods_kind(x)
    non_goods = ng_kind.notna().to_numpy()
    qty = x["quantity"].fillna(0).to_numpy(dtype="int64")
    price = x["unit_price"].fillna(0).to_numpy(dtype="float64")
    no_customer = x["customer"].isna().to_numpy()
    outcome = np.select(
        [
            missing,
            non_goods,
            ~is_cancel & (qty <= 0),
            is_cancel & (qty >= 0),
            no_customer,
            price < 0,
            is_cancel,
        ],
        [
            "missing_required_value",
            "non_goods",
            "stock_adjustment",
            "invalid_cancellation",
            "missing_customer",
            "negative_price",
            MATCHED_CANCELLATION,
        ],
        default=ORDER_LINE,
    ).astype(object)

    x["product_id"] = x["stock_code"]
    codes, unknown_country = country_codes(x["country"].fillna(""))
    x["ship_country"] = codes
    lines = x[outcome == ORDER_LINE].copy()
    # Unknown-country markers take the customer's country from their other (known) lines.
    known_lines = lines[~unknown_country[lines.index].to_numpy()]
    customer_known = _mode_per_key(known_lines, "customer", "ship_country", "invoice_ts")
    unk = unknown_country[lines.index].to_numpy()
    resolved = lines.loc[unk, "customer"].map(customer_known)
    n_unknown_resolved = int(resolved.notna().sum())
    unknown_names = lines.loc[unk, "country"].value_counts()
    lines.loc[unk, "ship_country"] = resolved.fillna(lines.loc[unk, "ship_country"])

    cancels = x[outcome == MATCHED_CANCELLATION]
    pairs, matched = match_cancellations(
        lines[["row", "customer", "product_id", "invoice_ts", "quantity"]].rename(
            columns={"invoice_ts": "ts"}
        ),
        cancels[["row", "customer", "product_id", "invoice_ts", "quantity"]]
        .rename(columns={"invoice_ts": "ts"})
        .assign(quantity=lambda d: -d["quantity"]),
    )
    cancel_units = (-cancels["quantity"]).to_numpy(dtype="int64")
    matched_units = matched.reindex(cancels["row"].to_numpy()).to_numpy()
    outcome[cancels["row"].to_numpy()[matched_units == 0]] = "unmatched_cancellation"

    orders = (
        lines.groupby("invoice", sort=True)
        .agg(
            customer_id=("customer", "first"),
            order_ts=("invoice_ts", "min"),
            ship_country=("ship_country", "first"),
        )
        .reset_index()
        .rename(columns={"invoice": "order_id"})
    )
    orders["warehouse_id"] = WAREHOUSE_ID
    orders = orders[["order_id", "customer_id", "order_ts", "ship_country", "warehouse_id"]]

    order_lines = pd.DataFrame(
        {
            "line_id": lines["row"].astype("str").to_numpy(),
            "order_id": lines["invoice"].to_numpy(),
            "product_id": lines["product_id"].to_numpy(),
            "quantity": lines["quantity"].to_numpy(dtype="int64"),
            "unit_price": lines["unit_price"].to_numpy(dtype="float64"),
        }
    )
    customers = _mode_per_key(lines, "customer", "ship_country", "invoice_ts").rename("country").reset_index()
    customers = customers.rename(columns={"customer": "customer_id"}).sort_values(
        "customer_id", ignore_index=True
    )

    described = lines.dropna(subset=["description"])
    desc = _mode_per_key(described, "product_id", "description", "invoice_ts")
    products = pd.DataFrame({"product_id": np.sort(lines["product_id"].unique())})
    products["description"] = products["product_id"].map(desc).astype("str")
    products["category"] = categorize(products["description"])
    products["size_type"] = "none"
    products = products[["product_id", "category", "size_type", "description"]]

    warehouses = pd.DataFrame({"warehouse_id": [WAREHOUSE_ID], "country": [WAREHOUSE_COUNTRY]})
    # One return event per (line, time): cancellations of the same line at the same minute (the export
    # repeats some cancellation rows) are summed, never recorded as duplicate events.
    events = (
        pairs.groupby(["purchase_row", "return_ts"], as_index=False, sort=False)["quantity"]
        .sum()
        .sort_values(["return_ts", "purchase_row"], kind="stable", ignore_index=True)
    )
    returns = pd.DataFrame(
        {
            "line_id": events["purchase_row"].astype("str").to_numpy(),
            "return_ts": events["return_ts"].to_numpy(),
            "quantity": events["quantity"].to_numpy(dtype="int64"),
            "reason": pd.Series(pd.NA, index=range(len(events)), dtype="str"),
        }
    )

    for t in (orders, order_lines, customers, products, warehouses, returns):
        for c in t.columns:
            if t[c].dtype == object:
                t[c] = t[c].astype("str")

    tables = {
        "customers": customers,
        "products": products,
        "warehouses": warehouses,
        "orders": orders,
        "order_lines": order_lines,
        "returns": returns,
    }
    report = _report(
        x,
        outcome,
        naming,
        len(pairs),
        cancels,
        cancel_units,
        matched_units,
        tables,
        unknown_names,
        n_unknown_resolved,
        ng_kind,
    )
    if not report["reconciles"]:  # an internal invariant: every row has exactly one outcome
        raise RuntimeError(f"row outcomes do not reconcile: {report['rows']}")
    return tables, report, pd.Series(outcome, index=x["row"].to_numpy(), dtype="str", name="outcome")


def _report(
    x,
    outcome,
    naming,
    n_pairs,
    cancels,
    cancel_units,
    matched_units,
    tables,
    unknown_names,
    n_unknown_resolved,
    ng_kind,
) -> dict[str, Any]:
    """Counts by outcome and reason, cancellations matched/unmatched, products per category."""
    counts = pd.Series(outcome).value_counts()
    excluded = {r: int(counts.get(r, 0)) for r in EXCLUSION_REASONS}
    n_lines = int(counts.get(ORDER_LINE, 0))
    n_matched = int(counts.get(MATCHED_CANCELLATION, 0))
    is_ng = outcome == "non_goods"
    ng = x.loc[is_ng, "stock_code"].fillna("<null>")
    ng_kind = ng_kind[is_ng]
    full = matched_units == cancel_units
    partial = (matched_units > 0) & ~full
    cancel_rows_all = x["invoice"].str.startswith("C").fillna(False)
    lines = tables["order_lines"]
    cats = tables["products"]["category"].value_counts()
    ts = x["invoice_ts"].dropna()
    report: dict[str, Any] = {
        "source": SOURCE,
        "column_naming": naming,
        "input_rows": len(x),
        "rows": {
            "order_lines": n_lines,
            "matched_cancellations": n_matched,
            "excluded": excluded,
            "excluded_total": int(sum(excluded.values())),
        },
        "non_goods": {
            "by_kind": {str(k): int(v) for k, v in ng_kind.value_counts().sort_index().items()},
            "by_stock_code": {str(k): int(v) for k, v in ng.value_counts().sort_index().items()},
        },
        "cancellations": {
            "rows_in_input": int(cancel_rows_all.sum()),
            "rows_considered": len(cancels),
            "rows_fully_matched": int(full.sum()),
            "rows_partially_matched": int(partial.sum()),
            "rows_unmatched": int((matched_units == 0).sum()),
            "units": int(cancel_units.sum()),
            "units_matched": int(matched_units.sum()),
            "units_unmatched": int((cancel_units - matched_units).sum()),
            "cancellation_purchase_pairs": n_pairs,
            "return_rows": len(tables["returns"]),
            "without_customer": int(
                (cancel_rows_all & x["customer"].isna() & (outcome == "missing_customer")).sum()
            ),
        },
        "order_lines": {
            "zero_price": int((lines["unit_price"] == 0).sum()),
            "exact_duplicates_kept": int(x.loc[outcome == ORDER_LINE].drop(columns="row").duplicated().sum()),
            "returned_lines": int(tables["returns"]["line_id"].nunique()),
        },
        "countries": {
            "unknown_names_order_lines": {str(k): int(v) for k, v in unknown_names.sort_index().items()},
            "unknown_resolved_from_customer": n_unknown_resolved,
        },
        "products_per_category": {c: int(cats.get(c, 0)) for c in CATEGORIES},
        "tables": {name: len(t) for name, t in tables.items()},
        "cutoff": ts.max().isoformat() if len(ts) else None,
        "first_ts": ts.min().isoformat() if len(ts) else None,
    }
    report["reconciles"] = report["input_rows"] == n_lines + n_matched + report["rows"]["excluded_total"]
    return report
