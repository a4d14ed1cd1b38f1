"""What a recommend job reads: the catalogue (validated, bad rows quarantined), the needs,
the judgments, and what the reviews say about each product (aggregated on Ray Data)."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from reviewlm.errors import UsageError
from reviewlm.io.layout import QUARANTINE, CatalogColumns, Columns
from reviewlm.io.readers import check_inputs, read_reviews
from reviewlm.io.storage import expand_inputs, filesystem
from reviewlm.tally import tally

PRODUCTS = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
                      ("document", pa.string()), ("price", pa.float64()), ("rating", pa.float64()),
                      ("review_count", pa.int64())])
PARSED = pa.schema([*PRODUCTS, ("source", pa.string()), ("row", pa.int64()), ("raw", pa.string()),
                    ("error", pa.string())])  # parse_products: a product, or a quarantined row with its reason
SIGNALS = ("reviews", "review_rating", "review_sentiment")  # per product, from --reviews


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


def quarantine_layout(batch: pa.Table) -> pa.Table:
    """Parsed catalogue rows in every job's quarantine layout (error null for a usable product)."""
    return batch.rename_columns({"product_id": "id"}).select(list(QUARANTINE.values()))


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


def check_reviews(uris: list[str], product_column: str, text_column: str, rating_column: str, run):
    """The review files and their columns, checked without Ray."""
    columns = Columns(text=text_column, rating=rating_column, product=product_column)
    return check_inputs(uris, columns, required=[("review_product", product_column)], delimiter=run.delimiter,
                        encoding=run.encoding), columns


def review_signals(inputs, columns: Columns, products: set[str], split_bytes: int) -> tuple[pa.Table, int]:
    """Per product of `products` (the candidates): its review count, mean star rating and mean
    VADER compound, from a review dump (or a filter job's kept/) read on Ray Data, each task
    summing its block's reviews of those products; and how many reviews name a product at all.
    Only the candidates' reviews are scored: the rest are only counted."""
    sums = tally(read_reviews(inputs, columns, split_bytes), _review_sums, {"products": products})
    found = sorted({key[0] for key in sums if isinstance(key, tuple)})

    def mean(total: str, n: str) -> list:
        return [sums[(p, total)] / sums[(p, n)] if sums[(p, n)] else None for p in found]

    signals = pa.table({"product_id": pa.array(found, pa.string()),
                        "reviews": pa.array([sums[(p, "n")] for p in found], pa.int64()),
                        "review_rating": pa.array(mean("rating", "rated"), pa.float64()),
                        "review_sentiment": pa.array(mean("compound", "scored"), pa.float64())})
    return signals, int(sums["named"])


def _review_sums(batch: pa.Table, products: set[str]) -> Counter:
    from reviewlm.filters.sentiment import vader_scores

    named = batch.filter(pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["product"])))
    mine = named.filter(pc.is_in(named["product"], value_set=pa.array(sorted(products), pa.string())))
    compound = vader_scores(mine["text"].to_pylist())["compound"]
    out = Counter({"named": named.num_rows})
    for product, rating, score in zip(mine["product"].to_pylist(), mine["rating"].to_pylist(), compound):
        out[(product, "n")] += 1
        if rating is not None:
            out[(product, "rating")] += rating
            out[(product, "rated")] += 1
        if score is not None and score == score:
            out[(product, "compound")] += score
            out[(product, "scored")] += 1
    return out
