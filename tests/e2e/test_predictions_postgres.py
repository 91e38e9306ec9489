"""`tagifai.pipeline.predictions.write` and `upsert` against a real PostgreSQL: idempotent, per version, one
transaction whatever the number of batches."""

import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from harness import free_port, query, running_postgres
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.pipeline import predictions

pytestmark = [pytest.mark.e2e]

SECRET = "s3cret-pw"
WHEN = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)
N = 1000


def scoring(n: int = N, tag: str = "mlops", start: int = 0) -> pd.DataFrame:
    """`n` scored projects, ids p{start}…, all with `tag`."""
    ids = range(start, start + n)
    return pd.DataFrame({"id": [f"p{i}" for i in ids], "tag": tag, "probability": [i / N for i in ids]})


def batches(n: int, size: int, tag: str = "mlops") -> list[pd.DataFrame]:
    """`scoring(n, tag)` cut into batches of `size` rows."""
    return [scoring(min(size, n - start), tag, start) for start in range(0, n, size)]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A throwaway PostgreSQL with a database `tagifai` (SQLAlchemy-style URL, trust auth)."""
    with running_postgres("tagifai") as pg:
        yield pg["tagifai"]


@pytest.fixture
def url(server_url: str) -> str:
    """The database, without the predictions table."""
    query(server_url, "DROP TABLE IF EXISTS predictions")
    return server_url


def table(url: str) -> list[tuple]:
    """Every row of `predictions`, by version and id."""
    return query(
        url,
        "SELECT id, tag, probability, model_version, pipeline_run_id, scored_at FROM predictions "
        "ORDER BY model_version, id",
    )


def table_of(scored: pd.DataFrame, model_version: int, pipeline_run_id: str, scored_at: datetime) -> list[tuple]:
    """The rows `table` reads back after `scored` was written (in Python's order: compare sorted)."""
    rows = zip(scored["id"], scored["tag"], scored["probability"], strict=True)
    return sorted((i, tag, p, model_version, pipeline_run_id, scored_at) for i, tag, p in rows)


def exists(url: str) -> bool:
    """True when the table `predictions` exists."""
    return query(url, "SELECT to_regclass('predictions') IS NOT NULL")[0][0]


def test_first_upsert_creates_the_table_and_inserts_every_row(url):
    assert predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN) == {"inserted": N, "updated": 0}
    rows = table(url)
    assert len(rows) == N
    assert ("p1", "mlops", 1 / N, 3, "scheduled__1", WHEN) in rows
    assert query(url, "SELECT indexname FROM pg_indexes WHERE tablename = 'predictions' ORDER BY 1") == [
        ("predictions_model_version_idx",),
        ("predictions_pkey",),
    ]


def test_a_changed_scoring_of_the_same_version_updates_and_adds_no_rows(url):
    predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN)
    later = WHEN + timedelta(hours=1)
    # a retry of the same task that tags differently: same rows, later time, another pipeline run
    assert predictions.upsert(url, scoring(tag="other"), 3, "manual__2", later) == {
        "inserted": 0,
        "updated": N,
    }
    rows = table(url)
    assert len(rows) == N
    assert {row[1:] for row in rows if row[0] == "p1"} == {("other", 1 / N, 3, "manual__2", later)}


def test_the_same_scoring_again_inserts_nothing_and_dates_every_row_anew(url):
    predictions.write(url, batches(N, 300), 3, "scheduled__1", WHEN)
    before = table(url)
    later = WHEN + timedelta(days=1)
    assert predictions.write(url, batches(N, 70), 3, "scheduled__2", later) == {"inserted": 0, "updated": N}
    # The same rows, scored again: the monitor's window of batch predictions (scored_at) keeps them.
    assert table(url) == [(*row[:4], "scheduled__2", later) for row in before]


