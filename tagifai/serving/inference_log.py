"""The inference log: each answered request's rows, written to PostgreSQL off the request path.

A request hands its parsed input and its predictions to a bounded queue (`record`: a coin toss for
`[monitor] sample_rate`, a lock held for an append); one writer thread turns them into rows of the table
`inference_log` (`names.INFERENCE_LOG_TABLE`, in the database of TAGIFAI_PREDICTIONS_DB) and writes
`[monitor] batch_rows` per statement and transaction, by COPY (CSV: half the client CPU of a multi-row
INSERT, CPU the event loop shares). At most `[monitor] queue_rows` rows wait (queued or being written):
past that a request's rows are dropped and counted, so a slow or absent PostgreSQL never slows or fails a
request. The writer reconnects with backoff; on shutdown it flushes what it holds for a bounded time.

Only what was sent (title, description) and what was answered is kept: nothing about the caller.

    psql "$DATABASE_URL" -c "SELECT tag, count(*), avg(probability) FROM inference_log
                             WHERE logged_at > now() - interval '1 day' GROUP BY tag"
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import psycopg2

from tagifai.contract import names
from tagifai.contract.errors import BadInputError
from tagifai.contract.settings import Monitor
from tagifai.pipeline import predictions
from tagifai.serving.follower import Loaded
from tagifai.serving.metrics import DROP_REASONS, Metrics
from tagifai.serving.protocol import Payload

log = logging.getLogger("tagifai")

TABLE = names.INFERENCE_LOG_TABLE
# The drift monitor reads these columns and the retention job deletes by `logged_at`: change neither here alone.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL,
    request_id text NOT NULL,
    row_index integer NOT NULL,
    title text NOT NULL,
    description text NOT NULL,
    tag text NOT NULL,
    probability double precision NOT NULL,
    model_name text NOT NULL,
    model_version integer NOT NULL,
    latency_ms double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_logged_at_idx ON {TABLE} (logged_at);
"""
COLUMNS = (
    "logged_at", "request_id", "row_index", "title", "description", "tag", "probability", "model_name",
    "model_version", "latency_ms",
)  # fmt: skip
COPY = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)"

# A row waits at most about this long for its batch to fill before it is written.
FLUSH_SECONDS = 1.0
# Seconds between attempts while PostgreSQL cannot be reached: doubling from the first to the last.
RETRY_SECONDS = (0.5, 10.0)
# Bounds on one attempt: connecting, a statement, unacknowledged data on a dead connection.
CONNECT_SECONDS = 5
STATEMENT_MS = 10_000
# On shutdown, what the writer holds may take this long to write (milliseconds when PostgreSQL is up); the rest
# is dropped and counted. Within compose's stop_grace_period (25 s) after requests in flight (10 s) and the
# follower's stop (10 s).
CLOSE_SECONDS = 3.0


@dataclass(frozen=True, eq=False, slots=True)
class Answered:
    """One answered request, as the request path hands it over; the writer makes its table rows."""

    data: Any
    predictions: Any
    rows: int  # how many of its rows to log: the first ones (the queue may have had room for only some)
    model_name: str
    model_version: str
    latency_ms: float
    at: float  # time.time() of the answer
    request_id: str
    queued: float  # time.monotonic() of the answer: how long it has waited


def text(value: Any) -> str:
    """A cell as the table keeps it: missing (None, NaN) is empty, anything else its string."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return value if isinstance(value, str) else str(value)


def storable(value: str) -> bool:
    """True when PostgreSQL's text can hold `value`: no NUL, and UTF-8 (JSON may carry a lone surrogate)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def csv_rows(rows: list[tuple]) -> io.StringIO:
    """`rows` as COPY's CSV: every text quoted (a quoted empty string is not NULL), numbers as they are."""
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerows(rows)
    buffer.seek(0)
    return buffer


