"""The gate over several runs: a champion that cannot be loaded, a register retried after a newer
champion, and the record of every move."""

import shutil
import urllib.parse
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness import Cli


@pytest.fixture(scope="module")
def two_pipelines(module_cli: Cli) -> dict:
    """A first pipeline run (v1 champion), its champion's files deleted, then a second run."""
    _, first, _ = module_cli("pipeline", "--num-trials", "1", "--experiment-name", "gate")
    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    v1 = client.get_model_version_by_alias("tagifai", "champion")
    model_id = v1.source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    shutil.rmtree(Path(urllib.parse.urlparse(location).path))
    _, second, stderr = module_cli("pipeline", "--num-trials", "1", "--experiment-name", "gate")
    return {"first": first, "second": second, "stderr": stderr, "client": client}


def test_a_champion_that_cannot_be_loaded_is_reported_and_the_run_succeeds(two_pipelines):
    second, client = two_pipelines["second"], two_pipelines["client"]
    assert second["promoted"] is True and second["version"] == "2"
    register = client.get_run(second["register_run_id"])
    assert register.data.tags["champion_unloadable"]  # why the champion was ignored
    assert "the champion v1 cannot be loaded, so only min_f1 applies" in register.data.tags["promotion"]
    assert "cannot be scored, ignored" in two_pipelines["stderr"]


def test_a_retried_register_of_an_older_run_never_moves_champion_back(two_pipelines, module_cli):
    client = two_pipelines["client"]
    _, again, _ = module_cli("register", "--evaluate-run", two_pipelines["first"]["evaluate_run_id"])
    assert again["version"] == "1" and again["promoted"] is False
    assert "older than the champion v2" in again["reason"]
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("tagifai", "challenger").version) == "2"


def test_every_move_of_champion_is_recorded(two_pipelines, module_cli):
    mlflow.set_tracking_uri(module_cli.env["MLFLOW_TRACKING_URI"])
    client = two_pipelines["client"]
    experiment = client.get_experiment_by_name("tagifai-champion-history")
    moves = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [(m.data.tags["from_version"], m.data.tags["to_version"], m.data.tags["action"]) for m in moves] == [
        ("", "1", "promote"),
        ("1", "2", "promote"),
    ]
    assert moves[1].data.tags["by"] == two_pipelines["second"]["pipeline_run_id"]
