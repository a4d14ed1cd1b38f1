"""Every filter, the algebra, recipes and the per-batch routing (no Ray needed)."""

import numpy as np
import pyarrow as pa
import pytest
from reviewlm.errors import UsageError
from reviewlm.filters import keywords
from reviewlm.filters.base import All, Any, Not
from reviewlm.filters.dedup import OF, Dedup, hashed_rows, later_copies
from reviewlm.filters.keyed import ROW_BITS
from reviewlm.filters.recipe import load_recipe, parse_recipe
from reviewlm.filters.sentiment import Sentiment
from reviewlm.filters.stage import funnel, route_batch
from reviewlm.filters.text import Length, NonNull
from reviewlm.io.layout import CANONICAL
from reviewlm.results import StepStats


def batch(texts, errors=None):
    n = len(texts)
    cols = {f.name: pa.nulls(n, f.type) for f in CANONICAL}
    cols.update(text=pa.array(texts, pa.string()), id=pa.array([f"f:{i}" for i in range(n)]),
                source=pa.array(["f"] * n), _row=pa.array(range(1, n + 1), pa.int64()))
    if errors:
        cols["_error"] = pa.array(errors, pa.string())
    return pa.table(cols, schema=CANONICAL)


def keep(f, texts):
    mask, scores = f.evaluate(batch(texts))
    return mask.tolist(), scores


def test_non_null_drops_null_empty_and_blank():
    assert keep(NonNull(), ["a", None, "", "  \t", "b"])[0] == [True, False, False, False, True]


def test_length_counts_words_and_applies_bounds():
    mask, scores = keep(Length(min_words=2, max_words=3), ["one", "one two", "a b c d", None])
    assert mask == [False, True, False, False]
    assert scores["n_words"].to_pylist() == [1, 2, 4, None]
    with pytest.raises(ValueError):
        Length()


def test_keywords_match_whole_words_and_phrases_case_insensitively():
    f = keywords.Keywords(["fit", "under armour", "t-shirts"], name="kw")
    mask, scores = keep(f, ["What an outfit", "It is a good FIT.", "Under   Armour rocks",
                            "underarmour", "my T-Shirts", "t-shirtsy", None])
    assert mask == [False, True, True, False, True, False, False]
    assert scores["kw_match"].to_pylist() == [None, "fit", "under armour", None, "t-shirts", None, None]


def test_brand_product_wanted_unwanted_defaults():
    assert keep(keywords.brand(), ["Nike shoes", "Adidas", "Nikes"])[0] == [True, True, False]
    assert keep(keywords.product(), ["nice hoodies", "hood"])[0] == [True, False]
    assert keep(keywords.wanted(), ["very comfortable"])[0] == [True]
    assert keep(keywords.unwanted(), ["too expensive", "pricey"])[0] == [True, False]


def test_sentiment_uses_vader_offline_and_keeps_scores():
    mask, scores = keep(Sentiment(min_compound=0.05), ["I love these great shoes", "Ugly and awful", None])
    assert mask == [True, False, False]
    compound = scores["vader_compound"].to_pylist()
    assert compound[0] > 0.5 and compound[1] < -0.5 and compound[2] is None
    assert set(scores) == {"vader_compound", "vader_pos", "vader_neu", "vader_neg"}
    assert keep(Sentiment(min_compound=None, max_compound=-0.05), ["Ugly and awful"])[0] == [True]


def test_dedup_keeps_the_first_occurrence_by_source_and_row():
    b = batch(["Nike  Shoes", "nike shoes", "other", " NIKE shoes\t", None, ""])  # rows 1..6
    b = b.set_column(b.schema.get_field_index("source"), "source", pa.array(["g", "f", "f", "f", "f", "g"]))
    keys = [(1 << ROW_BITS) + 1, 2, 3, 4, 5, (1 << ROW_BITS) + 6]
    hashed = hashed_rows(b, ranks={"f": 0, "g": 1})
    assert hashed["_key"].to_pylist() == [k for k in keys if k != 5]  # a null text has no hash
    drops = later_copies(hashed, ["f", "g"]).to_pylist()  # the first is f:2; the others in key order
    assert [(d["_key"], d["of"]) for d in drops] == [(4, "f:2"), ((1 << ROW_BITS) + 1, "f:2")]
    of = {d["_key"]: d["of"] for d in drops}
    mask, scores = Dedup().evaluate(b.append_column(OF, pa.array([of.get(k) for k in keys], pa.string())))
    assert mask.tolist() == [False, True, True, False, True, True]
    assert scores["duplicate_of"].to_pylist() == ["f:2", None, None, "f:2", None, None]


def test_a_classifier_step_compares_the_label_and_probability_its_actors_wrote():
    step = parse_recipe("classifier: {model: m, keep: [4, '5'], min_score: 0.5, name: stars}\n")
    label, score = step.columns
    b = batch(["a", "b", "c", "d", None]).append_column(label, pa.array(["5", "4", "3", "5", None])).append_column(
        score, pa.array([0.9, 0.4, 0.99, 0.5, None]))
    mask, scores = step.evaluate(b)
    assert mask.tolist() == [True, False, False, True, False]
    assert scores["stars_label"].to_pylist() == ["5", "4", "3", "5", None]
    assert [f.name for f in step.score_fields] == ["stars_label", "stars_score"]