def table_rows(answered: Answered) -> tuple[list[tuple], int]:
    """The `COLUMNS` of each of `answered`'s rows to log, and how many rows cannot be logged.

    A row cannot be logged when its prediction has no `tag` and numeric `probability`, or a text is not one
    PostgreSQL can hold (`storable`); none of them when the predictions are not one record per row.
    `logged_at` is ISO 8601 text, with its time zone.
    """
    try:
        frame = answered.data if isinstance(answered.data, pd.DataFrame) else pd.DataFrame(answered.data)
        version = int(answered.model_version)
    except (TypeError, ValueError):
        return [], answered.rows
    scored = answered.predictions
    if not isinstance(scored, list) or len(scored) != len(frame) or len(frame) < answered.rows:
        return [], answered.rows
    columns = [frame[c].tolist() if c in frame.columns else [""] * len(frame) for c in ("title", "description")]
    logged_at = datetime.fromtimestamp(answered.at, UTC).isoformat()
    rows = []
    for index in range(answered.rows):
        prediction = scored[index] if isinstance(scored[index], dict) else {}
        tag, probability = prediction.get("tag"), prediction.get("probability")
        title, description = text(columns[0][index]), text(columns[1][index])
        if tag is None or not isinstance(probability, int | float) or not storable(title + description + str(tag)):
            continue
        rows.append((
            logged_at, answered.request_id, index, title, description, str(tag), float(probability),
            answered.model_name, version, answered.latency_ms,
        ))  # fmt: skip
    return rows, answered.rows - len(rows)


def open_log(database_url: str | None, settings: Monitor, metrics: Metrics) -> InferenceLog | None:
    """The inference log the settings ask for (not started), or None, saying once why it is off.

    Raises:
        BadInputError: `database_url` is not a PostgreSQL URL.
    """
    if not database_url:
        log.info("serve: inference log off: %s is not set", names.PREDICTIONS_DB_ENV)
        return None
    if settings.sample_rate == 0:
        log.info("serve: inference log off: [monitor] sample_rate is 0")
        return None
    return InferenceLog(database_url, settings, metrics)


