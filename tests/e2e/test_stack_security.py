"""Safe to share: in the running stack, the trigger form cannot reach the host or the stack's own
services, MLflow needs a login, a trigger cannot loosen the gate, shuffled labels fail validate, no
secret is on a command line, a champion that cannot be loaded is not compared and the run says why, bad
input is not retried, serve and batch scoring log into MLflow with logins of their own, each database role
reaches only its database, the stack's MLflow names are the deployment's, and nothing that loads a model
unpickles.
"""

from __future__ import annotations

import base64
import csv
import json
import random
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import synthetic
from harness.stack import command_lines

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]


def data_folder(stack) -> Path:
    """The stack's data folder (the folder of TAGIFAI_PROJECTS_URL: a named data folder)."""
    return Path(stack.env["TAGIFAI_PROJECTS_URL"]).parent


def started_containers(run_id: str, run) -> list[dict]:
    """Run `run()` while watching container starts; return those of the DAG run `run_id`."""
    watcher = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start",
         "--filter", f"label=org.tagifai.pipeline-run-id={run_id}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run()
    finally:
        watcher.terminate()
    return [json.loads(line) for line in watcher.communicate(timeout=30)[0].splitlines() if line.strip()]


def mlflow_runs_of(stack, pipeline_run_id: str) -> list[dict]:
    """Every MLflow run, in any experiment, that carries this pipeline run id."""
    experiments = [
        e["experiment_id"] for e in stack.mlflow_post("experiments/search", {"max_results": 1000})["experiments"]
    ]
    body = {"experiment_ids": experiments, "filter": f"tags.pipeline_run_id = '{pipeline_run_id}'", "max_results": 100}
    return stack.mlflow_post("runs/search", body).get("runs", [])


REFUSED = [
    # (projects_url, the rule the elt task's log names)
    ("/etc/passwd", "is outside the data folders this deployment allows"),  # a host file
    ("/tmp/tagifai-not-a-data-folder/projects.csv", "is outside the data folders"),  # outside TAGIFAI_DATA_DIRS
    ("{data}/../../../../etc/passwd", "is outside the data folders"),  # a `..` path out of the data folder
    ("http://mlflow:5000/api/2.0/mlflow/experiments/search", "is not an allowed host"),  # the stack's MLflow
    ("http://169.254.169.254/latest/meta-data/", "is not an allowed host"),  # link-local: cloud metadata
    ("https://raw.githubusercontent.com/someone/else/main/x.csv", "is not under an allowed URL prefix"),  # anyone's
]


@pytest.mark.parametrize(("source", "rule"), REFUSED, ids=[s for s, _ in REFUSED])
def test_a_refused_source_fails_at_elt_with_no_container_and_nothing_in_mlflow(stack, first_run, source, rule):
    client = stack.airflow()
    projects_url = source.format(data=data_folder(stack))
    run_id = client.trigger({"projects_url": projects_url, "num_trials": 1, "num_workers": 1})
    runs: dict = {}
    starts = started_containers(run_id, lambda: runs.update(run=client.wait(run_id, timeout=600)))
    assert runs["run"]["state"] == "failed"
    elt = client.task_instance(run_id, "elt")
    assert (elt["state"], elt["try_number"]) == ("failed", 1)  # refused once, not retried
    assert rule in client.task_log(run_id, "elt")
    assert starts == []  # no step container started
    assert mlflow_runs_of(stack, run_id) == []  # nothing logged, so no MLflow run or artifact holds the file


def test_anonymous_mlflow_requests_get_401_and_the_steps_still_log(stack, first_run):
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(stack.mlflow_request("/api/2.0/mlflow/experiments/search?max_results=5", login=None))
    assert anonymous.value.code == 401
    with urllib.request.urlopen(
        stack.mlflow_request("/api/2.0/mlflow/experiments/search?max_results=5", login="VIEWER")
    ) as ok:
        assert ok.status == 200  # the viewer login browses
    # The viewer login cannot move the champion.
    body = {"name": "tagifai", "alias": "champion", "version": "1"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.mlflow_request("/api/2.0/mlflow/registered-models/alias", body, login="VIEWER"))
    assert refused.value.code == 403
    # The steps logged with the admin login the DAG handed them.
    assert first_run[1]["state"] == "success" and mlflow_runs_of(stack, first_run[0])


