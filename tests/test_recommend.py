"""recommend: exact retrieval, embeddings as sentence-transformers computes them, BM25 as bm25s
scores it, metrics on a hand-computed case, the reranker as transformers' pipeline, and the
job end to end on a synthesized catalogue (bad rows, an empty need, reviews, orders)."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from reviewlm.errors import UsageError
from reviewlm.options import RecommendArgs
from reviewlm.recommend import retrieve as R
from reviewlm.recommend.job import finalize, recommend
from reviewlm.recommend.metrics import evaluate, ndcg
from reviewlm.recommend.rerank import Reranker, class_gains
from reviewlm.synth import synth_catalog, write_synth

from tests.conftest import assert_one_line, run_job
from tests.test_score import relevance_model


def _table(ids, vectors) -> pa.Table:
    flat = pa.array(np.asarray(vectors, np.float32).reshape(-1))
    return pa.table({"product_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, len(vectors[0]))})


def test_block_wise_top_k_equals_a_full_sort_ties_by_id():
    """Integer vectors make exact scores and many ties: the best 7 of 500 products, found block
    by block (blocks of 37) and merged as the blocks come, are a full sort's, ties broken by id."""
    rng = np.random.default_rng(0)
    vectors = rng.integers(-2, 3, size=(500, 6)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(4, 6)).astype(np.float32)
    ids = [f"p{i:03d}" for i in rng.permutation(500)]
    table = _table(ids, vectors)
    best = R.TopK(7)
    for s in range(0, 500, 37):
        best.add(R.block_candidates(table.slice(s, 37), queries, 7))
    found = best.result("dense")
    scores = queries @ vectors.T
    for q in range(4):
        merged = found.filter(pa.compute.equal(found["query_index"], q))
        order = sorted(range(500), key=lambda i: (-scores[q, i], ids[i]))[:7]
        assert merged["product_id"].to_pylist() == [ids[i] for i in order]
        assert merged["dense_score"].to_pylist() == [float(scores[q, i]) for i in order]
        assert merged["dense_rank"].to_pylist() == list(range(1, 8))
        assert len(set(scores[q, order])) < 7 or q  # ties are there to break (at least for one query)


def test_embeddings_equal_sentence_transformers_all_minilm(tiny):
    """`starter` is all-MiniLM-L6-v2: our mean-pooled, normalised vectors equal what
    sentence-transformers computes from the packaged model (its modules.json pipeline)."""
    from sentence_transformers import SentenceTransformer

    texts = ["something to wear on my morning jog", "Nike Classic running shoes in blue. Running shoes with a "
             "cushioned sole.", "a warm top with a hood", "x " * 400]  # the last one is cut at max_seq_length
    ours = R.Encoder("starter").embed(texts)
    theirs = SentenceTransformer(R.encoder_path("starter"), device="cpu").encode(texts)
    assert ours.shape == (4, 384) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert np.abs(ours - theirs).max() < 1e-5
    assert ours[0] @ ours[1] > ours[0] @ ours[2]  # a jog is nearer running shoes than a hooded top


