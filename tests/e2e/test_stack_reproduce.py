"""Reproducing a version in the running stack: after versions trained on three datasets, `make reproduce
VERSION=1` rebuilds the first one in the image it was trained in, byte for byte; `CURRENT_DATA=1` trains
its recipe on the current data and reports against the champion without moving it.
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
from pathlib import Path

import pytest

from harness import REPO, last_json, synthetic
from harness.stack import make, step_outputs

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]


def versions(stack) -> list[dict]:
    found = stack.mlflow("model-versions/search", filter="name = 'tagifai'", max_results="1000")["model_versions"]
    return sorted(found, key=lambda v: int(v["version"]))


def tags(version: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in version.get("tags", [])}


@pytest.fixture(scope="module")
def three_datasets(stack, first_run, changed_data_run) -> list[dict]:
    """The versions of the session: the first run's data, the watcher's changed data, and a third dataset trained
    here (one trial): the stack's projects with their titles in lower case. The same labels and text lengths (a
    subset would drift: a class below min_freq), other bytes. Its gate asks for f1 0.99, so it is not promoted:
    the later tests keep the champion, and the drift reference, they expect."""
    projects = Path(stack.env["TAGIFAI_PROJECTS_URL"])
    with projects.open(newline="", encoding="utf-8") as file:  # descriptions may hold line breaks
        rows = [{**row, "title": row["title"].lower()} for row in csv.DictReader(file)]
    third = synthetic.write_csv(projects.with_name("third-projects.csv"), rows)
    third.chmod(0o644)
    client = stack.airflow()
    run_id = client.trigger({"projects_url": str(third), "num_trials": 1, "num_workers": 1, "min_f1": 0.99})
    run = client.wait(run_id, timeout=1800)
    assert run["state"] == "success", client.task_states(run_id)
    assert step_outputs(client, run_id)["register"]["promoted"] is False
    return versions(stack)


def attempts(stack, version: str) -> list[dict]:
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai-reproduce")["experiment"]
    body = {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.reproduces = '{version}'",
        "order_by": ["attributes.start_time DESC"],
    }
    return stack.mlflow_post("runs/search", body).get("runs", [])


def run_tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_version_1_is_rebuilt_byte_for_byte_in_the_image_it_was_trained_in(three_datasets, stack):
    assert len({tags(v)["data_sha256"] for v in three_datasets}) >= 3
    first = tags(three_datasets[0])
    image = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", "tagifai:latest"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert first["rebuild.image_id"] == image  # the session built the image once
    lock = (REPO / "images" / "tagifai" / "requirements.lock").read_bytes()
    assert first["rebuild.lock_sha256"] == hashlib.sha256(lock).hexdigest()
    done = make("reproduce", "VERSION=1", env_file=stack.env_file, timeout=900)
    out = last_json(done.stdout)
    assert out["verdict"] == "identical" and out["version"] == "1"
    assert out["predictions_sha256"] == first["rebuild.predictions_sha256"]
    assert out["probabilities_sha256"] == first["rebuild.probabilities_sha256"]
    assert f"in the image it was trained in ({image[:19]})" in done.stderr
    [attempt] = [r for r in attempts(stack, "1") if r["info"]["run_id"] == out["run_id"]]
    assert run_tags(attempt)["reproduce.verdict"] == "identical"


def test_the_recipe_on_current_data_is_a_report_that_moves_no_alias(three_datasets, stack, changed_data_run):
    def aliases() -> dict[str, str]:
        model = stack.mlflow("registered-models/get", name="tagifai")["registered_model"]
        return {a["alias"]: a["version"] for a in model.get("aliases", [])}

    before, count = aliases(), len(versions(stack))
    done = make("reproduce", "VERSION=1", "CURRENT_DATA=1", env_file=stack.env_file, timeout=900)
    out = last_json(done.stdout)
    assert out["mode"] == "current-data" and out["champion_version"] == before["champion"]
    assert 0 < out["holdout_f1_recipe"] <= 1 and 0 < out["holdout_f1_champion"] <= 1
    assert aliases() == before and len(versions(stack)) == count
    [attempt] = [r for r in attempts(stack, "1") if r["info"]["run_id"] == out["run_id"]]
    assert run_tags(attempt)["reproduce.mode"] == "current-data"
    # Today's sources: the stack's data as the watcher's run last changed it (the third dataset was a param).
    changed = step_outputs(stack.airflow(), changed_data_run["run"]["dag_run_id"])["elt"]["data_sha256"]
    assert run_tags(stack.mlflow("runs/get", run_id=out["data_run_id"])["run"])["data_sha256"] == changed
    experiment = attempt["info"]["experiment_id"]
    report = stack.artifact(f"{experiment}/{out['run_id']}/artifacts/reproduce/current_data.md").decode()
    assert f"against the champion (version {before['champion']})" in report


def test_a_version_whose_image_is_gone_says_which_commit_to_build(three_datasets, stack):
    """The third version's recorded image and commit rewritten to ones this machine never had: exit 3, saying
    which commit to build."""
    third = three_datasets[2]["version"]
    image, commit = "sha256:" + "0" * 64, "f" * 40
    for key, value in (("rebuild.image_id", image), ("rebuild.commit", commit), ("rebuild.dirty", "false")):
        stack.mlflow_post("model-versions/set-tag", {"name": "tagifai", "version": third, "key": key, "value": value})
    command = ["make", "--no-print-directory", "reproduce", f"VERSION={third}", f"STACK_ENV={stack.env_file}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout
    assert f"version {third} cannot be reproduced here: the image it was trained in ({image[:19]})" in done.stderr
    assert f"build it from commit {commit}: git checkout {commit} && make image" in done.stderr
    assert attempts(stack, third) == []  # nothing was tried
