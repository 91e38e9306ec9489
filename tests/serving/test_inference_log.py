"""The inference log of `tagifai serve`: bounded, sampled, off the request path, written to a real PostgreSQL.

The tests marked `e2e` write to a throwaway PostgreSQL (`harness.running_postgres`); the others need none
(an unreachable database is a port nothing listens on).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness import free_port, query, running_postgres
from tagifai.contract import names
from tagifai.contract.config import load_settings
from tagifai.contract.errors import BadInputError
from tagifai.contract.settings import Monitor
from tagifai.serving import follower
from tagifai.serving import inference_log as inference
from tagifai.serving import server as serve
from tagifai.serving.metrics import Metrics
from tagifai.serving.protocol import Payload
from tests.serving.test_serve import (
    FrameModel,
    StaticChampion,
    call,
    get,
    invoke,
    limits,
    register,
    serve_process,
    wait_for,
)

SECRET = "s3cret-pw"
LOADED = follower.Loaded(model=None, version="3", info={"model_name": "tagifai"})
SCHEMA = [  # as the drift monitor and the retention job expect it
    ("id", "bigint", "NO"),
    ("logged_at", "timestamp with time zone", "NO"),
    ("request_id", "text", "NO"),
    ("row_index", "integer", "NO"),
    ("title", "text", "NO"),
    ("description", "text", "NO"),
    ("tag", "text", "NO"),
    ("probability", "double precision", "NO"),
    ("model_name", "text", "NO"),
    ("model_version", "integer", "NO"),
    ("latency_ms", "double precision", "NO"),
]


def monitor(**overrides: Any) -> Monitor:
    """The `[monitor]` settings, with `overrides`."""
    return load_settings().monitor.model_copy(update=overrides)


def payload(rows: int, start: int = 0) -> Payload:
    """A parsed request of `rows` projects, titled `title <n>` from `start` on."""
    numbers = range(start, start + rows)
    return Payload(pd.DataFrame({"title": [f"title {n}" for n in numbers], "description": [f"d{n}" for n in numbers]}))


def scored(rows: int) -> list[dict[str, Any]]:
    """What the model answered for `rows` rows."""
    return [{"tag": "mlops", "probability": 0.25}] * rows


def unreachable() -> str:
    """A PostgreSQL URL (with a password) on which nothing listens."""
    return f"postgresql+psycopg2://tagifai:{SECRET}@127.0.0.1:{free_port()}/tagifai"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def dropped(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "tagifai_inference_log_rows_dropped_total", reason=reason)


def waiting(metrics: Metrics) -> float:
    return sample(metrics, "tagifai_inference_log_rows_waiting")


def written(metrics: Metrics) -> float:
    return sample(metrics, "tagifai_inference_log_rows_written_total")


def frame_server(model: FrameModel, inference_log: inference.InferenceLog, metrics: Metrics) -> serve.ModelServer:
    """A started server of `model` (v7 of `tagifai`), logging to `inference_log`."""
    info = {"model_name": "tagifai", "model_version": "7", "loaded_at": "now"}
    loaded = follower.Loaded(model=model, version="7", info=info)
    server = serve.ModelServer(StaticChampion(loaded), "127.0.0.1", 0, limits(), metrics, inference_log)
    server.start()
    return server


# ---------------------------------------------------------------------------------------------------
# The rows a request becomes (pure)


def answered(data: Any, predictions_: Any, rows: int | None = None, version: str = "3") -> inference.Answered:
    rows = len(predictions_) if rows is None else rows
    return inference.Answered(data, predictions_, rows, "tagifai", version, 12.5, 1_750_000_000.0, "req", 0.0)


@pytest.mark.parametrize(
    ("data", "predictions_", "rows", "expected", "invalid"),
    [
        (  # as sent: a missing description is empty, the title kept as it is (spaces, case, unicode)
            pd.DataFrame({"title": ["  BERT für QA ", "YOLO"], "description": [None, "real-time"]}),
            [{"tag": "natural-language-processing", "probability": 0.75}, {"tag": "computer-vision", "probability": 1}],
            None,
            [
                (0, "  BERT für QA ", "", "natural-language-processing", 0.75),
                (1, "YOLO", "real-time", "computer-vision", 1.0),
            ],
            0,
        ),
        (  # no description column at all; a NaN title
            pd.DataFrame({"title": ["a", float("nan")]}),
            scored(2),
            None,
            [(0, "a", "", "mlops", 0.25), (1, "", "", "mlops", 0.25)],
            0,
        ),
        (  # only the first rows, when the queue had room for only those
            pd.DataFrame({"title": ["a", "b", "c"]}),
            scored(3),
            2,
            [(0, "a", "", "mlops", 0.25), (1, "b", "", "mlops", 0.25)],
            0,
        ),
        (  # records, not a frame (an `inputs` body)
            [{"title": "a", "description": "x"}],
            scored(1),
            None,
            [(0, "a", "x", "mlops", 0.25)],
            0,
        ),
        (  # text PostgreSQL cannot hold: NUL, a lone surrogate (JSON: "\ud800"); a prediction without tag or number
            pd.DataFrame({"title": ["a\x00b", "c", "d", "e", "f\ud800", "g"]}),
            [scored(1)[0], {"probability": 0.5}, {"tag": "x", "probability": "high"}, *scored(3)],
            None,
            [(3, "e", "", "mlops", 0.25), (5, "g", "", "mlops", 0.25)],
            4,
        ),
        (pd.DataFrame({"title": ["a", "b"]}), scored(1), 2, [], 2),  # not one prediction per row
        (pd.DataFrame({"title": ["a"]}), {"tag": "x"}, 1, [], 1),  # not records at all
    ],
)
def test_a_request_becomes_rows_of_exactly_what_was_sent_and_answered(data, predictions_, rows, expected, invalid):
    table, refused = inference.table_rows(answered(data, predictions_, rows))
    assert [(row[2], row[3], row[4], row[5], row[6]) for row in table] == expected
    assert refused == invalid
    for row in table:
        assert len(row) == len(inference.COLUMNS)
        at, request_id, _, _, _, _, _, model_name, version, latency = row
        assert (at, request_id, model_name, version, latency) == (
            "2025-06-15T15:06:40+00:00", "req", "tagifai", 3, 12.5
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The queue: bounded, sampled, never in a request's way (no database needed)


def test_the_queue_holds_at_most_queue_rows_and_counts_the_rows_that_do_not_fit():
    metrics = Metrics()
    log_ = inference.InferenceLog(unreachable(), monitor(queue_rows=10, batch_rows=4), metrics)  # not started
    for n in range(4):
        log_.record(LOADED, payload(3, 3 * n), scored(3), 0.01)  # 12 rows: the last request's last 2 do not fit
    log_.record(LOADED, payload(5), scored(5), 0.01)  # none of these
    assert waiting(metrics) == 10
    assert dropped(metrics, "queue_full") == 2 + 5
    assert log_.dropped["queue_full"] == 7
    log_.close(timeout=0.1)
    assert waiting(metrics) == 10  # never started: nothing was taken


@pytest.mark.parametrize(("rate", "low", "high"), [(1.0, 2000, 2000), (0.25, 420, 580), (0.0, 0, 0)])
def test_each_request_is_logged_whole_with_probability_sample_rate(rate, low, high):
    metrics = Metrics()
    log_ = inference.InferenceLog(unreachable(), monitor(sample_rate=rate, queue_rows=10_000), metrics, seed=7)
    for n in range(2000):
        log_.record(LOADED, payload(2, 2 * n), scored(2), 0.01)
    requests = waiting(metrics) / 2
    assert requests == int(requests)  # both rows of a request, or neither
    assert low <= requests <= high  # 500 expected at 0.25 (sd 19)
    assert dropped(metrics, "queue_full") == 0  # not sampled is not dropped


def test_no_database_or_a_zero_sample_rate_means_no_log_said_once(caplog):
    with caplog.at_level(logging.INFO, logger="tagifai"):
        assert inference.open_log(None, monitor(), Metrics()) is None
        assert inference.open_log(unreachable(), monitor(sample_rate=0.0), Metrics()) is None
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"serve: inference log off: {names.PREDICTIONS_DB_ENV} is not set",
        "serve: inference log off: [monitor] sample_rate is 0",
    ]


def test_a_database_url_that_is_not_postgresql_is_refused_without_showing_it():
    with pytest.raises(BadInputError) as refused:
        inference.open_log(f"mysql://tagifai:{SECRET}@db/tagifai", monitor(), Metrics())
    assert names.PREDICTIONS_DB_ENV in str(refused.value)
    assert SECRET not in str(refused.value) and "db/tagifai" not in str(refused.value)


def test_with_postgresql_unreachable_every_request_is_answered_at_once_and_the_drops_are_counted(caplog):
    metrics = Metrics()
    log_ = inference.InferenceLog(unreachable(), monitor(queue_rows=20, batch_rows=5), metrics)
    server = frame_server(FrameModel(), log_, metrics)
    try:
        answers, slowest = [], 0.0
        for n in range(30):
            started = time.monotonic()
            answers.append(invoke(server, json.dumps({"dataframe_records": [{"title": f"t{n}"}]}))[0])
            slowest = max(slowest, time.monotonic() - started)
        assert answers == [200] * 30
        assert slowest < inference.CONNECT_SECONDS  # no request waited for a connection attempt
        wait_for(lambda: log_.dropped["queue_full"] == 10)
        status, text = call(server, "GET", "/metrics")
        assert status == 200
        assert 'tagifai_inference_log_rows_dropped_total{reason="queue_full"} 10.0' in text
        assert "tagifai_inference_log_rows_waiting 20.0" in text
        assert "tagifai_inference_log_rows_written_total 0.0" in text
        assert 'tagifai_serve_requests_total{code="200"} 30.0' in text
        started = time.monotonic()
        log_.close(timeout=1.0)  # bounded: what cannot be written by then is dropped and counted
        assert time.monotonic() - started < 1.0 + inference.CONNECT_SECONDS
    finally:
        server.stop(grace_seconds=2)
    assert dropped(metrics, "shutdown") == 20 and waiting(metrics) == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    warnings = [message for message in said if "inference log" in message]
    assert len(warnings) == 1 and "cannot reach the database; retrying" in warnings[0]  # once, not once per attempt
    assert not any(SECRET in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------
# Against a real PostgreSQL


@pytest.fixture(scope="module")
def database() -> Iterator[Any]:
    """A throwaway PostgreSQL with a database `tagifai` (trust auth: any password is taken)."""
    with running_postgres("tagifai") as pg:
        yield pg


@pytest.fixture
def url(database: Any) -> str:
    """The database `tagifai` without the inference log, its URL with a password (to show it is never shown)."""
    query(database["tagifai"], f"DROP TABLE IF EXISTS {names.INFERENCE_LOG_TABLE}")
    return database["tagifai"].replace("postgres@", f"postgres:{SECRET}@")


@pytest.mark.e2e
def test_the_writer_creates_the_table_as_specified_and_inserts_batch_rows_at_a_time(url):
    metrics = Metrics()
    log_ = inference.InferenceLog(url, monitor(batch_rows=50), metrics)
    for n in range(40):  # 120 rows waiting before the writer starts
        log_.record(LOADED, payload(3, 3 * n), scored(3), 0.002)
    log_.start()
    wait_for(lambda: written(metrics) == 120)
    log_.close()
    columns = "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = %s"
    assert query(url, columns + " ORDER BY ordinal_position", names.INFERENCE_LOG_TABLE) == SCHEMA
    assert query(url, "SELECT pg_get_serial_sequence('inference_log', 'id') IS NOT NULL") == [(True,)]  # bigserial
    indexes = dict(query(url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'inference_log'"))
    assert indexes.keys() == {"inference_log_pkey", "inference_log_logged_at_idx"}
    assert indexes["inference_log_logged_at_idx"].endswith("(logged_at)")
    # Rows written by one INSERT share its transaction id.
    batches = query(url, "SELECT count(*) FROM inference_log GROUP BY xmin::text ORDER BY 1 DESC")
    assert [n for (n,) in batches] == [50, 50, 20]
    request = "(SELECT request_id FROM inference_log WHERE title = 'title 4')"
    titles = query(
        url, f"SELECT title, description, row_index FROM inference_log WHERE request_id = {request} ORDER BY 3"
    )
    assert titles == [("title 3", "d3", 0), ("title 4", "d4", 1), ("title 5", "d5", 2)]


@pytest.mark.e2e
def test_texts_are_stored_exactly_as_sent(url):
    texts = [
        'He said "hi", then\nleft\r\n',  # quotes, a comma, line breaks
        "\\.",  # COPY's end-of-data marker
        "before\n\\.\nafter",  # the marker alone on a line
        "\\N",  # COPY's NULL in its text format
        "NULL",
        "",
        "   ",
        "Ünïcödé — 机器学习 🚀",
        "back\\slash\ttab",
    ]
    metrics = Metrics()
    log_ = inference.InferenceLog(url, monitor(), metrics)
    data = pd.DataFrame({"title": texts, "description": list(reversed(texts))})
    log_.record(LOADED, Payload(data), [{"tag": t, "probability": 0.5} for t in texts], 0.001)
    log_.start()
    log_.close()
    assert query(url, "SELECT title, description, tag FROM inference_log ORDER BY row_index") == [
        (t, d, t) for t, d in zip(texts, reversed(texts), strict=True)
    ]


@pytest.mark.e2e
def test_served_requests_are_logged_as_sent_and_answered_and_refused_ones_are_not(url):
    metrics = Metrics()
    log_ = inference.InferenceLog(url, monitor(), metrics)
    server = frame_server(FrameModel(), log_, metrics)
    before = datetime.now(UTC)
    try:
        records = [{"title": "BERT", "description": "Fine-tune for QA"}, {"title": "YOLO", "description": None}]
        assert invoke(server, json.dumps({"dataframe_records": records}))[0] == 200
        split = {"columns": ["title"], "data": [["graph nets"]]}
        assert invoke(server, json.dumps({"dataframe_split": split}))[0] == 200
        assert invoke(server, "title,description\nResNet,images\n", "text/csv")[0] == 200
        assert invoke(server, json.dumps({"dataframe_records": [{"title": "boom"}]}))[0] == 400  # refused
        assert get(server, "/health")[0] == 200
        wait_for(lambda: written(metrics) == 4)
    finally:
        server.stop(grace_seconds=2)
    after = datetime.now(UTC)
    rows = query(
        url,
        "SELECT request_id, row_index, title, description, tag, probability, model_name, model_version, latency_ms,"
        " logged_at FROM inference_log ORDER BY id",
    )
    assert [row[1:8] for row in rows] == [
        (0, "BERT", "Fine-tune for QA", "BERT", 0.5, "tagifai", 7),  # FrameModel tags a row with its title, upper
        (1, "YOLO", "", "YOLO", 0.5, "tagifai", 7),
        (0, "graph nets", "", "GRAPH NETS", 0.5, "tagifai", 7),
        (0, "ResNet", "images", "RESNET", 0.5, "tagifai", 7),
    ]
    assert rows[0][0] == rows[1][0] and len({row[0] for row in rows}) == 3  # one id per request
    assert all(0 < row[8] < 5000 and before <= row[9] <= after for row in rows)
    assert dropped(metrics, "queue_full") == 0 and waiting(metrics) == 0


@pytest.mark.e2e
def test_while_postgresql_refuses_the_writer_requests_are_answered_then_what_waited_is_written(url, database, caplog):
    caplog.set_level(logging.INFO, logger="tagifai")
    metrics = Metrics()
    log_ = inference.InferenceLog(url, monitor(queue_rows=30, batch_rows=10), metrics)
    server = frame_server(FrameModel(), log_, metrics)
    two_rows = json.dumps({"dataframe_records": [{"title": "a"}, {"title": "b"}]})
    admin = database["postgres"]
    try:
        assert [invoke(server, two_rows)[0] for _ in range(5)] == [200] * 5
        wait_for(lambda: written(metrics) == 10)
        # PostgreSQL ends the writer's connection and takes no new one (as when it is down or restarting).
        query(admin, "ALTER DATABASE tagifai WITH ALLOW_CONNECTIONS false", autocommit=True)
        query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tagifai-serve'")
        assert [invoke(server, two_rows)[0] for _ in range(40)] == [200] * 40  # 80 rows: 30 may wait
        wait_for(lambda: waiting(metrics) == 30 and dropped(metrics, "queue_full") == 50)
        time.sleep(1.0)  # a few failed attempts
        assert written(metrics) == 10
        query(admin, "ALTER DATABASE tagifai WITH ALLOW_CONNECTIONS true", autocommit=True)
        wait_for(lambda: written(metrics) == 40, timeout=30)  # within the longest pause between attempts
    finally:
        query(admin, "ALTER DATABASE tagifai WITH ALLOW_CONNECTIONS true", autocommit=True)
        server.stop(grace_seconds=2)
    assert query(url, "SELECT count(*) FROM inference_log") == [(40,)]
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "inference log" in r.getMessage()]
    outage = [message for level, message in said if level >= logging.WARNING]
    assert len(outage) == 1 and "retrying" in outage[0], said
    assert any("writing again after" in message and "50 rows dropped meanwhile" in message for _, message in said)
    assert not any(SECRET in r.getMessage() or url in r.getMessage() for r in caplog.records)


@pytest.mark.e2e
def test_the_table_is_there_once_the_log_started_before_any_request(url):
    log_ = inference.InferenceLog(url, monitor(), Metrics())
    log_.start()
    try:
        wait_for(lambda: query(url, "SELECT to_regclass('inference_log') IS NOT NULL") == [(True,)], timeout=10)
    finally:
        log_.close()
    assert query(url, "SELECT count(*) FROM inference_log") == [(0,)]


@pytest.mark.e2e
def test_shutdown_writes_what_the_log_holds(url):
    metrics = Metrics()
    log_ = inference.InferenceLog(url, monitor(batch_rows=500), metrics)  # a batch waits up to a second to fill
    log_.start()
    for n in range(5):
        log_.record(LOADED, payload(5, 5 * n), scored(5), 0.001)
    started = time.monotonic()
    log_.close()
    assert time.monotonic() - started < inference.CLOSE_SECONDS
    assert written(metrics) == 25 and query(url, "SELECT count(*) FROM inference_log") == [(25,)]


@pytest.mark.e2e
def test_tagifai_serve_logs_to_the_database_its_environment_names_and_never_shows_it(store, model_name, url):
    version = register(model_name, store["models"]["v1"])
    MlflowClient().set_registered_model_alias(model_name, "champion", version)
    with serve_process(store, model_name, **{names.PREDICTIONS_DB_ENV: url}) as (server, ended):
        body = json.dumps({"dataframe_records": [{"title": "YOLO", "description": "detection"}]})
        assert [invoke(server, body)[0] for _ in range(3)] == [200] * 3
    assert ended["returncode"] == 0
    # Written at shutdown at the latest: nothing was lost by stopping.
    rows = query(url, "SELECT title, description, tag, model_name, model_version FROM inference_log")
    assert rows == [("YOLO", "detection", "v1", model_name, int(version))] * 3
    stderr = ended["stderr"]
    assert "serve: inference log on" in stderr and "3 rows written, 0 dropped" in stderr
    assert SECRET not in stderr and url.split("@")[1] not in stderr


class Dropping:
    """What `Outage` reads of an inference log: its drop counts, and its warnings."""

    def __init__(self) -> None:
        self.dropped = {"queue_full": 0, "shutdown": 0}
        self.warned: list[str] = []

    def warn(self, what: str, exc: BaseException) -> None:
        self.warned.append(what)


def test_an_outage_counts_the_rows_dropped_since_the_last_write_also_before_its_first_failed_attempt(caplog):
    caplog.set_level(logging.INFO, logger="tagifai")
    log_, outage = Dropping(), inference.Outage()
    log_.dropped["queue_full"] = 3
    outage.ended(log_)  # a write: nothing to say, the 3 dropped before it are not this outage's
    log_.dropped["queue_full"] += 50  # the queue filled while the writer waited, before it tried to write
    outage.failed(log_, "cannot write to the database", ConnectionError("gone"))
    log_.dropped["queue_full"] += 7
    outage.failed(log_, "cannot write to the database", ConnectionError("gone"))
    outage.ended(log_)
    outage.ended(log_)  # the next write: no outage to end
    said = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    assert len(log_.warned) == 1 and len(said) == 1 and "57 rows dropped meanwhile" in said[0], said