@pytest.fixture(scope="module")
def shuffled_labels(stack):
    """The real projects with their tags shuffled among them: the label mix is the same, so drift passes."""
    folder = data_folder(stack)
    with Path(stack.env["TAGIFAI_TAGS_URL"]).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    tags = [row["tag"] for row in rows]
    random.Random(0).shuffle(tags)
    path = synthetic.write_csv(
        folder / "tags-shuffled.csv", [{**row, "tag": tag} for row, tag in zip(rows, tags, strict=True)]
    )
    path.chmod(0o644)
    yield path
    path.unlink()


def test_a_trigger_cannot_loosen_the_gate_and_shuffled_labels_fail_validate(stack, first_run, shuffled_labels):
    client = stack.airflow()
    before = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    with pytest.raises(RuntimeError, match="HTTP 4"):  # the form refuses a looser gate
        client.trigger({"tags_url": str(shuffled_labels), "min_f1": 0, "max_regression": 1})
    # Shuffled labels carry no signal: they fail at validate, once, and move nothing; while the run goes,
    # no password is on any command line of the host.
    with command_lines() as seen:
        run_id = client.trigger({"tags_url": str(shuffled_labels), "num_trials": 1, "num_workers": 1})
        run = client.wait(run_id, timeout=900)
    assert run["state"] == "failed", client.task_states(run_id)
    validate = client.task_instance(run_id, "validate")
    assert (validate["state"], validate["try_number"]) == ("failed", 1)  # a retry cannot fix the labels
    assert "validation failed: label_signal: macro f1 " in client.task_log(run_id, "validate")
    after = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    assert after == before
    assert len(seen) > 10 and stack.leaked(seen) == set()


def tag(run: dict, key: str) -> str | None:
    """A tag of a run as the MLflow REST API returns it."""
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def test_bad_data_fails_validate_once(stack, first_run):
    folder = data_folder(stack)
    with Path(stack.env["TAGIFAI_PROJECTS_URL"]).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    duplicated = synthetic.write_csv(folder / "projects-duplicated.csv", rows + rows[:3])
    duplicated.chmod(0o644)
    try:
        client = stack.airflow()
        run_id = client.trigger({"projects_url": str(duplicated), "num_trials": 1, "num_workers": 1})
        assert client.wait(run_id, timeout=900)["state"] == "failed"
        validate = client.task_instance(run_id, "validate")
        assert (validate["state"], validate["try_number"]) == ("failed", 1)  # a retry cannot fix the data
        assert "validation failed: unique_ids" in client.task_log(run_id, "validate")
        # One message, naming the task and the check, with a link to the task's log.
        told = stack.wait_for_mail(run_id, "validate", "unique_ids")
        assert len(told) == 1 and f"{stack.env['AIRFLOW_PUBLIC_URL']}/dags/tagifai_training/runs/" in told[0]
    finally:
        duplicated.unlink()


def test_a_champion_that_cannot_be_loaded_is_not_compared_with_a_reason(stack, changed_data_run):
    # The champion's model files were gone while new data's run went (tests/e2e/conftest.py): it could
    # not be re-scored, which the run reports. The new data is a new holdout, on which it has no recorded
    # f1: the challenger was judged by min_f1, on its test split and on the holdout.
    client, run_id = stack.airflow(), changed_data_run["run"]["dag_run_id"]
    register = next(r for r in mlflow_runs_of(stack, run_id) if tag(r, "tagifai.step") == "register")
    assert tag(register, "champion_unloadable") and tag(register, "champion_holdout_f1_recorded") == "false"
    unloadable = changed_data_run["unloadable_champion"]
    assert f"the champion v{unloadable} cannot be loaded: it has no recorded f1 on this holdout" in tag(
        register, "promotion"
    )
    assert tag(register, "promoted") == "true"
    assert f"the champion v{unloadable} cannot be loaded, not re-scored" in client.task_log(run_id, "register")


