"""`reviewlm recommend`: needs in plain words → candidates (dense, BM25 or hybrid) → an
optional pair-classifier rerank → the top-k, ordered by relevance, rating or price, with
what the reviews say about each product. Every pass over catalogue rows runs on Ray Data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy
from ray.data.expressions import col

from reviewlm.errors import UsageError
from reviewlm.io.readers import check_quarantine
from reviewlm.io.storage import OutputDir, arrow_filesystem, filesystem, fingerprints
from reviewlm.models import portable_ref
from reviewlm.options import RecommendArgs, RunOptions
from reviewlm.recommend import catalog as C
from reviewlm.recommend import retrieve as R
from reviewlm.recommend.metrics import evaluate
from reviewlm.recommend.rerank import Reranker, class_gains
from reviewlm.report.cards import write_cards
from reviewlm.results import RecommendResult
from reviewlm.runtime import init_ray

BLOCK_ROWS = 8192  # dense retrieval: catalogue rows scored against every need by one task
_F, _I, _S = pa.float64(), pa.int64(), pa.string()
# rankings/: of these columns, those a run has, in this order
RANKINGS = pa.schema([("query_index", _I), ("query", _S), ("rank", _I), ("product_id", _S), ("title", _S),
                      ("score", _F), ("relevance_rank", _I), ("dense_score", _F), ("dense_rank", _I),
                      ("bm25_score", _F), ("bm25_rank", _I), ("hybrid_score", _F), ("hybrid_rank", _I),
                      ("rerank_score", _F), ("price", _F), ("rating", _F), ("review_count", _I), ("reviews", _I),
                      ("review_rating", _F), ("review_sentiment", _F), ("description", _S)])


def recommend(catalog: list[str], queries: str, output: str, args: RecommendArgs = RecommendArgs(), *,
              columns: C.CatalogColumns = C.CatalogColumns(), reviews: list[str] | None = None,
              review_columns: tuple[str, str, str] = ("product_id", "text", "rating"),
              run: RunOptions = RunOptions()) -> RecommendResult:
    """Rank catalogue products for each need; write rankings/, embeddings/, summary.json, report.html."""
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
    out = OutputDir(output, "recommend", run.overwrite).prepare(False, run.arguments, fingerprints(inputs))
    with out:
        init_ray(run)
        products, quarantined = _products(C.read_catalog(inputs, columns, run.split_bytes), out, catalog[0])
        pool, rerank_pool, per_actor = _pools(args)
        found = {}
        if dense:
            vectors = _embeddings(products, out, args, encoder, pool, per_actor)
            if args.max_price is not None:
                vectors = vectors.filter(expr=col("price") <= args.max_price)  # unpriced rows are null: left out
            found["dense"] = R.dense_candidates(vectors, _encode(needs, encoder, args, per_actor), args.candidates,
                                                BLOCK_ROWS)
        if args.retriever != "dense":
            found["bm25"] = R.bm25_candidates(products, needs, args.candidates, args.max_price)
        candidates = _fused(found, args.candidates).materialize()
        ranked = candidates.join(products.drop_columns(["document"]), join_type="inner",
                                 num_partitions=_partitions(), on=("product_id",))
        signals = None
        if reviews:
            signals = C.review_signals(reviews, *review_columns, run).materialize()
            ranked = ranked.join(signals, join_type="left_outer", num_partitions=_partitions(), on=("product_id",)) \
                .map_batches(_with_signals, batch_format="pyarrow", batch_size=None)
        if args.reranker:
            ranked = ranked.map_batches(Reranker, fn_constructor_kwargs={
                "ref": portable_ref(args.reranker), "use_gpu": args.use_gpu, "queries": needs},
                batch_size=args.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=rerank_pool),
                **per_actor)
        ranked = ranked.groupby("query_index").map_groups(finalize, fn_kwargs={
            "needs": needs, "top_k": args.top_k, "order": args.order, "stage": args.retriever,
            "reranked": bool(args.reranker), "reviews": bool(reviews)}, batch_format="pyarrow")
        ranked.write_parquet(out.tmp_uri("rankings"), filesystem=arrow_filesystem(out.fs))
        table = (pd.read_parquet(out.tmp_uri("rankings")).sort_values(["query_index", "rank"], ignore_index=True)
                 if out.fs.exists(f"{out.tmp}/rankings") and out.fs.ls(f"{out.tmp}/rankings")
                 else RANKINGS.empty_table().to_pandas())  # no need found a product
        metrics, per_query = {}, ()
        if judgments is not None:
            stage = args.retriever
            retrieved = candidates.select_columns(["query_index", "product_id", f"{stage}_rank"]).to_pandas()
            metrics, per_query = evaluate(needs, table, retrieved, judgments, min(10, args.top_k), args.candidates)
        result = RecommendResult(
            retriever=args.retriever, model=args.model if dense else None, reranker=args.reranker, order=args.order,
            candidates=args.candidates, top_k=args.top_k, queries=len(needs), empty_queries=tuple(empty),
            products=products.count(), quarantined=quarantined, ranked_rows=len(table),
            reviews=int(signals.sum("reviews") or 0) if signals is not None and signals.count() else (
                0 if reviews else None), metrics=metrics, per_query=tuple(per_query))
        write_cards(out, result, needs, table)
        counts = {"queries": len(needs), "products": result.products, "quarantined": quarantined,
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


def _partitions() -> int:
    return max(2, int(ray.cluster_resources().get("CPU", 1)))


def _pools(args: RecommendArgs) -> tuple[int, int, dict]:
    """Actors for the encoder and for the reranker, and each one's resources. The encoder
    reads a materialized catalogue; the reranker's candidates come from a join whose tasks
    need a CPU while it runs, so on CPUs its pool leaves one free."""
    resources = ray.cluster_resources()
    if args.use_gpu:
        pool = args.num_actors or max(1, int(resources.get("GPU", 1)))
        return pool, pool, {"num_gpus": 1}
    cpus = int(resources.get("CPU", 1))
    if cpus < 2:
        return 1, 1, {"num_cpus": 0.5}
    pool = args.num_actors or cpus
    return pool, min(pool, cpus - 1), {"num_cpus": 1}


def _products(parsed: ray.data.Dataset, out: OutputDir, what: str) -> tuple[ray.data.Dataset, int]:
    """The usable catalogue rows (materialized, read once) and how many went to quarantine/."""
    parsed = parsed.materialize()
    bad = C.quarantined(parsed)
    n_bad = bad.count()
    reasons = {}
    if n_bad:
        bad.write_parquet(out.tmp_uri("quarantine"), filesystem=arrow_filesystem(out.fs))
        counts = bad.groupby("error").count().to_pandas()
        reasons = dict(zip(counts["error"], counts["count()"].astype(int)))
    products = C.usable(parsed).materialize()
    n = products.count()
    if not n + n_bad:
        raise UsageError(f"the catalogue {what} has no rows")
    check_quarantine(n + n_bad, n_bad, reasons, f"the catalogue {what}")
    return products, n_bad


def _embeddings(products, out: OutputDir, args: RecommendArgs, encoder: str, pool: int, per_actor: dict):
    """Every product's unit vector with its price: computed once on an actor pool and written
    to embeddings/ (id and vector), or, with `--embeddings`, a previous run's, which must cover
    every product of this catalogue."""
    if args.embeddings:
        given_fs, path = filesystem(args.embeddings)
        vectors = ray.data.read_parquet(path, filesystem=arrow_filesystem(given_fs),
                                        columns=["product_id", "embedding"])
        vectors = vectors.join(products.select_columns(["product_id", "price"]), join_type="inner",
                               num_partitions=_partitions(), on=("product_id",)).materialize()
        if vectors.count() < products.count():
            raise UsageError(f"{{o}} {args.embeddings} covers {vectors.count():,} of the catalogue's "
                             f"{products.count():,} products: encode this catalogue (leave the option out)",
                             o="embeddings")
        return vectors
    vectors = products.select_columns(["product_id", "document", "price"]).map_batches(
        R.Encoder, fn_constructor_kwargs={"ref": encoder, "use_gpu": args.use_gpu}, batch_size=args.batch_size,
        batch_format="pyarrow", compute=ActorPoolStrategy(size=pool), **per_actor,
    ).select_columns(["product_id", "price", "embedding"]).materialize()
    vectors.select_columns(["product_id", "embedding"]).write_parquet(out.tmp_uri("embeddings"),
                                                                       filesystem=arrow_filesystem(out.fs))
    return vectors


def _encode(needs: list[str], encoder: str, args: RecommendArgs, per_actor: dict) -> np.ndarray:
    """The needs' unit vectors, in order, from one encoder actor."""
    ds = ray.data.from_arrow(pa.table({"i": np.arange(len(needs)), "document": needs}))
    table = ds.map_batches(R.Encoder, fn_constructor_kwargs={"ref": encoder, "use_gpu": args.use_gpu},
                           batch_size=args.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=1),
                           **per_actor).to_arrow_refs()
    merged = pa.concat_tables(ray.get(table)).sort_by("i")
    return R.matrix(merged["embedding"])


