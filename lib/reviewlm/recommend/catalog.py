"""What a recommend job reads: the catalogue (validated, bad rows quarantined), the needs,
the judgments, and what the reviews say about each product (aggregated on Ray Data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import ray
from ray.data.aggregate import Count, Mean
from ray.data.expressions import col

from reviewlm.errors import UsageError
from reviewlm.io.layout import QUARANTINE, Columns
from reviewlm.io.readers import check_inputs, read_reviews
from reviewlm.io.storage import expand_inputs, filesystem
from reviewlm.options import option

PRODUCTS = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
                      ("document", pa.string()), ("price", pa.float64()), ("rating", pa.float64()),
                      ("review_count", pa.int64())])
PARSED = pa.schema([*PRODUCTS, ("source", pa.string()), ("row", pa.int64()), ("raw", pa.string()),
                    ("error", pa.string())])  # parse_products: a product, or a quarantined row with its reason
SIGNALS = ("reviews", "review_rating", "review_sentiment")  # per product, from --reviews


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


def check_catalog(uris: list[str], columns: CatalogColumns, delimiter: str | None, encoding: str):
    """The catalogue's files, checked without Ray (UsageError when one lacks the title column)."""
    return check_inputs(uris, columns.reader, required=[("title", columns.title)], delimiter=delimiter,
                        encoding=encoding)


def read_catalog(inputs, columns: CatalogColumns, split_bytes: int) -> ray.data.Dataset:
    """`parse_products` rows of every record, bad ones with a reason in `error`."""
    return read_reviews(inputs, columns.reader, split_bytes).map_batches(parse_products, batch_format="pyarrow")


def _number(value: str | None, what: str, lo: float = 0.0, hi: float = math.inf, whole: bool = False):
    if value is None or not value.strip():
        return None
    try:
        number = float(value.strip().lstrip("$€£"))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not lo <= number <= hi or math.isnan(number) or (whole and not number.is_integer()):
        bounds = f"a whole number of at least {lo:g}" if whole else (
            f"a number from {lo:g} to {hi:g}" if hi < math.inf else f"a number of at least {lo:g}")
        raise ValueError(f"{what} {value!r} is not {bounds}")
    return int(number) if whole else number


def document(title: str, description: str | None) -> str:
    """What retrieval reads of a product: its title, then its description."""
    return f"{title}. {description}" if description else title


def parse_products(batch: pa.Table) -> pa.Table:
    """Products with typed price (≥ 0), rating (0–5) and review count (whole, ≥ 0); a row the
    reader could not parse, without a title, or with a value out of range gets its reason in
    `error` (with its source, row and raw record, as every quarantine/ has them)."""
    rows = {name: [] for name in PARSED.names}
    for r in batch.to_pylist():
        error, values = r["_error"], {}
        if error is None:
            try:
                if r["text"] is None or not r["text"].strip():
                    raise ValueError("no title")
                values = {"price": _number(r["x_price"], "price"), "rating": _number(r["x_rating"], "rating", 0, 5),
                          "review_count": _number(r["x_review_count"], "review count", whole=True)}
            except ValueError as exc:
                error = str(exc)
        title = r["text"].strip() if error is None else None
        description = (r["x_description"] or "").strip() or None if error is None else None
        values |= {"product_id": r["id"], "title": title, "description": description,
                   "document": document(title, description) if error is None else None, "source": r["source"],
                   "row": r["_row"], "raw": r["_raw"] or (None if error is None else str(r)), "error": error}
        for name in rows:
            rows[name].append(values.get(name))
    return pa.table(rows, schema=PARSED)


def quarantined(products: ray.data.Dataset) -> ray.data.Dataset:
    """The catalogue rows that cannot be ranked, in every job's quarantine layout."""
    return (products.filter(expr=col("error").is_not_null()).rename_columns({"product_id": "id"})
            .select_columns(list(QUARANTINE.values())))


def usable(products: ray.data.Dataset) -> ray.data.Dataset:
    return products.filter(expr=col("error").is_null()).select_columns(PRODUCTS.names)


