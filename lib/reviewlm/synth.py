"""Deterministic corpora: template product reviews, and query-product relevance pairs.

Sentences follow the reference study's templates (`{products} made by {brand} are known
for being {adjective}`, `{brand} {products} are {adjective}`, ...) over brands, products and
positive, negative and neutral adjectives. The rating follows the adjective (positive 4-5,
neutral 3, negative 1-2). With `min_words`, neutral filler sentences pad each review to a
realistic length.

The catalogue (`synth_catalog`) is products of those kinds and brands with prices and
ratings, reviews naming their product, needs written in other words than the products'
own ("something to wear on a morning jog" for running shoes) and their judgments.

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


DESCRIPTIONS = {
    "running shoes": "Running shoes with a cushioned sole for road running and racing.",
    "sneakers": "Low-top sneakers with a canvas upper and a rubber sole.",
    "boots": "Waterproof leather boots with a deep tread and insulated lining.",
    "sandals": "Sandals with adjustable straps and a moulded footbed.",
    "hoodie": "A pullover hoodie in brushed fleece with a kangaroo pocket.",
    "t-shirt": "A crew neck t-shirt in soft cotton jersey.",
    "jacket": "A waterproof shell jacket with taped seams and a packable hood.",
    "joggers": "Tapered joggers in fleece with an elastic waistband and cuffs.",
    "shorts": "Training shorts with a mesh lining and a drawcord waist.",
    "socks": "Crew socks in a cotton blend with a cushioned footbed.",
    "leggings": "High-waisted leggings in a four-way stretch fabric.",
}
NEEDS = {  # a kind, in other words than its titles and descriptions use
    "running shoes": ["something to wear on my morning jog", "footwear for training for a marathon"],
    "sneakers": ["casual everyday kicks to wear to class", "laid-back footwear for walking around town"],
    "boots": ["footwear for hiking through snow and mud", "something for my feet on a winter trek in the mountains"],
    "sandals": ["open footwear for the beach in summer", "something to slip my feet into by the pool"],
    "hoodie": ["a warm top with a hood for chilly evenings", "a cosy sweatshirt to throw on after practice"],
    "t-shirt": ["a basic short sleeve top", "a plain tee for everyday wear"],
    "jacket": ["a coat to keep me dry in the rain", "outerwear for a stormy weekend escape"],
    "joggers": ["comfy trousers for lounging at home", "relaxed sweatpants for the weekend"],
    "shorts": ["something to keep my legs cool at the gym in summer", "breezy bottoms for a hot workout"],
    "socks": ["something to keep my feet warm inside my shoes", "a few pairs of ankle warmers for daily use"],
    "leggings": ["tight stretchy pants for yoga class", "form-fitting bottoms for pilates"],
}
PRICES = {"running shoes": 110, "sneakers": 70, "boots": 140, "sandals": 35, "hoodie": 60, "t-shirt": 25,
          "jacket": 150, "joggers": 50, "shorts": 30, "socks": 12, "leggings": 45}
GAINS = {"exact": 1.0, "other brand": 0.1, "complement": 0.01}  # ESCI's gains: exact, substitute, complement


def synth_catalog(products: int, seed: int = 0) -> dict[str, pa.Table | list[str]]:
    """A catalogue of `products` (kinds and brands in turn), 0–8 reviews naming each, the needs
    (each kind's, also asked of one brand) and their judgments: gain 1 for a product of the
    kind (and brand) asked for, 0.1 for the kind from another brand, 0.01 for a kind that
    goes with it. Identical for the same arguments."""
    rng = random.Random(seed)
    kinds, colors = list(KINDS), ["black", "white", "red", "blue", "grey"]
    catalog = {k: [] for k in ("product_id", "title", "description", "price", "rating", "review_count")}
    reviews = {k: [] for k in ("id", "product_id", "text", "rating")}
    made = []  # (id, kind, brand) per product
    for i in range(products):
        kind, brand = kinds[i % len(kinds)], words.BRANDS[(i // len(kinds)) % len(words.BRANDS)]
        pid = f"P{seed}-{i:06d}"
        made.append((pid, kind, brand))
        catalog["product_id"].append(pid)
        catalog["title"].append(rng.choice(TITLES).format(Brand=brand.title(), kind=kind, color=rng.choice(colors),
                                                          feature=rng.choice(FEATURES)))
        catalog["description"].append(DESCRIPTIONS[kind])
        catalog["price"].append(round(PRICES[kind] * rng.uniform(0.6, 1.5), 2))
        quality = rng.uniform(2.5, 5.0)
        count = rng.randint(0, 8)
        catalog["review_count"].append(count)
        stars = [min(5, max(1, round(rng.gauss(quality, 0.8)))) for _ in range(count)]
        catalog["rating"].append(round(sum(stars) / count, 1) if count else None)
        for j, star in enumerate(stars):
            pool = words.WANTED if star >= 4 else words.UNWANTED if star <= 2 else words.NEUTRAL
            reviews["id"].append(f"{pid}-r{j}")
            reviews["product_id"].append(pid)
            reviews["text"].append(rng.choice(TEMPLATES).format(products=kind, brand=brand, adjective=rng.choice(pool))
                                   .capitalize())
            reviews["rating"].append(star)
    needs, judged = [], {k: [] for k in ("query", "product_id", "gain")}
    for kind in kinds:
        brand = rng.choice(words.BRANDS)
        for need, asked in ((NEEDS[kind][0], None), (f"{NEEDS[kind][1]} from {brand}", brand)):
            needs.append(need)
            for pid, their_kind, their_brand in made:
                gain = (GAINS["exact"] if their_kind == kind and asked in (None, their_brand)
                        else GAINS["other brand"] if their_kind == kind
                        else GAINS["complement"] if their_kind in KINDS[kind] else 0.0)
                if gain:
                    for k, v in (("query", need), ("product_id", pid), ("gain", gain)):
                        judged[k].append(v)
    return {"catalog": pa.table(catalog), "reviews": pa.table(reviews), "needs": needs, "judgments": pa.table(judged)}


def _write_table(fs, path: str, table: pa.Table, fmt: str) -> None:
    with fs.open(path, "wb") as fh:
        if fmt == "parquet":
            pq.write_table(table, fh)
        elif fmt == "csv":
            pacsv.write_csv(table, fh)
        else:
            fh.write("".join(json.dumps(r) + "\n" for r in table.to_pylist()).encode())


def write_synth(output: str, rows: int, seed: int = 0, fmt: str = "jsonl", shards: int = 1,
                min_words: int = 0, max_words: int = 0, kind: str = "reviews", near_copies: float = 0.0,
                run: RunOptions = RunOptions()) -> dict:
    """Write the corpus (`kind`: reviews or relevance) as `shards` files under `output`
    (atomically, with `_SUCCESS`)."""
    if kind not in ("reviews", "relevance", "catalog"):
        raise UsageError(f"{{o}} must be reviews, relevance or catalog, not {kind!r}", o="kind")
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
        if kind == "catalog":
            made = synth_catalog(rows, seed)
            tables = {"catalog": made["catalog"], "reviews": made["reviews"]}  # shards > 1: a folder each
            out.fs.pipe(f"{out.tmp}/needs.txt", "".join(n + "\n" for n in made["needs"]).encode())
            _write_table(out.fs, f"{out.tmp}/judgments.jsonl", made["judgments"], "jsonl")
        else:
            table = (synth_rows(rows, seed, min_words, max_words, near_copies) if kind == "reviews"
                     else synth_pairs(rows, seed))
            tables = {"part": table}
        for name, table in tables.items():
            step = -(-table.num_rows // shards)
            for s in range(shards):
                base = (f"{out.tmp}/{name}-{s:05d}" if name == "part" else f"{out.tmp}/{name}/{name}-{s:05d}"
                        if shards > 1 else f"{out.tmp}/{name}")
                _write_table(out.fs, f"{base}.{fmt}", table.slice(s * step, step), fmt)
        return out.commit(run.arguments, [], {"rows": rows, "shards": shards})
