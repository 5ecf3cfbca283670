"""`returnrisk contract`: the data contract as Markdown, generated from `pipeline/contract.py`.

The document is generated so it cannot drift from the code: a test compares the committed
docs/data-contract.md with `render_markdown()`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.contract import (
    FEATURE_NEEDS,
    META_FILE,
    SIZE_SCALES,
    TABLE_ORDER,
    TABLES,
    Column,
    TableSpec,
)

DOC_PATH = Path("docs") / "data-contract.md"

TYPE_WORDS = {
    "id": "id",
    "str": "text",
    "int": "integer",
    "float": "number",
    "ts": "timestamp",
}

INTRO = f"""\
# Data contract

<!-- Generated from pipeline/contract.py by `returnrisk contract --out docs/data-contract.md`; do not edit. -->

The canonical input of returnrisk: one file per table in one folder (`paths.raw`), each
`<table>.parquet` or `<table>.csv`, plus `{META_FILE}`:

```json
{{"cutoff": "2025-06-30T00:00:00", "source": "generated"}}
```

`cutoff` is the end of the data: nothing may be dated after it, and labels mature relative to it.
Generated data (`returnrisk generate`) and real exports (`returnrisk ingest`, e.g. UCI Online Retail) are
both written in this form; `returnrisk validate` checks it and writes the validated copy (`paths.validated`).

## Types

| type | Parquet | CSV (text, parsed strictly) |
|---|---|---|
| id | int64, or text | digits (all ids then become int64) or any text (all ids then become text) |
| text | string | as written; only an empty field is missing (`NA`, `null` stay text) |
| integer | int64 (or a float column holding whole numbers) | digits; `1.5` or `abc` is a reject |
| number | float64 / int64 | a decimal number; `abc`, `inf` are rejects |
| timestamp | timestamp, timezone-naive UTC (aware ones are converted to UTC) | ISO 8601 (`2024-03-01`, `2024-03-01T12:00:00`, with or without offset); anything else is a reject |

Ids have one type in every table (`validate.id_type`: `auto` picks int64 when every id in every table is
an integer, else text everywhere; the report's `id_type` and `conversions` say what was done). Columns
outside the contract are kept as they are and listed in the report (`extra_columns`).

**Required** tables and columns must exist (else the run stops); **optional** ones may be absent
entirely, or present with empty values. A required column may not hold empty values (a row that does is
a reject).
"""

RULES = """\
## Validation (`returnrisk validate RAW_DIR --out VALIDATED_DIR --report metrics/validation.json`)

**Table-level problems stop the run** (exit code 2) with one message naming file, column and rule: a
required table or column is missing; a file cannot be read (not Parquet/CSV, empty, corrupt); a table
has two files (`.parquet` and `.csv`); a column holds the wrong kind of data throughout (e.g. numbers in a
timestamp column, or text of which no value parses); `meta.json` is missing or its `cutoff` is not a timestamp.

**Row-level problems quarantine the row** to `VALIDATED_DIR/rejects/<table>.parquet` (and a
formula-escaped `.csv` for spreadsheets) with the values as read, plus:
`_row` (1-based data row in the source file), `_rule` (the first rule it failed, e.g.
`order_lines.unit_price >= 0`), `_column`, and `_rules` (every rule it failed). Everything else is kept.
Every reject is counted per table and rule in the report (a DVC metric). `--strict` exits 1 if any row
was rejected (outputs are still written).

Row rules, in the order they are checked:

1. **Types**: a value that does not parse as its column's type (`<table>.<column> is a number`,
   `is a whole number`, `is an ISO 8601 timestamp`, `is an integer id`, `is a finite number`).
2. **Values**: required values present (`not null`, text `not blank`); ranges (`>= min`, `in [min, max]`);
   allowed values (`in {...}`); country codes (`matches [A-Z]{2}`);
   `products.category in validate.allowed_categories` when that list is set.
3. **Unique keys**. Exact repeats of a row keep the first copy and reject the others
   (`<table> duplicate row`); copies of a key that disagree are all rejected (`<table>.<key> unique`),
   because nothing says which one is right. Returns have no key: only exact repeats are rejected.
4. **Foreign keys** (returns -> order_lines -> orders -> customers; order_lines -> products;
   reviews -> products/customers; orders -> warehouses): a reference to a key that does not exist is
   rejected (`<table>.<column> exists in <parent>`); a reference to a row that was itself rejected is
   rejected as `parent rejected: <parent>.<key>` and counted as `cascaded`. A foreign key to an absent
   optional table is not checked (listed in `unchecked_foreign_keys`).
5. **Time order**: every timestamp `<= cutoff` (+ `validate.max_future_days`);
   `orders.delivered_ts >= orders.order_ts`; `returns.return_ts >= orders.order_ts` of the line's order.
