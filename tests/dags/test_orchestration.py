"""What the DAGs import besides Airflow: `tagifai.orchestration` (runners, assets) and `tagifai.contract`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.dags.conftest import DAGS

pytestmark = pytest.mark.airflow


def test_parsing_the_dags_loads_only_airflow_and_tagifais_contract_and_orchestration():
    # A fresh interpreter parses dags/ as the dag-processor does; nothing of tagifai's ML side comes along.
    script = textwrap.dedent(
        f"""
        import json, sys
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r}, bundle_name="dags-folder")
        assert not bag.import_errors, bag.import_errors
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    ours = {name for name in loaded if name == "tagifai" or name.startswith("tagifai.")}
    assert ours and all(name.startswith(("tagifai.contract", "tagifai.orchestration")) for name in ours - {"tagifai"})
    assert not {name.partition(".")[0] for name in loaded} & {"pandas", "mlflow", "sklearn", "torch", "optuna"}


@pytest.mark.parametrize("dag_id", ["tagifai_training", "tagifai_batch_predictions"])  # assets.DAILY
@pytest.mark.parametrize("unpaused_at", ["00:08", "02:00", "23:59"])
def test_a_daily_dag_unpaused_soon_after_midnight_waits_for_the_next(parse_dags, monkeypatch, dag_id, unpaused_at):
    # The timetable as the scheduler has it (serialized, then decoded into the core class).
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    daily = decode_timetable(encode_timetable(parse_dags().dags[dag_id].timetable.timetable))
    hour, minute = map(int, unpaused_at.split(":"))
    monkeypatch.setattr(trigger, "utcnow", lambda: pendulum.datetime(2026, 11, 24, hour, minute, tz="UTC"))
    first = daily.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    assert first.run_after == pendulum.datetime(2026, 11, 25, tz="UTC")


def test_kubernetes_wrapper_keeps_stdout_and_writes_the_last_line_for_xcom(tmp_path):
    from tagifai.orchestration.runners import K8S_WRAPPER

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "tagifai").write_text('#!/bin/sh\necho "log" >&2\necho "progress"\necho \'{"run_id": "r1"}\'\n')
    (fake_bin / "tagifai").chmod(0o755)
    script = K8S_WRAPPER.replace("/airflow/xcom", str(tmp_path))
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "tagifai", "train", "--data-run", "x"],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["progress", '{"run_id": "r1"}']
    assert json.loads((tmp_path / "return.json").read_text()) == {"run_id": "r1"}


# ---- the template filter that hands run ids along ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"run_id": "abc"}', {"run_id": "abc"}),  # Docker and local: the last line as a string
        ({"run_id": "abc"}, {"run_id": "abc"}),  # Kubernetes: the sidecar already parsed return.json
        ('  {"run_id": "abc", "best_value": 0.9}\n', {"run_id": "abc", "best_value": 0.9}),  # whitespace
    ],
)
def test_fromjson_reads_a_step_result(value, expected):
    from tagifai.orchestration.runners import fromjson

    assert fromjson(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-01 INFO tagifai: done",  # a log line ended up last: the contract is broken
        '["run_id"]',  # JSON, but not an object
        None,  # the upstream task pushed nothing
    ],
)
def test_fromjson_names_a_broken_output_contract(value):
    from tagifai.orchestration.runners import fromjson

    with pytest.raises(ValueError, match="last stdout line to be a JSON object"):
        fromjson(value)


def test_the_celery_executor_and_worker_load_with_the_pinned_packages():
    # The image's (and this venv's) celery must be one the provider imports: with celery 5.7 the
    # executor failed to load and every worker crash-looped on a misleading "Airflow >= 2.8.0" error.
    from airflow.providers.celery.executors.celery_executor import app  # what `airflow celery worker` loads

    assert "execute_workload" in app.tasks


# What the Airflow worker holds (the stack's scheduler or Celery worker), and what each step's container
# gets of it: only the secrets that step uses.
WORKER_SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": "admin-s3cret",
    "MLFLOW_BATCH_USERNAME": "tagifai-batch",
    "MLFLOW_BATCH_PASSWORD": "batch-s3cret",
    "TAGIFAI_OPTUNA_STORAGE": "postgresql+psycopg2://optuna:optuna-s3cret@postgres/optuna",
    "TAGIFAI_PREDICTIONS_DB": "postgresql+psycopg2://tagifai:tagifai-s3cret@postgres/tagifai",
}
ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "admin-s3cret"}
STEP_SECRETS = [
    # (DAG, task, the secrets its container gets)
    ("tagifai_training", "elt", ADMIN),
    ("tagifai_training", "validate", ADMIN),
    ("tagifai_training", "optimize", {**ADMIN, "TAGIFAI_OPTUNA_STORAGE": WORKER_SECRETS["TAGIFAI_OPTUNA_STORAGE"]}),
    ("tagifai_training", "train", ADMIN),
    ("tagifai_training", "evaluate", ADMIN),
    ("tagifai_training", "register", ADMIN),
    # Batch scoring reads MLflow with its own login, not the admin's, and writes the predictions table.
    (
        "tagifai_batch_predictions",
        "predict-batch",
        {
            "MLFLOW_TRACKING_USERNAME": "tagifai-batch",
            "MLFLOW_TRACKING_PASSWORD": "batch-s3cret",
            "TAGIFAI_PREDICTIONS_DB": WORKER_SECRETS["TAGIFAI_PREDICTIONS_DB"],
        },
    ),
    ("tagifai_watch", "checksum_projects", {}),  # reads a data source: no MLflow, no database
]


@pytest.mark.parametrize(("dag_id", "task_id", "secrets"), STEP_SECRETS, ids=[t for _, t, _ in STEP_SECRETS])
def test_each_step_container_gets_only_the_secrets_its_step_uses(
    parse_dags, render, monkeypatch, dag_id, task_id, secrets
):
    from airflow.providers.docker.operators.docker import DockerOperator

    from tagifai.orchestration.runners import TagifaiDockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setattr(TagifaiDockerOperator, "remove_earlier_tries", lambda self: None)  # no Docker engine here
    bag = parse_dags(
        TAGIFAI_PROJECTS_URL="/srv/data/projects.csv",
        TAGIFAI_TAGS_URL="/srv/data/tags.csv",
        TAGIFAI_DATA_DIRS="/srv/data",
        **WORKER_SECRETS,
    )
    task = bag.dags[dag_id].get_task(task_id)
    if task_id == "optimize":  # mapped: one worker's copy of the command
        fan_out = render(bag.dags[dag_id].get_task("optimize_workers"), num_workers=1)
        [copy] = fan_out.python_callable(*fan_out.op_args, **fan_out.op_kwargs)
        task = task.unmap({"command": copy})
        task.dag = bag.dags[dag_id]
    render(task).execute({})
    assert seen["task"]._private_environment == secrets
    rendered = json.dumps(seen["task"].environment)
    assert not [value for value in WORKER_SECRETS.values() if "s3cret" in value and value in rendered]
