"""The stack on Celery, as a user switches to it: `AIRFLOW_EXECUTOR=CeleryExecutor` and
`COMPOSE_PROFILES=celery` in `.env`, then `make up`; runs, models and Airflow history survive the
`make down` before it. One forced run proves the rest: its tasks go to the stack's worker and to a
worker started from docker-compose.worker.yml as on another machine (whose steps log to MLflow);
when the stack's worker is killed mid-task, its task is retried on the other, which finishes the
run, and no step container of it is left, running or stopped; every step ran again (`force`).
Flower needs a login. Then `make down` leaves nothing running. Runs last: it changes the session's
stack (tests/e2e/conftest.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import free_port
from harness.stack import (
    PROJECT,
    command_lines,
    host_address,
    make,
    pause_watcher,
    running_containers,
    step_outputs,
    task_containers,
)
from scripts import stack as stack_script

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

REMOTE = "tagifai-e2e-remote"
REMOTE_HOSTNAME = f"{REMOTE}-worker"


def worker_containers() -> dict[str, str]:
    """The stack's Celery worker containers: hostname -> container id."""
    ids = running_containers(**{"com.docker.compose.project": PROJECT, "com.docker.compose.service": "airflow-worker"})
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Hostname}} {{.Id}}", *ids], capture_output=True, text=True
    )
    return dict(line.split() for line in out.stdout.splitlines())


def instances(client, run_id: str) -> list[dict]:
    path = f"/api/v2/dags/tagifai_training/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances"
    return client.request("GET", path)["task_instances"]


@pytest.fixture(scope="module")
def celery(stack):
    """The session's stack switched to Celery with a worker, on the Docker bridge's address."""
    make("down", env_file=stack.env_file, timeout=600)
    gateway = host_address("bridge")
    stack_script.update_env(
        stack.env_file,
        {
            "AIRFLOW_EXECUTOR": "CeleryExecutor",
            "COMPOSE_PROFILES": "celery",
            "CELERY_WORKERS": "1",
            # Published where a worker "on another machine" (another compose project) can reach them.
            "BIND_ADDRESS": gateway,
            "REDIS_PORT": str(free_port()),
            "POSTGRES_PORT": str(free_port()),
            "FLOWER_PORT": str(free_port()),
            "MLFLOW_EXTRA_ALLOWED_HOSTS": f"{gateway}:{stack.env['MLFLOW_PORT']}",
            "TASK_HEARTBEAT_TIMEOUT": "60",
        },
    )
    stack.reread()
    make("up", env_file=stack.env_file)
    # `make up` unpaused the watcher; nothing here needs its look every minute (tests/e2e/conftest.py).
    pause_watcher(stack.airflow())
    return {"gateway": gateway}


def test_runs_models_and_history_survive_down_and_up(stack, first_run, celery):
    # The Celery fixture's `make up` follows a `make down` (and a change of executor): nothing is lost.
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]
    assert version["version"]
    runs = stack.airflow().request("GET", "/api/v2/dags/tagifai_training/dagRuns?limit=100")["dag_runs"]
    assert first_run[0] in {r["dag_run_id"] for r in runs}


def tried_hosts(client, run_id: str) -> dict[str, set[str]]:
    """Every worker that ran a try of a task of the run (failed tries included): task -> hostnames."""
    run = urllib.request.quote(run_id, safe="")
    hosts: dict[str, set[str]] = {}
    for ti in instances(client, run_id):
        path = f"/api/v2/dags/tagifai_training/dagRuns/{run}/taskInstances/{ti['task_id']}/{ti['map_index']}/tries"
        tries = client.request("GET", path)["task_instances"]
        hosts.setdefault(ti["task_id"], set()).update(t["hostname"] for t in tries if t["hostname"])
    return hosts


@contextlib.contextmanager
def remote_worker(stack, gateway: str, folder: Path) -> Iterator[str]:
    """A worker started from docker-compose.worker.yml with its own settings file, as on another machine,
    while the block runs; yields its hostname."""
    env = folder / "worker.env"
    env.write_text(stack.env_file.read_text())
    stack_script.update_env(
        env, {"COMPOSE_PROJECT_NAME": REMOTE, "STACK_HOST": gateway, "WORKER_HOSTNAME": REMOTE_HOSTNAME}
    )
    make("worker", f"WORKER_ENV={env}", env_file=stack.env_file, timeout=1200)
    try:
        yield REMOTE_HOSTNAME
    finally:
        make("worker-down", f"WORKER_ENV={env}", env_file=stack.env_file, timeout=600)