def test_a_scoring_adds_new_projects_and_rewrites_changed_ones(url):
    predictions.write(url, batches(N, 300), 3, "scheduled__1", WHEN)
    changed = scoring()
    changed.loc[3, "tag"], changed.loc[7, "probability"] = "other", 0.123
    assert predictions.write(url, [changed, scoring(5, start=N)], 3, "scheduled__2", WHEN) == {
        "inserted": 5,
        "updated": N,
    }
    assert query(url, "SELECT tag FROM predictions WHERE id = 'p3'") == [("other",)]
    assert len(table(url)) == N + 5


def test_text_and_floats_survive_the_copy_exactly(url):
    scored = pd.DataFrame(
        {
            "id": ['a,"b"', "line\nbreak", " padded ", "ünïcode ✓", "\\N", "NULL"],
            "tag": ["x,y", 'q"uote', "t", "t", "t", "t"],
            "probability": [0.1 + 0.2, 1 / 3, 1e-300, 0.999999, 0.0, 1.0],
        }
    )
    predictions.write(url, [scored.iloc[:3], scored.iloc[3:]], 1, "run", WHEN)
    assert sorted(table(url)) == table_of(scored, 1, "run", WHEN)


def test_concurrent_first_writes_take_turns(url):
    # Both would create the table; without the lock one fails on a catalog unique violation.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda v: predictions.write(url, batches(N, 400), v % 2, f"run{v}", WHEN), range(4)))
    assert sorted(r["inserted"] for r in results) == [0, 0, N, N]
    assert sorted(r["updated"] for r in results) == [0, 0, N, N]
    assert len(table(url)) == 2 * N


def test_plain_postgresql_urls_work_too(url):
    plain = url.replace("postgresql+psycopg2://", "postgresql://")
    assert predictions.upsert(plain, scoring(3), 1, "run", WHEN)["inserted"] == 3


def test_an_empty_scoring_creates_the_table_and_writes_nothing(url):
    assert predictions.write(url, [], 1, "run", WHEN) == {"inserted": 0, "updated": 0}
    assert exists(url) and table(url) == []


def test_ids_repeated_across_batches_are_refused_by_name_and_nothing_is_written(url):
    predictions.write(url, batches(N, 300), 3, "scheduled__1", WHEN)
    before = table(url)
    # p5 and p990 come back in a later batch; each batch alone has no repeat
    again = [*batches(N, 300, tag="other"), scoring(1, start=5), scoring(1, start=990)]
    with pytest.raises(BadInputError) as raised:
        predictions.write(url, again, 3, "scheduled__2", WHEN)
    assert str(raised.value) == "projects repeat ids p5, p990: each id may appear once"
    assert table(url) == before


def test_at_most_five_repeated_ids_are_named(url):
    with pytest.raises(BadInputError, match=r"^projects repeat ids p0, p1, p2, p3, p4 and 3 more: "):
        predictions.write(url, [scoring(8), scoring(8)], 3, "run", WHEN)
    assert not exists(url)


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_blank_id_in_a_late_batch_is_refused_and_nothing_is_written(url, blank):
    predictions.write(url, batches(N, 300), 3, "scheduled__1", WHEN)
    before = table(url)
    late = scoring(10, start=N)
    late.loc[4, "id"] = blank
    with pytest.raises(BadInputError, match=r"^scored rows have 1 blank id\(s\)"):
        predictions.write(url, [*batches(N, 300, tag="other"), late], 3, "scheduled__2", WHEN)
    assert table(url) == before


def failing_after(good: list[pd.DataFrame], error: Exception) -> Iterator[pd.DataFrame]:
    """`good`'s batches, then `error`: a bad row found in a late batch of the file."""
    yield from good
    raise error


def test_a_batch_that_raises_late_leaves_the_table_as_it_was(url):
    predictions.write(url, batches(N, 100), 3, "scheduled__1", WHEN)
    before = table(url)
    refused = BadInputError("projects (file.csv) is not a readable CSV file: Error tokenizing data")
    late = failing_after(batches(N + 500, 100, tag="other"), refused)  # ten batches written, then the 16th fails
    with pytest.raises(BadInputError) as raised:
        predictions.write(url, late, 3, "scheduled__2", WHEN)
    assert raised.value is refused  # as it was raised, not wrapped
    assert table(url) == before
    # The lock and the staging table went with the transaction: the next write goes through.
    assert predictions.write(url, batches(N, 100, tag="other"), 3, "scheduled__3", WHEN)["updated"] == N