def container_env(stack, service: str) -> dict[str, str]:
    """The environment of the running container of a compose service (docker inspect)."""
    [container] = stack.compose("ps", "-q", service).stdout.split()
    inspected = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Env}}", container], capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in json.loads(inspected.stdout))


def mlflow_status(stack, path: str, login: str | None, body: dict | None = None, method: str | None = None) -> int:
    """The HTTP status MLflow answers `login` (ADMIN, SERVE, BATCH, VIEWER) with."""
    request = stack.mlflow_request(path, body, login=login)
    request.method = method or request.get_method()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_and_batch_scoring_use_their_own_logins_and_the_viewers_password_changes_nothing_for_them(
    stack, first_run
):
    stack.reread()  # the services' logins as .env holds them
    env = stack.env
    # serve: its own login, and nobody else's secret.
    serve = container_env(stack, "serve")
    assert (serve["MLFLOW_TRACKING_USERNAME"], serve["MLFLOW_TRACKING_PASSWORD"]) == (
        env["MLFLOW_SERVE_USERNAME"],
        env["MLFLOW_SERVE_PASSWORD"],
    )
    assert not {env["MLFLOW_VIEWER_PASSWORD"], env["MLFLOW_ADMIN_PASSWORD"]} & set(serve.values())
    # Both service logins read, and cannot move the champion.
    alias = {"name": "tagifai", "alias": "champion", "version": "1"}
    for login in ("SERVE", "BATCH"):
        assert mlflow_status(stack, "/api/2.0/mlflow/registered-models/search?max_results=5", login) == 200
        assert mlflow_status(stack, "/api/2.0/mlflow/registered-models/alias", login, alias) == 403
    # Batch scoring (started by first_run's champion event) wrote its run with its own login: that login
    # may write the predictions experiment (it made it, or the admin let it), where a read-only login may not.
    client, deadline = stack.airflow(), time.monotonic() + 900
    while "success" not in (states := [r["state"] for r in client.runs("tagifai_batch_predictions")]):
        assert time.monotonic() < deadline and "failed" not in states, f"batch runs: {states}"
        time.sleep(5)
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai-predictions")["experiment"]
    query = urllib.parse.urlencode(
        {
            "username": env["MLFLOW_BATCH_USERNAME"],
            "resource_type": "experiment",
            "resource_id": experiment["experiment_id"],
        }
    )
    with urllib.request.urlopen(stack.mlflow_request(f"/api/3.0/mlflow/users/permissions/get?{query}")) as answer:
        assert json.loads(answer.read())["permission"] in ("EDIT", "MANAGE")
    runs = stack.mlflow_post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 5})
    assert any(tag(r, "tagifai.step") == "predict-batch" for r in runs["runs"])
    # Whoever holds the viewer login changes its password (MLflow lets a user do that; here the admin does).
    viewer, password = env["MLFLOW_VIEWER_USERNAME"], env["MLFLOW_VIEWER_PASSWORD"]
    update = "/api/2.0/mlflow/users/update-password"
    assert mlflow_status(stack, update, "ADMIN", {"username": viewer, "password": "not-" + password}, "PATCH") == 200
    try:
        # The new password holds at once (MLflow caches a checked login under its password, so a new one is
        # checked anew), while serve, asking MLflow each poll ([serve] poll_seconds = 10) with its own login,
        # never meets a refused login (an earlier test may have left it a reason to be degraded, but not that).
        request = stack.mlflow_request("/api/2.0/mlflow/experiments/search?max_results=5", login=None)
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{viewer}:not-{password}".encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        for _ in range(3):
            time.sleep(5)
            health = stack.serve("/health")  # 200: a model is loaded
            assert not re.search(r"401|403|[Uu]nauthori[sz]ed|credentials", str(health.get("last_error"))), health
        assert mlflow_status(stack, "/api/2.0/mlflow/registered-models/search?max_results=5", "SERVE") == 200
    finally:  # the other tests browse as the viewer of .env
        assert mlflow_status(stack, update, "ADMIN", {"username": viewer, "password": password}, "PATCH") == 200


