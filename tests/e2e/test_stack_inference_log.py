"""The inference log and /metrics of the stack's `tagifai serve`: every answered row in PostgreSQL, and
with PostgreSQL stopped every request still answered, the rows that could not wait counted as dropped.

The outage stops the stack's `postgres` container: Airflow and MLflow lose their database too. The test
waits until no DAG run is active and pauses the watcher first; it starts `postgres` again and waits until
every service is healthy before the next test.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import wait_for
from harness.stack import pause_watcher
from tagifai.contract.config import load_settings
from tagifai.contract.names import INFERENCE_LOG_TABLE

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

CONNECTIONS = 10
REQUESTS = 1000
# Rows per request while PostgreSQL is down: the queue ([monitor] queue_rows, 20,000) fills in seconds.
OUTAGE_ROWS = 200
OUTAGE_SECONDS = 30
PROJECT = {"title": "YOLO object detection", "description": "Real-time detection of objects in images and video."}


def champion_version(stack) -> str:
    return stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]


def metrics(stack) -> dict[tuple[str, tuple], float]:
    """serve's /metrics now: each sample's value by (name, sorted labels)."""
    url = urlparse(stack.serve_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def send(stack, bodies: Callable[[int], bytes | None]) -> list:
    """POST `bodies(0)`, `bodies(1)`, … to /invocations on one keep-alive connection until it gives None.

    Returns each answer's status, or the error that stood for it (then on a new connection).
    """
    url = urlparse(stack.serve_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    answers: list = []
    index = 0
    while (body := bodies(index)) is not None:
        try:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            answers.append(response.status)
        except (OSError, http.client.HTTPException) as exc:
            answers.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        index += 1
    conn.close()
    return answers


def logged(stack, token: str) -> int:
    """Rows of the inference log whose title carries `token`."""
    return int(stack.psql(f"select count(*) from {INFERENCE_LOG_TABLE} where title like 'inference-log {token} %'"))


def health(stack) -> dict[str, str]:
    """Each running container of the stack: its health (healthy, starting, unhealthy), else its state."""
    ids = stack.compose("ps", "-q").stdout.split()
    template = "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    out = subprocess.run(["docker", "inspect", "--format", template, *ids], capture_output=True, text=True).stdout
    return dict(line.lstrip("/").split(" ", 1) for line in out.splitlines() if " " in line)


UP = ("healthy", "running")


def restore(stack, client, up_before: set[str]) -> None:
    """Start `postgres` again; wait until the containers up before are up again and MLflow, Airflow and serve answer.

    serve's /health says `ok` again once it asked MLflow for the alias: later tests find it as before.
    """
    started = stack.compose("start", "postgres")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: {name for name, state in health(stack).items() if state in UP} >= up_before, "healthy", 600)
    answer = "/api/v2/dags/tagifai_watch"
    wait_for(lambda: champion_version(stack) and client.request("GET", answer)["dag_id"], "MLflow and Airflow", 300)
    wait_for(lambda: stack.serve("/health")["status"] == "ok", "serve in sync with the alias again", 120)


def no_active_run(client) -> bool:
    """True when no run of any DAG is queued or running."""
    return not client.request("GET", "/api/v2/dags/~/dagRuns?state=queued&state=running&limit=10")["dag_runs"]


def test_serve_logs_every_answered_row_and_counts_its_requests(stack, first_run):
    wait_for(lambda: stack.serve("/version")["model_version"] == champion_version(stack), "serve follows champion", 120)
    token = uuid.uuid4().hex[:12]
    before = metrics(stack)

    def bodies(worker: int) -> Callable[[int], bytes | None]:
        def body(index: int) -> bytes | None:
            if index >= REQUESTS // CONNECTIONS:
                return None
            title = f"inference-log {token} {worker}-{index} {PROJECT['title']}"
            return json.dumps({"dataframe_records": [{**PROJECT, "title": title}]}).encode()

        return body

    started = time.monotonic()
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        answers = [a for each in pool.map(lambda w: send(stack, bodies(w)), range(CONNECTIONS)) for a in each]
    seconds = time.monotonic() - started
    assert answers == [200] * REQUESTS
    wait_for(lambda: logged(stack, token) >= REQUESTS * 0.99, "rows in the inference log", 60)
    after = metrics(stack)
    count = "tagifai_serve_requests_total"
    print(f"{REQUESTS} requests ({CONNECTIONS} connections): {REQUESTS / seconds:.0f}/s, {logged(stack, token)} rows")
    assert value(after, count, code="200") - value(before, count, code="200") == REQUESTS
    rows = "tagifai_serve_rows_scored_total"
    assert value(after, rows) - value(before, rows) == REQUESTS
    latency = "tagifai_serve_request_duration_seconds_count"
    assert value(after, latency) - value(before, latency) == REQUESTS
    written = "tagifai_inference_log_rows_written_total"
    assert value(after, written) - value(before, written) >= REQUESTS * 0.99
    assert value(after, "tagifai_serve_model_version") == int(champion_version(stack))
    # What was sent, as sent, with the version that answered; nothing about the caller.
    row = stack.psql(
        f"select description, model_name, model_version, latency_ms > 0 from {INFERENCE_LOG_TABLE}"
        f" where title = 'inference-log {token} 0-0 {PROJECT['title']}'"
    )
    assert row == f"{PROJECT['description']}|tagifai|{champion_version(stack)}|t"
    columns = stack.psql(
        f"select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns"
        f" where table_name = '{INFERENCE_LOG_TABLE}'"
    )
    assert columns == (
        "id,logged_at,request_id,row_index,title,description,tag,probability,model_name,model_version,latency_ms"
    )


def test_with_postgres_stopped_every_request_is_answered_and_the_dropped_rows_are_counted(stack, first_run):
    wait_for(lambda: stack.serve("/version")["model_version"] == champion_version(stack), "serve follows champion", 120)
    queue_rows = load_settings().monitor.queue_rows  # the stack's override leaves [monitor] as it is
    token = uuid.uuid4().hex[:12]
    client = stack.airflow()
    wait_for(lambda: no_active_run(client), "no active DAG run (the outage would fail its tasks)", 1800)
    up_before = {name for name, state in health(stack).items() if state in UP}
    watcher_was_paused = pause_watcher(client)
    sent = {"rows": 0}
    lock = threading.Lock()
    done = threading.Event()

    def body(index: int) -> bytes | None:
        if done.is_set():
            return None
        with lock:
            sent["rows"] += OUTAGE_ROWS
        request = uuid.uuid4().hex[:8]
        records = [{**PROJECT, "title": f"inference-log {token} {request} {n}"} for n in range(OUTAGE_ROWS)]
        return json.dumps({"dataframe_records": records}).encode()

    try:
        stopped = stack.compose("stop", "postgres")
        assert stopped.returncode == 0, stopped.stderr
        before = metrics(stack)
        down_at = time.monotonic()
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            senders = [pool.submit(send, stack, body) for _ in range(CONNECTIONS)]
            # 30 s, and until the queue had to drop (a slow machine sends fewer rows), 2 minutes at most.
            while time.monotonic() - down_at < OUTAGE_SECONDS or (
                sent["rows"] < queue_rows + 10 * OUTAGE_ROWS and time.monotonic() - down_at < 120
            ):
                time.sleep(1)
            during = metrics(stack)
            done.set()
            answers = [a for sender in senders for a in sender.result()]
        outage = time.monotonic() - down_at
    finally:
        restore(stack, client, up_before)
        pause_watcher(client, watcher_was_paused)
    print(f"postgres down {outage:.0f}s: {len(answers)} requests of {OUTAGE_ROWS} rows answered")
    assert answers == [200] * len(answers) and len(answers) * OUTAGE_ROWS > queue_rows
    dropped = "tagifai_inference_log_rows_dropped_total"
    lost = value(during, dropped, reason="queue_full") - value(before, dropped, reason="queue_full")
    assert lost > 0
    assert value(during, "tagifai_inference_log_rows_waiting") <= queue_rows
    count = "tagifai_serve_requests_total"
    assert value(during, count, code="200") > value(before, count, code="200")
    # Back: the writer reconnected and wrote the rows that waited.
    wait_for(lambda: logged(stack, token) > 0, "rows that waited through the outage, written", 120)
    assert logged(stack, token) <= sent["rows"] - lost
    after = metrics(stack)
    written = "tagifai_inference_log_rows_written_total"
    assert value(after, written) > value(during, written)
    assert value(after, count, code="200") >= value(during, count, code="200")  # the same serve, not restarted
