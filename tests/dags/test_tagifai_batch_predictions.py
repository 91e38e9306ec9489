"""The tagifai_batch_predictions DAG: one step, on the champion's event and daily, its database private."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest

from tests.dags.helpers import RUNNERS, rendered_command

pytestmark = pytest.mark.airflow


@pytest.mark.parametrize("runner", RUNNERS)
def test_batch_predictions_run_one_step_on_the_champion_event_and_daily(parse_dags, render, runner):
    from airflow.sdk import AssetOrTimeSchedule

    dag = parse_dags(TAGIFAI_RUNNER=runner, TAGIFAI_PROJECTS_URL="/srv/data/projects.csv").dags[
        "tagifai_batch_predictions"
    ]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition.name == "tagifai_champion"
    assert dag.task_ids == ["predict-batch"]
    task = render(dag.get_task("predict-batch"))
    assert rendered_command(task, runner) == ["tagifai", "predict-batch", "--source", "/srv/data/projects.csv"]
    assert task.retries >= 2 and task.execution_timeout == timedelta(minutes=30)
    if runner == "docker":  # [limits] step_cpu_request: 128 CPU shares, so the services (serve) answer first
        assert task.cpus == 0.125
    elif runner == "kubernetes":
        assert task.container_resources.requests["cpu"] == "125m"


def test_batch_predictions_get_their_database_privately(parse_dags, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setenv("TAGIFAI_PREDICTIONS_DB", "postgresql+psycopg2://tagifai:s3cret@postgres/tagifai")
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data")
    dag = parse_dags(TAGIFAI_PROJECTS_URL="/srv/data/projects.csv").dags["tagifai_batch_predictions"]
    render(dag.get_task("predict-batch")).execute({})
    task = seen["task"]
    assert task._private_environment["TAGIFAI_PREDICTIONS_DB"].endswith("@postgres/tagifai")
    assert "s3cret" not in json.dumps(task.environment)
    assert task.mounts == [{"Target": "/srv/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": True}]


def test_batch_predictions_default_to_the_training_projects_as_training_reads_them(parse_dags):
    dags = parse_dags(TAGIFAI_PROJECTS_URL="data/projects.csv").dags
    source = dags["tagifai_batch_predictions"].params["source"]
    assert source == dags["tagifai_training"].params["projects_url"] == os.path.abspath("data/projects.csv")
