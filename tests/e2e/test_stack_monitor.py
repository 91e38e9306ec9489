"""The drift monitor in the running stack: what `tagifai serve` answered, judged by `tagifai_monitor`.

The training projects sent to `serve` are no drift: no event, no message. Then 500 summaries of software
packages that are not ML ("A fast JSON parser for Rust", "CLI to manage dotfiles", ...): the model tags most of
them as ML with confidence, and the monitor reports drift: an event on the `tagifai_drift` Asset with the
verdict, a mail with the figures and a link to the report, Evidently's HTML report an artifact of the monitor's
MLflow run.

The window is this module's own: rows earlier tests sent to `serve` (thousands of copies of one project) are
deleted from the inference log first. Batch scoring's rows of the champion stay: it scores the training projects,
which is no drift either (the projects the champion was trained on are left out by the monitor).
"""

from __future__ import annotations

import csv
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from harness import wait_for
from harness.packages import package_summaries
from tagifai.contract.config import load_settings
from tagifai.contract.names import DRIFT_ASSET, INFERENCE_LOG_TABLE

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

DAG = "tagifai_monitor"
# Rows per request to serve (at most [serve] max_rows).
CHUNK = 250
PACKAGES = 500


def champion_version(stack) -> str:
    return stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]


def training_projects(stack) -> list[dict[str, str]]:
    """The stack's training projects (title, description), as its data file holds them."""
    with Path(stack.env["TAGIFAI_PROJECTS_URL"]).open(newline="", encoding="utf-8") as f:
        return [{"title": row["title"], "description": row["description"]} for row in csv.DictReader(f)]


def logged(stack, version: str) -> int:
    """The inference log's rows of `version`."""
    return int(stack.psql(f"select count(*) from {INFERENCE_LOG_TABLE} where model_version = {int(version)}"))


def send(stack, rows: list[dict[str, str]], version: str) -> None:
    """Send `rows` to serve, `CHUNK` a request; wait until the inference log holds them (it writes off the request
    path). Every answer must come from `version`."""
    before = logged(stack, version)
    for start in range(0, len(rows), CHUNK):
        stack.serve("/invocations", {"dataframe_records": rows[start : start + CHUNK]})
    wait_for(lambda: logged(stack, version) >= before + len(rows), "the rows in the inference log", 120)
    assert stack.serve("/version")["model_version"] == version


def look(stack) -> dict[str, Any]:
    """Trigger tagifai_monitor; once it ended: the run, its task states, the monitor's output, the drift events."""
    client = stack.airflow()
    run_id = client.trigger({}, DAG)
    run = client.wait(run_id, timeout=900, dag_id=DAG)
    out = client.xcom(run_id, "monitor", dag_id=DAG)
    query = urllib.parse.urlencode({"source_dag_id": DAG, "source_run_id": run_id})
    events = client.request("GET", f"/api/v2/assets/events?{query}")["asset_events"]
    return {
        "run_id": run_id,
        "run": run,
        "states": client.task_states(run_id, DAG),
        "out": out if isinstance(out, dict) else json.loads(out),
        "events": events,
        "log": client.task_log(run_id, "publish_drift", dag_id=DAG),
    }


@pytest.fixture(scope="module")
def looks(stack, first_run) -> dict[str, Any]:
    """Two looks of the monitor at what serve answered: after the training projects, then after package summaries."""
    wait_for(lambda: stack.serve("/version")["model_version"] == champion_version(stack), "serve follows champion", 120)
    version = champion_version(stack)
    stack.psql(f"delete from {INFERENCE_LOG_TABLE}")  # the window is this module's own
    # Each training project twice: its held-out ones (the rest are left out) are well over [monitor] min_rows.
    projects = training_projects(stack)
    send(stack, projects + projects, version)
    in_domain = look(stack)
    packages = package_summaries(PACKAGES, seed=2026)
    send(stack, packages, version)
    drifted = look(stack)
    return {"version": version, "in_domain": in_domain, "drifted": drifted, "projects": len(projects)}


def test_the_training_projects_are_no_drift_and_tell_nobody(stack, looks):
    look_ = looks["in_domain"]
    assert look_["run"]["state"] == "success", look_["states"]
    out = look_["out"]
    assert out["drifted"] is False and out["status"] == "no drift", out["reasons"]
    assert out["model_version"] == looks["version"]
    served = out["rows"]["served"]
    assert served["in_window"] == 2 * looks["projects"]
    assert served["training_rows_left_out"] > 0 and served["judged"] >= load_settings().monitor.min_rows
    assert look_["states"]["publish_drift"] == "skipped" and look_["events"] == []
    assert "no drift event (no drift)" in look_["log"]


def test_package_summaries_are_drift_an_asset_event_and_a_mail(stack, looks):
    look_ = looks["drifted"]
    assert look_["run"]["state"] == "success", look_["states"]
    out = look_["out"]
    assert out["drifted"] is True and out["status"] == "drift", out["reasons"]
    assert any(r.startswith("served requests: ") and "columns drifted" in r for r in out["reasons"])
    assert out["rows"]["served"]["judged"] >= PACKAGES
    assert look_["states"]["publish_drift"] == "success"
    [event] = look_["events"]
    assert event["name"] == DRIFT_ASSET and event["extra"]["drifted"] is True
    assert event["extra"]["model_version"] == looks["version"] and event["extra"]["run_id"] == out["run_id"]
    assert event["extra"]["reasons"] == out["reasons"][: len(event["extra"]["reasons"])]
    [mail] = stack.wait_for_mail(f"tagifai v{looks['version']}: drift detected", look_["run_id"])
    run_page = f"{stack.env['MLFLOW_PUBLIC_URL']}/#/experiments/{out['experiment_id']}/runs/{out['run_id']}"
    assert f"report: {run_page}/artifacts/monitor/report.html" in mail
    assert "rows judged: served " in mail and "columns drifted" in mail
    # The first look's verdict told nobody (the champion's own events start looks too: count this module's only).
    assert not [m for m in stack.mail() if looks["in_domain"]["run_id"] in m]


def test_the_report_is_an_artifact_of_the_monitor_run(stack, looks):
    out = looks["drifted"]["out"]
    run = stack.mlflow("runs/get", run_id=out["run_id"])["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["verdict"] == "drift" and tags["model_version"] == looks["version"]
    experiment = stack.mlflow("experiments/get", experiment_id=run["info"]["experiment_id"])["experiment"]
    assert experiment["name"] == load_settings().monitor.experiment_name
    html = stack.artifact(f"{out['experiment_id']}/{out['run_id']}/artifacts/{out['report']}").decode()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "unseen_words" in html and "probability" in html
    verdict = json.loads(stack.artifact(f"{out['experiment_id']}/{out['run_id']}/artifacts/monitor/verdict.json"))
    assert verdict["drifted"] is True and verdict["reasons"] == out["reasons"]


def test_the_drift_asset_is_made_by_the_monitor_and_starts_no_training_by_default(stack, looks):
    # [monitor] retrain_on_drift is false by default: no DAG is scheduled on the drift Asset.
    assets = stack.airflow().request("GET", f"/api/v2/assets?name_pattern={DRIFT_ASSET}")["assets"]
    [asset] = [a for a in assets if a["name"] == DRIFT_ASSET]
    assert [(t["dag_id"], t["task_id"]) for t in asset["producing_tasks"]] == [(DAG, "publish_drift")]
    assert asset["scheduled_dags"] == []
    assert asset["last_asset_event"]["id"] == looks["drifted"]["events"][0]["id"]
