"""The memoised VADER scorer gives vaderSentiment's own compound score, bit for bit.

`features.vader.sentiment_scores` reuses each lexicon word's valence across texts that share its context
window; these tests hold it to `SentimentIntensityAnalyzer.polarity_scores` on texts made of the words
VADER's rules react to, and on the generator's review texts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from features import vader


def vader_compound(texts: list[str]) -> np.ndarray:
    analyzer = vader._analyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], np.float64)


# every word list VADER's rules consult, in both cases, with punctuation and emoticons around them
RULE_WORDS = " ".join(
    [
        "no not never none nothing without doubt least at very so this or nor kind of sort just enough",
        "isn't don't can't aint nope rarely despite uh-uh",
        "really extremely slightly barely kinda sorta somewhat totally absolutely",
        "the shit bomb bad ass badass bus stop yeah right kiss death to die for beating heart",
        "good great love hate terrible awful perfect cheap nice comfortable poor disappointed",
        "dress size fit small large it was is and the colour quality",
    ]
).split(" ")
TOKENS = st.one_of(
    st.sampled_from(RULE_WORDS),
    st.sampled_from(RULE_WORDS).map(str.upper),
    st.sampled_from(RULE_WORDS).map(str.capitalize),
    st.sampled_from(RULE_WORDS).map(lambda w: w + "!"),
    st.sampled_from(RULE_WORDS).map(lambda w: w + "."),
    st.sampled_from(["!", "!!!", "??", "???", ":)", ":(", ":-D", "'", "...", "but", "BUT", "\U0001f61e"]),
)
TEXTS = st.lists(TOKENS, min_size=0, max_size=14).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=8))
def test_memoised_scores_equal_vader_on_rule_words(texts):
    """Windows met in earlier examples are reused, so later texts check the memo as well as new windows."""
    assert vader.sentiment_scores(texts).tobytes() == vader_compound(texts).tobytes()


def test_memoised_scores_equal_vader_on_hand_picked_cases():
    texts = [
        "",
        "   ",
        "good",
        "no good",
        "no",
        "It is NOT good, not at all!!",
        "at least it is not bad",
        "the least comfortable dress",
        "very least good",
        "never so good",
        "without doubt the best",
        "kind of nice",
        "kind of",
        "sort of great quality",
        "this is the shit",
        "yeah right great",
        "kiss of death for my feet",
        "a dress to die for",
        "the bomb, really",
        "bad ass boots",
        "GREAT fit but AWFUL colour",
        "  good fit.\t\n",
        "I love it \U0001f60d fits well",
        "good?? good??? GOOD!!!!!",
        "no or nor good",
        "ok :) :( :-D",
        "DRESS FIT IS VERY GOOD",  # all caps: no caps emphasis ...
        "dress FIT IS VERY GOOD",  # ... mixed caps: the same last window, with emphasis
        "dress FIT IS VERY GOOD fit",
        "DRESS FIT IS VERY GOOD FIT",
    ]
    assert vader.sentiment_scores(texts).tobytes() == vader_compound(texts).tobytes()


def test_memoised_scores_equal_vader_on_generated_reviews(small_generated):
    texts = pd.read_parquet(small_generated.raw / "reviews.parquet", columns=["text"])["text"]
    texts = texts.dropna().drop_duplicates().tolist()
    assert len(texts) > 1000
    assert vader.sentiment_scores(texts).tobytes() == vader_compound(texts).tobytes()


def test_memo_is_bounded_and_still_exact(monkeypatch):
    """Past MAX_WINDOWS the memos start over instead of growing without bound."""
    monkeypatch.setattr(vader._MemoScorer, "MAX_WINDOWS", 3)
    scorer = vader._MemoScorer()
    texts = ["good fit", "bad fit", "not good", "really great", "awful colour", "good fit"]
    scores = np.array([scorer.compound(t) for t in texts])
    assert len(scorer.windows) <= 3 and len(scorer.tokens) <= 3 + 2  # + the words of the last text
    assert scores.tobytes() == vader_compound(texts).tobytes()
