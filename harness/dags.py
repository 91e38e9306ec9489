"""Run the tagifai DAG for real with `airflow dags test`, and read what it left in Airflow and MLflow.

Standard library only: these helpers run under the Airflow venv, which has neither mlflow nor
pandas; MLflow is queried through the tagifai venv's python in a subprocess (`harness.tagifai_python`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import harness
from harness import AIRFLOW, require, synthetic, tagifai_python

DAG_ID = "tagifai_training"
STEPS = ["elt", "validate", "optimize", "train", "evaluate", "register"]
# The task instances of a run with two optimize workers, as `DagRun.states` names them.
TASKS_WITH_TWO_WORKERS = [
    "elt", "validate", "optimize_workers", "optimize[0]", "optimize[1]", "train", "evaluate", "register",
    "publish_champion",
]  # fmt: skip


def champion(tracking_uri: str, model_name: str = "tagifai") -> dict | None:
    """Return the `champion` version of `model_name` (version, run_id, its tags and its run's), or None."""
    script = """
import json, sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
try:
    mv = MlflowClient().get_model_version_by_alias(sys.argv[1], "champion")
except MlflowException:
    print("null")
else:
    run = MlflowClient().get_run(mv.run_id)
    print(json.dumps({"version": str(mv.version), "run_id": mv.run_id, "tags": mv.tags, "run_tags": run.data.tags}))
"""
    return tagifai_python(script, model_name, env={"MLFLOW_TRACKING_URI": tracking_uri})


def pipeline_runs(tracking_uri: str, pipeline_run_id: str) -> list[dict]:
    """Every MLflow run of one pipeline run: step, run id, tags, metrics, start and end (ms)."""
    script = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient()
experiments = [e.experiment_id for e in client.search_experiments()]
runs = client.search_runs(experiments, f"tags.pipeline_run_id = '{sys.argv[1]}'", max_results=1000)
print(json.dumps([
    {"step": r.data.tags.get("tagifai.step"), "run_id": r.info.run_id, "tags": r.data.tags,
     "metrics": r.data.metrics, "start": r.info.start_time, "end": r.info.end_time}
    for r in runs
]))
"""
    return tagifai_python(script, pipeline_run_id, env={"MLFLOW_TRACKING_URI": tracking_uri})


def study_states(storage: str, study_name: str) -> dict[str, int]:
    """How many trials of an Optuna study are in each state (COMPLETE, PRUNED, FAIL, ...)."""
    script = """
import collections, json, sys
import optuna
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(json.dumps(collections.Counter(t.state.name for t in study.trials)))
"""
    return tagifai_python(script, study_name, storage)


def write_config(path: Path, extra: str = "", base: str = synthetic.SMALL_CONFIG) -> Path:
    """The TAGIFAI_CONFIG of a DAG test: `base` (small synthetic data), no retries (`airflow dags test`
    waits out retry delays for real; a bad-data failure is final), then `extra`.
    """
    path.write_text(f"{base}\n[retry]\nretries = 0\n{extra}", encoding="utf-8")
    return path


@dataclass
class DagRun:
    """What one `airflow dags test` left behind."""

    returncode: int
    output: str
    run_id: str | None
    states: dict[str, str | None]
    # Wall time of the `airflow dags test` command, and of each task instance that ran.
    seconds: float = 0.0
    durations: dict[str, float] = field(default_factory=dict)


def airflow_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Environment for the airflow CLI: its own metadata DB in `home`, the repo's dags folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "TAGIFAI_", "MLFLOW_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(harness.REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            **extra,
        }
    )
    return env


@functools.cache
def migrated_db() -> Path:
    """An empty Airflow metadata DB (SQLite), migrated once per process: each test's home starts from a copy."""
    home = Path(tempfile.mkdtemp(prefix="tagifai-airflow-db-"))
    atexit.register(shutil.rmtree, home, True)
    subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home, {}), check=True, capture_output=True)
    return home / "airflow.db"


def dags_test(
    home: Path, conf: Mapping[str, object], extra_env: Mapping[str, str], timeout: float = 1500, dag_id: str = DAG_ID
) -> DagRun:
    """Run `airflow dags test <dag_id> -c CONF`; return its output and the task states."""
    require(AIRFLOW.exists(), f"Airflow venv not found at {harness.AIRFLOW_VENV} (make airflow-install)")
    env = airflow_env(home, extra_env)
    if not (home / "airflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_db(), home / "airflow.db")
    start = time.monotonic()
    proc = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    (home / "dags-test.log").write_text(output, encoding="utf-8")
    run_id, rows = task_instances(env, dag_id)
    states = {instance_name(row): row["state"] or None for row in rows}
    return DagRun(proc.returncode, output, run_id, states, seconds, durations(rows))


def rerun_task(home: Path, extra_env: Mapping[str, str], run_id: str, task_id: str, map_index: int = -1) -> dict:
    """Run one task of an earlier DAG run again (`airflow tasks test`), as a retry would; return its step's JSON."""
    args = [AIRFLOW, "tasks", "test", DAG_ID, task_id, run_id, "--map-index", str(map_index)]
    proc = subprocess.run(args, env=airflow_env(home, extra_env), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    # The step's JSON line, as the task logged it (possibly behind a log prefix).
    found = re.findall(r'\{"run_id": .*\}', proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-5000:]
    return json.loads(found[-1])


def durations(rows: list[dict]) -> dict[str, float]:
    """Seconds each task instance ran, for those that started and ended."""
    return {
        instance_name(row): (
            datetime.fromisoformat(row["end_date"]) - datetime.fromisoformat(row["start_date"])
        ).total_seconds()
        for row in rows
        if row.get("start_date") and row.get("end_date")
    }


def task_instances(env: Mapping[str, str], dag_id: str = DAG_ID) -> tuple[str | None, list[dict]]:
    """Return the id of the DAG's latest run and its task instances (task_id, map_index, state, start and
    end dates), read from the test's own SQLite metadata DB: what `airflow tasks states-for-dag-run` shows,
    without two Airflow CLIs' 12 s of imports.
    """
    with contextlib.closing(sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")) as db:
        db.row_factory = sqlite3.Row
        latest = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        if latest is None:
            return None, []
        rows = db.execute(
            "SELECT task_id, map_index, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, latest["run_id"]),
        ).fetchall()
    return latest["run_id"], [dict(row) for row in rows]


def instance_name(row: Mapping[str, object]) -> str:
    """A task instance's name: its task id, with `[map index]` for the instances of a mapped task."""
    index = str(row.get("map_index", ""))  # "" or "-1": not mapped
    return f"{row['task_id']}[{index}]" if index not in ("", "-1") else str(row["task_id"])


@contextlib.contextmanager
def webhook_sink(status: int = 200) -> Iterator[tuple[str, list[dict]]]:
    """A chat webhook on 127.0.0.1 (a real HTTP server in a thread): yields its URL and the JSON bodies it got."""
    received: list[dict] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 — http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({"path": self.path, "content_type": self.headers.get("Content-Type"), **json.loads(body)})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/t0ken-in-the-url", received
    finally:
        server.shutdown()
        server.server_close()