@pytest.fixture(scope="module")
def celery_run(stack, celery, tmp_path_factory):
    """A forced run over the stack's worker and a remote one; the stack's worker is killed while it runs
    an optimize task. The run, the killed worker's hostname, and the command lines seen meanwhile."""
    [(here, container)] = worker_containers().items()
    client = stack.airflow()
    with remote_worker(stack, celery["gateway"], tmp_path_factory.mktemp("remote")), command_lines(interval=1) as seen:
        run_id = client.trigger({"num_trials": 4, "num_workers": 4, "force": True})
        deadline = time.monotonic() + 900
        while True:
            assert time.monotonic() < deadline, f"no optimize task ran on the stack's worker {here}"
            optimize = [ti for ti in instances(client, run_id) if ti["task_id"] == "optimize"]
            # Killed once none is still queued: a task a dead worker had taken but not yet started is only
            # given back after Airflow's task_queued_timeout (10 min); one it runs is retried after its
            # missing heartbeats (TASK_HEARTBEAT_TIMEOUT), which is what this test is about.
            if any(ti["state"] == "running" and ti["hostname"] == here for ti in optimize) and not any(
                ti["state"] in ("scheduled", "queued") for ti in optimize
            ):
                subprocess.run(["docker", "kill", container], check=True, capture_output=True)
                break
            time.sleep(2)
        run = client.wait(run_id, timeout=2400)
    return {"run_id": run_id, "run": run, "killed": here, "seen": seen}


def test_a_run_spreads_over_two_machines_workers_and_survives_losing_one(stack, celery_run):
    # Neither the broker's password nor Flower's is on a command line.
    client, run_id, killed = stack.airflow(), celery_run["run_id"], celery_run["killed"]
    assert celery_run["run"]["state"] == "success", client.task_states(run_id)
    retried = [ti for ti in instances(client, run_id) if ti["task_id"] == "optimize" and ti["try_number"] > 1]
    assert retried, "the killed worker's optimize task was not retried"
    hosts = tried_hosts(client, run_id)
    assert set().union(*hosts.values()) == {killed, REMOTE_HOSTNAME}, hosts  # both ran tasks, no other host did
    assert killed in hosts["optimize"] and all(ti["hostname"] == REMOTE_HOSTNAME for ti in retried), hosts
    # After the kill, only the remote worker was left: it ran the last steps, which logged to MLflow.
    assert {task: hosts[task] for task in ("train", "evaluate", "register")} == dict.fromkeys(
        ("train", "evaluate", "register"), {REMOTE_HOSTNAME}
    )
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]
    body = {"experiment_ids": [experiment], "filter": f"tags.pipeline_run_id = '{run_id}'", "max_results": 100}
    steps = {
        t["value"] for r in stack.mlflow_post("runs/search", body)["runs"] for t in r["data"]["tags"]
        if t["key"] == "tagifai.step"
    }  # fmt: skip
    assert {"elt", "validate", "optimize", "train", "evaluate", "register"} <= steps
    # None left, running or stopped: the retries removed the dead worker's (the rest removed themselves).
    assert running_containers(stopped_too=True, **{"org.tagifai.pipeline-run-id": run_id}) == []
    assert stack.leaked(celery_run["seen"]) == set()


def test_force_runs_every_step_again(stack, first_run, celery_run):
    # The Celery run is forced: on data every step of which has run before, where each would be reused.
    client = stack.airflow()
    forced = step_outputs(client, celery_run["run_id"])
    assert not any(out.get("reused") for out in forced.values())
    assert "plan" not in forced["elt"]
    first = step_outputs(client, first_run[0])
    assert forced["elt"]["run_id"] != first["elt"]["run_id"]
    assert forced["train"]["run_id"] != first["train"]["run_id"]


def test_flower_needs_its_login(stack, celery):
    url = f"http://{celery['gateway']}:{stack.env['FLOWER_PORT']}/"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=30)
    assert anonymous.value.code == 401
    login = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    login.add_password(None, url, stack.env["FLOWER_USER"], stack.env["FLOWER_PASSWORD"])
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(login))
    with opener.open(url, timeout=30) as page:
        assert page.status == 200


def test_make_down_leaves_no_containers_running(stack):
    make("down", env_file=stack.env_file, timeout=600)
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
    assert running_containers(**{"com.docker.compose.project": REMOTE}) == []
    assert task_containers() == []
