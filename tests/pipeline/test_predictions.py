import gc
import io
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.core import data
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


class SizesModel(KeywordModel):
    """KeywordModel, remembering how many rows each call had."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def predict(self, df):
        self.sizes.append(len(df))
        assert df.index.tolist() == list(range(len(df)))  # each part as a frame of its own
        return super().predict(df)


def test_score_gives_the_model_at_most_part_rows_at_once_and_joins_them_in_order():
    projects = pd.DataFrame({"id": range(7), "title": ["vision", "a", "b", "vision", "c", "d", "vision"]})
    model = SizesModel()
    scored = predictions.score(model, projects, part_rows=3)
    assert model.sizes == [3, 3, 1]
    assert scored.equals(predictions.score(KeywordModel(), projects, part_rows=100))
    assert scored["tag"].tolist() == [
        "computer-vision",
        "other",
        "other",
        "computer-vision",
        "other",
        "other",
        "computer-vision",
    ]


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


def test_write_refuses_a_naive_time_before_connecting():
    batches = iter([pd.DataFrame({"id": ["a"], "tag": "x", "probability": 1.0})])
    with pytest.raises(BadInputError, match="has no time zone"):
        predictions.write("postgresql://u:pw@127.0.0.1:1/db", batches, 1, "run", datetime(2025, 1, 1))
    assert next(batches) is not None  # not even the first batch was taken


@pytest.mark.parametrize(
    ("scored", "message"),
    [
        # not scored
        (pd.DataFrame({"id": ["a"]}), "scored rows lack column(s) tag, probability"),
        # missing, empty and whitespace ids
        (pd.DataFrame({"id": [None, "", " ", "a"], "tag": "x", "probability": 1.0}), "scored rows have 3 blank id(s)"),
    ],
)
def test_staged_csv_refuses_what_the_table_cannot_hold(scored, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        predictions.staged_csv(scored)


def test_staged_csv_quotes_text_and_keeps_floats_exact():
    scored = pd.DataFrame({"id": [1, 'a,"b"'], "tag": ["x\ny", "t"], "probability": np.array([0.1 + 0.2, 1 / 3])})
    assert predictions.staged_csv(scored) == b'1,"x\ny",0.30000000000000004\n"a,""b""",t,0.3333333333333333\n'


def csv_file(text: str | bytes) -> io.BytesIO:
    return io.BytesIO(text.encode() if isinstance(text, str) else text)


def test_read_projects_gives_batches_of_text_columns_with_file_row_numbers():
    file = csv_file('\ufeffid,title,description\n1,a,x\n02,b,\n3,c,NA\n4,d,"multi\nline"\n5,e,z\n')
    with predictions.read_projects(file, "projects", 2) as read:
        batches = list(read)
    assert [b.index.tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    joined = pd.concat(batches)
    assert joined["id"].tolist() == ["1", "02", "3", "4", "5"]  # text, as written
    assert joined["description"].tolist() == ["x", "", "NA", "multi\nline", "z"]  # no NaN
    assert not file.closed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "projects (p.csv) is empty"),
        (b"  \n", "projects (p.csv) is empty"),
        (b"id,title\n1,caf\xe9\n", "projects (p.csv) is not valid UTF-8 (byte 14: b'\\xe9')"),
        (b"id,name\n1,a\n", "projects (p.csv) is missing column(s) title (has: id, name)"),
        (b"title,description\n", "projects (p.csv) is missing column(s) id (has: title, description)"),
        (b"id,title\n", "projects (p.csv) has a header but no rows"),
        (b"id,title\n1,a\n2,a,b,c\n", "projects (p.csv) is not a readable CSV file: Error tokenizing data."),
    ],
)
def test_read_projects_refuses_a_bad_file_in_one_line_before_any_batch_is_taken(content, message):
    with pytest.raises(BadInputError) as raised:
        with predictions.read_projects(csv_file(content), "projects (p.csv)", 1000):
            pytest.fail("entered")
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_read_projects_says_the_same_as_parse_csv_about_a_bad_file():
    for content in (b"", b"id,title\n1,caf\xe9\n", b"id,name\n1,a\n", b"id,title\n"):
        with pytest.raises(BadInputError) as ours:
            predictions.read_projects(csv_file(content), "projects", 10).__enter__()
        with pytest.raises(BadInputError) as theirs:
            data.parse_csv(content, "projects", ("id", "title"))
        assert str(ours.value) == str(theirs.value)


def test_read_projects_refuses_a_bad_row_when_its_batch_is_taken():
    rows = "".join(f"{i},t{i}\n" for i in range(10))
    with predictions.read_projects(csv_file(f"id,title\n{rows}10,a,b,c\n"), "projects (p.csv)", 4) as batches:
        assert len(next(batches)) == 4 and len(next(batches)) == 4
        with pytest.raises(BadInputError, match=r"^projects \(p.csv\) is not a readable CSV file: Error tokenizing"):
            next(batches)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_read_projects_lets_go_of_the_file_on_leaving_however_far_it_got():
    file = csv_file("id,title\n" + "".join(f"{i},t\n" for i in range(10)))
    with pytest.raises(RuntimeError), predictions.read_projects(file, "projects", 3) as batches:
        next(batches)
        raise RuntimeError("the caller fails half-way")
    assert not file.closed
    file.close()
    del batches
    gc.collect()  # nothing of the parser is left to flush or close the file late


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_scoring_writes_the_predictions_file_and_counts_as_it_goes(tmp_path, workers):
    projects = pd.DataFrame(
        {"id": [f"p{i}" for i in range(7)], "title": ["vision", "x", "vision", "y", "z", "vision", "w"]}
    )
    with predictions.Scoring(KeywordModel(), tmp_path / "predictions.csv", workers) as scoring:
        scored = list(scoring(projects.iloc[i : i + 3] for i in range(0, 7, 3)))
    assert [len(s) for s in scored] == [3, 3, 1]
    assert (scoring.rows, scoring.batches) == (7, 3)
    assert scoring.counts() == {"other": 4, "computer-vision": 3}
    whole = predictions.score(KeywordModel(), projects)
    assert scoring.counts() == predictions.counts(whole)
    # The file is the whole scoring as one frame would be written: one header.
    assert (tmp_path / "predictions.csv").read_bytes() == data.to_csv_bytes(whole)


