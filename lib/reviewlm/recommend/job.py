"""`reviewlm recommend`: needs in plain words → candidates (dense, BM25 or hybrid) → an
optional pair-classifier rerank → the top-k, ordered by relevance, rating or price, with
what the reviews say about each product. Every pass over catalogue rows runs on Ray Data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy
from ray.data.expressions import col

from reviewlm.errors import UsageError
from reviewlm.io.layout import CatalogColumns
from reviewlm.io.quarantine import Quarantined, write_quarantine
from reviewlm.io.storage import OutputDir, arrow_filesystem, filesystem, fingerprints
from reviewlm.models import portable_ref
from reviewlm.options import RecommendArgs, RunOptions
from reviewlm.recommend import catalog as C
from reviewlm.recommend import retrieve as R
from reviewlm.recommend.metrics import evaluate
from reviewlm.recommend.rerank import Reranker, class_gains
from reviewlm.report.cards import write_cards
from reviewlm.results import RecommendResult
from reviewlm.runtime import actor_pool, init_ray

_F, _I, _S = pa.float64(), pa.int64(), pa.string()
# rankings/: of these columns, those a run has, in this order
RANKINGS = pa.schema([("query_index", _I), ("query", _S), ("rank", _I), ("product_id", _S), ("title", _S),
                      ("score", _F), ("relevance_rank", _I), ("dense_score", _F), ("dense_rank", _I),
                      ("bm25_score", _F), ("bm25_rank", _I), ("hybrid_score", _F), ("hybrid_rank", _I),
                      ("rerank_score", _F), ("price", _F), ("rating", _F), ("review_count", _I), ("reviews", _I),
                      ("review_rating", _F), ("review_sentiment", _F), ("description", _S)])


def recommend(catalog: list[str], queries: str, output: str, args: RecommendArgs = RecommendArgs(), *,
              columns: CatalogColumns = CatalogColumns(), reviews: list[str] | None = None,
              review_columns: tuple[str, str, str] = ("product_id", "text", "rating"),
              run: RunOptions = RunOptions()) -> RecommendResult:
    """Rank catalogue products for each need; write rankings/, embeddings/, summary.json, report.html.

    No step gathers the catalogue or the reviews anywhere: each block of the catalogue sends
    the driver its best candidates per need, which it merges (needs x `candidates` rows), and
    the reviews are summed per candidate product by the tasks that read them.
    """
    started = time.time()
    needs, empty = C.read_queries(queries, args.query_column)
    judgments = C.read_judgments(args.judgments) if args.judgments else None
    dense = args.retriever != "bm25"
    encoder = portable_ref(args.model) if dense else None
    if dense:
        R.encoder_path(encoder)  # fails fast on a model that cannot load
    if args.reranker:
        _reranker_gains(args.reranker)
    inputs = C.check_catalog(catalog, columns, run.delimiter, run.encoding)
    review_data = C.check_reviews(reviews, *review_columns, run) if reviews else None
    out = OutputDir(output, "recommend", run.overwrite).prepare(False, run.arguments, fingerprints(inputs))
    with out:
        init_ray(run)
        products, found = _products(C.read_catalog(inputs, columns, run.split_bytes), out, catalog[0])
        lists = {}
        if dense:
            vectors, asked = _embeddings(products, needs, out, args, encoder)
            if args.max_price is not None:
                vectors = vectors.filter(expr=col("price") <= args.max_price)  # unpriced rows are null: left out
            lists["dense"] = R.top_candidates(vectors, R.block_candidates, args.candidates, "dense", queries=asked)
        if args.retriever != "dense":
            lists["bm25"] = R.top_candidates(products, R.bm25_block, args.candidates, "bm25", queries=needs,
                                             max_price=args.max_price)
        candidates = _fused(lists, args.candidates)
        signals, named = None, None
        if review_data:
            signals, named = C.review_signals(*review_data, set(candidates["product_id"].to_pylist()),
                                              run.split_bytes)
            candidates = _with_signals(candidates, signals)
        if args.reranker:
            candidates = _reranked(candidates, needs, args)
        table = _ranked(candidates, needs, args, bool(reviews))
        _write_rankings(table, out)
        metrics, per_query = {}, ()
        if judgments is not None:
            retrieved = candidates.select(["query_index", "product_id", f"{args.retriever}_rank"]).to_pandas()
            metrics, per_query = evaluate(needs, table, retrieved, judgments, min(10, args.top_k), args.candidates)
        result = RecommendResult(
            retriever=args.retriever, model=args.model if dense else None, reranker=args.reranker, order=args.order,
            candidates=args.candidates, top_k=args.top_k, queries=len(needs), empty_queries=tuple(empty),
            products=found.usable, quarantined=found.quarantined, ranked_rows=len(table), reviews=named,
            metrics=metrics, per_query=tuple(per_query))
        write_cards(out, result, needs, table)
        counts = {"queries": len(needs), "products": result.products, "quarantined": found.quarantined,
                  "ranked": len(table)}
        out.commit(run.arguments, fingerprints(inputs), counts, {"summary.json": result.to_json()})
    return RecommendResult(**{**result.__dict__, "wall_time_s": round(time.time() - started, 2)})


def _reranker_gains(ref: str) -> np.ndarray:
    """The reranker's class gains, checked before any work: a model that cannot load, or whose
    classes say nothing of relevance, is a UsageError."""
    from transformers import AutoConfig

    from reviewlm.models import resolve_model
    from reviewlm.score.scorer import class_names

    return class_gains(class_names(AutoConfig.from_pretrained(resolve_model(ref))))


def _products(parsed: ray.data.Dataset, out: OutputDir, what: str) -> tuple[ray.data.Dataset, Quarantined]:
    """The usable catalogue rows (read once, materialized: the encoder's actors are fed no
    task) and what the quarantine pass counted."""
    parsed = parsed.materialize()
    found = write_quarantine(parsed.map_batches(C.quarantine_layout, batch_format="pyarrow"), out.tmp_uri())
    found.check(f"the catalogue {what}")
    return C.usable(parsed).map_batches(_no_need, batch_format="pyarrow", batch_size=None).materialize(), found


def _embeddings(products, needs: list[str], out: OutputDir, args: RecommendArgs,
                encoder: str) -> tuple[ray.data.Dataset, np.ndarray]:
    """Every product with its unit vector (materialized), and the needs' vectors in order: both
    encoded by one actor pool, and the products' written to embeddings/ (id and vector). With
    `--embeddings`, a previous run's vectors, which must cover every product of this catalogue."""
    asked = ray.data.from_arrow(pa.table({**{f.name: pa.nulls(len(needs), f.type) for f in C.PRODUCTS},
                                          "document": pa.array(needs, pa.string()), "_need": np.arange(len(needs))},
                                         schema=C.PRODUCTS.append(pa.field("_need", pa.int64()))))
    if args.embeddings:
        given_fs, path = filesystem(args.embeddings)
        vectors = ray.data.read_parquet(path, filesystem=arrow_filesystem(given_fs),
                                        columns=["product_id", "embedding"])
        vectors = vectors.join(products, join_type="inner", num_partitions=max(2, products.num_blocks()),
                               on=("product_id",)).materialize()
        if vectors.count() < products.count():
            raise UsageError(f"{{o}} {args.embeddings} covers {vectors.count():,} of the catalogue's "
                             f"{products.count():,} products: encode this catalogue (leave the option out)",
                             o="embeddings")
        return vectors, _stacked(_encoded(asked, args, encoder).to_pandas().sort_values("_need")["embedding"])
    encoded = _encoded(products.union(asked), args, encoder, blocks=products.num_blocks()).materialize()
    vectors = encoded.filter(expr=col("_need").is_null())
    vectors.select_columns(["product_id", "embedding"]).write_parquet(out.tmp_uri("embeddings"),
                                                                       filesystem=arrow_filesystem(out.fs))
    found = encoded.filter(expr=col("_need").is_not_null()).to_pandas().sort_values("_need")
    return vectors, _stacked(found["embedding"])


