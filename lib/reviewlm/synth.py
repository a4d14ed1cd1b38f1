"""Deterministic corpora: template product reviews, and query-product relevance pairs.

Sentences follow the reference study's templates (`{products} made by {brand} are known
for being {adjective}`, `{brand} {products} are {adjective}`, ...) over brands, products and
positive, negative and neutral adjectives. The rating follows the adjective (positive 4-5,
neutral 3, negative 1-2). With `min_words`, neutral filler sentences pad each review to a
realistic length.

The relevance pairs follow the Amazon shopping queries (ESCI) layout: a `query`, a
`product_title` and an `esci_label` that depends on both: Exact (the brand and kind asked
for), Substitute (the kind from another brand), Complement (a kind that goes with it) or
Irrelevant.
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
from reviewlm.options import RunOptions

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


EDITS = ("word", "tail", "case", "reorder")
TAILS = ["Five stars.", "Would buy again!", "Highly recommended.", "Update: still happy after a month."]


def near_copy(text: str, rng: random.Random) -> str:
    """`text` as a re-posted review: one word changed, a tail added, upper case or its sentences reordered."""
    edit = rng.choice(EDITS)
    if edit == "word":
        tokens = text.split()
        tokens[rng.randrange(len(tokens))] = rng.choice(words.NEUTRAL)
        return " ".join(tokens)
    if edit == "tail":
        return f"{text} {rng.choice(TAILS)}"
    if edit == "case":
        return text.upper()
    sentences = [s for s in text.replace(". ", ".\n").splitlines() if s]
    rng.shuffle(sentences)
    return " ".join(sentences)


def synth_rows(rows: int, seed: int = 0, min_words: int = 0, max_words: int = 0,
               near_copies: float = 0.0) -> pa.Table:
    """`rows` reviews, identical for the same arguments; a `near_copies` share of them re-posts
    an earlier review with one edit (`near_copy`), keeping its rating, brand and product."""
    rng = random.Random(seed)
    adjectives = ([(a, "positive") for a in words.WANTED] + [(a, "negative") for a in words.UNWANTED]
                  + [(a, "neutral") for a in words.NEUTRAL])
    cols = {name: [] for name in SCHEMA.names}
    for i in range(rows):
        if near_copies and i and rng.random() < near_copies:  # no draw without near-copies: the same corpus as before
            j = rng.randrange(i)
            for k in SCHEMA.names:
                cols[k].append({"id": f"synth-{seed}-{i}", "text": near_copy(cols["text"][j], rng)}.get(k, cols[k][j]))
            continue
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


KINDS = {"running shoes": ["socks", "shorts"], "sneakers": ["socks", "joggers"], "boots": ["socks", "jacket"],
         "sandals": ["shorts", "t-shirt"], "hoodie": ["joggers", "t-shirt"], "t-shirt": ["shorts", "hoodie"],
         "jacket": ["hoodie", "boots"], "joggers": ["hoodie", "sneakers"], "shorts": ["t-shirt", "running shoes"],
         "socks": ["running shoes", "sneakers"], "leggings": ["t-shirt", "running shoes"]}
QUERIES = ["{brand} {kind}", "{color} {brand} {kind}", "{kind} by {brand}", "{brand} {kind} for men",
           "womens {brand} {kind}", "cheap {brand} {kind}"]
TITLES = ["{Brand} {kind}, {color}", "{Brand} Performance {kind} - {color}, {feature}",
          "{kind} from {Brand} ({color}, {feature})", "{Brand} Classic {kind} in {color}"]
FEATURES = ["breathable mesh", "lightweight", "size 9", "regular fit", "machine washable", "water resistant",
            "cushioned", "slim fit", "recycled materials", "pack of 3"]
ESCI = {"Exact": 0.4, "Substitute": 0.3, "Complement": 0.15, "Irrelevant": 0.15}
PAIRS = pa.schema([("id", pa.string()), ("query", pa.string()), ("product_title", pa.string()),
                   ("esci_label", pa.string())])


def synth_pairs(rows: int, seed: int = 0) -> pa.Table:
    """`rows` (query, product title, relevance) triples, identical for the same arguments."""
    rng = random.Random(seed)
    kinds, colors = list(KINDS), [c for c in words.NEUTRAL if c in ("black", "white", "red", "blue", "grey")]
    cols = {name: [] for name in PAIRS.names}
    for i in range(rows):
        brand, kind = rng.choice(words.BRANDS), rng.choice(kinds)
        label = rng.choices(list(ESCI), weights=list(ESCI.values()))[0]
        other = rng.choice([b for b in words.BRANDS if b != brand])
        their_brand, their_kind = {
            "Exact": (brand, kind), "Substitute": (other, kind),
            "Complement": (rng.choice(words.BRANDS), rng.choice(KINDS[kind])),
            "Irrelevant": (rng.choice(words.BRANDS),
                           rng.choice([k for k in kinds if k != kind and k not in KINDS[kind]]))}[label]
        query = rng.choice(QUERIES).format(brand=brand, kind=kind, color=rng.choice(colors))
        title = rng.choice(TITLES).format(Brand=their_brand.title(), kind=their_kind, color=rng.choice(colors),
                                          feature=rng.choice(FEATURES))
        for k, v in (("id", f"pair-{seed}-{i}"), ("query", query), ("product_title", title), ("esci_label", label)):
            cols[k].append(v)
    return pa.table(cols, schema=PAIRS)


def write_synth(output: str, rows: int, seed: int = 0, fmt: str = "jsonl", shards: int = 1,
                min_words: int = 0, max_words: int = 0, kind: str = "reviews", near_copies: float = 0.0,
                run: RunOptions = RunOptions()) -> dict:
    """Write the corpus (`kind`: reviews or relevance) as `shards` files under `output`
    (atomically, with `_SUCCESS`)."""
    if kind not in ("reviews", "relevance"):
        raise UsageError(f"{{o}} must be reviews or relevance, not {kind!r}", o="kind")
    if rows < 1 or shards < 1:
        raise UsageError("{r} and {s} must be at least 1", r="rows", s="shards")
    if fmt not in ("jsonl", "csv", "parquet"):
        raise UsageError(f"{{o}} must be jsonl, csv or parquet, not {fmt!r}", o="format")
    if not 0 <= near_copies < 1:
        raise UsageError("{o} must be at least 0 and below 1", o="near_copies")
    if min_words and max_words and max_words < min_words:
        raise UsageError("{a} must be at least {b}", a="max_words", b="min_words")
    out = OutputDir(output, "synth", run.overwrite).prepare()
    with out:
        table = (synth_rows(rows, seed, min_words, max_words, near_copies) if kind == "reviews"
                 else synth_pairs(rows, seed))
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
        return out.commit(run.arguments, [], {"rows": rows, "shards": shards})
