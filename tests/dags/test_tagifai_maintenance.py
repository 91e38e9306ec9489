"""The tagifai_maintenance DAG: weekly, one run at a time, three tasks each on its own store, a dry run that
deletes nothing. `airflow db clean` and the log cleaning run for real here, on a real Airflow database and
folder; `tagifai maintain` itself is tested against a real MLflow server (tests/e2e/test_retention.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness import AIRFLOW, AIRFLOW_VENV, require
from harness.dags import migrated_db
from tests.dags.helpers import RUNNERS, rendered_command

pytestmark = pytest.mark.airflow

DAG_ID = "tagifai_maintenance"
TASKS = ["airflow_db_clean", "airflow_logs_clean", "maintain"]
SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": "admin-s3cret",
    "MLFLOW_BATCH_PASSWORD": "batch-s3cret",
    "TAGIFAI_OPTUNA_STORAGE": "postgresql+psycopg2://optuna:optuna-s3cret@postgres/optuna",
    "TAGIFAI_PREDICTIONS_DB": "postgresql+psycopg2://tagifai:tagifai-s3cret@postgres/tagifai",
    "TAGIFAI_MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow:mlflow-s3cret@postgres/mlflow",
    "TAGIFAI_AIRFLOW_DB": "postgresql+psycopg2://airflow:airflow-s3cret@postgres/airflow",
}


@pytest.fixture
def maintenance(parse_dags):
    """Return `load(**env)`: the tagifai_maintenance DAG parsed with those environment variables."""

    def load(**env):
        bag = parse_dags(**env)
        assert bag.import_errors == {}
        return bag.dags[DAG_ID]

    return load


@pytest.mark.parametrize("runner", RUNNERS)
def test_maintain_runs_the_step_of_its_name_dry_or_not(maintenance, render, runner):
    dag = maintenance(TAGIFAI_RUNNER=runner)
    assert sorted(dag.task_ids) == TASKS
    # Three stores, three tasks: none waits for another.
    assert all(not dag.get_task(t).upstream_task_ids for t in TASKS)
    maintain = render(dag.get_task("maintain"))
    assert rendered_command(maintain, runner) == ["tagifai", "maintain", "--no-dry-run"]
    dry = render(maintenance(TAGIFAI_RUNNER=runner).get_task("maintain"), dry_run=True)  # a task renders once
    assert rendered_command(dry, runner) == ["tagifai", "maintain", "--dry-run"]
    assert maintain.execution_timeout == timedelta(minutes=30) and maintain.retries >= 2


def test_weekly_one_run_at_a_time_no_catchup_a_boolean_dry_run(maintenance, monkeypatch):
    # The timetable as the scheduler has it (serialized, then decoded into the core class).
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    dag = maintenance()
    weekly = decode_timetable(encode_timetable(dag.timetable))
    monkeypatch.setattr(trigger, "utcnow", lambda: pendulum.datetime(2026, 11, 25, 10, tz="UTC"))  # a Wednesday
    first = weekly.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    assert first.run_after == pendulum.datetime(2026, 11, 29, tz="UTC")  # the Sunday after, at midnight
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.params["dry_run"] is False
    with pytest.raises(Exception, match="boolean"):
        dag.params.get_param("dry_run").resolve("yes")


def test_maintain_gets_the_admin_login_and_its_databases_privately(maintenance, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    from tagifai.orchestration.runners import TagifaiDockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setattr(TagifaiDockerOperator, "remove_earlier_tries", lambda self: None)
    render(maintenance(**SECRETS).get_task("maintain")).execute({})
    task = seen["task"]
    assert task._private_environment == {
        name: SECRETS[name]
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TAGIFAI_PREDICTIONS_DB",
                     "TAGIFAI_MLFLOW_BACKEND_STORE_URI")
    }  # fmt: skip
    assert "s3cret" not in json.dumps(task.environment) + json.dumps(task.command)
    assert task.environment["MLFLOW_EXPERIMENT_NAME"] == "tagifai"


def test_the_tasks_read_the_retention_settings_when_they_run(maintenance, render, monkeypatch, tmp_path):
    from airflow.providers.standard.operators.bash import BashOperator

    dag = maintenance()  # parsed with the defaults; the deployer's override changes after
    override = tmp_path / "keep.toml"
    override.write_text("[retention]\nairflow_days = 0.5\nlog_days = 2\n")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(override))
    monkeypatch.setenv("TAGIFAI_AIRFLOW_DB", "sqlite:////nowhere/airflow.db")
    seen = {}
    monkeypatch.setattr(BashOperator, "execute", lambda self, context: seen.setdefault("task", self))
    render(dag.get_task("airflow_db_clean")).execute({})
    task = seen["task"]
    assert task.env["TAGIFAI_AIRFLOW_CLEAN_SECONDS"] == "43200"
    # Over the worker's environment, with its database URL: that is not in the task's own `env`.
    assert task.append_env is True and "TAGIFAI_AIRFLOW_DB" not in task.env
    assert task.get_env({})["TAGIFAI_AIRFLOW_DB"] == "sqlite:////nowhere/airflow.db"
    # This worker's own `airflow` comes first.
    assert task.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    write(logs / "dag_id=x" / "run_id=y" / "task_id=z" / "attempt=1.log", 3)
    write(logs / "dag_id=x" / "run_id=y" / "task_id=z" / "attempt=2.log", 1)
    listed = dag.get_task("airflow_logs_clean").python_callable(params={"dry_run": True})
    assert (listed["files"], listed["dry_run"]) == (1, True)
    assert dag.get_task("maintain").environment["MLFLOW_EXPERIMENT_NAME"] == "tagifai"


def test_the_rendered_db_clean_names_no_secret_and_dries_only_when_asked(maintenance, render):
    real = render(maintenance(**SECRETS).get_task("airflow_db_clean"))
    dry = render(maintenance(**SECRETS).get_task("airflow_db_clean"), dry_run=True)
    for task in (real, dry):
        assert "s3cret" not in task.bash_command
        assert "--skip-archive --yes" in task.bash_command and "--tables dag_run,task_instance," in task.bash_command
        assert (
            '"${TAGIFAI_AIRFLOW_DB:?' in task.bash_command and "${TAGIFAI_AIRFLOW_CLEAN_SECONDS:?}" in task.bash_command
        )
    assert "--dry-run" in dry.bash_command and "--dry-run" not in real.bash_command


def test_db_clean_without_the_database_url_fails_at_once(maintenance, render, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.delenv("TAGIFAI_AIRFLOW_DB", raising=False)
    with pytest.raises(AirflowFailException, match="set TAGIFAI_AIRFLOW_DB on the Airflow workers"):
        render(maintenance().get_task("airflow_db_clean")).execute({})


def old_rows(db: Path, days_ago: float, count: int) -> None:
    """`count` audit-log rows written `days_ago` days ago."""
    when = (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%d %H:%M:%S.000000")
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany(
            "INSERT INTO log (dttm, event, owner) VALUES (?, ?, 'test')", [(when, f"e{i}") for i in range(count)]
        )


def log_rows(db: Path) -> int:
    """The test's audit-log rows (the airflow command logs one of its own)."""
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT count(*) FROM log WHERE owner = 'test'").fetchone()[0]


