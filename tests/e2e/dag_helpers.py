"""Run the tagifai DAG for real: throwaway PostgreSQL, an mlflow server, `airflow dags test`.

Standard library only: these helpers run under the Airflow venv, which has neither mlflow nor
pandas; MLflow is queried through the tagifai venv's python in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "tagifai_training"
STEPS = ["elt", "validate", "optimize", "train", "evaluate", "register"]
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".venv-airflow"))
TAGIFAI_VENV = Path(os.environ.get("TAGIFAI_VENV", REPO / ".venv"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
TAGIFAI_PYTHON = TAGIFAI_VENV / "bin" / "python"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def require(condition: bool, reason: str) -> None:
    """Skip the test when `condition` is false, or fail when TAGIFAI_REQUIRE_SERVICES=1."""
    if condition:
        return
    if os.environ.get("TAGIFAI_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (TAGIFAI_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_readable(folder: Path) -> Path:
    """Let the image's non-root user read `folder` when it is bind-mounted into a container."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def wait_for(check, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `check()` until it returns true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


@contextlib.contextmanager
def running_postgres(*databases: str) -> Iterator[dict[str, str]]:
    """Run a throwaway PostgreSQL 15 on 127.0.0.1 with `databases`; yield their SQLAlchemy URLs by name.

    The Debian binaries refuse to run as root, so the cluster belongs to the `postgres` user, in a
    folder of its own under /tmp (pytest's tmp_path is root-only).
    """
    require((PG_BIN / "initdb").exists(), f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    folder = Path(tempfile.mkdtemp(prefix="tagifai-dag-pg-"))
    data = folder / "data"
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(
        [*run_as, PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [*run_as, PG_BIN / "postgres", "-D", data, "-p", str(port), "-k", folder, "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    [PG_BIN / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
                ).returncode
                == 0
            ),
            "PostgreSQL",
            proc=server,
        )
        for database in databases:
            subprocess.run(
                [PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
                check=True,
                capture_output=True,
            )
        # Name the driver: SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3, which mlflow lacks.
        yield {database: f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}" for database in databases}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def running_mlflow_server(backend_uri: str, folder: Path) -> Iterator[str]:
    """Run `mlflow server` (tagifai venv) on 127.0.0.1, serving artifacts; yield its URL."""
    require(TAGIFAI_PYTHON.exists(), f"tagifai venv not found at {TAGIFAI_VENV} (make install)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            TAGIFAI_VENV / "bin" / "mlflow",
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        start_new_session=True,
    )
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, "mlflow server", 120, server)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()


def tagifai_python(script: str, *args: str, tracking_uri: str | None = None) -> object:
    """Run `script` with the tagifai venv's python (against `tracking_uri`); return the JSON it prints last."""
    env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    out = subprocess.run(
        [TAGIFAI_PYTHON, "-c", script, *args], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    return tagifai_python(script, model_name, tracking_uri=tracking_uri)


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
    return tagifai_python(script, pipeline_run_id, tracking_uri=tracking_uri)


def study_states(storage: str, study_name: str) -> dict[str, int]:
    """How many trials of an Optuna study are in each state (COMPLETE, PRUNED, FAIL, ...)."""
    script = """
import collections, json, sys
import optuna
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(json.dumps(collections.Counter(t.state.name for t in study.trials)))
"""
    return tagifai_python(script, study_name, storage)


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
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # `airflow dags test` waits out retry delays for real; a bad-data failure is final.
            "TAGIFAI_TASK_RETRIES": "0",
            **extra,
        }
    )
    return env


def dags_test(home: Path, conf: Mapping[str, object], extra_env: Mapping[str, str], timeout: float = 1500) -> DagRun:
    """Run `airflow dags test tagifai_training -c CONF`; return its output and the task states."""
    require(AIRFLOW.exists(), f"Airflow venv not found at {AIRFLOW_VENV} (make airflow-install)")
    env = airflow_env(home, extra_env)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    start = time.monotonic()
    proc = subprocess.run(
        [AIRFLOW, "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    (home / "dags-test.log").write_text(output, encoding="utf-8")
    run_id, rows = task_instances(env)
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


def task_instances(env: Mapping[str, str]) -> tuple[str | None, list[dict]]:
    """Return the id of the DAG's latest run and its task instances as `airflow tasks states-for-dag-run` shows them."""
    runs = subprocess.run(
        [AIRFLOW, "dags", "list-runs", DAG_ID, "-o", "json"], env=env, check=True, capture_output=True, text=True
    ).stdout
    run_ids = [run["run_id"] for run in json.loads(_json_part(runs))]
    if not run_ids:
        return None, {}
    states = subprocess.run(
        [AIRFLOW, "tasks", "states-for-dag-run", DAG_ID, run_ids[0], "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return run_ids[0], json.loads(_json_part(states))


def instance_name(row: Mapping[str, object]) -> str:
    """A task instance's name: its task id, with `[map index]` for the instances of a mapped task."""
    index = str(row.get("map_index", ""))  # "" or "-1": not mapped
    return f"{row['task_id']}[{index}]" if index not in ("", "-1") else str(row["task_id"])


def _json_part(text: str) -> str:
    """The JSON document in a CLI's stdout (Airflow may log lines, even `[warning ]` ones, before it)."""
    for line in reversed(text.splitlines()):
        if line.startswith(("[{", "[]", "{")):
            with contextlib.suppress(ValueError):
                json.loads(line)
                return line
    raise ValueError(f"no JSON document in: {text[-2000:]}")
