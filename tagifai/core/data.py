"""Extract, transform, clean and split the projects data. Pure functions: no files, no MLflow."""

from __future__ import annotations

import codecs
import hashlib
import io
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

import pandas as pd
from sklearn.model_selection import train_test_split

# Relative: the model's logged copy of this module imports its own copy (tagifai.model.CODE, model_code.py).
from ..contract.errors import BadInputError

if TYPE_CHECKING:  # the model imports this module: it logs no more code than it runs (tagifai.model.CODE)
    from tagifai.contract.settings import Data

PROJECT_COLUMNS = ("id", "title", "description")
TAG_COLUMNS = ("id", "tag")
SPLITS = ("train", "val", "test")
# Rows parsed at a time, and bytes read at a time when checking a file's encoding.
CSV_CHUNK_ROWS = 50_000
CHECK_BLOCK_BYTES = 1 << 20


def sha256(content: bytes) -> str:
    """Return the hex sha256 digest of `content`."""
    return hashlib.sha256(content).hexdigest()


def parse_csv(content: bytes | BinaryIO, name: str, required: Iterable[str]) -> pd.DataFrame:
    """Parse UTF-8 CSV (bytes, or a binary file read in chunks; called `name` in errors) into a frame of text columns.

    The frame must have the `required` columns. A file is read twice, a block at a time (first to check its
    encoding), never whole: memory holds the frame, not the file as well.

    Raises:
        BadInputError: the content is empty, not UTF-8, not CSV, or lacks a required column.
    """
    stream = io.BytesIO(content) if isinstance(content, (bytes, bytearray)) else content
    check_utf8(stream, name)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        chunks = pd.read_csv(text, dtype=str, keep_default_na=False, chunksize=CSV_CHUNK_ROWS)
        df = pd.concat(list(chunks), ignore_index=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInputError(f"{name} is not a readable CSV file: {exc}".splitlines()[0]) from exc
    finally:
        text.detach()  # the caller's file stays open: it closes it
    check_columns(df, name, required)
    return df


def check_columns(df: pd.DataFrame, name: str, required: Iterable[str]) -> None:
    """Check that `df` (a whole file, or its first rows) has the `required` columns and a row.

    Raises:
        BadInputError: a column is missing (naming the file's first few), or there is no row.
    """
    missing = [column for column in required if column not in df.columns]
    if missing:
        # A wrong file's header is its first line: show a few of its names, each cut short
        names = [c if len(c) <= 24 else c[:23] + "…" for c in map(str, df.columns)]
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        raise BadInputError(f"{name} is missing column(s) {', '.join(missing)} (has: {shown})")
    if df.empty:
        raise BadInputError(f"{name} has a header but no rows")


def check_utf8(stream: BinaryIO, name: str) -> None:
    """Read `stream` to its end a block at a time, then rewind it.

    Raises:
        BadInputError: it is empty (or only whitespace), or not valid UTF-8 (naming the first bad byte's offset).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, blank = 0, True
    while block := stream.read(CHECK_BLOCK_BYTES):
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:  # its offsets count the bytes the decoder held back, then this block
            start = offset - len(decoder.getstate()[0]) + exc.start
            bad = (decoder.getstate()[0] + block)[exc.start : exc.start + 1]
            raise BadInputError(f"{name} is not valid UTF-8 (byte {start}: {bad!r})") from exc
        blank = blank and not block.strip()
        offset += len(block)
    if blank:
        raise BadInputError(f"{name} is empty")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:  # cut inside a character
        raise BadInputError(f"{name} is not valid UTF-8 (it ends inside a character)") from exc
    stream.seek(0)


def transform(projects: pd.DataFrame, tags: pd.DataFrame) -> pd.DataFrame:
    """Join projects with their tags on `id`; projects without a tag are dropped.

    Raises:
        BadInputError: a tag names a project id that does not exist.
    """
    orphans = sorted(set(tags["id"]) - set(projects["id"]))
    if orphans:
        shown = ", ".join(map(str, orphans[:5])) + (" …" if len(orphans) > 5 else "")
        raise BadInputError(f"{len(orphans)} tag(s) match no project id: {shown}")
    return projects.merge(tags[list(TAG_COLUMNS)], on="id", how="inner")


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a frame the same way every time, so its digest identifies its content."""
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def read_frame(content: bytes) -> pd.DataFrame:
    """Read a frame written by `to_csv_bytes`, keeping text as text and `id` as a string."""
    return pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)


