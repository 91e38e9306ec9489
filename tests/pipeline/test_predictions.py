import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.pipeline import predictions


class KeywordModel:
    """A stand-in pyfunc: `vision` in the text → computer-vision, else other; remembers its input."""

    def __init__(self):
        self.seen = None

    def predict(self, df):
        self.seen = df.copy()
        text = (df["title"] + " " + df["description"]).str.lower()
        vision = text.str.contains("vision")
        return pd.DataFrame(
            {"tag": np.where(vision, "computer-vision", "other"), "probability": np.where(vision, 0.9, 0.4)}
        )


class BrokenModel:
    """Returns one row too few."""

    def predict(self, df):
        return pd.DataFrame({"tag": ["other"] * (len(df) - 1), "probability": [0.5] * (len(df) - 1)})


PROJECTS = pd.DataFrame(
    {
        "id": [30, 10, 20],
        "title": ["Vision transformers", "Feature stores", "Image vision"],
        "description": ["for images", None, "cnn"],
        "tag": ["computer-vision", "mlops", "computer-vision"],  # ignored
    },
    index=[7, 8, 9],
)


def test_score_tags_each_project_in_input_order_with_string_ids():
    scored = predictions.score(KeywordModel(), PROJECTS)
    assert scored.to_dict("list") == {
        "id": ["30", "10", "20"],
        "tag": ["computer-vision", "other", "computer-vision"],
        "probability": [0.9, 0.4, 0.9],
    }
    assert list(scored.index) == [0, 1, 2]


def test_score_passes_only_title_and_description_with_blanks_filled():
    model = KeywordModel()
    predictions.score(model, PROJECTS)
    assert list(model.seen.columns) == ["title", "description"]
    assert model.seen["description"].tolist() == ["for images", "", "cnn"]


def test_score_fills_a_missing_description_column():
    model = KeywordModel()
    scored = predictions.score(model, PROJECTS.drop(columns="description"))
    assert model.seen["description"].tolist() == ["", "", ""]
    assert scored["tag"].tolist() == ["computer-vision", "other", "computer-vision"]


def test_score_of_no_projects_is_an_empty_frame_without_calling_the_model():
    scored = predictions.score(BrokenModel(), PROJECTS.iloc[:0])
    assert list(scored.columns) == ["id", "tag", "probability"] and scored.empty


@pytest.mark.parametrize(
    ("projects", "message"),
    [
        # no id column
        (PROJECTS.drop(columns="id"), "projects lack column(s) id (have: title, description, tag)"),
        # neither id nor title
        (PROJECTS[["description"]], "projects lack column(s) id, title (have: description)"),
        # the same id twice, as int and as str
        (PROJECTS.assign(id=[1, "1", 2]), "projects repeat ids 1: each id may appear once"),
        # missing and whitespace ids
        (PROJECTS.assign(id=[None, "  ", "a"]), "projects have 2 blank id(s), at rows 7, 8: every project needs an id"),
    ],
)
def test_score_rejects_bad_projects_in_one_line(projects, message):
    with pytest.raises(BadInputError) as raised:
        predictions.score(KeywordModel(), projects)
    assert str(raised.value) == message and "\n" not in str(raised.value)


def test_score_names_at_most_five_repeated_ids():
    projects = pd.DataFrame({"id": [f"p{i}" for i in range(8)] * 2, "title": ["t"] * 16})
    with pytest.raises(BadInputError, match=r"repeat ids p0, p1, p2, p3, p4 and 3 more: "):
        predictions.score(KeywordModel(), projects)


def test_score_rejects_a_model_that_loses_rows():
    with pytest.raises(TagifaiError, match="the model returned 2 rows .* for 3 projects"):
        predictions.score(BrokenModel(), PROJECTS)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["b", "a", "b", "c", "a", "b"], {"b": 3, "a": 2, "c": 1}),  # most frequent first
        (["z", "y"], {"y": 1, "z": 1}),  # ties by tag
        ([], {}),  # nothing scored
    ],
)
def test_counts(tags, expected):
    counted = predictions.counts(pd.DataFrame({"tag": tags}, dtype=object))
    assert counted == expected and list(counted) == list(expected)
    assert all(type(n) is int for n in counted.values())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg2://tagifai:pw@db:5432/tagifai", "postgresql://tagifai:pw@db:5432/tagifai"),
        ("postgresql://tagifai@db/tagifai", "postgresql://tagifai@db/tagifai"),
        ("postgres://db/tagifai", "postgresql://db/tagifai"),
    ],
)
def test_dsn_accepts_sqlalchemy_and_plain_urls(url, expected):
    assert predictions.dsn(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:s3cret@db/x",  # another database
        "postgresql+psycopg://u:s3cret@db/x",  # another driver
        "u:s3cret@db/x",  # not a URL
    ],
)
def test_dsn_rejects_other_urls_without_the_password(url):
    with pytest.raises(BadInputError) as raised:
        predictions.dsn(url)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg2://u:pw@h:5432/db", "postgresql+psycopg2://***@h:5432/db"),  # user and password
        ("postgresql://u@h/db", "postgresql://***@h/db"),  # user only
        ("postgresql://u:p@ss@h/db", "postgresql://***@h/db"),  # an unescaped @ in the password
        ("postgresql://h/db", "postgresql://h/db"),  # nothing to hide
        ("u:pw@h/db", "***@h/db"),  # not a URL
    ],
)
def test_redact(url, expected):
    assert predictions.redact(url) == expected


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:s3cret@h/db", "s3cret"),
        ("postgresql://u:s3%40cret@h/db", "s3%40cret"),  # percent-encoded
        ("postgresql://u:s3cret@[::1/db", "s3cret"),  # too malformed for urlsplit
        ("postgresql://u@h/db", None),
    ],
)
def test_password(url, secret):
    assert predictions.password(url) == secret


def test_scrub_removes_the_url_and_both_forms_of_the_password():
    url = "postgresql://u:s3%40cret@[::1/db"
    message = f'invalid dsn: "{url}"; auth for s3@cret and s3%40cret failed'
    scrubbed = predictions.scrub(message, url)
    assert "s3" not in scrubbed and scrubbed.startswith('invalid dsn: "postgresql://***@[::1/db"')


@pytest.mark.parametrize(
    ("scored", "scored_at", "message"),
    [
        # not scored
        (pd.DataFrame({"id": ["a"]}), datetime.now(UTC), "lack column(s) tag, probability"),
        # one id twice
        (pd.DataFrame({"id": ["a", "a"], "tag": "x", "probability": 1.0}), datetime.now(UTC), "repeat ids a"),
        # a naive time
        (pd.DataFrame({"id": ["a"], "tag": "x", "probability": 1.0}), datetime(2025, 1, 1), "has no time zone"),
    ],
)
def test_upsert_refuses_what_the_table_cannot_hold_before_connecting(scored, scored_at, message):
    # The URL would fail to connect: the check comes first.
    with pytest.raises(BadInputError, match=re.escape(message)):
        predictions.upsert("postgresql://u:pw@127.0.0.1:1/db", scored, 1, "run", scored_at)


def test_rows_are_plain_python_values():
    scored = pd.DataFrame({"id": ["a"], "tag": ["x"], "probability": np.array([0.5], dtype=np.float32)})
    when = datetime(2025, 1, 1, tzinfo=UTC)
    [row] = predictions.rows(scored, 3, "run", when)
    assert row == ("a", "x", 0.5, 3, "run", when) and type(row[2]) is float