def test_bm25_equals_bm25s_scored_directly():
    """Our BM25 top-k equals bm25s' own scores of every product, sorted (ties by id), without
    the products that share no word, priced above the limit or unpriced."""
    import bm25s

    made = synth_catalog(120, seed=3)["catalog"]
    docs = [f"{t}. {d}" for t, d in zip(made["title"].to_pylist(), made["description"].to_pylist())]
    table = pa.table({"product_id": made["product_id"], "document": docs,
                      "price": pa.array([None if i % 10 == 0 else p for i, p in enumerate(made["price"].to_pylist())],
                                        pa.float64())})
    needs = ["waterproof boots for snow", "nike running shoes", "the of and"]  # the last: stop words only
    best = R.TopK(15)
    best.add(R.bm25_block(table, needs, 15, max_price=100))
    ours = best.result("bm25").to_pandas()
    index = bm25s.BM25()
    index.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    price = np.array([np.inf if p is None else p for p in table["price"].to_pylist()])
    ids = table["product_id"].to_pylist()
    for q, need in enumerate(needs[:2]):
        scores = index.get_scores(bm25s.tokenize([need], stopwords="en", return_ids=False, show_progress=False)[0])
        keep = [i for i in range(120) if scores[i] > 0 and price[i] <= 100]
        expected = sorted(keep, key=lambda i: (-scores[i], ids[i]))[:15]
        mine = ours[ours["query_index"] == q]
        assert mine["product_id"].tolist() == [ids[i] for i in expected]
        assert np.allclose(mine["bm25_score"], scores[expected]) and len(expected) == min(15, len(keep)) >= 4
    assert (ours["query_index"] == 1).sum() == 15 and not (ours["query_index"] == 2).any()


def test_reciprocal_rank_fusion_on_a_hand_computed_case():
    group = pa.table({"query_index": [0] * 4, "product_id": ["a", "b", "c", "d"],
                      "dense_score": [0.9, 0.8, 0.7, None], "dense_rank": [1, 2, 3, None],
                      "bm25_score": [None, None, 5.0, 4.0], "bm25_rank": [None, None, 1, 2]})
    fused = R.fuse(group, 3)
    # c: 1/63 + 1/61; a: 1/61; b and d: 1/62 each, b first by id
    assert fused["product_id"].to_pylist() == ["c", "a", "b"]
    assert fused["hybrid_score"].to_pylist() == pytest.approx([1 / 63 + 1 / 61, 1 / 61, 1 / 62])
    assert fused["hybrid_rank"].to_pylist() == [1, 2, 3]


def test_metrics_on_a_hand_computed_case():
    """nDCG@10 = DCG / ideal DCG with linear gains; MRR@10; recall over the candidates; a need
    without a relevant product is counted and left out of the means."""
    judgments = pd.DataFrame({"query": ["need one"] * 4 + ["need two"], "product_id": ["a", "b", "c", "d", "a"],
                              "gain": [1.0, 0.1, 0.01, 1.0, 0.0]})
    ranked = pd.DataFrame({"query_index": [0] * 5 + [1], "rank": [1, 2, 3, 4, 5, 1],
                           "product_id": ["x", "a", "b", "y", "c", "a"]})
    candidates = pd.DataFrame({"query_index": [0] * 6, "product_id": ["x", "a", "b", "y", "c", "z"]})
    means, rows = evaluate(["need one", "need two", "need three"], ranked, candidates, judgments, 10, 100)
    dcg = 1 / math.log2(3) + 0.1 / math.log2(4) + 0.01 / math.log2(6)  # a at 2, b at 3, c at 5
    ideal = 1 + 1 / math.log2(3) + 0.1 / math.log2(4) + 0.01 / math.log2(5)  # a, d, b, c
    assert dcg / ideal == pytest.approx(0.40635, abs=1e-5)
    assert rows[0]["ndcg@10"] == pytest.approx(dcg / ideal) and rows[0]["mrr@10"] == 0.5
    assert rows[0]["recall@100"] == 0.75  # a, b, c of a, b, c, d
    assert rows[1]["relevant"] == 0 and "ndcg@10" not in rows[1] and rows[2]["judged"] == 0
    assert means == {"ndcg@10": pytest.approx(dcg / ideal), "mrr@10": 0.5, "recall@100": 0.75,
                     "queries_judged": 1, "queries_without_relevant": 2}
    assert ndcg([1.0, 0.0], [1.0], 10) == 1.0 and ndcg([0.0, 1.0], [1.0], 1) == 0.0


