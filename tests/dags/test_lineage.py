"""OpenLineage: the datasets each step names, the events' facets, the step's run ids, and where events go."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from tagifai.contract.config import config_dir, load
from tagifai.orchestration import lineage

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
NS = "tagifai"
PROJECTS, TAGS = "/srv/data/projects.csv", "file:///srv/data/tags.csv"
SOURCES = [("file", "/srv/data/projects.csv"), ("file", "/srv/data/tags.csv")]
SHA = {name: name[0] * 64 for name in ("labeled", "train", "val", "test", "holdout")}
DATABASE = "postgresql+psycopg2://tagifai:s3cret-pw@postgres:5432/tagifai"
# What the steps print (their JSON lines), as far as lineage reads them.
ELT = {"run_id": "elt-run", "experiment_id": "1", "data_sha256": SHA["labeled"]}
VALIDATE = {
    "run_id": "validate-run",
    "experiment_id": "1",
    "data_sha256": SHA["labeled"],
    "split_sha256": {split: SHA[split] for split in ("holdout", "train", "val", "test")},
}
TRAIN = {"run_id": "train-run", "experiment_id": "1", "model_uri": "models:/m-0123abcd"}
REGISTER = {"run_id": "register-run", "experiment_id": "1", "model_name": "tagifai", "version": "3", "promoted": True}


def data(name: str) -> tuple[str, str]:
    return NS, f"tagifai-{name}@sha256:{SHA[name]}"


MODEL, VERSION = (NS, "models:/m-0123abcd"), (NS, "models:/tagifai/3")
PREDICTIONS = ("postgres://postgres:5432", "tagifai.public.predictions")
INFERENCE_LOG = ("postgres://postgres:5432", "tagifai.public.inference_log")


@pytest.mark.parametrize(
    ("step", "output", "upstream", "sources", "inputs", "outputs"),
    [
        # elt reads the sources (the holdout's too, here the same files: named once) and writes the labeled data.
        ("elt", ELT, {}, [PROJECTS, TAGS, PROJECTS, TAGS], SOURCES, [data("labeled")]),
        # validate reads the labeled data and the holdout's sources, and writes the four splits.
        ("validate", VALIDATE, {"elt": ELT}, [PROJECTS, TAGS], [*SOURCES, data("labeled")],
         [data("holdout"), data("train"), data("val"), data("test")]),
        # A run made before validate printed its splits (reused): the labeled data from elt, no splits named.
        ("validate", {"run_id": "old", "reused": True}, {"elt": ELT}, [], [data("labeled")], []),
        ("optimize", {"run_id": "o", "study_name": "s"}, {"validate": VALIDATE}, [], [data("train")], []),
        ("train", TRAIN, {"validate": VALIDATE}, [], [data("train"), data("val")], [MODEL]),
        ("evaluate", {"run_id": "e"}, {"validate": VALIDATE, "train": TRAIN}, [], [MODEL, data("test")], []),
        # register is gated on the holdout, and writes the version.
        ("register", REGISTER, {"validate": VALIDATE, "train": TRAIN}, [], [MODEL, data("holdout")], [VERSION]),
        ("decide", {**REGISTER, "decision": "approved"}, {}, [], [VERSION], []),
        ("predict-batch", {"run_id": "p", "model_name": "tagifai", "model_version": "3"}, {}, [PROJECTS],
         [SOURCES[0], VERSION], [PREDICTIONS]),
        # Before predict-batch runs (START): its source, and the table it writes.
        ("predict-batch", None, {}, [PROJECTS], [SOURCES[0]], [PREDICTIONS]),
        # Before register runs: nothing is known yet.
        ("register", None, {}, [], [], []),
        ("checksum", {"sha256": SHA["labeled"]}, {}, [TAGS], [SOURCES[1]], []),
        ("monitor", {"run_id": "m"}, {}, [], [INFERENCE_LOG, PREDICTIONS], []),
    ],
)  # fmt: skip
def test_each_step_names_the_datasets_it_read_and_wrote(step, output, upstream, sources, inputs, outputs):
    environ = {"TAGIFAI_PREDICTIONS_DB": DATABASE}
    assert lineage.step_datasets(step, NS, output, upstream, sources, environ) == (inputs, outputs)


@pytest.mark.parametrize("url", ["/srv/data/projects.csv", "file:///srv/data/projects.csv"])
def test_a_local_source_is_the_dataset_its_asset_names(url):
    from airflow.providers.common.compat.openlineage.utils.utils import translate_airflow_asset

    from tagifai.orchestration.assets import source_asset

    # The DAG's data Asset, as the provider itself turns it into an OpenLineage dataset.
    named = translate_airflow_asset(source_asset("projects", url), None)
    assert lineage.source(url) == (named.namespace, named.name) == ("file", "/srv/data/projects.csv")


@pytest.mark.parametrize(
    ("url", "dataset"),
    [
        ("https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/e8df/datasets/projects.csv",
         ("https://raw.githubusercontent.com", "/GokuMohandas/Made-With-ML/e8df/datasets/projects.csv")),
        # A login and a query may hold credentials: neither is in the name; a port that is not the default is.
        ("https://reader:t0ken@Data.Example:8443/p.csv?sig=s3cret", ("https://data.example:8443", "/p.csv")),
        ("http://data.example:80/a%20b.csv", ("http://data.example", "/a b.csv")),
        # Not a source any step can read (the source policy's rule): no dataset.
        ("ftp://data.example/p.csv", None),
    ],
)  # fmt: skip
def test_a_remote_source_is_named_by_its_host_and_path_only(url, dataset):
    assert lineage.source(url) == dataset


def test_a_table_is_named_by_its_server_and_database_never_its_login():
    assert lineage.table(DATABASE, "predictions") == PREDICTIONS
    assert lineage.table("postgresql://u:p@db.internal/tagifai", "inference_log") == (
        "postgres://db.internal:5432",
        "tagifai.public.inference_log",
    )
    assert lineage.table(None, "predictions") is None  # no database: no table named
    assert lineage.table("postgresql://u:p@db.internal/", "predictions") is None


@contextlib.contextmanager
def collector(status: int = 200) -> Iterator[tuple[str, list[dict]]]:
    """An OpenLineage HTTP collector on 127.0.0.1: yields its URL and what it received (path, auth, event)."""
    received: list[dict] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 — http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "event": json.loads(body)})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def emit_through_the_provider(tmp_path: Path, environ: dict[str, str]) -> None:
    """Configure Airflow's OpenLineage provider as `provider_env` says, and emit register's COMPLETE through it."""
    from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter

    settings = load(config_dir(), {"TAGIFAI_CONFIG_TOML": f'[lineage]\nfile_path = "{tmp_path / "events.jsonl"}"\n'})
    # The OpenLineage client writes its own variables into the environment: restored after.
    with mock.patch.dict(os.environ, lineage.provider_env(settings, environ)):
        inputs, outputs = lineage.step_datasets("register", NS, REGISTER, {"validate": VALIDATE, "train": TRAIN})
        OpenLineageAdapter().complete_task(
            run_id="01932c8e-0000-7000-8000-000000000001",
            job_name="tagifai_training.register",
            end_time="2026-01-01T00:00:00+00:00",
            task=lineage.operator_lineage(inputs, outputs, REGISTER),
            nominal_start_time=None,
            nominal_end_time=None,
            owners=["tagifai"],
            tags=[],
            job_description=None,
        )


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_by_default_events_are_appended_to_the_settings_file_naming_datasets_and_the_mlflow_run(tmp_path):
    emit_through_the_provider(tmp_path, {})
    emit_through_the_provider(tmp_path, {})
    first, second = read_events(tmp_path / "events.jsonl")  # appended, one line each
    assert first == second
    assert (first["eventType"], first["job"]["namespace"], first["job"]["name"]) == (
        "COMPLETE",
        NS,
        "tagifai_training.register",
    )
    assert [(d["namespace"], d["name"]) for d in first["inputs"]] == [MODEL, data("holdout")]
    assert [(d["namespace"], d["name"]) for d in first["outputs"]] == [VERSION]
    facet = first["run"]["facets"]["mlflow"]
    assert (facet["runId"], facet["experimentId"], facet["reused"]) == ("register-run", "1", False)
    assert facet["_producer"] and facet["_schemaURL"]


def test_a_collector_url_gets_the_events_instead_of_the_file_with_its_api_key(tmp_path):
    with collector() as (url, received):
        emit_through_the_provider(tmp_path, {"TAGIFAI_LINEAGE_URL": url, "TAGIFAI_LINEAGE_API_KEY": "k3y-s3cret"})
    [got] = received
    assert got["path"] == "/api/v1/lineage" and got["auth"] == "Bearer k3y-s3cret"
    assert got["event"]["run"]["facets"]["mlflow"]["runId"] == "register-run"
    assert read_events(tmp_path / "events.jsonl") == []


def test_an_event_the_collector_refuses_is_kept_in_the_file(tmp_path):
    with collector(status=400) as (url, received):
        emit_through_the_provider(tmp_path, {"TAGIFAI_LINEAGE_URL": url})
    assert len(received) == 1 and received[0]["auth"] is None  # no key set: none sent
    [kept] = read_events(tmp_path / "events.jsonl")
    assert kept["run"]["runId"] == "01932c8e-0000-7000-8000-000000000001"


def test_the_stack_configures_the_provider_as_the_settings_say():
    import yaml

    settings = load(config_dir(), {})
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    env = compose["x-airflow-common"]["environment"]
    assert json.loads(env["AIRFLOW__OPENLINEAGE__TRANSPORT"]) == lineage.transport(settings)
    assert env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == settings.lineage.namespace
    # The collector and its key come from .env; empty: the file only.
    assert (env["OPENLINEAGE_URL"], env["OPENLINEAGE_API_KEY"]) == (
        "${TAGIFAI_LINEAGE_URL:-}",
        "${TAGIFAI_LINEAGE_API_KEY:-}",
    )
    # The file is in the volume `lineage`, mounted wherever events are emitted: the scheduler and workers (the
    # tasks, the DAG runs), and the API server (task states set by hand).
    mount = f"lineage:{os.path.dirname(settings.lineage.file_path)}"
    assert "lineage" in compose["volumes"]
    for service in ("airflow-scheduler", "airflow-scheduler-celery", "airflow-worker", "airflow-apiserver"):
        assert mount in compose["services"][service]["volumes"], service
    # A Celery worker on another machine (docker-compose.worker.yml): the same provider settings, its own volume.
    remote = yaml.safe_load((REPO / "docker-compose.worker.yml").read_text(encoding="utf-8"))
    worker = remote["services"]["airflow-worker"]
    assert {k: v for k, v in worker["environment"].items() if "OPENLINEAGE" in k} == {
        k: v for k, v in env.items() if "OPENLINEAGE" in k
    }
    assert mount in worker["volumes"] and "lineage" in remote["volumes"]
    # What `python -m tagifai.orchestration.lineage` prints is that transport.
    printed = subprocess.run(
        [sys.executable, "-m", "tagifai.orchestration.lineage"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(printed.stdout) == lineage.transport(settings)


class StepRun:
    """Stands in for `ti`: the JSON lines the tasks of this DAG run printed (none for a task not listed)."""

    def __init__(self, **outputs: dict) -> None:
        self.outputs = outputs

    def xcom_pull(self, task_ids: str, **_: object) -> str | None:
        return json.dumps(self.outputs[task_ids]) if task_ids in self.outputs else None


def test_a_steps_events_name_its_datasets_and_run_once_it_ran(load_dag, render, monkeypatch):
    from airflow.providers.standard.operators.bash import BashOperator

    monkeypatch.setattr(BashOperator, "execute", lambda self, context: json.dumps(REGISTER))
    dag = load_dag(TAGIFAI_RUNNER="local")
    register = render(dag.get_task("register"))
    assert register.get_openlineage_facets_on_start().inputs == []  # nothing is known before it runs
    register.execute({"ti": StepRun(validate=VALIDATE, train=TRAIN), "dag": dag})
    done = register.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in done.inputs] == [MODEL, data("holdout")]
    assert [(d.namespace, d.name) for d in done.outputs] == [VERSION]
    assert (done.run_facets["mlflow"].runId, done.run_facets["mlflow"].experimentId) == ("register-run", "1")


def test_a_failed_steps_events_name_what_it_read_and_the_run_it_failed_in(load_dag, render, monkeypatch):
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk.exceptions import AirflowException

    def fails(self, context):  # as `tagifai train` does: its error's JSON in TAGIFAI_OUTPUT, exit 1
        Path(self.env["TAGIFAI_OUTPUT"]).write_text(json.dumps({"error": "MLflow did not answer", "run_id": "t-1"}))
        raise AirflowException("Bash command failed. The command returned a non-zero exit code 1.")

    monkeypatch.setattr(BashOperator, "execute", fails)
    dag = load_dag(TAGIFAI_RUNNER="local")
    train = render(dag.get_task("train"))
    with pytest.raises(AirflowException, match="MLflow did not answer"):
        train.execute({"ti": StepRun(validate=VALIDATE), "dag": dag})
    failed = train.get_openlineage_facets_on_failure(None)
    assert [(d.namespace, d.name) for d in failed.inputs] == [data("train"), data("val")]
    assert failed.outputs == []
    assert failed.run_facets["mlflow"].runId == "t-1"


def step_environment(runner: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """Where the environment the runner hands its step is kept once the operator ran (it starts nothing)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.providers.standard.operators.bash import BashOperator

    seen: dict[str, dict[str, str]] = {}

    def pod_env(self):
        return {v.name: v.value for v in self.build_pod_request_obj(dry_run=True).spec.containers[0].env}

    operator, env = {
        "local": (BashOperator, lambda self: self.env),
        "docker": (DockerOperator, lambda self: self.environment),
        "kubernetes": (KubernetesPodOperator, pod_env),
    }[runner]
    monkeypatch.setattr(operator, "execute", lambda self, context: seen.setdefault("env", env(self)) and "{}")
    return seen