def _table(uri: str, what: str) -> pd.DataFrame:
    """A small table (CSV, TSV, JSON Lines or Parquet) read whole, as pandas reads it."""
    frames = []
    for f in expand_inputs([uri]).files:
        fs, path = filesystem(f.uri)
        with fs.open(path, "rb", compression="infer") as fh:
            try:
                if f.format == "parquet":
                    frames.append(pd.read_parquet(fh))
                elif f.format in ("jsonl", "json"):
                    frames.append(pd.read_json(fh, lines=f.format == "jsonl" or f.sniffed, dtype=False))
                else:
                    frames.append(pd.read_csv(fh, sep=f.separator, dtype=str, keep_default_na=False))
            except ValueError as exc:
                raise UsageError(f"cannot read {what} {f.uri}: {exc}") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_queries(uri: str, column: str | None) -> tuple[list[str], list[int]]:
    """The needs in order, and the line (or row) numbers of empty ones, which are not ranked.

    A text file holds one need per line; a table (`--query-column`) one per row.
    """
    if column:
        table = _table(uri, "queries")
        if column not in table:
            raise UsageError(f"no query column {column!r} in {uri} (columns: {', '.join(map(str, table.columns))}): "
                             "pass {o}", o="query_column")
        lines = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in table[column]]
    else:
        fs, path = filesystem(uri)
        try:
            with fs.open(path, "rb", compression="infer") as fh:
                lines = fh.read().decode("utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read queries {uri}: {exc}") from None
    lines = [" ".join(line.split()) for line in lines]
    needs = [line for line in lines if line]
    if not needs:
        raise UsageError(f"{uri} holds no query: give one need per line")
    return needs, [i + 1 for i, line in enumerate(lines) if not line]


def read_judgments(uri: str) -> pd.DataFrame:
    """`query`, `product_id`, `gain` (a number ≥ 0) per judged pair; the last of repeated pairs wins."""
    table = _table(uri, "judgments")
    missing = [c for c in ("query", "product_id", "gain") if c not in table]
    if missing:
        raise UsageError(f"judgments {uri} lack the column(s) {', '.join(missing)} (need query, product_id, gain)")
    gains = pd.to_numeric(table["gain"], errors="coerce")
    if gains.isna().any() or (gains < 0).any():
        raise UsageError(f"judgments {uri}: every gain must be a number of at least 0")
    out = pd.DataFrame({"query": [" ".join(str(q).split()) for q in table["query"]],
                        "product_id": table["product_id"].astype(str), "gain": gains.astype(float)})
    return out.drop_duplicates(["query", "product_id"], keep="last", ignore_index=True)


def review_signals(uris: list[str], product_column: str, text_column: str, rating_column: str,
                   run) -> ray.data.Dataset:
    """Per product: its review count, mean star rating and mean VADER compound, from a review
    dump (or a filter job's kept/), grouped on Ray Data. Reviews without a product are skipped."""
    columns = Columns(text=text_column, rating=rating_column, product=product_column)
    inputs = check_inputs(uris, columns, required=[("review_product", product_column)],
                          delimiter=run.delimiter, encoding=run.encoding)
    return (read_reviews(inputs, columns, run.split_bytes).map_batches(_sentiment, batch_format="pyarrow")
            .groupby("product").aggregate(Count(alias_name="reviews"), Mean("rating", alias_name="review_rating"),
                                          Mean("compound", alias_name="review_sentiment"))
            .rename_columns({"product": "product_id"}))


def _sentiment(batch: pa.Table) -> pa.Table:
    from reviewlm.filters.sentiment import vader_scores

    ok = batch.filter(pa.compute.and_(pa.compute.is_null(batch["_error"]), pa.compute.is_valid(batch["product"])))
    compound = vader_scores(ok["text"].to_pylist())["compound"]
    return pa.table({"product": ok["product"], "rating": ok["rating"],
                     "compound": pa.array(compound, pa.float64(), from_pandas=True)})