def test_finalize_cuts_by_relevance_then_orders_unknown_values_last():
    group = pa.table({"query_index": [0] * 5, "product_id": list("abcde"), "title": list("ABCDE"),
                      "dense_score": [0.9, 0.8, 0.7, 0.6, 0.5], "dense_rank": [1, 2, 3, 4, 5],
                      "price": [30.0, None, 10.0, 20.0, 5.0], "rating": [4.0, 5.0, None, 4.5, 5.0]})
    kw = {"needs": ["need"], "top_k": 4, "stage": "dense", "reranked": False, "reviews": False}
    by_price = finalize(group, order="price", **kw).to_pandas()
    assert by_price["product_id"].tolist() == ["c", "d", "a", "b"]  # e is 5th by relevance: cut
    assert by_price["relevance_rank"].tolist() == [3, 4, 1, 2] and by_price["rank"].tolist() == [1, 2, 3, 4]
    assert finalize(group, order="rating", **kw)["product_id"].to_pylist() == ["b", "d", "a", "c"]
    assert finalize(group, order="relevance", **kw)["query"].to_pylist() == ["need"] * 4


def test_class_gains_follow_esci_or_numeric_grades():
    assert class_gains(["Exact", "Substitute", "Complement", "Irrelevant"]).tolist() == [1, 0.1, 0.01, 0]
    assert class_gains(["I", "E"]).tolist() == [0, 1]
    assert class_gains(["0", "1", "2", "3"]).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    with pytest.raises(UsageError, match="cannot tell which are relevant"):
        class_gains(["positive", "negative"])


def test_reranker_scores_equal_the_text_classification_pipeline(tiny, tmp_path):
    """The reranker's score is Σ P(class) x gain with P from `pipeline("text-classification")`
    on {"text": need, "text_pair": title}; its order is the pipeline's."""
    from transformers import pipeline

    model = relevance_model(tiny, tmp_path / "rel", 4)
    needs = ["running shoes for a marathon", "a warm hoodie"]
    titles = ["Nike running shoes, black", "Puma hoodie in grey", "Vans socks, pack of 3", "Asics boots"]
    batch = pa.table({"query_index": [0, 0, 1, 1, 0], "title": titles + ["Fila shorts"]})
    ours = Reranker(model, False, needs)(batch)["rerank_score"].to_numpy()
    clf = pipeline("text-classification", model=model, top_k=None, device="cpu")
    gains = dict(zip(["Exact", "Substitute", "Complement", "Irrelevant"], [1, 0.1, 0.01, 0]))
    theirs = [sum(p["score"] * gains[p["label"]] for p in clf({"text": needs[q], "text_pair": t}))
              for q, t in zip(batch["query_index"].to_pylist(), batch["title"].to_pylist())]
    assert np.allclose(ours, theirs, atol=1e-5) and np.argsort(ours).tolist() == np.argsort(theirs).tolist()