class InferenceLog:
    """A bounded queue of answered requests, and the thread that writes their rows to PostgreSQL."""

    def __init__(self, database_url: str, settings: Monitor, metrics: Metrics, seed: int | None = None) -> None:
        """Log `settings.sample_rate` of the requests to `database_url` once started; count in `metrics`.

        Raises:
            BadInputError: `database_url` is not a PostgreSQL URL (the message does not show it).
        """
        try:
            self._dsn = predictions.dsn(database_url)
        except BadInputError:
            raise BadInputError(
                f"{names.PREDICTIONS_DB_ENV} is not postgresql://user:password@host:port/database "
                "(or postgresql+psycopg2://…)"
            ) from None
        self._url = database_url  # only to scrub it from libpq's messages
        self.sample_rate = settings.sample_rate
        self.queue_rows, self.batch_rows = settings.queue_rows, settings.batch_rows
        self.metrics = metrics
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # rows for a batch, or stopping
        self._queue: deque[Answered] = deque()
        self._queued = 0  # rows in `_queue`
        self._held = 0  # rows the writer took and has not written yet
        self._stopping = False
        self._abandoned = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        metrics.waiting(lambda: self._queued + self._held)

    # ---- the request path ---------------------------------------------------------------------

    def record(self, loaded: Loaded, payload: Payload, scored: Any, seconds: float) -> None:
        """Queue an answered request's rows, if it is sampled and while there is room; count what does not fit."""
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        rows = payload.rows
        answered = Answered(
            payload.data, scored, rows, str(loaded.info.get("model_name", "")), loaded.version, seconds * 1000.0,
            time.time(), uuid.uuid4().hex, time.monotonic(),
        )  # fmt: skip
        with self._lock:
            reason = "shutdown" if self._stopping else "queue_full"
            fits = 0 if self._stopping else max(0, min(rows, self.queue_rows - self._queued - self._held))
            if fits:
                self._queue.append(answered if fits == rows else replace(answered, rows=fits))
                self._queued += fits
                if self._queued >= self.batch_rows > self._queued - fits:  # a batch just filled: wake the writer
                    self._ready.notify()
            self.dropped[reason] += rows - fits
        if rows - fits:
            self.metrics.dropped(reason, rows - fits)

    # ---- starting and stopping ----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer: it connects (and makes the table) in the background, PostgreSQL up or not."""
        self._thread = threading.Thread(target=self._write, name="tagifai-inference-log", daemon=True)
        self._thread.start()
        log.info(
            "serve: inference log on: %g%% of the requests to table %s (%s), at most %d rows waiting",
            100 * self.sample_rate, TABLE, names.PREDICTIONS_DB_ENV, self.queue_rows,
        )  # fmt: skip

    def close(self, timeout: float | None = None) -> None:
        """Write what is waiting, for up to `timeout` seconds (`CLOSE_SECONDS`); drop and count the rest; stop."""
        timeout = CLOSE_SECONDS if timeout is None else timeout
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            with self._lock:
                if self._thread.is_alive():  # stuck in a call to PostgreSQL: what it holds is lost
                    self._abandoned = True
                    self._drop_all("shutdown")
        shutdown = self.dropped["shutdown"]
        log.info(
            "serve: inference log: %d rows written, %d dropped%s",
            self.written, sum(self.dropped.values()), f" ({shutdown} of them at shutdown)" if shutdown else "",
        )  # fmt: skip

    # ---- the writer thread ----------------------------------------------------------------------

    def _write(self) -> None:
        """Take rows, insert them a batch at a time; on failure reconnect and try again until stopped."""
        connection: Any = None
        pending: list[tuple] = []
        outage = Outage()
        try:  # now, not at the first row: the table is there for its readers from the start
            connection = self._connect()
        except Exception as exc:
            outage.failed(self, "cannot reach the database", exc)
        while True:
            if len(pending) < self.batch_rows:  # wait for rows if none is held, else top the batch up
                if (taken := self._take(self.batch_rows - len(pending), wait=not pending)) is None:
                    break
                pending += self._rows(taken)
                if not pending:
                    continue
            if time.monotonic() > self._deadline:
                with self._lock:
                    self._drop_all("shutdown")
                break
            batch = pending[: self.batch_rows]
            try:
                connection = connection or self._connect()
            except Exception as exc:  # down, unreachable, refusing the login: try again later
                outage.failed(self, "cannot reach the database", exc)
                self._pause(outage.failures)
                continue
            try:
                with connection, connection.cursor() as cursor:
                    cursor.copy_expert(COPY, csv_rows(batch))
            except Exception as exc:
                connection = _close(connection)
                if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):  # the connection broke
                    outage.failed(self, "cannot write to the database", exc)
                    self._pause(outage.failures)
                elif outage.refused(self, exc):  # refused again on a new connection: it will never take it
                    self._done(len(batch), "rejected")
                    pending = pending[len(batch) :]
                continue
            self._done(len(batch))
            pending = pending[len(batch) :]
            outage.ended(self)
        _close(connection)

    def _take(self, want: int, wait: bool) -> list[Answered] | None:
        """Requests waiting, whole, until they hold `want` rows or none is left; None: stopping, none left.

        With `wait`, first wait until a batch's worth of rows waits or a row waited `FLUSH_SECONDS`.
        """
        with self._lock:
            while wait and self._queued < self.batch_rows:
                if not self._queue and self._stopping:
                    return None
                waited = time.monotonic() - self._queue[0].queued if self._queue else 0.0
                if self._queue and (self._stopping or waited >= FLUSH_SECONDS):
                    break
                self._ready.wait(max(0.01, FLUSH_SECONDS - waited))
            taken, rows = [], 0
            while self._queue and rows < want:
                taken.append(self._queue.popleft())
                rows += taken[-1].rows
            self._queued -= rows
            self._held += rows
            return taken

    def _rows(self, taken: list[Answered]) -> list[tuple]:
        """The table rows of the requests `taken`; those that cannot be logged are dropped and counted."""
        rows: list[tuple] = []
        for answered in taken:
            try:
                logged, invalid = table_rows(answered)
            except Exception:  # noqa: BLE001 — an input no test foresaw: drop it, keep the writer
                logged, invalid = [], answered.rows
            rows += logged
            if invalid:
                self._done(invalid, "invalid")
        return rows

    def _done(self, rows: int, reason: str | None = None) -> None:
        """`rows` of those held were written (or dropped for `reason`)."""
        with self._lock:
            if self._abandoned:
                return
            self._held -= rows
            if reason is None:
                self.written += rows
            else:
                self.dropped[reason] += rows
        if reason is None:
            self.metrics.log_written.inc(rows)
        else:
            self.metrics.dropped(reason, rows)

    def _drop_all(self, reason: str) -> None:
        """Count every row waiting or held as dropped for `reason` (the lock is held)."""
        rows = self._queued + self._held
        self._queue.clear()
        self._queued = self._held = 0
        self.dropped[reason] += rows
        self.metrics.dropped(reason, rows)

    def _pause(self, failures: int) -> None:
        """Wait before the next attempt: backoff, doubling with `failures`; cut short at the shutdown deadline."""
        pause = min(RETRY_SECONDS[1], RETRY_SECONDS[0] * 2 ** min(failures - 1, 10))
        with self._lock:
            self._ready.wait_for(lambda: time.monotonic() > self._deadline, min(pause, self._left()))

    def _left(self) -> float:
        """Seconds to the shutdown deadline (infinite while serving)."""
        return max(0.0, self._deadline - time.monotonic()) + 0.01

    def _connect(self) -> Any:
        """A new connection, with the table and its index in place (created by the first writer)."""
        connection = psycopg2.connect(
            self._dsn, connect_timeout=CONNECT_SECONDS, application_name="tagifai-serve", client_encoding="UTF8",
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3, tcp_user_timeout=STATEMENT_MS,
        )  # fmt: skip
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = %s", (STATEMENT_MS,))
                # Creators take turns: two would race to create the table (a catalog unique violation).
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tagifai.{TABLE}",))
                cursor.execute(SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def warn(self, what: str, exc: BaseException) -> None:
        """One warning line with the reason (libpq's), without the URL or its password."""
        reason = predictions.scrub(" ".join(str(exc).split()) or type(exc).__name__, self._url)
        log.warning("serve: inference log: %s: %s: %s", what, type(exc).__name__, reason)


class Outage:
    """The writer's failures since its last write: how many, since when, and what has been said of them.

    The rows an outage lost are those dropped since the last write, not since the first failed attempt:
    requests fill the queue while the writer waits, and may have dropped rows before it tries to write.
    """

    def __init__(self) -> None:
        """No failure yet."""
        self.failures = 0
        self.since: float | None = None
        self.dropped_before = 0  # dropped rows counted at the last write
        self.refusals = 0
        self.said_refused = False

    def failed(self, inference_log: InferenceLog, what: str, exc: BaseException) -> None:
        """The database could not be reached or the connection broke: said once per outage."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            inference_log.warn(f"{what}; retrying (rows past [monitor] queue_rows are dropped)", exc)

    def refused(self, inference_log: InferenceLog, exc: BaseException) -> bool:
        """PostgreSQL refused a batch: True the second time in a row (drop it; said once until a write succeeds)."""
        self.refusals += 1
        if self.refusals < 2:
            return False  # try it once more, on a new connection (the table is made again if it went)
        self.refusals = 0
        if not self.said_refused:
            inference_log.warn("PostgreSQL refused a batch twice; dropped it", exc)
            self.said_refused = True
        return True

    def ended(self, inference_log: InferenceLog) -> None:
        """A write succeeded: say so if it ends an outage."""
        dropped = sum(inference_log.dropped.values())
        if self.since is not None:
            lost = dropped - self.dropped_before
            log.info(
                "serve: inference log: writing again after %.0f s; %d rows dropped meanwhile",
                time.monotonic() - self.since, lost,
            )  # fmt: skip
        self.failures, self.since, self.refusals, self.said_refused = 0, None, 0, False
        self.dropped_before = dropped


def _close(connection: Any) -> None:
    """Close `connection` (if any), whatever state it is in; None."""
    if connection is not None:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 — already broken: nothing more to do with it
            pass
    return None
