"""A deterministic corpus of template product reviews in the canonical schema.

Sentences follow the reference study's templates (`{products} made by {brand} are known
for being {adjective}`, `{brand} {products} are {adjective}`, ...) over brands, products and
positive, negative and neutral adjectives. The rating follows the adjective (positive 4-5,
neutral 3, negative 1-2). With `min_words`, neutral filler sentences pad each review to a
realistic length.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from reviewlm import words
from reviewlm.errors import UsageError
from reviewlm.io.storage import OutputDir

TEMPLATES = [
    "{products} made by {brand} are known for being {adjective}.",
    "{brand} {products} are {adjective}.",
    "I think {brand} {products} are very {adjective}.",
    "These {products} from {brand} are really {adjective}.",
    "My new {brand} {products} turned out to be {adjective}.",
    "{brand} makes {products} that are {adjective}.",
    "The {products} by {brand} feel {adjective}.",
    "Honestly, the {brand} {products} I bought are {adjective}.",
]
FILLER = [
    "I ordered them online last month.", "Delivery took about a week.",
    "I wear them mostly on weekends.", "The box arrived a little damaged.",
    "My brother has the same pair.", "I use them for the gym and for walking.",
    "The size matched the chart on the website.", "I have had them for three months now.",
    "They came in a plain cardboard box.", "I picked the color my daughter suggested.",
    "The store had several other models too.", "I compared a few brands before buying.",
    "The seller answered my questions quickly.", "I usually take a size nine.",
    "We went hiking with them in the spring.", "The instructions for washing were on the tag.",
]
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("rating", pa.int64()),
                    ("brand", pa.string()), ("product", pa.string()), ("source", pa.string())])


def synth_rows(rows: int, seed: int = 0, min_words: int = 0, max_words: int = 0) -> pa.Table:
    """`rows` reviews, identical for the same arguments."""
    rng = random.Random(seed)
    adjectives = ([(a, "positive") for a in words.WANTED] + [(a, "negative") for a in words.UNWANTED]
                  + [(a, "neutral") for a in words.NEUTRAL])
    cols = {name: [] for name in SCHEMA.names}
    for i in range(rows):
        brand, product = rng.choice(words.BRANDS), rng.choice(words.PRODUCTS)
        adjective, polarity = rng.choice(adjectives)
        sentence = rng.choice(TEMPLATES).format(products=product, brand=brand, adjective=adjective)
        text = sentence[0].upper() + sentence[1:]
        if min_words:
            target = rng.randint(min_words, max(min_words, max_words))
            parts = [text]
            while sum(len(p.split()) for p in parts) < target:
                parts.insert(rng.randint(0, len(parts)), rng.choice(FILLER))
            text = " ".join(parts)
        rating = {"positive": rng.choice([4, 5]), "neutral": 3, "negative": rng.choice([1, 2])}[polarity]
        for k, v in (("id", f"synth-{seed}-{i}"), ("text", text), ("rating", rating),
                     ("brand", brand), ("product", product), ("source", "synth")):
            cols[k].append(v)
    return pa.table(cols, schema=SCHEMA)


def write_synth(output: str, rows: int, seed: int = 0, fmt: str = "jsonl", shards: int = 1,
                min_words: int = 0, max_words: int = 0, overwrite: bool = False,
                arguments: dict | None = None) -> dict:
    """Write the corpus as `shards` files under `output` (atomically, with `_SUCCESS`)."""
    if rows < 1 or shards < 1:
        raise UsageError("--rows and --shards must be at least 1")
    if fmt not in ("jsonl", "csv", "parquet"):
        raise UsageError(f"--format must be jsonl, csv or parquet, not {fmt!r}")
    if min_words and max_words and max_words < min_words:
        raise UsageError("--max-words must be at least --min-words")
    out = OutputDir(output, "synth", overwrite).prepare()
    with out:
        table = synth_rows(rows, seed, min_words, max_words)
        step = -(-rows // shards)
        for s in range(shards):
            part = table.slice(s * step, step)
            with out.fs.open(f"{out.tmp}/part-{s:05d}.{fmt}", "wb") as fh:
                if fmt == "parquet":
                    pq.write_table(part, fh)
                elif fmt == "csv":
                    pacsv.write_csv(part, fh)
                else:
                    fh.write("".join(json.dumps(r) + "\n" for r in part.to_pylist()).encode())
        return out.commit(arguments or {}, [], {"rows": rows, "shards": shards})