def test_synthesized_needs_use_other_words_than_their_products():
    made = synth_catalog(66, seed=1)
    judged = made["judgments"].to_pandas()
    assert len(made["needs"]) == 22 and set(judged["query"]) == set(made["needs"])
    titles = dict(zip(made["catalog"]["product_id"].to_pylist(), made["catalog"]["title"].to_pylist()))
    for need in made["needs"][::2]:  # a need without a brand shares no word with the products it asks for
        best = judged.loc[(judged["query"] == need) & (judged["gain"] == 1), "product_id"]
        words = {w.strip(",.()-") for p in best for w in titles[p].lower().split()}
        assert len(best) == 6 and not words & {w for w in need.split() if len(w) > 3}, need


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A synthesized catalogue of 220 products with 3 bad rows, its needs (one blank line), reviews
    and judgments."""
    root = tmp_path_factory.mktemp("shop")
    write_synth(str(root / "data"), 220, seed=2, kind="catalog")
    with open(root / "data" / "catalog.jsonl", "a") as fh:
        fh.write('{"product_id": "bad-1", "title": "Vans socks", "price": "cheap"}\n'
                 '{"product_id": "bad-2", "price": 10}\n{"product_id": "bad-3", "title": "x", "rating": 9}\n')
    needs = (root / "data" / "needs.txt").read_text().splitlines()
    (root / "data" / "needs.txt").write_text("\n".join(needs[:3] + ["   "] + needs[3:]) + "\n")
    return root


@pytest.fixture(scope="module")
def dense_run(ray_cluster, shop):
    """Dense retrieval with reviews and judgments, ordered by rating."""
    data, out = shop / "data", shop / "dense"
    result = recommend([str(data / "catalog.jsonl")], str(data / "needs.txt"), str(out),
                       RecommendArgs(candidates=30, top_k=5, order="rating", judgments=str(data / "judgments.jsonl"),
                                     num_actors=1),
                       reviews=[str(data / "reviews.jsonl")])
    return out, result


@pytest.mark.slow
def test_dense_recommendations_end_to_end(shop, dense_run):
    """Every need ranked (the blank line skipped), bad catalogue rows quarantined with their
    reason, review signals equal to a pandas group-by, the order by the reviews' rating,
    metrics equal to a recomputation from rankings/, and the products a need asks for on top."""
    data, (out, result) = shop / "data", dense_run
    needs = [n for n in (data / "needs.txt").read_text().splitlines() if n.strip()]
    ranked = pd.read_parquet(out / "rankings").sort_values(["query_index", "rank"])
    assert result.queries == 22 and result.empty_queries == (4,) and result.products == 220
    assert len(ranked) == result.ranked_rows == 22 * 5 and ranked.groupby("query_index")["rank"].max().eq(5).all()
    assert ranked["query"].tolist() == [needs[i] for i in ranked["query_index"]]
    bad = pd.read_parquet(out / "quarantine").set_index("id")["error"].to_dict()
    assert bad == {"bad-1": "price 'cheap' is not a number", "bad-2": "no title",
                   "bad-3": "rating '9' is not a number from 0 to 5"} and result.quarantined == 3
    reviews = pd.read_json(data / "reviews.jsonl", lines=True).groupby("product_id")["rating"].agg(["count", "mean"])
    shown = ranked.dropna(subset=["reviews"]).set_index("product_id")
    assert (shown["reviews"] == reviews.loc[shown.index, "count"]).all()
    assert np.allclose(shown["review_rating"], reviews.loc[shown.index, "mean"])
    for _, g in ranked.groupby("query_index"):  # by the reviews' mean rating, unreviewed last
        assert g["review_rating"].dropna().is_monotonic_decreasing and g["review_rating"].isna().is_monotonic_increasing
    judged = pd.read_json(data / "judgments.jsonl", lines=True)
    gains = {(q, p): g for q, p, g in judged.itertuples(index=False)}
    ndcgs = []
    for i, g in ranked.groupby("query_index"):
        got = [gains.get((needs[i], p), 0.0) for p in g["product_id"]]
        ideal = sorted((v for (q, _), v in gains.items() if q == needs[i]), reverse=True)[:5]
        ndcgs.append(sum(v / math.log2(r + 2) for r, v in enumerate(got)) /
                     sum(v / math.log2(r + 2) for r, v in enumerate(ideal)))
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"]["ndcg@5"] == pytest.approx(np.mean(ndcgs)) and saved["metrics"]["queries_judged"] == 22
    hood = ranked[ranked["query"] == "a warm top with a hood for chilly evenings"]
    kinds = hood["title"].str.extract(r"(hoodie|jacket)", expand=False)  # the jackets' descriptions: "packable hood"
    assert (kinds == "hoodie").sum() >= 3 and kinds.notna().all(), hood["title"].tolist()
    vectors = pd.read_parquet(out / "embeddings")
    assert len(vectors) == 220 and len(vectors["embedding"].iloc[0]) == 384
    html = (out / "report.html").read_text()
    assert "a warm top with a hood" in html and "why: dense #" in html and (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_hybrid_reranked_under_a_price_limit_reuses_embeddings(shop, dense_run, tiny, tmp_path):
    """Hybrid retrieval over the dense run's embeddings, reranked by a pair classifier, under
    --max-price, ordered by price, on a catalogue smaller than --top-k asks for: every need
    gets every affordable product, cheapest first."""
    data, small = shop / "data", tmp_path / "small.jsonl"
    small.write_text("".join(open(data / "catalog.jsonl").readlines()[:8]))
    model = relevance_model(tiny, tmp_path / "rel", 5)
    res = run_job("recommend", "--catalog", small, "--queries", data / "needs.txt", "--output", tmp_path / "two",
                  "--retriever", "hybrid", "--embeddings", dense_run[0] / "embeddings", "--reranker", model,
                  "--max-price", 60, "--order", "price", "--candidates", 20, "--top-k", 12)
    assert res.returncode == 0, res.stderr[-3000:]
    ranked = pd.read_parquet(tmp_path / "two" / "rankings")
    prices = {json.loads(line)["product_id"]: json.loads(line)["price"] for line in small.read_text().splitlines()}
    affordable = {p for p, v in prices.items() if v <= 60}
    assert 0 < len(affordable) < 8 and ranked["query_index"].nunique() == 22
    for _, g in ranked.groupby("query_index"):
        g = g.sort_values("rank")
        assert set(g["product_id"]) == affordable and g["price"].is_monotonic_increasing
        assert (g["score"] == g["rerank_score"]).all() and g["hybrid_rank"].notna().all()
        assert g.sort_values("relevance_rank")["rerank_score"].is_monotonic_decreasing
    assert "ranked" in res.stdout and not (tmp_path / "two" / "embeddings").exists()


def test_bad_recommend_input_is_one_line(ray_cluster, tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text('{"product_id": "p1", "name": "Nike socks"}\n')
    needs = tmp_path / "needs.txt"
    needs.write_text("warm socks\n")
    res = run_job("recommend", "--catalog", catalog, "--queries", needs, "--output", tmp_path / "o")
    assert_one_line(res, "no title column 'title' in")
    assert "--title-column" in res.stderr
    needs.write_text("\n  \n")
    res = run_job("recommend", "--catalog", catalog, "--queries", needs, "--output", tmp_path / "o",
                  "--title-column", "name")
    assert_one_line(res, "holds no query")
    res = run_job("recommend", "--catalog", catalog, "--queries", needs, "--output", tmp_path / "o", "--top-k", 200)
    assert_one_line(res, "--top-k must be at most --candidates")
    assert not (tmp_path / "o").exists()


def test_needs_from_a_text_file_or_a_table_and_judgments_checked(tmp_path):
    from reviewlm.recommend.catalog import read_judgments, read_queries

    text = tmp_path / "needs.txt"
    text.write_text("\ufeffwarm  socks\n\n  a coat for rain \n")
    assert read_queries(str(text), None) == (["warm socks", "a coat for rain"], [2])
    table = tmp_path / "needs.csv"
    table.write_text("id,need\n1,warm socks\n2,\n3,sandals for the pool\n")
    assert read_queries(str(table), "need") == (["warm socks", "sandals for the pool"], [2])
    with pytest.raises(UsageError, match="no query column 'query'"):
        read_queries(str(table), "query")
    judged = tmp_path / "judged.jsonl"
    judged.write_text('{"query": "warm  socks", "product_id": 7, "gain": 1}\n'
                      '{"query": "warm socks", "product_id": "7", "gain": 0.1}\n')
    assert read_judgments(str(judged)).to_dict("records") == [{"query": "warm socks", "product_id": "7", "gain": 0.1}]
    judged.write_text('{"query": "warm socks", "product_id": "7", "gain": -1}\n')
    with pytest.raises(UsageError, match="every gain must be a number of at least 0"):
        read_judgments(str(judged))