def _no_need(block: pa.Table) -> pa.Table:
    """Products as the encoder reads them, with the needs (`_need`: a need's index)."""
    return block.append_column("_need", pa.nulls(block.num_rows, pa.int64()))


def _encoded(ds: ray.data.Dataset, args: RecommendArgs, encoder: str, blocks: int = 1) -> ray.data.Dataset:
    pool = actor_pool(args.num_actors, args.use_gpu).limit(blocks)
    return ds.map_batches(R.Encoder, fn_constructor_kwargs={"ref": encoder, "use_gpu": args.use_gpu},
                          batch_size=args.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=pool.size),
                          **pool.resources)


def _stacked(vectors: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(v, np.float32) for v in vectors]) if len(vectors) else np.zeros((0, 0), np.float32)


def _fused(found: dict[str, pa.Table], k: int) -> pa.Table:
    """One retriever's candidates, or both fused by reciprocal rank (hybrid), in the driver:
    needs x `candidates` rows."""
    if len(found) == 1:
        return next(iter(found.values()))
    dense, bm25 = (found[name].to_pandas() for name in ("dense", "bm25"))
    fields = [c for c in R.CANDIDATE if c != "product_id"]
    both = dense.merge(bm25, on=["query_index", "product_id"], how="outer", suffixes=("", "_bm25"))
    for c in fields:
        both[c] = both[c].where(both[c].notna(), both[f"{c}_bm25"])
    both = both.drop(columns=[f"{c}_bm25" for c in fields])
    columns = {f.name: f.type for f in RANKINGS if f.name.startswith(("dense_", "bm25_"))}
    table = _with_columns(pa.Table.from_pandas(both, preserve_index=False), columns)
    return pa.concat_tables([R.fuse(table.filter(pc.equal(table["query_index"], q)), k)
                             for q in sorted(set(table["query_index"].to_pylist()))] or [R.fuse(table, k)])


