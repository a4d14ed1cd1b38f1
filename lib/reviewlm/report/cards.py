"""recommend's report.html: each need with its top products as cards (title, price, rating,
what the reviews say, why it ranked), after the run's figures."""

from __future__ import annotations

import html
import math

import pandas as pd

from reviewlm.results import RecommendResult

MAX_NEEDS = 50  # needs shown; rankings/ holds them all
STYLE = ("body{font-family:sans-serif;max-width:70em;margin:auto}.cards{display:flex;flex-wrap:wrap;gap:.6em}"
         ".card{border:1px solid #ccc;border-radius:6px;padding:.5em;width:15em;font-size:90%}"
         ".card b{display:block}.why{color:#555}")


def _known(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def card(row) -> str:
    parts = [f"<b>{row['rank']}. {html.escape(str(row['title']))}</b>"]
    if _known(row.get("price")):
        parts.append(f"price {row['price']:,.2f}")
    if _known(row.get("rating")):
        count = f" ({int(row['review_count']):,} ratings)" if _known(row.get("review_count")) else ""
        parts.append(f"rated {row['rating']:.1f}/5{count}")
    if _known(row.get("reviews")):
        rating = f", mean {row['review_rating']:.1f} stars" if _known(row.get("review_rating")) else ""
        parts.append(f"{int(row['reviews']):,} reviews{rating}, sentiment {row['review_sentiment']:+.2f}"
                     if _known(row.get("review_sentiment")) else f"{int(row['reviews']):,} reviews{rating}")
    why = [f"{stage} #{int(row[f'{stage}_rank'])} ({row[f'{stage}_score']:.3f})"
           for stage in ("dense", "bm25", "hybrid") if _known(row.get(f"{stage}_rank"))]
    if _known(row.get("rerank_score")):
        why.append(f"reranker {row['rerank_score']:.3f}")
    parts.append(f"<span class=why>why: {', '.join(why)}; relevance #{int(row['relevance_rank'])}</span>")
    return "<div class=card>" + "<br>".join(parts) + "</div>"


def write_cards(out, result: RecommendResult, needs: list[str], rankings: pd.DataFrame) -> None:
    """Write report.html into the output's temporary location."""
    how = f"{result.retriever} retrieval" + (f" with {result.model}" if result.model else "")
    how += f", reranked by {result.reranker}" if result.reranker else ""
    body = [f"<h1>reviewlm recommendations</h1><p>{len(needs):,} needs, {result.products:,} products "
            f"({result.quarantined:,} quarantined); {html.escape(how)}; top {result.top_k} of "
            f"{result.candidates} candidates, ordered by {result.order}.</p>"]
    if result.metrics:
        m = result.metrics
        figures = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("ndcg", "mrr", "recall")) and
                            v is not None)
        body.append(f"<p>Judged: {figures} over {m['queries_judged']} needs "
                    f"({m['queries_without_relevant']} without a relevant product left out).</p>")
    by_need = {i: g for i, g in rankings.groupby("query_index")}
    for i, need in enumerate(needs[:MAX_NEEDS]):
        rows = by_need.get(i)
        cards = "".join(card(r) for r in rows.to_dict("records")) if rows is not None else "<p>no product</p>"
        body.append(f"<h2>{html.escape(need)}</h2><div class=cards>{cards}</div>")
    if len(needs) > MAX_NEEDS:
        body.append(f"<p>{len(needs) - MAX_NEEDS:,} more needs in rankings/.</p>")
    page = f"<!doctype html><meta charset=utf-8><title>reviewlm recommendations</title><style>{STYLE}</style>"
    with out.fs.open(f"{out.tmp}/report.html", "w") as fh:
        fh.write(page + "".join(body))
