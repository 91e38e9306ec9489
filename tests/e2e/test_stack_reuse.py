"""Change-driven, in the running stack: force runs every step; new data starts a run by asset event
and is learned anew; a second run on the same data reuses every step and trains and registers
nothing (how much faster it is, `make benchmark` says); the champion event follows promotions only.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests import synthetic
from tests.e2e.compose import WATCH_SECONDS

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

STEP_TASKS = ["validate", "optimize", "train", "evaluate", "register"]


def step_outputs(client, run_id: str) -> dict[str, dict]:
    """Each step's JSON line (optimize: worker 0's), from XCom: parsed (docker runner) or a string."""
    out = {}
    for task in ["elt", *STEP_TASKS]:
        value = client.xcom(run_id, task, map_index=0 if task == "optimize" else -1)
        out[task] = value if isinstance(value, dict) else json.loads(value)
    return out


def seconds(run: dict) -> float:
    """Wall time of a DAG run."""
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def champion_events(client) -> list[dict]:
    """The asset events of the champion Asset, oldest first."""
    [asset] = client.request("GET", "/api/v2/assets?name_pattern=tagifai_champion")["assets"]
    return client.request("GET", f"/api/v2/assets/events?asset_id={asset['id']}&order_by=timestamp")["asset_events"]


def test_force_runs_every_step_again(stack, first_run, faulted_run):
    # The faulted run is forced: on the first run's data, where every step would be reused otherwise.
    client = stack.airflow()
    assert faulted_run["run"]["state"] == "success", faulted_run["states"]
    forced = step_outputs(client, faulted_run["run_id"])
    assert not any(out.get("reused") for out in forced.values())
    assert "plan" not in forced["elt"]
    first = step_outputs(client, first_run[0])
    assert forced["elt"]["run_id"] != first["elt"]["run_id"]
    assert forced["train"]["run_id"] != first["train"]["run_id"]


@pytest.fixture(scope="module")
def data_change(stack):
    """Rows appended to the stack's data; the run the watcher's asset event started, once it ended."""
    client = stack.airflow()
    # The watcher has looked at least once (its first look records the data, and emits nothing).
    deadline = time.monotonic() + 4 * WATCH_SECONDS
    while not any(r["state"] == "success" for r in client.runs("tagifai_watch")):
        assert time.monotonic() < deadline, "tagifai_watch has not run"
        time.sleep(5)
    before = {r["dag_run_id"] for r in client.runs()}
    projects, tags = Path(stack.env["TAGIFAI_PROJECTS_URL"]), Path(stack.env["TAGIFAI_TAGS_URL"])
    with projects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with tags.open(newline="", encoding="utf-8") as f:
        tag_of = {row["id"]: row["tag"] for row in csv.DictReader(f)}
    top = max(int(row["id"]) for row in rows)
    originals = [row for row in rows if row["id"] in tag_of][:12]
    new = [{**row, "id": str(top + i + 1)} for i, row in enumerate(originals)]
    synthetic.write_csv(projects, rows + new, columns=list(rows[0]))
    with tags.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[n["id"], tag_of[o["id"]]] for n, o in zip(new, originals, strict=True)])
    changed = time.monotonic()
    deadline = changed + 2 * WATCH_SECONDS + 120
    while True:
        started = [r for r in client.runs() if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"]
        if started:
            break
        assert time.monotonic() < deadline, "no run started by an asset event within two watch intervals"
        time.sleep(5)
    waited = time.monotonic() - changed  # from the change to the run's start
    run = client.wait(started[0]["dag_run_id"], timeout=2400)
    return {"run": run, "waited": waited}


def test_new_data_starts_a_run_by_asset_event_and_is_learned_anew(data_change, stack):
    run = data_change["run"]
    assert run["state"] == "success" and run["run_type"] == "asset_triggered"
    assert data_change["waited"] <= 2 * WATCH_SECONDS + 30  # within two watch intervals (+ scheduling)
    outputs = step_outputs(stack.airflow(), run["dag_run_id"])
    assert [step for step, out in outputs.items() if out.get("reused")] == []


def test_a_promotion_emits_the_champion_event(data_change, stack):
    client = stack.airflow()
    register = step_outputs(client, data_change["run"]["dag_run_id"])["register"]
    events = [
        e for e in champion_events(client) if e["extra"].get("pipeline_run_id") == data_change["run"]["dag_run_id"]
    ]
    if register["promoted"]:
        [event] = events
        assert event["extra"]["version"] == register["version"]
        assert event["extra"]["test_f1"] == pytest.approx(register["test_f1"])
    else:
        assert events == []


def test_a_second_run_on_the_same_data_reuses_every_step(data_change, stack):
    client = stack.airflow()
    first = data_change["run"]
    versions = stack.mlflow("model-versions/search", filter="name = 'tagifai'", max_results="1000")
    run_id = client.trigger({})  # the same params as the asset-triggered run: the defaults
    second = client.wait(run_id, timeout=1800)
    assert second["state"] == "success", client.task_states(run_id)
    outputs = step_outputs(client, run_id)
    assert {step: out.get("reused") for step, out in outputs.items()} == dict.fromkeys(outputs, True)
    # Nothing trained, tuned or registered; no champion event.
    after = stack.mlflow("model-versions/search", filter="name = 'tagifai'", max_results="1000")
    assert len(after["model_versions"]) == len(versions["model_versions"])
    assert client.task_states(run_id)["publish_champion"] == "skipped"
    assert not [e for e in champion_events(client) if e["extra"].get("pipeline_run_id") == run_id]
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]
    body = {"experiment_ids": [experiment], "filter": f"tags.pipeline_run_id = '{run_id}'", "max_results": 10}
    assert stack.mlflow_post("runs/search", body).get("runs", []) == []  # not even a trial
    # How much faster is a figure of `make benchmark` (its pipeline section), not a timed assertion here.
    ratio = seconds(second) / seconds(first)
    print(f"second run on the same data: {seconds(second):.0f}s, {ratio:.0%} of the first ({seconds(first):.0f}s)")
