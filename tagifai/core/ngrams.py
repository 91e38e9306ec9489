"""TF-IDF features of many texts at once, counted in bulk: scikit-learn's own matrix, bit for bit.

A fitted `TfidfVectorizer` counts each text's n-grams in Python, one dictionary lookup per n-gram: nearly all of
what scoring a project costs. Here a batch of texts is counted at once. Character n-grams ("char", "char_wb") are
numbers (each character's code + 1 in base `BASE`, so n-grams of different lengths never share a number), found in
the vocabulary by binary search; "char_wb" counts each distinct word once and sums a document's words. Word n-grams
are looked up in one pass over the whole batch. The counts are the ones scikit-learn makes (same n-grams, same
columns, same sorted CSR layout), and its fitted `TfidfTransformer` weighs and normalises them: the features, and
so every probability, are the same to the bit. What this cannot count (a character outside ASCII, n-grams longer
than `MAX_N`, an analyzer of one's own) takes scikit-learn's path.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

# Characters are ASCII codes + 1 (0 is never a character), an n-gram their number in base BASE: n-grams of
# every length up to MAX_N are distinct int64s (129**8 < 2**63).
BASE = 129
MAX_N = 8
# scikit-learn's own: runs of whitespace become one space before character n-grams are taken.
WHITE_SPACES = re.compile(r"\s\s+")

# A fitted vectorizer's vocabulary as numbers: (sorted n-gram numbers, their columns), made once per vectorizer.
_VOCABULARIES: weakref.WeakKeyDictionary[TfidfVectorizer, tuple[np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


def features(vectorizer: Any, texts: Sequence[str]) -> Any:
    """`vectorizer.transform(texts)`: a TF-IDF vectorizer, or an unweighted union of them, by `tfidf`; else as it is."""
    if isinstance(vectorizer, TfidfVectorizer):
        return tfidf(vectorizer, texts)
    if parts := tfidf_parts(vectorizer):
        return sp.hstack([tfidf(part, texts) for part in parts]).tocsr()
    return vectorizer.transform(texts)


def tfidf_parts(vectorizer: Any) -> list[TfidfVectorizer]:
    """The TF-IDF vectorizers `features` counts for `vectorizer` (itself, or an unweighted union's parts); else none."""
    if isinstance(vectorizer, TfidfVectorizer):
        return [vectorizer]
    if isinstance(vectorizer, FeatureUnion) and not vectorizer.transformer_weights:
        parts = [part for _, part in vectorizer.transformer_list]
        if all(isinstance(part, TfidfVectorizer) for part in parts):
            return parts
    return []


def prepare(vectorizer: Any) -> None:
    """Make the numbers of each character n-gram part of `vectorizer` now, not at its first texts.

    A model loaded once and then forked (batch scoring's processes) shares them with every fork: made in each
    fork instead, they would cost a fork a walk of the whole vocabulary, whose pages it then copies.
    """
    for part in tfidf_parts(vectorizer):
        if numbered(part):
            vocabulary_numbers(part)


def numbered(vectorizer: TfidfVectorizer) -> bool:
    """Whether `counts` finds the vectorizer's n-grams as numbers: character n-grams of content, at most MAX_N long."""
    low, high = vectorizer.ngram_range
    return vectorizer.input == "content" and vectorizer.analyzer in ("char", "char_wb") and 1 <= low <= high <= MAX_N


def tfidf(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> Any:
    """`vectorizer.transform(texts)`, its counts made by `counts` where it can."""
    matrix = counts(vectorizer, texts)
    if matrix is None:
        return vectorizer.transform(texts)
    if vectorizer.binary:
        matrix.data.fill(1)
    return vectorizer._tfidf.transform(matrix, copy=False)


def counts(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> Any | None:
    """The n-gram count matrix `vectorizer` makes of `texts`, or None where this module cannot make it."""
    if vectorizer.input != "content" or not all(isinstance(text, str) for text in texts):
        return None
    if vectorizer.analyzer == "word":
        return canonical(word_counts(vectorizer, texts))
    if not numbered(vectorizer):
        return None
    preprocess = vectorizer.build_preprocessor()
    documents = [WHITE_SPACES.sub(" ", preprocess(text)) for text in texts]
    if not all(document.isascii() for document in documents):
        return None
    if vectorizer.analyzer == "char":
        return canonical(segment_counts(vectorizer, documents, whole_if_short=False))
    # "char_wb" n-grams never cross a word: each distinct word's are counted once, a document's summed over its words
    words: dict[str, int] = {}
    rows, ids = [], []
    for row, document in enumerate(documents):
        for word in document.split():
            rows.append(row)
            ids.append(words.setdefault(word, len(words)))
    occurrences = sp.csr_matrix(
        (np.ones(len(ids), dtype=vectorizer.dtype), (rows, ids)), shape=(len(documents), len(words))
    )
    return canonical(occurrences @ segment_counts(vectorizer, [f" {word} " for word in words], whole_if_short=True))


def canonical(matrix: Any) -> Any:
    """`matrix` laid out as scikit-learn lays out counts: one sorted entry per (row, column), its sparse type."""
    matrix.sum_duplicates()
    matrix.sort_indices()
    if sklearn.get_config().get("sparse_interface") == "sparray":
        matrix = sp.csr_array(matrix)
    return matrix


def word_counts(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> Any:
    """How often each of the vectorizer's word n-grams occurs in each text (scikit-learn's "word" analyzer)."""
    preprocess, tokenize = vectorizer.build_preprocessor(), vectorizer.build_tokenizer()
    stop = vectorizer.get_stop_words()
    low, high = vectorizer.ngram_range
    ngrams: list[str] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        tokens = tokenize(preprocess(text))
        if stop is not None:
            tokens = [token for token in tokens if token not in stop]
        before = len(ngrams)
        for n in range(low, high + 1):
            shifted = (tokens[i:] for i in range(n))  # the n-grams end where the shortest shift does
            ngrams.extend(tokens if n == 1 else map(" ".join, zip(*shifted, strict=False)))
        lengths[row] = len(ngrams) - before
    columns = np.fromiter(map(vectorizer.vocabulary_.get, ngrams, itertools.repeat(-1)), np.int64, len(ngrams))
    known = columns >= 0
    rows = np.repeat(np.arange(len(texts)), lengths)[known]
    shape = (len(texts), len(vectorizer.vocabulary_))
    return sp.csr_matrix((np.ones(len(rows), dtype=vectorizer.dtype), (rows, columns[known])), shape=shape)


def segment_counts(vectorizer: TfidfVectorizer, segments: Sequence[str], whole_if_short: bool) -> Any:
    """How often each of the vectorizer's n-grams occurs inside each of the ASCII `segments` (a row each).

    With `whole_if_short`, a segment shorter than the shortest n-gram counts once as itself (scikit-learn's
    "char_wb" does so with a short word and the spaces around it).
    """
    low, high = vectorizer.ngram_range
    text = "".join(segments).encode("ascii")
    codes = np.frombuffer(text, dtype=np.uint8).astype(np.int64) + 1
    lengths = np.fromiter(map(len, segments), dtype=np.int64, count=len(segments))
    owner = np.repeat(np.arange(len(segments)), lengths)  # the segment each character is in
    vocabulary, columns = vocabulary_numbers(vectorizer)
    rows, found = [], []

    def keep(segment: np.ndarray, number: np.ndarray) -> None:
        """Count the n-grams `number` (in the segments `segment`) that are in the vocabulary."""
        at = np.searchsorted(vocabulary, number).clip(max=max(len(vocabulary) - 1, 0))
        known = vocabulary[at] == number if len(vocabulary) else np.zeros(len(number), bool)
        rows.append(segment[known])
        found.append(columns[at[known]])

    numbers = codes
    for n in range(1, high + 1):
        if n > 1:  # the n-grams starting at each position, from the (n-1)-grams
            numbers = numbers[:-1] * BASE + codes[n - 1 :]
        if n >= low:
            starts = np.flatnonzero(owner[: len(numbers)] == owner[n - 1 :])  # n-grams inside one segment
            keep(owner[starts], numbers[starts])
    if whole_if_short:
        short = np.flatnonzero(lengths < low)
        ends = np.cumsum(lengths)
        keep(short, np.array([_number(text[ends[i] - lengths[i] : ends[i]]) for i in short], dtype=np.int64))
    row = np.concatenate(rows) if rows else np.empty(0, np.int64)
    column = np.concatenate(found) if found else np.empty(0, np.int64)
    shape = (len(segments), len(vectorizer.vocabulary_))
    return sp.csr_matrix((np.ones(len(row), dtype=vectorizer.dtype), (row, column)), shape=shape)


def vocabulary_numbers(vectorizer: TfidfVectorizer) -> tuple[np.ndarray, np.ndarray]:
    """The vectorizer's n-grams as sorted numbers, and the column of each (n-grams no ASCII text has left out)."""
    cached = _VOCABULARIES.get(vectorizer)
    if cached is None:
        pairs = [
            (_number(term.encode("ascii")), column)
            for term, column in vectorizer.vocabulary_.items()
            if term.isascii() and 0 < len(term) <= MAX_N
        ]
        numbers = np.array([number for number, _ in pairs], dtype=np.int64)
        order = np.argsort(numbers, kind="stable")
        cached = (numbers[order], np.array([column for _, column in pairs], dtype=np.int64)[order])
        _VOCABULARIES[vectorizer] = cached
    return cached


def _number(ngram: bytes) -> int:
    """An ASCII n-gram's number: its characters' codes + 1, in base BASE."""
    number = 0
    for byte in ngram:
        number = number * BASE + byte + 1
    return number
