"""Real services for end-to-end tests, started once per session: PostgreSQL, an `mlflow server`, the stack.

When a service cannot start here the tests skip, unless TAGIFAI_REQUIRE_SERVICES=1 (CI), where
they fail: CI must never pass by skipping the real thing.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests import harness
from tests.e2e import compose


@pytest.fixture(scope="session")
def postgres() -> Iterator[harness.Postgres]:
    """A running PostgreSQL (Debian's binaries) with a database `mlflow`."""
    with harness.running_postgres("mlflow") as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[harness.MlflowServer]:
    """A real tracking server on 127.0.0.1, its metadata in PostgreSQL, proxying artifacts."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with harness.running_mlflow_server(postgres["mlflow"], folder) as server:
        yield server


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[compose.Stack]:
    """One compose stack for every stack test of the session (each `make up` costs minutes)."""
    with compose.running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def first_run(stack):
    """One DAG run triggered through the REST API; returns (run id, run, seconds, container starts)."""
    client = stack.airflow()
    # Watch container starts live: the daemon keeps only its last few hundred events for --since.
    watcher = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start",
         "--filter", "label=org.tagifai.step"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    events: list[dict] = []

    def read() -> None:  # each start as it happens: its container's HostConfig, inspected while it runs
        for line in watcher.stdout:
            if line.strip():
                event = json.loads(line)
                inspected = subprocess.run(
                    ["docker", "inspect", "--format", "{{json .HostConfig}}", event["id"]],
                    capture_output=True,
                    text=True,
                )
                event["HostConfig"] = json.loads(inspected.stdout) if inspected.returncode == 0 else None
                events.append(event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    run_id = client.trigger({"num_trials": 3, "num_workers": 2})
    run = client.wait(run_id, timeout=1800)
    seconds = time.monotonic() - start
    watcher.terminate()
    reader.join(timeout=60)
    # The tasks label their containers with the DAG run id (tagifai/orchestration/runners.py).
    starts = [e for e in events if e["Actor"]["Attributes"].get("org.tagifai.pipeline-run-id") == run_id]
    return run_id, run, seconds, starts


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session's UI tests."""
    with compose.chromium() as session:
        yield session


# Stack tests that change the stack itself run after every other test that uses it: `make down` and
# `make up` again, then the switch to Celery (which ends with `make down`).
LAST = ("test_stack_lifecycle", "test_stack_celery")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the session: every other test, then the stack's lifecycle, then Celery."""
    rank = {name: index + 1 for index, name in enumerate(LAST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], 0))


@pytest.fixture(scope="session")
def faulted_run(stack, first_run) -> dict[str, Any]:
    """A forced run (every step runs again) during which MLflow restarts (in `optimize`) and the `train`
    container is killed. Its run, the faults injected, the task states and train's try number."""
    client = stack.airflow()
    run_id = client.trigger({"num_trials": 5, "force": True})
    faults: dict[str, str] = {}

    def inject_both() -> None:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and len(faults) < 2:
            states = client.task_states(run_id)
            if "mlflow" not in faults and "running" in (states.get("optimize[0]"), states.get("optimize[1]")):
                faults["mlflow"] = stack.compose("restart", "mlflow").stderr
            if "train" not in faults and states.get("train") == "running":
                labels = {"org.tagifai.step": "train", "org.tagifai.pipeline-run-id": run_id}
                for container in compose.task_containers(**labels):
                    subprocess.run(["docker", "kill", container], capture_output=True)
                    faults["train"] = container
            time.sleep(1)

    def inject() -> None:
        try:
            inject_both()
        except Exception as exc:  # noqa: BLE001 — shown by the test's assertion, not lost with the thread
            faults["error"] = repr(exc)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    run = client.wait(run_id, timeout=2400)
    injector.join(timeout=5)
    train = client.request(
        "GET", f"/api/v2/dags/tagifai_training/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/train"
    )
    return {"run_id": run_id, "run": run, "faults": faults, "states": client.task_states(run_id),
            "train_tries": train["try_number"]}  # fmt: skip