def test_a_sql_failure_in_a_late_batch_leaves_the_table_unchanged(url):
    predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN)
    before = table(url)
    bad = batches(N, 100, tag="other")
    bad[-1].loc[bad[-1].index[-1], "tag"] = None  # a NULL tag in the last batch: nine were already copied
    with pytest.raises(TagifaiError, match="could not write predictions to .*NotNullViolation"):
        predictions.write(url, bad, 3, "scheduled__2", WHEN + timedelta(hours=1))
    assert table(url) == before


def test_a_failed_first_write_does_not_even_leave_the_table(url):
    bad = scoring(10)
    bad.loc[5, "tag"] = None
    with pytest.raises(TagifaiError):
        predictions.upsert(url, bad, 1, "run", WHEN)
    assert not exists(url)


def terminated_after(url: str, good: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`good`'s batches, then every other session on the database is ended (as a restarting server would)."""
    yield from good
    others = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = %s"
    query(url, others, "tagifai")
    yield scoring(10, start=10 * N)


def test_the_database_going_away_mid_way_leaves_the_table_unchanged(url):
    predictions.write(url, batches(N, 100), 3, "scheduled__1", WHEN)
    before = table(url)
    with_password = url.replace("postgres@", f"postgres:{SECRET}@")
    with pytest.raises(TagifaiError, match=r"^could not write predictions to .*: OperationalError: ") as raised:
        predictions.write(with_password, terminated_after(url, batches(N, 100, tag="other")), 3, "run", WHEN)
    assert SECRET not in str(raised.value) and "\n" not in str(raised.value)
    assert table(url) == before


def write_slowly(url: str, ready) -> None:
    """In a child process: copy three batches, say so, then wait to be killed inside the transaction."""

    def endless() -> Iterator[pd.DataFrame]:
        yield from batches(300, 100, tag="other")
        ready.set()
        signal.pause()
        yield scoring(1, start=N)

    predictions.write(url, endless(), 3, "killed", WHEN)


def test_a_killed_writer_leaves_the_table_unchanged(url):
    predictions.write(url, batches(N, 100), 3, "scheduled__1", WHEN)
    before = table(url)
    context = multiprocessing.get_context("spawn")  # not fork: the child opens its own connection
    ready = context.Event()
    child = context.Process(target=write_slowly, args=(url, ready))
    child.start()
    try:
        assert ready.wait(60), "the writer never copied its batches"
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
    assert table(url) == before
    # The server rolled the dead session back: its lock is gone, the next write goes through.
    assert predictions.write(url, batches(300, 100, tag="other"), 3, "after", WHEN)["updated"] == 300


def test_sql_errors_do_not_show_the_password(url):
    # Trust auth ignores the password, so it connects and fails on the NULL tag.
    with_password = url.replace("postgres@", f"postgres:{SECRET}@")
    bad = scoring(2)
    bad.loc[1, "tag"] = None
    with pytest.raises(TagifaiError) as raised:
        predictions.upsert(with_password, bad, 1, "run", WHEN)
    assert SECRET not in str(raised.value) and "postgres:" not in str(raised.value)
    assert "***@127.0.0.1" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None


@pytest.mark.parametrize(
    "broken",
    [
        "postgresql+psycopg2://postgres:{secret}@127.0.0.1:{port}/tagifai",  # nothing listens there
        "postgresql://postgres:{secret}@[::1:{port}/tagifai",  # libpq quotes a malformed URL whole
        "postgresql://postgres:{secret}@127.0.0.1:{port}/tagifai?bogus=1",  # and names bad options
    ],
)
def test_connection_errors_do_not_show_the_password(broken):
    url = broken.format(secret=SECRET, port=free_port())
    with pytest.raises(TagifaiError, match="could not connect to") as raised:
        predictions.upsert(url, scoring(2), 1, "run", WHEN)
    assert SECRET not in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None