def test_each_database_role_reaches_only_its_database_and_the_superuser_and_flower_hold_no_more(stack):
    import psycopg2

    env = stack.env
    # Inside the postgres container, over TCP with each role's password (read there from its environment).
    as_mlflow = 'PGPASSWORD="$MLFLOW_DB_PASSWORD" psql -h 127.0.0.1 -U mlflow -d {db} -Atc "select 1"'
    own = stack.compose("exec", "-T", "postgres", "sh", "-c", as_mlflow.format(db="mlflow"))
    assert (own.returncode, own.stdout.strip()) == (0, "1"), own.stderr
    other = stack.compose("exec", "-T", "postgres", "sh", "-c", as_mlflow.format(db="airflow"))
    assert other.returncode != 0 and "no pg_hba.conf entry" in other.stderr, other.stderr
    # Through the published port (for workers on other machines): each role to its own database only,
    # and never the superuser.
    published = {
        "host": env.get("BIND_ADDRESS") or "127.0.0.1",
        "port": int(env["POSTGRES_PORT"]),
        "connect_timeout": 10,
    }
    if published["host"] == "0.0.0.0":
        published["host"] = "127.0.0.1"
    with psycopg2.connect(user="optuna", password=env["OPTUNA_DB_PASSWORD"], dbname="optuna", **published) as conn:
        with conn.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
    conn.close()
    for user, password, db in (
        ("postgres", env["POSTGRES_PASSWORD"], "postgres"),
        ("postgres", env["POSTGRES_PASSWORD"], "airflow"),
        ("optuna", env["OPTUNA_DB_PASSWORD"], "tagifai"),
    ):
        with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
            psycopg2.connect(user=user, password=password, dbname=db, **published)
    # Flower (celery profile) gets its broker and its own login, no other secret.
    config = stack.compose("--profile", "celery", "config")
    assert config.returncode == 0, config.stderr
    flower = yaml.safe_load(config.stdout)["services"]["flower"]["environment"]
    assert set(flower) == {
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__FLOWER_BASIC_AUTH",
    }


def test_the_stacks_mlflow_names_are_the_deployments(stack, first_run):
    # `make up` ran `tagifai claim` as the admin: the names exist, and no other login may write them.
    def viewer(path: str, body: dict) -> int:
        try:
            with urllib.request.urlopen(stack.mlflow_request(path, body, login="VIEWER"), timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    experiments = ["tagifai", "tagifai-champion-history", "tagifai-predictions"]
    for name in experiments:
        assert viewer("/api/2.0/mlflow/experiments/create", {"name": name}) == 400  # exists: not the viewer's
    assert viewer("/api/2.0/mlflow/registered-models/create", {"name": "tagifai"}) == 400
    ids = [
        stack.mlflow("experiments/get-by-name", experiment_name=n)["experiment"]["experiment_id"] for n in experiments
    ]
    username = stack.env["MLFLOW_VIEWER_USERNAME"]
    for kind, key in [*(("experiment", i) for i in ids), ("registered_model", "tagifai")]:
        query = urllib.parse.urlencode({"username": username, "resource_type": kind, "resource_id": key})
        with urllib.request.urlopen(stack.mlflow_request(f"/api/3.0/mlflow/users/permissions/get?{query}")) as got:
            assert json.loads(got.read())["permission"] == "READ", (kind, key)
    # After a run: the champion the pipeline moved is not the viewer's to move.
    champion = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    assert (
        viewer("/api/2.0/mlflow/registered-models/alias", {"name": "tagifai", "alias": "champion", "version": champion})
        == 403
    )
    # The trigger form offers only the experiments the deployer lists ([mlflow]).
    with pytest.raises(RuntimeError, match="HTTP 4"):
        stack.airflow().trigger({"experiment_name": "someone-elses", "num_trials": 1, "num_workers": 1})


def test_every_container_that_loads_a_model_has_pickle_deserialization_off(stack, first_run):
    # serve, and every step (the same image): MLflow unpickles nothing, and the champion loads all the same.
    image = stack.env.get("TAGIFAI_IMAGE") or "tagifai:latest"
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Env}}", image], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in json.loads(inspected.stdout)
    assert container_env(stack, "serve")["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert first_run[1]["state"] == "success"  # evaluate and register loaded the model in such containers