def test_algebra_and_or_not():
    brand, product = keywords.brand(), keywords.product()
    texts = ["nike shoes", "nike", "shoes", "nothing"]
    assert keep(brand & product, texts)[0] == [True, False, False, False]
    assert keep(brand | product, texts)[0] == [True, True, True, False]
    assert keep(~brand, texts)[0] == [False, False, True, True]
    expr = brand & product & NonNull()
    assert isinstance(expr, All) and [c.name for c in expr.conjuncts()] == ["brand", "product", "non_null"]
    assert isinstance(brand | product, Any) and isinstance(~brand, Not)
    assert (brand | product).name == "any(brand,product)"


def test_route_batch_drop_mode_records_first_failing_step_and_scores():
    expr = NonNull() & keywords.brand() & Sentiment(min_compound=0.05)
    b = batch(["Nike shoes are great", "Nike shoes are awful", "plain shoes", None, "x"],
              errors=[None, None, None, None, "broken"])
    out = route_batch(b, expr, "drop")
    assert out["_route"].to_pylist() == ["kept", "rejected", "rejected", "rejected", "quarantine"]
    assert out["dropped_by"].to_pylist() == [None, "sentiment", "brand", "non_null", None]
    compound = out["vader_compound"].to_pylist()
    assert compound[0] > 0 and compound[1] < 0 and compound[2] is None  # not computed after a drop
    assert out["error"].to_pylist()[4] == "broken"


def test_route_batch_annotate_mode_scores_every_row():
    expr = keywords.brand() & Sentiment(min_compound=0.05)
    out = route_batch(batch(["Nike is great", "plain awful"]), expr, "annotate")
    assert out["_route"].to_pylist() == ["kept", "kept"]
    assert out["keep"].to_pylist() == [True, False]
    assert out["dropped_by"].to_pylist() == [None, "brand"]
    assert out["vader_compound"].to_pylist()[1] < 0


def test_funnel_from_dropped_counts():
    expr = NonNull() & keywords.brand() & keywords.product()
    assert list(funnel(expr, 10, {"non_null": 2, "product": 3})) == [
        StepStats("non_null", seen=10, passed=8, dropped=2),
        StepStats("brand", seen=8, passed=8, dropped=0),
        StepStats("product", seen=8, passed=5, dropped=3)]


def test_recipe_builds_the_expression_tree():
    expr = parse_recipe("""
all:
  - non_null
  - length: {min_words: 2}
  - name: brand_or_product
    any: [brand, {keywords: {name: shop, words: [amazon]}}]
  - not: unwanted
  - sentiment: {min_compound: 0.1}
""")
    assert [c.name for c in expr.conjuncts()] == ["non_null", "length", "brand_or_product",
                                                  "not(unwanted)", "sentiment"]
    mask, _ = expr.evaluate(batch(["nike shoes are lovely", "amazon was lovely but expensive", "nike"]))
    assert mask.tolist() == [True, False, False]


def test_default_recipe_is_the_reference_selection():
    expr = load_recipe()
    assert [c.name for c in expr.conjuncts()] == ["non_null", "brand", "product", "sentiment", "positive_adjective"]
    mask, _ = expr.evaluate(batch(["Nike shoes are very comfortable.", "Adidas shoes are comfortable.",
                                   "Nike shoes are ugly.", "Nike shoes are black."]))
    assert mask.tolist() == [True, False, False, False]


@pytest.mark.parametrize("text, message", [
    ("all:\n  - non_null\n  - sentimnt\n", "recipe:3: unknown filter 'sentimnt'"),
    ("all:\n  - length: {min_wrds: 3}\n", "recipe:2: filter 'length' has no parameter 'min_wrds'"),
    ("all: []\n", "recipe:1: 'all' takes a non-empty list"),
    ("all:\n  - non_null\n - brand\n", "recipe:3: invalid YAML"),
    ("", "recipe: recipe is empty"),
    ("all:\n  - length: {}\n", "recipe:2: filter 'length': length needs"),
    ("all:\n  - [a, b]\n", "recipe:2: expected a filter name"),
    ("brand: 3\n", "recipe:1: parameters of 'brand' must be a mapping"),
    ("all:\n  - classifier: {model: m, keep: []}\n", "recipe:2: filter 'classifier': keep takes a non-empty list"),
    ("classifier: {model: m, keep: [1], min_score: 2}\n", "recipe:1: filter 'classifier': min_score must be"),
])
def test_recipe_errors_name_the_line(text, message):
    with pytest.raises(UsageError) as err:
        parse_recipe(text)
    assert str(err.value).startswith(message), str(err.value)


def test_scatter_keeps_types_for_rows_not_evaluated():
    out = route_batch(batch([None, None]), NonNull() & Sentiment(), "drop")
    assert out.schema.field("vader_compound").type == pa.float64()
    assert np.all(out["vader_compound"].is_null().to_numpy(zero_copy_only=False))