6. **Consistency**: `order_lines.size` is on its product's `size_type` scale (when that type has a
   scale); the quantities returned for a line, summed in time order, do not exceed the line's quantity
   (the return event that goes over is rejected).

Batch scoring runs the same checks on new orders and lines with the validated history as reference
tables (`validate_tables(..., reference=..., allow_unknown={"orders.customer_id"})`): keys must not repeat
history's, foreign keys may point into history, and an unknown customer is allowed (scored as new).

## The report (`metrics/validation.json`)

`rows_in`, `rows_out`, `rejected`, `reject_rate`, `cascaded`; per table `rows_in`, `rows_out`, `rejected`,
`cascaded`, `rejected_by_rule`, `duplicate_rows`, `conflicting_keys`, `missing_optional_columns`,
`extra_columns`, `conversions`; and for the dataset `missing_optional_tables`, `missing_optional_columns`,
`empty_optional_columns`, `disabled_features`, `fallback_features`, `unchecked_foreign_keys`, `id_type`,
`cutoff`. The validated folder's `meta.json` repeats what is missing and which features are disabled.
"""


def _rule_text(col: Column) -> str:
    parts = []
    if col.min is not None and col.max is not None:
        parts.append(f"{col.min:g} to {col.max:g}")
    elif col.min is not None:
        parts.append(f">= {col.min:g}")
    elif col.max is not None:
        parts.append(f"<= {col.max:g}")
    if col.allowed is not None:
        parts.append("one of " + ", ".join(f"`{a}`" for a in col.allowed))
    if col.pattern is not None:
        parts.append(f"matches `{col.pattern}`")
    return "; ".join(parts)


def _table_section(spec: TableSpec) -> str:
    lines = [f"### `{spec.name}` ({'required' if spec.required else 'optional'})", "", spec.meaning, ""]
    facts = []
    if spec.key:
        facts.append(f"Key: `{spec.key}` (unique).")
    else:
        facts.append("No key (several rows may refer to one line).")
    if spec.foreign_keys:
        refs = ", ".join(f"`{c}` -> `{t}.{TABLES[t].key}`" for c, t in spec.foreign_keys.items())
        facts.append(f"Foreign keys: {refs}.")
    lines += [" ".join(facts), "", "| column | type | required | rule | meaning |", "|---|---|---|---|---|"]
    for col in spec.columns:
        lines.append(
            f"| `{col.name}` | {TYPE_WORDS[col.type]} | {'yes' if col.required else 'no'} | "
            f"{_rule_text(col)} | {col.meaning} |"
        )
    return "\n".join(lines) + "\n"


def _features_section() -> str:
    lines = [
        "## Optional data and the features it feeds",
        "",
        "A missing optional table or column (absent, or every value empty) never stops the run: it disables",
        "only the feature families that need it (said once in the log and in the report's",
        "`disabled_features`), or switches them to a fallback (`fallback_features`).",
        "",
        "| feature family | needs | when missing |",
        "|---|---|---|",
    ]
    for need in FEATURE_NEEDS:
        lines.append(
            f"| {need.family} | {', '.join(f'`{n}`' for n in need.needs)} | "
            f"{'uses ' + need.fallback if need.fallback else 'disabled'} |"
        )
    return "\n".join(lines) + "\n"


def _sizes_section() -> str:
    lines = ["## Size scales", "", "`order_lines.size` is a label on its product's `size_type` scale:", ""]
    for name, scale in SIZE_SCALES.items():
        lines.append(f"- `{name}`: {', '.join(scale)}")
    lines.append("- `none`: the product has no size system (any size label, or none, is accepted)")
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """docs/data-contract.md, from the contract definitions."""
    sections = [INTRO, "## Tables\n"]
    sections += [_table_section(TABLES[name]) for name in TABLE_ORDER]
    sections += [_sizes_section(), _features_section(), RULES]
    return "\n".join(sections)


def register(app: typer.Typer) -> None:
    @app.command("contract")
    def contract(
        out: Path = typer.Option(None, "--out", help="Write the Markdown here (e.g. docs/data-contract.md)."),
        check: bool = typer.Option(
            False, "--check", help="Exit 1 if --out (default docs/data-contract.md) is stale."
        ),
    ) -> None:
        """Print the data contract (tables, columns, types, required/optional, rules) as Markdown."""
        from pipeline.config import project_root
        from pipeline.io import atomic_path

        text = render_markdown()
        if check:
            target = out or project_root() / DOC_PATH
            current = target.read_text(encoding="utf-8") if target.is_file() else ""
            if current != text:
                typer.echo(f"{target} is stale: run `returnrisk contract --out {target}`", err=True)
                raise typer.Exit(1)
            typer.echo(f"{target} is up to date")
            return
        if out is None:
            typer.echo(text, nl=False)
            return
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}")