def compose_text(df: pd.DataFrame) -> pd.Series:
    """Return `title + " " + description` per row (missing parts count as empty)."""
    title = df["title"].fillna("").astype(str)
    description = df["description"].fillna("").astype(str) if "description" in df else ""
    return (title + " " + description).str.strip()


def clean_text(text: str, stopwords: Iterable[str], stem: bool = False) -> str:
    """Lowercase, drop links, punctuation and `stopwords` (whole words), collapse whitespace; optionally Porter-stem."""
    text = text.lower()
    text = re.sub(r"http\S+", " ", text)
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else set(stopwords)
    words = [word for word in words if word not in stop]
    if stem:
        from nltk.stem import PorterStemmer

        stemmer = PorterStemmer()
        words = [stemmer.stem(word) for word in words]
    return " ".join(words)


def map_labels(tags: pd.Series, accepted: Iterable[str], min_freq: int, other: str = "other") -> pd.Series:
    """Replace tags outside `accepted`, and accepted tags seen fewer than `min_freq` times, by `other`."""
    mapped = tags.where(tags.isin(set(accepted)), other)
    counts = mapped.value_counts()
    rare = counts.index[(counts < min_freq) & (counts.index != other)]
    return mapped.where(~mapped.isin(rare), other)


def model_labels(tags: pd.Series, data_settings: Data) -> pd.Series:
    """The labels the model learns: `map_labels` with the `[data]` settings."""
    return map_labels(
        tags.fillna("").astype(str), data_settings.accepted_tags, data_settings.min_freq, data_settings.other_label
    )


def assign_splits(labels: pd.Series, val_size: float, test_size: float, seed: int) -> pd.Series:
    """Return "train"/"val"/"test" per row: a stratified split with the given fractions.

    Raises:
        BadInputError: a class has too few rows to appear in every split.
    """
    index = labels.index.to_numpy()
    holdout = val_size + test_size
    try:
        train_idx, rest_idx = train_test_split(index, test_size=holdout, stratify=labels, random_state=seed)
        val_idx, test_idx = train_test_split(
            rest_idx, test_size=test_size / holdout, stratify=labels.loc[rest_idx], random_state=seed
        )
    except ValueError as exc:
        raise BadInputError(f"cannot make a stratified split: {exc}") from exc
    split = pd.Series("train", index=labels.index, name="split")
    split.loc[val_idx] = "val"
    split.loc[test_idx] = "test"
    return split


def prepare(df: pd.DataFrame, data_settings: Data) -> pd.DataFrame:
    """Labeled projects with `tag` mapped to the model's labels and a `split` column, by the `[data]` settings."""
    prepared = df.reset_index(drop=True).copy()
    prepared["tag"] = model_labels(prepared["tag"], data_settings)
    prepared["split"] = assign_splits(
        prepared["tag"], data_settings.val_size, data_settings.test_size, data_settings.seed
    )
    return prepared


def holdout(labeled: pd.DataFrame, data_settings: Data, whole: bool = False) -> pd.DataFrame:
    """The gate's golden set made of `labeled`: its test split by `prepare`, or all of it (`whole`).

    Labels are the model's: in a golden set used whole only tags outside `accepted_tags` become `other`
    (its own counts are not the training data's, so `min_freq` does not apply).
    """
    if whole:
        frame = labeled.reset_index(drop=True).copy()
        accepted, other = data_settings.accepted_tags, data_settings.other_label
        frame["tag"] = map_labels(frame["tag"].fillna("").astype(str), accepted, 1, other)
        return frame
    prepared = prepare(labeled, data_settings)
    return prepared[prepared["split"] == "test"].drop(columns="split").reset_index(drop=True)


def without_holdout(prepared: pd.DataFrame, holdout: pd.DataFrame, stopwords: Iterable[str]) -> pd.DataFrame:
    """`prepared` without its train and val rows that are holdout rows: the same id, or the same cleaned text."""
    stop = frozenset(stopwords)
    held = {clean_text(text, stop) for text in compose_text(holdout)}
    texts = pd.Series([clean_text(text, stop) in held for text in compose_text(prepared)], index=prepared.index)
    same = prepared["id"].astype(str).isin(set(holdout["id"].astype(str))) | texts
    return prepared[~(same & prepared["split"].isin(("train", "val")))]
