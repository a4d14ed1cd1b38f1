"""Ranking metrics by their standard formulas, per need and averaged over the needs that have
at least one relevant (gain > 0) product in the judgments."""

from __future__ import annotations

import math

import pandas as pd


def dcg(gains: list[float]) -> float:
    """Σ gain_i / log2(i + 1) over ranks i = 1, 2, … (linear gains, as ESCI's evaluation)."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg(ranked: list[float], judged: list[float], k: int) -> float:
    """DCG of the first `k` ranked gains over the DCG of the best `k` judged gains."""
    ideal = dcg(sorted(judged, reverse=True)[:k])
    return dcg(ranked[:k]) / ideal if ideal > 0 else 0.0


def reciprocal_rank(ranked: list[float], k: int) -> float:
    """1 / rank of the first relevant product in the first `k`; 0 when there is none."""
    return next((1.0 / (i + 1) for i, g in enumerate(ranked[:k]) if g > 0), 0.0)


def recall(retrieved: list[str], relevant: set[str]) -> float:
    return len(relevant.intersection(retrieved)) / len(relevant) if relevant else 0.0


def evaluate(needs: list[str], ranked: pd.DataFrame, candidates: pd.DataFrame, judgments: pd.DataFrame,
             k: int, candidates_k: int) -> tuple[dict, list[dict]]:
    """Means and per-need nDCG@k and MRR@k of the final rankings (`query_index`, `rank`,
    `product_id`) and recall@`candidates_k` of the retrieved candidates. Judgments match needs
    by their text; a product not judged has gain 0."""
    judged = {q: dict(zip(g["product_id"], g["gain"])) for q, g in judgments.groupby("query")}
    ranked = ranked.sort_values(["query_index", "rank"])
    by_need = {i: g["product_id"].tolist() for i, g in ranked.groupby("query_index")}
    retrieved = {i: g["product_id"].tolist() for i, g in candidates.groupby("query_index")}
    rows = []
    for i, need in enumerate(needs):
        gains = judged.get(need, {})
        relevant = {p for p, g in gains.items() if g > 0}
        row = {"query_index": i, "query": need, "judged": len(gains), "relevant": len(relevant)}
        if relevant:
            ranked_gains = [gains.get(p, 0.0) for p in by_need.get(i, [])]
            row |= {f"ndcg@{k}": ndcg(ranked_gains, list(gains.values()), k),
                    f"mrr@{k}": reciprocal_rank(ranked_gains, k),
                    f"recall@{candidates_k}": recall(retrieved.get(i, []), relevant)}
        rows.append(row)
    scored = [r for r in rows if r["relevant"]]
    names = (f"ndcg@{k}", f"mrr@{k}", f"recall@{candidates_k}")
    means = {name: (sum(r[name] for r in scored) / len(scored) if scored else None) for name in names}
    return means | {"queries_judged": len(scored), "queries_without_relevant": len(rows) - len(scored)}, rows
