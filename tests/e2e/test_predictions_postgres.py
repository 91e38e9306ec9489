"""`tagifai.pipeline.predictions.upsert` against a real PostgreSQL: idempotent, per version, all or nothing."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from harness import free_port, query, running_postgres
from tagifai.contract.errors import TagifaiError
from tagifai.pipeline import predictions

pytestmark = [pytest.mark.e2e]

SECRET = "s3cret-pw"
WHEN = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)
N = 1000


def scoring(n: int = N, tag: str = "mlops") -> pd.DataFrame:
    """`n` scored projects, ids p0…, all with `tag`."""
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "tag": tag, "probability": [i / n for i in range(n)]})


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


def test_the_same_upsert_again_updates_and_adds_no_rows(url):
    predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN)
    later = WHEN + timedelta(hours=1)
    # a retry of the same task: same rows, later time, another pipeline run
    assert predictions.upsert(url, scoring(tag="other"), 3, "manual__2", later) == {"inserted": 0, "updated": N}
    rows = table(url)
    assert len(rows) == N
    assert {row[1:] for row in rows if row[0] == "p1"} == {("other", 1 / N, 3, "manual__2", later)}


def test_a_new_model_version_adds_its_own_rows(url):
    predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN)
    assert predictions.upsert(url, scoring(N + 5), 4, "scheduled__2", WHEN) == {"inserted": N + 5, "updated": 0}
    assert query(url, "SELECT model_version, count(*) FROM predictions GROUP BY 1 ORDER BY 1") == [(3, N), (4, N + 5)]


def test_a_mix_of_new_and_known_ids_is_counted_apart(url):
    predictions.upsert(url, scoring(10), 3, "scheduled__1", WHEN)
    assert predictions.upsert(url, scoring(25), 3, "scheduled__2", WHEN) == {"inserted": 15, "updated": 10}


def test_concurrent_first_upserts_take_turns(url):
    # Both would create the table; without the lock one fails on a catalog unique violation.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda v: predictions.upsert(url, scoring(), v % 2, f"run{v}", WHEN), range(4)))
    assert sorted(r["inserted"] for r in results) == [0, 0, N, N]
    assert len(table(url)) == 2 * N


def test_plain_postgresql_urls_work_too(url):
    plain = url.replace("postgresql+psycopg2://", "postgresql://")
    assert predictions.upsert(plain, scoring(3), 1, "run", WHEN) == {"inserted": 3, "updated": 0}


def test_an_empty_scoring_creates_the_table_and_writes_nothing(url):
    assert predictions.upsert(url, scoring(0), 1, "run", WHEN) == {"inserted": 0, "updated": 0}
    assert exists(url) and table(url) == []


def test_a_failure_after_rows_were_sent_leaves_the_table_unchanged(url):
    predictions.upsert(url, scoring(), 3, "scheduled__1", WHEN)
    before = table(url)
    bad = scoring(3 * predictions.PAGE_SIZE, tag="other")
    # A NULL tag in the last page: the earlier pages were already sent in the same transaction.
    bad.loc[len(bad) - 1, "tag"] = None
    with pytest.raises(TagifaiError, match="could not write predictions to .*NotNullViolation"):
        predictions.upsert(url, bad, 3, "scheduled__2", WHEN + timedelta(hours=1))
    assert table(url) == before


def test_a_failed_first_upsert_does_not_even_leave_the_table(url):
    bad = scoring(10)
    bad.loc[5, "tag"] = None
    with pytest.raises(TagifaiError):
        predictions.upsert(url, bad, 1, "run", WHEN)
    assert not exists(url)


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
