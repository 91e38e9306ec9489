"""`tagifai.core.ngrams` makes scikit-learn's own TF-IDF matrix, bit for bit, from the same texts."""

import random

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

from tagifai.core import ngrams
from tagifai.core.data import clean_text

WORDS = "deep learning model vision image text nlp bert gpt a i x ml ops pipeline transformer segmentation".split()
# What a cleaned project looks like, and what it never does but a vectorizer must still take.
EDGES = ["", " ", "a", "ab", "a b c", "x  y", "tab\there", "new\nline", "  padded  ", "zz" * 30, "Upper Case"]


def texts(n: int, seed: int = 0) -> list[str]:
    """`n` cleaned texts of 0-40 words, with repeats and words unseen in training."""
    rng = random.Random(seed)
    vocabulary = WORDS + [f"w{i}" for i in range(300)]
    raw = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    return [clean_text(text, ["the"]) for text in raw]


def same(expected, got) -> None:
    """The same sparse matrix: type, shape, layout (indptr, sorted indices) and every value's bits."""
    assert type(got) is type(expected)
    assert got.shape == expected.shape
    assert got.has_sorted_indices and expected.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    assert got.data.tobytes() == expected.data.tobytes()


@pytest.mark.parametrize("analyzer", ["char_wb", "char"])
@pytest.mark.parametrize("ngram_range", [(2, 6), (1, 3), (3, 8), (5, 7)])
@pytest.mark.parametrize("sublinear_tf", [True, False])
def test_tfidf_is_scikit_learns(analyzer, ngram_range, sublinear_tf):
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=sublinear_tf)
    vectorizer.fit(texts(300))
    for batch in (texts(200, seed=1), EDGES, [""]):
        same(vectorizer.transform(batch), ngrams.tfidf(vectorizer, batch))
    for transform in (vectorizer.transform, lambda batch: ngrams.tfidf(vectorizer, batch)):
        with pytest.raises(ValueError, match="0 sample"):  # no texts: scikit-learn's error either way
            transform([])


@pytest.mark.parametrize(
    "settings",
    [
        {"binary": True},
        {"lowercase": False},
        {"max_features": 50},  # columns renumbered by frequency
        {"norm": None, "use_idf": False},
    ],
)
def test_tfidf_is_scikit_learns_however_set_up(settings):
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **settings).fit(texts(300))
    same(vectorizer.transform(texts(100, seed=2) + EDGES), ngrams.tfidf(vectorizer, texts(100, seed=2) + EDGES))


def test_what_it_cannot_count_takes_scikit_learns_path():
    for vectorizer, batch in [
        (TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)), ["café crème", "plain"]),  # not ASCII
        (TfidfVectorizer(analyzer="char", ngram_range=(2, 9)), ["longer n-grams than a number holds"]),
        (TfidfVectorizer(analyzer=str.split), ["an analyzer of one's own"]),
    ]:
        vectorizer.fit(texts(50) + batch)
        assert ngrams.counts(vectorizer, batch) is None
        same(vectorizer.transform(batch), ngrams.tfidf(vectorizer, batch))


@pytest.mark.parametrize(
    "settings",
    [
        {"ngram_range": (1, 2)},
        {"ngram_range": (1, 1)},
        {"ngram_range": (2, 3)},
        {"ngram_range": (1, 2), "stop_words": ["model", "the"]},
        {"ngram_range": (1, 2), "token_pattern": r"\w+"},  # one-letter words too
        {"tokenizer": str.split, "token_pattern": None},
    ],
)
def test_word_tfidf_is_scikit_learns(settings):
    vectorizer = TfidfVectorizer(analyzer="word", sublinear_tf=True, **settings).fit(texts(300))
    batch = texts(200, seed=6) + EDGES
    same(vectorizer.transform(batch), ngrams.tfidf(vectorizer, batch))


def test_features_is_the_unions_transform():
    train = texts(400)
    union = FeatureUnion(
        [
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 6), sublinear_tf=True)),
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ]
    ).fit(train)
    batch = texts(150, seed=3) + EDGES
    same(union.transform(batch), ngrams.features(union, batch))


def test_a_weighted_union_is_left_to_scikit_learn():
    union = FeatureUnion(
        [("char", TfidfVectorizer(analyzer="char_wb")), ("word", TfidfVectorizer())],
        transformer_weights={"char": 2.0},
    ).fit(texts(100))
    same(union.transform(texts(20, seed=4)), ngrams.features(union, texts(20, seed=4)))


def test_sparse_arrays_when_scikit_learn_is_set_to_them():
    if "sparse_interface" not in sklearn.get_config():
        pytest.skip("this scikit-learn has no sparse_interface setting")
    vectorizer = TfidfVectorizer(analyzer="char_wb").fit(texts(100))
    with sklearn.config_context(sparse_interface="sparray"):
        expected, got = vectorizer.transform(texts(20, seed=5)), ngrams.tfidf(vectorizer, texts(20, seed=5))
    assert isinstance(got, sp.sparray)
    same(expected, got)


def test_the_vocabulary_is_numbered_once_per_vectorizer(monkeypatch):
    vectorizer = TfidfVectorizer(analyzer="char_wb").fit(texts(100))
    first = ngrams.vocabulary_numbers(vectorizer)
    assert ngrams.vocabulary_numbers(vectorizer) is first
    assert np.all(np.diff(first[0]) > 0)  # sorted, distinct: binary search finds each n-gram
    assert sorted(first[1].tolist()) == sorted(vectorizer.vocabulary_.values())


def test_prepare_numbers_each_character_part_before_its_first_texts():
    union = FeatureUnion(
        [
            ("char", TfidfVectorizer(analyzer="char", ngram_range=(1, 4))),
            ("char_wb", TfidfVectorizer(analyzer="char_wb")),
            ("word", TfidfVectorizer()),
        ]
    ).fit(texts(100))
    parts = dict(union.transformer_list)
    assert not any(part in ngrams._VOCABULARIES for part in parts.values())
    ngrams.prepare(union)
    made = {name: ngrams._VOCABULARIES.get(part) for name, part in parts.items()}
    assert made["char"] is not None and made["char_wb"] is not None and made["word"] is None
    ngrams.features(union, texts(5, seed=6))
    # Scoring uses what `prepare` made (a forked scorer shares it) and makes none of its own.
    assert all(ngrams._VOCABULARIES[parts[name]] is made[name] for name in ("char", "char_wb"))