@pytest.mark.parametrize("runner", ["local", "docker", "kubernetes"])
def test_a_step_gets_its_tasks_openlineage_run_which_its_events_carry(load_dag, render, monkeypatch, runner):
    from datetime import UTC, datetime

    from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter

    seen = step_environment(runner, monkeypatch)
    for name, value in lineage.provider_env(load(config_dir(), {}), {}).items():
        monkeypatch.setenv(name, value)
    dag_run = SimpleNamespace(logical_date=datetime(2026, 1, 1, tzinfo=UTC), clear_number=0, conf={})
    ti = SimpleNamespace(
        dag_id="tagifai_training", task_id="train", try_number=2, map_index=-1, dag_run=dag_run,
        get_template_context=lambda: {"dag_run": dag_run}, xcom_pull=lambda **_: None,
    )  # fmt: skip
    render(load_dag(TAGIFAI_RUNNER=runner).get_task("train")).execute({"ti": ti})
    # The id the provider gives this task instance's events (its try's).
    run_id = OpenLineageAdapter.build_task_instance_run_id("tagifai_training", "train", 2, dag_run.logical_date, -1)
    assert seen["env"]["TAGIFAI_OPENLINEAGE_RUN_ID"] == run_id
    assert seen["env"]["TAGIFAI_OPENLINEAGE_JOB"] == f"{NS}/tagifai_training.train/{run_id}"


def test_without_openlineage_a_step_gets_no_run_ids(load_dag, render, monkeypatch):
    seen = step_environment("local", monkeypatch)
    render(load_dag(TAGIFAI_RUNNER="local").get_task("train")).execute({"ti": StepRun()})
    assert not any(name.startswith("TAGIFAI_OPENLINEAGE_") for name in seen["env"])