def run_script(script: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a task's bash script as the worker would: Airflow on PATH, the database blocked as in a task."""
    blocked = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///"}  # what Airflow 3 sets in tasks
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    environ.update(PATH=f"{AIRFLOW_VENV / 'bin'}:{os.environ['PATH']}", AIRFLOW_HOME=str(home), **blocked, **env)
    return subprocess.run(["bash", "-c", script], env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_db_clean_removes_the_history_older_than_airflow_days_and_a_dry_run_nothing(maintenance, render, tmp_path):
    require(AIRFLOW.exists(), "Airflow venv not found (make airflow-install)")
    home = tmp_path / "airflow"
    home.mkdir()
    db = Path(shutil.copyfile(migrated_db(), home / "airflow.db"))
    old_rows(db, days_ago=120, count=3)
    old_rows(db, days_ago=10, count=2)
    before = log_rows(db)
    url = f"sqlite:///{db}"
    age = str(90 * 86_400)
    dry = run_script(render(maintenance().get_task("airflow_db_clean"), dry_run=True).bash_command, home,
                     TAGIFAI_AIRFLOW_DB=url, TAGIFAI_AIRFLOW_CLEAN_SECONDS=age)  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True and summary["tables"]["log"] == 3 and summary["rows"] >= 3
    assert "Found 3 rows meeting deletion criteria." in dry.stdout
    assert log_rows(db) == before

    real = run_script(
        render(maintenance().get_task("airflow_db_clean")).bash_command, home, TAGIFAI_AIRFLOW_DB=url,
        TAGIFAI_AIRFLOW_CLEAN_SECONDS=age,
    )  # fmt: skip
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    summary = json.loads(real.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is False and summary["tables"]["log"] == 3
    assert log_rows(db) == before - 3
    # No archive tables left behind (--skip-archive).
    with closing(sqlite3.connect(db)) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert not [t for t in tables if t.startswith("_airflow_deleted__")]


def test_db_clean_fails_when_the_database_refuses(maintenance, render, tmp_path):
    require(AIRFLOW.exists(), "Airflow venv not found (make airflow-install)")
    script = render(maintenance().get_task("airflow_db_clean")).bash_command
    missing = f"sqlite:///{tmp_path / 'missing' / 'airflow.db'}"
    done = run_script(script, tmp_path, TAGIFAI_AIRFLOW_DB=missing, TAGIFAI_AIRFLOW_CLEAN_SECONDS="60")
    assert done.returncode != 0, done.stdout
    assert "unable to open database file" in done.stdout + done.stderr


def write(path: Path, days_ago: float, text: str = "log line\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    when = time.time() - days_ago * 86_400
    os.utime(path, (when, when))
    return path


def test_old_task_logs_go_new_ones_and_links_stay_a_dry_run_only_lists(tmp_path):
    from tagifai.orchestration.maintenance import clean_logs

    logs = tmp_path / "logs"
    old_run = logs / "dag_id=tagifai_training" / "run_id=old" / "task_id=elt"
    old = [write(old_run / "attempt=1.log", 40), write(old_run / "attempt=2.log", 35, "x" * 100)]
    mixed = logs / "dag_id=tagifai_training" / "run_id=mixed" / "task_id=train"
    write(mixed / "attempt=1.log", 60)
    new = write(mixed / "attempt=2.log", 1)
    processor = write(logs / "dag_processor" / "2026-01-01" / "dags-folder" / "x.py.log", 90)
    (logs / "dag_processor" / "latest").symlink_to(processor.parent.parent)
    for folder in (old_run, old_run.parent, old_run.parent.parent, mixed, processor.parent, processor.parent.parent):
        os.utime(folder, (time.time() - 40 * 86_400,) * 2)

    dry = clean_logs(logs, days=30, dry_run=True)
    assert (dry["dry_run"], dry["files"], dry["bytes"]) == (True, 4, 9 + 100 + 9 + 9)
    assert all(path.exists() for path in old)

    done = clean_logs(logs, days=30, dry_run=False)
    assert (done["files"], done["bytes"]) == (4, 127)
    assert not old_run.parent.exists() and not processor.parent.exists()
    assert new.exists() and (logs / "dag_processor" / "latest").is_symlink()
    assert (logs / "dag_id=tagifai_training").exists()  # it holds the run written yesterday
    assert clean_logs(logs, days=30, dry_run=False)["files"] == 0
    assert clean_logs(tmp_path / "none", days=30, dry_run=False)["files"] == 0


def test_every_task_tells_its_failure_and_the_dag_serializes(maintenance):
    from airflow.serialization.serialized_objects import DagSerialization

    from tagifai.orchestration import notify

    dag = maintenance()
    for task in dag.tasks:
        assert task.on_failure_callback == [notify.task_failed] or task.on_failure_callback is notify.task_failed
        assert task.retries >= 2
    # What the scheduler reads: the serialized DAG, the db clean's script and the dry-run param in it.
    data = DagSerialization.to_dict(dag)
    restored = DagSerialization.from_dict(data)
    assert sorted(restored.task_ids) == TASKS
    assert "airflow db clean --clean-before-timestamp" in restored.get_task("airflow_db_clean").bash_command
    assert restored.params["dry_run"] is False


def xcoms(home: Path, run_id: str) -> dict[str, dict]:
    """Each task's return value in one run of the DAG (the test's own Airflow database)."""
    with closing(sqlite3.connect(home / "airflow.db")) as connection:
        rows = connection.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'", (DAG_ID, run_id)
        ).fetchall()
    values = {task: json.loads(value) for task, value in rows}
    return {task: json.loads(value) if isinstance(value, str) else value for task, value in values.items()}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_dry_run_then_a_run_of_the_dag_with_the_local_runner(tmp_path):
    from harness import TAGIFAI, Cli, synthetic
    from harness.dags import dags_test, pipeline_runs, write_config

    require(TAGIFAI.exists(), f"{TAGIFAI} not found (make install)")
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    bad = synthetic.write_csv(tmp_path / "data" / "bad.csv", [*csv_rows(projects), *csv_rows(projects)[:3]])
    (tmp_path / "mlflow").mkdir()
    retention = (
        "[retention]\nrun_days = 0\ndeleted_days = 0\nlog_days = 30\nairflow_days = 90\n[limits]\nrun_minutes = 0.001\n"
    )
    env = {
        "TAGIFAI_RUNNER": "local",
        "TAGIFAI_BIN": str(TAGIFAI),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        "TAGIFAI_CONFIG": str(write_config(tmp_path / "small.toml", retention)),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
    }
    # A failed pipeline (bad data), then the latest data extracted.
    cli = Cli({**os.environ, **env}, tmp_path)
    elt = cli("elt", "--projects-url", str(bad), TAGIFAI_PIPELINE_RUN_ID="failed")[1]
    assert cli("validate", "--elt-run", elt["run_id"], check=False, TAGIFAI_PIPELINE_RUN_ID="failed")[0] == 3
    cli("elt", TAGIFAI_PIPELINE_RUN_ID="latest")
    # Airflow's history and logs: some older than airflow_days and log_days.
    home = tmp_path / "airflow"
    home.mkdir()
    shutil.copyfile(migrated_db(), home / "airflow.db")
    old_rows(home / "airflow.db", days_ago=120, count=4)
    old_log = write(home / "logs" / "dag_id=x" / "run_id=y" / "task_id=z" / "attempt=1.log", 45)
    env["TAGIFAI_AIRFLOW_DB"] = f"sqlite:///{home / 'airflow.db'}"

    dry = dags_test(home, {"dry_run": True}, env, dag_id=DAG_ID, timeout=900)
    assert dry.returncode == 0 and dry.states == dict.fromkeys(TASKS, "success"), dry.output[-5000:]
    out = xcoms(home, dry.run_id)
    assert out["maintain"]["dry_run"] is True and out["maintain"]["runs_to_delete"] == 2
    assert out["airflow_db_clean"]["tables"]["log"] >= 4 and out["airflow_logs_clean"]["files"] == 1
    assert len(pipeline_runs(env["MLFLOW_TRACKING_URI"], "failed")) == 2 and old_log.exists()
    assert log_rows(home / "airflow.db") == 4

    done = dags_test(home, {}, env, dag_id=DAG_ID, timeout=900)
    assert done.returncode == 0 and done.states == dict.fromkeys(TASKS, "success"), done.output[-5000:]
    out = xcoms(home, done.run_id)
    assert (out["maintain"]["runs_deleted"], out["maintain"]["runs_purged"]) == (2, 2)
    assert pipeline_runs(env["MLFLOW_TRACKING_URI"], "failed") == []
    assert [r["step"] for r in pipeline_runs(env["MLFLOW_TRACKING_URI"], "latest")] == ["elt"]
    assert log_rows(home / "airflow.db") == 0 and not old_log.exists()


def csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
