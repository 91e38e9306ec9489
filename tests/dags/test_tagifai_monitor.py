"""The tagifai_monitor DAG: `monitor` daily and on the champion's event; drift is an asset event and a message."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from types import SimpleNamespace

import pytest

from harness.dags import webhook_sink
from tests.dags.helpers import RUNNERS, rendered_command

pytestmark = pytest.mark.airflow

DRIFTED = {
    "run_id": "monitor-run",
    "experiment_id": "7",
    "drifted": True,
    "status": "drift",
    "reasons": [
        "served requests: 6 of 6 columns drifted at alpha 0.01 (100% >= 50%): tag (p 0.00013), unseen_words (p 3e-128)",
        "served requests: share of predictions below 0.5 is 0.26 vs 0.02 in the reference (+0.24 > +0.20)",
    ],
    "rows": {
        "reference": 287,
        "served": {"judged": 851, "in_window": 1519, "training_rows_left_out": 668},
        "batch": {"judged": 351, "in_window": 1019, "training_rows_left_out": 668},
    },
    "model_name": "tagifai",
    "model_version": "3",
    "report": "monitor/report.html",
}


@pytest.mark.parametrize("runner", RUNNERS)
def test_monitor_runs_one_step_daily_and_on_the_champion_event_then_publishes(parse_dags, render, runner):
    from airflow.sdk import AssetOrTimeSchedule

    bag = parse_dags(TAGIFAI_RUNNER=runner)
    assert bag.import_errors == {}
    dag = bag.dags["tagifai_monitor"]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition.name == "tagifai_champion"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert sorted(dag.task_ids) == ["monitor", "publish_drift"]
    assert dag.get_task("monitor").downstream_task_ids == {"publish_drift"}
    task = render(dag.get_task("monitor"))
    assert rendered_command(task, runner) == ["tagifai", "monitor"]
    assert task.retries >= 2 and task.execution_timeout == timedelta(minutes=20)
    publish = dag.get_task("publish_drift")
    assert [(a.name, a.uri) for a in publish.outlets] == [("tagifai_drift", "x-tagifai://drift")]


def test_the_monitor_step_logs_to_its_experiment_and_gets_its_secrets_privately(parse_dags, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-s3cret")
    monkeypatch.setenv("MLFLOW_BATCH_PASSWORD", "batch-s3cret")
    monkeypatch.setenv("TAGIFAI_PREDICTIONS_DB", "postgresql+psycopg2://tagifai:db-s3cret@postgres/tagifai")
    render(parse_dags().dags["tagifai_monitor"].get_task("monitor")).execute({})
    task = seen["task"]
    assert task._private_environment == {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "admin-s3cret",
        "TAGIFAI_PREDICTIONS_DB": "postgresql+psycopg2://tagifai:db-s3cret@postgres/tagifai",
    }
    assert task.environment["MLFLOW_EXPERIMENT_NAME"] == "tagifai-monitor"
    assert "s3cret" not in json.dumps(task.environment) and task.mounts == []


def publish(parse_dags, line, monkeypatch):
    """Run publish_drift on `line` as the docker runner hands it (an object); its extra (None: skipped), the reason
    it skipped, and what the webhook got."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tagifai.orchestration.assets import DRIFT

    task = parse_dags().dags["tagifai_monitor"].get_task("publish_drift")
    events = defaultdict(lambda: SimpleNamespace(extra=None))
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        monkeypatch.setenv("TAGIFAI_MLFLOW_PUBLIC_URL", "http://mlflow.example:5000/")
        try:
            task.python_callable(line, outlet_events=events, run_id="scheduled__2026-01-02T00:00:00+00:00")
        except AirflowSkipException as skipped:
            return None, str(skipped), received
    return events[DRIFT].extra, None, received


def test_drift_is_an_event_with_the_verdict_and_a_message_with_its_figures_and_report(parse_dags, monkeypatch):
    extra, _, received = publish(parse_dags, DRIFTED, monkeypatch)
    assert extra == {
        "model_name": "tagifai",
        "model_version": "3",
        "status": "drift",
        "run_id": "monitor-run",
        "experiment_id": "7",
        "report": "monitor/report.html",
        "drifted": True,
        "reasons": DRIFTED["reasons"],
        "rows": DRIFTED["rows"],
        "dag_run_id": "scheduled__2026-01-02T00:00:00+00:00",
    }
    [message] = received
    run = "http://mlflow.example:5000/#/experiments/7/runs/monitor-run"
    assert message["event"] == "drift"
    assert message["text"].splitlines() == [
        "tagifai v3: drift detected in what the champion served or scored (run scheduled__2026-01-02T00:00:00+00:00)",
        *(f"- {reason}" for reason in DRIFTED["reasons"]),
        "rows judged: served 851, batch 351 (reference 287)",
        f"MLflow run: {run}",
        f"report: {run}/artifacts/monitor/report.html",
    ]
    assert message["report_url"] == f"{run}/artifacts/monitor/report.html"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        # The local runner hands the line as a string; no drift.
        (
            json.dumps({**DRIFTED, "drifted": False, "status": "no drift", "reasons": ["served requests: 0 of 6"]}),
            "no drift event (no drift): served requests: 0 of 6",
        ),
        # Too few rows: judged nothing.
        (
            {
                **DRIFTED,
                "drifted": None,
                "status": "insufficient",
                "reasons": ["too few rows: served requests (4 < 100)"],
            },
            "no drift event (insufficient): too few rows: served requests (4 < 100)",
        ),
        # No champion yet.
        (
            {"run_id": None, "drifted": None, "status": "no champion", "reasons": ["tagifai has no @champion yet"]},
            "no drift event (no champion): tagifai has no @champion yet",
        ),
    ],
)
def test_no_drift_or_nothing_judged_skips_with_its_reason_and_no_event_or_message(parse_dags, monkeypatch, line, why):
    extra, skipped, received = publish(parse_dags, line, monkeypatch)
    assert extra is None and skipped == why and received == []


@pytest.mark.parametrize(("retrain", "assets"), [(False, set()), (True, {"tagifai_drift"})])
def test_training_starts_on_drift_only_when_the_deployer_says_so(parse_dags, tmp_path, retrain, assets):
    override = tmp_path / "monitor.toml"
    override.write_text(f"[monitor]\nretrain_on_drift = {str(retrain).lower()}\n", encoding="utf-8")
    dag = parse_dags(TAGIFAI_CONFIG=str(override)).dags["tagifai_training"]
    names = {a.name for a in dag.timetable.asset_condition.objects}
    assert names == {"tagifai_projects", "tagifai_tags", *assets}


def test_each_monitor_task_tells_its_failure(parse_dags):
    from tagifai.orchestration import notify

    dag = parse_dags().dags["tagifai_monitor"]
    for task in dag.tasks:
        assert task.on_failure_callback in (notify.task_failed, [notify.task_failed]), task.task_id