@pytest.mark.parametrize("workers", [1, 2])
def test_scoring_stops_at_a_bad_batch_naming_its_row_in_the_file(tmp_path, workers):
    content = "id,title\n" + "".join(f"{i},t\n" for i in range(5)) + " ,t\n"
    scoring = predictions.Scoring(KeywordModel(), tmp_path / "predictions.csv", workers)
    with pytest.raises(BadInputError, match=r"^projects have 1 blank id\(s\), at rows 5: "):
        with scoring, predictions.read_projects(csv_file(content), "projects", 2) as batches:
            list(scoring(batches))
    assert scoring.rows == 4  # the batches before it were scored
    assert scoring.pool is None  # and its processes are gone


class PidModel:
    """Tags each row with the id of the process that scored it."""

    def predict(self, df):
        return pd.DataFrame({"tag": [str(os.getpid())] * len(df), "probability": 0.5})


def test_a_pool_scores_in_other_processes_and_keeps_the_order(tmp_path):
    batches = [pd.DataFrame({"id": [f"b{b}r{r}" for r in range(3)], "title": "t"}) for b in range(9)]
    with predictions.Scoring(PidModel(), tmp_path / "predictions.csv", 2) as scoring:
        scored = list(scoring(iter(batches)))
    assert [s["id"].tolist() for s in scored] == [b["id"].tolist() for b in batches]
    scorers = {s["tag"][0] for s in scored}
    assert str(os.getpid()) not in scorers and 1 <= len(scorers) <= 2


class DyingModel:
    """Kills the process that scores its third batch (as the kernel's OOM killer would)."""

    def predict(self, df):
        if df["title"].iloc[0] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return pd.DataFrame({"tag": ["t"] * len(df), "probability": 0.5})


def test_a_scoring_process_that_dies_is_an_error_that_may_pass(tmp_path):
    batches = [pd.DataFrame({"id": [f"p{b}"], "title": "die" if b == 2 else "t"}) for b in range(5)]
    with pytest.raises(
        TagifaiError, match=r"^a scoring process died \(.*\): nothing was written; try again$"
    ) as raised:
        with predictions.Scoring(DyingModel(), tmp_path / "predictions.csv", 2) as scoring:
            list(scoring(iter(batches)))
    assert type(raised.value) is TagifaiError


# A process that scores with a pool of two, prints its scoring processes' ids, and is killed while they work.
KILLED_PARENT = """
import sys, time
from pathlib import Path
import pandas as pd
from tagifai.pipeline import predictions

class SlowModel:
    def predict(self, df):
        time.sleep(60)

with predictions.Scoring(SlowModel(), Path(sys.argv[1]), 2) as scoring:
    print(*(p.pid for p in scoring.pool._processes.values()), flush=True)
    next(scoring(pd.DataFrame({"id": [str(i)], "title": "t"}) for i in range(3)))
"""


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_scoring_processes_die_with_a_parent_killed_outright(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path / "predictions.csv")], stdout=subprocess.PIPE, text=True
    )
    try:
        scorers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(scorers) == 2 and all(map(alive, scorers))
        time.sleep(0.5)  # both busy with a batch
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    try:
        while any(map(alive, scorers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(alive, scorers))
    finally:
        for pid in filter(alive, scorers):  # orphans, had the test failed
            os.kill(pid, signal.SIGKILL)


def test_scoring_workers_are_at_most_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert predictions.scoring_workers(2) == 2 and predictions.scoring_workers(8) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert predictions.scoring_workers(2) == 1


RETURNED = """
import sys
from tagifai.pipeline import predictions
if sys.argv[1] == "fixed":
    assert predictions.return_freed_memory()
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
block = bytearray(16 << 20)  # freed, it raises glibc's own threshold to its size (up to 32 MB)
del block
before = resident()
block = bytearray(16 << 20)
del block
print(resident() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, /proc")
@pytest.mark.parametrize(("setting", "kept_mb"), [("glibc's", (12, 20)), ("fixed", (0, 2))])
def test_a_freed_block_goes_back_to_the_system_once_the_threshold_is_fixed(setting, kept_mb):
    # A second large block comes from the heap by default and stays with the process when freed.
    done = subprocess.run([sys.executable, "-c", RETURNED, setting], capture_output=True, text=True, check=True)
    low, high = kept_mb
    assert low << 20 <= int(done.stdout) <= high << 20, f"{int(done.stdout) / 2**20:.1f} MB stayed"
