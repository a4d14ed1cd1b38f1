"""The column layouts every stage shares: which input columns hold a review's fields
(`Columns`), the canonical rows the readers produce, and the quarantine every job writes."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from reviewlm.options import option

# A review as read: its fields, then `_row` (its record number in its file: a line number in
# CSV and TSV, a line's byte offset in JSON Lines, a row or element number in Parquet and JSON
# arrays), `_end` (the number just past the record), and `_raw` and `_error`, set only for a
# record that could not be parsed (it is quarantined).
CANONICAL = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("rating", pa.int64()), ("title", pa.string()),
    ("brand", pa.string()), ("product", pa.string()), ("source", pa.string()),
    ("_row", pa.int64()), ("_end", pa.int64()), ("_raw", pa.string()), ("_error", pa.string()),
])
ROW_FIELDS = [f for f in CANONICAL if not f.name.startswith("_")]  # a review's fields in kept/ and rejected/
# quarantine/ of every job: a canonical row's id, source and internal columns, renamed
QUARANTINE = {"id": "id", "source": "source", "_row": "row", "_raw": "raw", "_error": "error"}
QUARANTINE_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
                               ("raw", pa.string()), ("error", pa.string())])


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the canonical fields (`--text-column` and friends)."""

    text: str = option("text", help="input column holding the text")
    id: str = option("id", help="input column holding a row's id (without one: its file and record number)")
    rating: str = option("rating", help="input column holding the 1-5 star rating")
    title: str = option("title", help="input column holding the review title")
    brand: str = option("brand", help="input column holding the brand")
    product: str = option("product", help="input column holding the product")
    text_pair: str | None = option(None, help="classify: the second text of a pair (a product description)")
    label: str | None = option(None, help="classify: the class of each row, a string or an integer")
    extra: tuple[tuple[str, str], ...] = ()  # (name, input column): more columns, read as strings into `x_<name>`

    @property
    def schema(self) -> pa.Schema:
        """The canonical schema, with `text_pair` and `label` (strings) when those columns are read,
        and a string column `x_<name>` per `extra` column."""
        schema = CANONICAL
        names = [name for name in ("label", "text_pair") if getattr(self, name)] + [f"x_{n}" for n, _ in self.extra]
        for name in names:
            schema = schema.insert(schema.get_field_index("_row"), pa.field(name, pa.string()))
        return schema

    def required(self, need_rating: bool = False) -> list[tuple[str, str]]:
        """(flag name, input column) pairs every input file must have."""
        need = [("text", self.text)] + [(n, getattr(self, n)) for n in ("text_pair", "label") if getattr(self, n)]
        return need + ([("rating", self.rating)] if need_rating else [])


@dataclass(frozen=True)
class CatalogColumns:
    """Which catalogue columns hold a product's fields (`--id-column` and friends)."""

    id: str = option("product_id", help="catalogue column holding the product id (without one: file and record)")
    title: str = option("title", help="catalogue column holding the product title (required in every file)")
    text: str = option("description", help="catalogue column holding the description (optional)")
    price: str = option("price", help="catalogue column holding the price, a number (optional)")
    rating: str = option("rating", help="catalogue column holding the mean star rating, zero to five (optional)")
    review_count: str = option("review_count", help="catalogue column holding the number of reviews (optional)")

    @property
    def reader(self) -> Columns:
        """The readers' columns: the title is the text every row must have, the rest ride along as strings."""
        return Columns(text=self.title, id=self.id, rating="", title="", brand="", product="",
                       extra=(("description", self.text), ("price", self.price), ("rating", self.rating),
                              ("review_count", self.review_count)))
