"""reviewlm's VADER gives nltk's scores exactly, token for token."""

import random

import pytest
from nltk.sentiment.vader import SentimentIntensityAnalyzer, SentiText
from reviewlm.filters import vader
from reviewlm.synth import synth_rows

NLTK_EXAMPLES = [  # nltk's and VADER's own demo sentences: punctuation, caps, boosters, but, kind of
    "VADER is smart, handsome, and funny.", "VADER is smart, handsome, and funny!!!",
    "VADER is VERY SMART, handsome, and FUNNY!!!", "VADER is not smart, handsome, nor funny.",
    "The book was kind of good.", "The plot was good, but the characters are uncompelling...",
    "At least it isn't a horrible book.", "Make sure you :) or :D today!", "Today SUX!", "Not bad at all",
    "Today only kinda sux! But I'll get by, lol", "\"Great\" shoes -- 'comfortable', durable; cheap?!?",
]


@pytest.fixture(scope="module")
def analyzers():
    return vader.load(SentimentIntensityAnalyzer), vader.load()


def soup(rng: random.Random, n: int) -> list[str]:
    """Texts of random tokens made of letters, nltk's punctuation marks and emoticons."""
    parts = list("abXY'-.!?,;:\"#()") + ["é", "…", ":)", "n't", "great", "bad", "!!", "?!?", "!?!?"]
    tokens = ["".join(rng.choice(parts) for _ in range(rng.randint(1, 6))) for _ in range(5000)]
    return [" ".join(rng.choices(tokens, k=rng.randint(0, 15))) for _ in range(n)]


@pytest.mark.parametrize("token,expected", [
    ("cat,", "cat"), ("!!!great", "great"), ("?!?nice", "nice"), ("nice!?!?", "nice"), ("'quoted'", "'quoted'"),
    ("!!?nice", "!!?nice"), (",a", ",a"), (":)", ":)"), ("isn't,", "isn't,"), ("e-mail.", "e-mail."),
    ("(great)", "(great)"), ("…great.", "…great"),
])
def test_tokens_follow_nltk_rules(analyzers, token, expected):
    stock, _ = analyzers
    args = (stock.constants.PUNC_LIST, stock.constants.REGEX_REMOVE_PUNCTUATION)
    assert SentiText(f"x {token}", *args).words_and_emoticons == [expected]
    assert vader.LinearSentiText(f"x {token}", *args).words_and_emoticons == [expected]


def test_scores_equal_nltk_on_reviews_and_punctuation_soup(analyzers):
    stock, fast = analyzers
    texts = NLTK_EXAMPLES + synth_rows(500, seed=7, min_words=20, max_words=150)["text"].to_pylist()
    texts += soup(random.Random(0), 3000) + ["", "   ", "a", "!!!"]
    args = (stock.constants.PUNC_LIST, stock.constants.REGEX_REMOVE_PUNCTUATION)
    for text in texts:
        tokens = SentiText(text, *args).words_and_emoticons
        assert vader.LinearSentiText(text, *args).words_and_emoticons == tokens, text
        assert fast.polarity_scores(text) == stock.polarity_scores(text), text
