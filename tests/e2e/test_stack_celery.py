"""The stack on Celery, as a user switches to it: `AIRFLOW_EXECUTOR=CeleryExecutor` and
`COMPOSE_PROFILES=celery` in `.env`, then `make up`; runs, models and Airflow history survive the
`make down` before it. Two workers share a run and, when one is killed, its tasks are retried on
the other and its orphaned step containers stopped (one run proves both); a worker started from
docker-compose.worker.yml, as on another machine, takes tasks; Flower needs a login. Then `make down`
leaves nothing running. Runs last: it changes the session's stack (tests/e2e/conftest.py).
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from scripts import stack as stack_script
from tests.e2e.compose import PROJECT, command_lines, host_address, make, running_containers, task_containers
from tests.harness import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

REMOTE = "tagifai-e2e-remote"


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
    """The session's stack switched to Celery with two workers, on the Docker bridge's address."""
    make("down", env_file=stack.env_file, timeout=600)
    gateway = host_address("bridge")
    stack_script.update_env(
        stack.env_file,
        {
            "AIRFLOW_EXECUTOR": "CeleryExecutor",
            "COMPOSE_PROFILES": "celery",
            "CELERY_WORKERS": "2",
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


def test_a_run_spreads_over_two_workers_and_survives_one_killed_mid_task(stack, celery):
    # One run proves both: its tasks go to both workers, and when the worker running an optimize
    # task is killed, that task is retried on the other, which finishes the run and stops no
    # container of it left behind. Neither the broker's password nor Flower's is on a command line.
    workers = worker_containers()
    assert len(workers) == 2
    client = stack.airflow()
    with command_lines(interval=1) as seen:
        run_id = client.trigger({"num_trials": 4, "num_workers": 4, "force": True})
        deadline = time.monotonic() + 900
        killed = None
        while killed is None:
            assert time.monotonic() < deadline, "no optimize task ran"
            running = [
                ti for ti in instances(client, run_id) if ti["task_id"] == "optimize" and ti["state"] == "running"
            ]
            if running and running[0]["hostname"] in workers:
                killed = running[0]["hostname"]
                subprocess.run(["docker", "kill", workers[killed]], check=True, capture_output=True)
            time.sleep(2)
        run = client.wait(run_id, timeout=2400)
    assert run["state"] == "success", client.task_states(run_id)
    retried = [ti for ti in instances(client, run_id) if ti["task_id"] == "optimize" and ti["try_number"] > 1]
    assert retried, "the killed worker's optimize task was not retried"
    hosts = tried_hosts(client, run_id)
    ran = set().union(*hosts.values())
    assert ran == set(workers), hosts  # both workers ran tasks of this one run, no other host did
    assert killed in hosts["optimize"] and any(ti["hostname"] != killed for ti in retried), hosts
    assert task_containers(**{"org.tagifai.pipeline-run-id": run_id}) == []  # none left running
    assert stack.leaked(seen) == set()


def test_a_worker_on_another_machine_takes_tasks_and_its_steps_log_to_mlflow(stack, celery, tmp_path):
    env = tmp_path / "worker.env"
    env.write_text(stack.env_file.read_text())
    stack_script.update_env(
        env, {"COMPOSE_PROJECT_NAME": REMOTE, "STACK_HOST": celery["gateway"], "WORKER_HOSTNAME": f"{REMOTE}-worker"}
    )
    make("worker", f"WORKER_ENV={env}", env_file=stack.env_file, timeout=1200)
    try:
        # Only the remote worker is left to take tasks.
        assert stack.compose("stop", "airflow-worker").returncode == 0
        client = stack.airflow()
        run_id = client.trigger({"num_trials": 2, "num_workers": 1, "force": True})
        run = client.wait(run_id, timeout=1800)
        assert run["state"] == "success", client.task_states(run_id)
        assert {ti["hostname"] for ti in instances(client, run_id) if ti["state"] == "success"} == {f"{REMOTE}-worker"}
        experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]
        body = {"experiment_ids": [experiment], "filter": f"tags.pipeline_run_id = '{run_id}'", "max_results": 100}
        steps = {
            t["value"]
            for r in stack.mlflow_post("runs/search", body)["runs"]
            for t in r["data"]["tags"]
            if t["key"] == "tagifai.step"
        }
        assert {"elt", "validate", "optimize", "train", "evaluate", "register"} <= steps
    finally:
        make("worker-down", f"WORKER_ENV={env}", env_file=stack.env_file, timeout=600)
        stack.compose("start", "airflow-worker")


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
