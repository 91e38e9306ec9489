"""Real services for end-to-end tests, started once per session: PostgreSQL, an `mlflow server`, the stack.

When a service cannot start here the tests skip, unless TAGIFAI_REQUIRE_SERVICES=1 (CI), where
they fail: CI must never pass by skipping the real thing.
"""

from __future__ import annotations

import contextlib
import csv
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import harness
from harness import stack as compose
from harness import synthetic


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
    with compose.step_starts() as events:
        start = time.monotonic()
        run_id = client.trigger({"num_trials": 3, "num_workers": 2})
        run = client.wait(run_id, timeout=1800)
        seconds = time.monotonic() - start
    # The tasks label their containers with the DAG run id (tagifai/orchestration/runners.py).
    starts = [e for e in events if e["Actor"]["Attributes"].get("org.tagifai.pipeline-run-id") == run_id]
    return run_id, run, seconds, starts


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session's UI tests."""
    with compose.chromium() as session:
        yield session


# Stack tests that change the stack run after every other test that uses it: human approval (its
# promotions would make the later runs' registers new), retention (its forced runs would make the later runs'
# steps new; it deletes old runs), `make down` and `make up` again, then the switch to Celery (which ends with
# `make down`).
LAST = ("test_stack_approval", "test_stack_retention", "test_stack_lifecycle", "test_stack_celery")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the session: every other test, then `LAST` in its order."""
    rank = {name: index + 1 for index, name in enumerate(LAST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], 0))


@pytest.fixture(scope="session")
def changed_data_run(stack, first_run) -> dict[str, Any]:
    """Rows appended to the stack's data, and the run the watcher's asset event started. While that run
    goes, the champion's model files are gone (put back after it), MLflow restarts (in `optimize`) and
    the `train` container is killed. The run once it ended, how long it took to start after the change,
    the faults injected, train's try number and the champion that could not be loaded.

    The last test of the session that needs the watcher: once the run ended, tagifai_watch is paused. A look
    every minute is four tasks and two containers; a slow two-core machine needs that CPU for the later tests.
    """
    client = stack.airflow()
    # The watcher has looked at least once (its first look records the data, and emits nothing).
    deadline = time.monotonic() + 4 * compose.WATCH_SECONDS
    while not any(r["state"] == "success" for r in client.runs("tagifai_watch")):
        assert time.monotonic() < deadline, "tagifai_watch has not run"
        time.sleep(5)
    try:
        with champion_files_moved_aside(stack) as unloadable:
            return {**run_on_new_data(stack, client), "unloadable_champion": unloadable}
    finally:
        compose.pause_watcher(client)


def run_on_new_data(stack, client) -> dict[str, Any]:
    """Append rows to the data; once the asset event started a run, inject faults until it ends."""
    before = {r["dag_run_id"] for r in client.runs()}
    append_projects(Path(stack.env["TAGIFAI_PROJECTS_URL"]), Path(stack.env["TAGIFAI_TAGS_URL"]), count=12)
    changed = time.monotonic()
    deadline = changed + 2 * compose.WATCH_SECONDS + 120
    while True:
        started = [r for r in client.runs() if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"]
        if started:
            break
        assert time.monotonic() < deadline, "no run started by an asset event within two watch intervals"
        time.sleep(5)
    waited = time.monotonic() - changed  # from the change to the run's start
    run_id = started[0]["dag_run_id"]
    with injecting_faults(stack, client, run_id) as faults:
        run = client.wait(run_id, timeout=2400)
    train = client.task_instance(run_id, "train")
    return {"run": run, "waited": waited, "faults": faults, "states": client.task_states(run_id),
            "train_tries": train["try_number"]}  # fmt: skip


def append_projects(projects: Path, tags: Path, count: int) -> None:
    """Append `count` copies of labelled projects, under new ids, to the data files (and their tags)."""
    with projects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with tags.open(newline="", encoding="utf-8") as f:
        tag_of = {row["id"]: row["tag"] for row in csv.DictReader(f)}
    top = max(int(row["id"]) for row in rows)
    originals = [row for row in rows if row["id"] in tag_of][:count]
    new = [{**row, "id": str(top + i + 1)} for i, row in enumerate(originals)]
    synthetic.write_csv(projects, rows + new, columns=list(rows[0]))
    with tags.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[n["id"], tag_of[o["id"]]] for n, o in zip(new, originals, strict=True)])


@contextlib.contextmanager
def champion_files_moved_aside(stack) -> Iterator[str]:
    """The champion's model files moved aside in MLflow's artifact store while the block runs; yields its version."""
    champion = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]
    model_id = champion["source"].removeprefix("models:/")
    logged = stack.mlflow(f"logged-models/{model_id}")["model"]["info"]
    # mlflow-artifacts:/<experiment>/models/<id>/artifacts, in the server's volume at /mlartifacts.
    folder = "/mlartifacts/" + logged["artifact_uri"].removeprefix("mlflow-artifacts:/").removesuffix("/artifacts")
    moved = stack.compose("exec", "-T", "mlflow", "mv", folder, f"{folder}.aside")
    assert moved.returncode == 0, moved.stderr
    try:
        yield champion["version"]
    finally:
        back = stack.compose("exec", "-T", "mlflow", "mv", f"{folder}.aside", folder)
        assert back.returncode == 0, back.stderr


@contextlib.contextmanager
def injecting_faults(stack, client, run_id: str) -> Iterator[dict[str, str]]:
    """While the block runs: restart MLflow once an `optimize` task of `run_id` runs, kill its `train`
    container once there is one. Yields the faults injected (name -> what), filled as they happen."""
    faults: dict[str, str] = {}

    def inject(stop: threading.Event) -> None:
        while not stop.is_set() and len(faults) < 2:
            states = client.task_states(run_id)
            if "mlflow" not in faults and "running" in (states.get("optimize[0]"), states.get("optimize[1]")):
                faults["mlflow"] = stack.compose("restart", "mlflow").stderr
            if "train" not in faults and states.get("train") == "running":
                labels = {"org.tagifai.step": "train", "org.tagifai.pipeline-run-id": run_id}
                for container in compose.task_containers(**labels):
                    subprocess.run(["docker", "kill", container], capture_output=True)
                    faults["train"] = container
            stop.wait(1)

    def guarded(stop: threading.Event) -> None:
        try:
            inject(stop)
        except Exception as exc:  # noqa: BLE001 — shown by the test's assertion, not lost with the thread
            faults["error"] = repr(exc)

    with harness.while_running(guarded, join_seconds=30):
        yield faults