def _with_columns(block: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    """A table with every one of `columns` (nulls where it lacked one), cast to its type."""
    for name, kind in columns.items():
        if name not in block.schema.names:
            block = block.append_column(name, pa.nulls(block.num_rows, kind))
        else:
            block = block.set_column(block.schema.get_field_index(name), name, block[name].cast(kind))
    return block


def _with_signals(candidates: pa.Table, signals: pa.Table) -> pa.Table:
    """The candidates with their products' review signals (nulls for a product without reviews)."""
    joined = candidates.join(signals, "product_id", join_type="left outer")
    return _with_columns(joined, {f.name: f.type for f in RANKINGS if f.name in C.SIGNALS})


def _reranked(candidates: pa.Table, needs: list[str], args: RecommendArgs) -> pa.Table:
    """The candidates with the reranker's expected gain per (need, title), on an actor pool."""
    pool = actor_pool(args.num_actors, args.use_gpu)
    size = max(1, -(-candidates.num_rows // pool.size))
    parts = [candidates.slice(i, size) for i in range(0, candidates.num_rows, size)] or [candidates]
    scored = ray.data.from_arrow(parts).map_batches(
        Reranker, fn_constructor_kwargs={"ref": portable_ref(args.reranker), "use_gpu": args.use_gpu,
                                         "queries": needs},
        batch_size=args.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=pool.limit(len(parts)).size),
        **pool.resources)
    return pa.concat_tables(ray.get(scored.to_arrow_refs()))


def _ranked(candidates: pa.Table, needs: list[str], args: RecommendArgs, reviews: bool) -> pd.DataFrame:
    """Every need's `finalize`d ranking, by need and rank."""
    kw = {"needs": needs, "top_k": args.top_k, "order": args.order, "stage": args.retriever,
          "reranked": bool(args.reranker), "reviews": reviews}
    parts = [finalize(candidates.filter(pc.equal(candidates["query_index"], q)), **kw)
             for q in sorted(set(candidates["query_index"].to_pylist()))]
    if not parts:
        return RANKINGS.empty_table().to_pandas()
    return pa.concat_tables(parts).to_pandas().sort_values(["query_index", "rank"], ignore_index=True)


def _write_rankings(table: pd.DataFrame, out: OutputDir) -> None:
    """rankings/ (needs x top-k rows, which the driver holds for the report anyway)."""
    schema = pa.schema([f for f in RANKINGS if f.name in table.columns])
    out.fs.makedirs(f"{out.tmp}/rankings", exist_ok=True)
    pq.write_table(pa.Table.from_pandas(table[schema.names], schema=schema, preserve_index=False),
                   f"{out.tmp}/rankings/part-00000.parquet", filesystem=arrow_filesystem(out.fs))


def finalize(group: pa.Table, needs: list[str], top_k: int, order: str, stage: str, reranked: bool,
             reviews: bool) -> pa.Table:
    """One need's ranking: the `top_k` most relevant candidates (the reranker's expected gain,
    else the retriever's score; equal ones by product id), then ordered by `order`: relevance,
    rating (highest first: the reviews' mean with `reviews`, else the catalogue's) or price
    (lowest first); unknown values last, ties by relevance."""
    df = group.to_pandas()
    relevance = "rerank_score" if reranked else f"{stage}_score"
    df = df.sort_values([relevance, "product_id"], ascending=[False, True], kind="stable").head(top_k)
    df["relevance_rank"] = np.arange(1, len(df) + 1)
    if order != "relevance":
        key = {"rating": "review_rating" if reviews else "rating", "price": "price"}[order]
        df = df.sort_values([key, "relevance_rank"], ascending=[order == "price", True], na_position="last",
                            kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    df["score"] = df[relevance]
    df["query"] = needs[int(df["query_index"].iloc[0])] if len(df) else []
    schema = pa.schema([f for f in RANKINGS if f.name in df.columns])
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
