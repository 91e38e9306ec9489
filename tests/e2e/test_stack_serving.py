"""The champion in use, in the running stack: `tagifai serve` answers with it and follows a rollback
with no failed request; the batch DAG scores the projects into PostgreSQL on the champion event,
once per version.
"""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.error
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.compose import SERVE_POLL_SECONDS, make
from tests.harness import last_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

PROJECTS = [
    {"title": "BERT for question answering", "description": "Fine-tune a transformer on SQuAD to answer questions."},
    {"title": "YOLO object detection", "description": "Real-time detection of objects in images and video."},
    {"title": "Feature store for ML pipelines", "description": "Serve and monitor features for models in production."},
]
TAGS = {"natural-language-processing", "computer-vision", "mlops", "other"}


def champion_version(stack) -> str:
    return stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]


def test_the_served_champion_tags_real_projects(stack, first_run):
    wait_for(lambda: stack.serve("/version")["model_version"] == champion_version(stack), "serve follows champion", 120)
    predictions = stack.serve("/invocations", {"dataframe_records": PROJECTS})["predictions"]
    assert len(predictions) == 3
    assert all(p["tag"] in TAGS and 0 < p["probability"] <= 1 for p in predictions)
    assert predictions[1]["tag"] == "computer-vision"
    version = stack.serve("/version")
    assert {"model_version", "test_f1", "data_sha256", "pipeline_run_id"} <= set(version)
    assert stack.serve("/health")["status"] == "ok"


@pytest.fixture(scope="module")
def rollback(stack, first_run):
    """`make rollback TO=<the first run's version>` while a client sends requests; what the client and
    /version saw. (The champion before the current one may be the version whose artifacts the
    security tests removed: a rollback to it is refused, so the target is named.)"""
    before = champion_version(stack)
    registered = stack.airflow().xcom(first_run[0], "register")
    target = str((registered if isinstance(registered, dict) else json.loads(registered))["version"])
    assert target != before
    seen: dict[str, list] = {"errors": [], "ok": []}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                stack.serve("/invocations", {"dataframe_records": PROJECTS[:1]})
                seen["ok"].append(time.monotonic())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                seen["errors"].append(repr(exc))

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    started = datetime.now(UTC)
    moved = make("rollback", f"TO={target}", env_file=stack.env_file, timeout=600)
    done = time.monotonic()
    out = last_json(moved.stdout)
    wait_for(lambda: stack.serve("/version")["model_version"] == out["version"], "serve follows the rollback", 60)
    swapped = time.monotonic() - done
    time.sleep(2)  # requests after the swap, too
    stop.set()
    sender.join(timeout=30)
    return {
        "before": before,
        "target": target,
        "out": out,
        "swapped": swapped,
        "seen": seen,
        "done": done,
        "started": started,
    }


def test_rollback_swaps_the_served_model_with_no_failed_request(rollback, stack):
    out = rollback["out"]
    assert out["from_version"] == rollback["before"] and out["version"] == rollback["target"]
    assert out["announced"] is True  # the champion event went to Airflow
    assert champion_version(stack) == out["version"]
    print(f"serve swapped to v{out['version']} {rollback['swapped']:.1f}s after the rollback")
    assert rollback["swapped"] <= SERVE_POLL_SECONDS + 15  # a poll, plus loading the model
    assert rollback["seen"]["errors"] == []
    assert len(rollback["seen"]["ok"]) > 20 and rollback["seen"]["ok"][-1] > rollback["done"]


def test_the_batch_dag_scores_every_project_once_per_version_after_the_champion_event(rollback, stack):
    client = stack.airflow()
    version = rollback["out"]["version"]

    def after_rollback() -> list[dict]:
        """Batch runs the rollback's champion event started (the target may have been scored before)."""
        runs = client.runs("tagifai_batch_predictions")
        return [
            r
            for r in runs
            if r["run_type"] == "asset_triggered"
            and r["start_date"]
            and datetime.fromisoformat(r["start_date"]) > rollback["started"]
        ]

    deadline = time.monotonic() + 600
    while not (ended := [r["state"] for r in after_rollback() if r["state"] in ("success", "failed")]):
        assert time.monotonic() < deadline, (
            f"no batch run after the rollback: {client.runs('tagifai_batch_predictions')}"
        )
        time.sleep(5)
    assert ended == ["success"]
    with Path(stack.env["TAGIFAI_PROJECTS_URL"]).open(newline="", encoding="utf-8") as f:
        projects = len(list(csv.DictReader(f)))
    counted = f"select count(*), count(distinct id) from predictions where model_version = {version}"
    assert stack.psql(counted) == f"{projects}|{projects}"
    # A second run with the same champion adds no row.
    run_id = client.request(
        "POST", "/api/v2/dags/tagifai_batch_predictions/dagRuns", {"logical_date": None, "conf": {}}
    )["dag_run_id"]
    deadline = time.monotonic() + 600
    while (state := client.request("GET", f"/api/v2/dags/tagifai_batch_predictions/dagRuns/{run_id}")["state"]) not in (
        "success",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(5)
    assert state == "success"
    assert stack.psql(counted) == f"{projects}|{projects}"
    columns = stack.psql(
        "select id, tag, probability, model_version, pipeline_run_id, scored_at from predictions limit 1"
    )
    assert len(columns.split("|")) == 6