def _fused(found: dict[str, ray.data.Dataset], k: int) -> ray.data.Dataset:
    """One retriever's candidates, or both fused by reciprocal rank (hybrid)."""
    if len(found) == 1:
        return next(iter(found.values()))
    both = found["dense"].join(found["bm25"], join_type="full_outer", num_partitions=_partitions(),
                               on=("query_index", "product_id"))
    columns = {f.name: f.type for f in RANKINGS if f.name.startswith(("dense_", "bm25_"))}
    return both.map_batches(_with_columns, fn_kwargs={"columns": columns}, batch_format="pyarrow",
                            batch_size=None).groupby("query_index").map_groups(R.fuse, fn_kwargs={"k": k},
                                                                               batch_format="pyarrow")


def _with_columns(block: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    """A joined block with every column of both sides: Ray's join leaves out the columns of a
    side that had no rows in the block's partition."""
    for name, kind in columns.items():
        if name not in block.schema.names:
            block = block.append_column(name, pa.nulls(block.num_rows, kind))
    return block.select(list(dict.fromkeys([n for n in block.schema.names if n not in columns] + list(columns))))


def _with_signals(block: pa.Table) -> pa.Table:
    return _with_columns(block, {f.name: f.type for f in RANKINGS if f.name in C.SIGNALS})


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
