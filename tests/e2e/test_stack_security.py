"""Safe to share: in the running stack, the trigger form cannot reach the host or the stack's own
services, MLflow needs a login, a trigger cannot loosen the gate, no secret is on a command line,
a champion that cannot be loaded is ignored with a reason, and bad input is not retried.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

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


def test_a_trigger_cannot_loosen_the_gate(stack, first_run, shuffled_labels):
    client = stack.airflow()
    before = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    with pytest.raises(RuntimeError, match="HTTP 4"):  # the form refuses a looser gate
        client.trigger({"tags_url": str(shuffled_labels), "min_f1": 0, "max_regression": 1})
    # With the deployer's gate, shuffled labels train, score far below it, and move nothing; while the
    # run goes, no password is on any command line of the host.
    with command_lines() as seen:
        run_id = client.trigger({"tags_url": str(shuffled_labels), "num_trials": 1, "num_workers": 1})
        run = client.wait(run_id, timeout=1800)
    assert run["state"] == "success", client.task_states(run_id)
    register = next(r for r in mlflow_runs_of(stack, run_id) if tag(r, "tagifai.step") == "register")
    assert tag(register, "promoted") == "false" and "below the minimum" in tag(register, "promotion")
    after = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    assert after == before
    assert len(seen) > 20 and stack.leaked(seen) == set()


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
