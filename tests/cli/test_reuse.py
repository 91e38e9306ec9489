"""Reuse through the CLI: a pipeline run twice on the same data does its work once."""

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness import Cli, synthetic
from tagifai.pipeline.steps import NAMES


@pytest.fixture(scope="module")
def twice(module_cli: Cli) -> dict:
    """`tagifai pipeline` twice in a row on the same data, then once more with --force."""
    args = ("pipeline", "--num-trials", "2", "--experiment-name", "reuse")
    _, first, _ = module_cli(*args)
    _, second, stderr = module_cli(*args)
    versions = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"]).search_model_versions("name = 'tagifai'")
    _, forced, _ = module_cli(*args, "--force")
    return {"first": first, "second": second, "stderr": stderr, "forced": forced, "versions": versions}


def test_the_second_pipeline_reuses_every_step_and_registers_no_version(twice, module_cli):
    first, second = twice["first"], twice["second"]
    assert second["reused"] == list(NAMES)
    assert {f"{step}_run_id": second[f"{step}_run_id"] for step in NAMES} == {
        f"{step}_run_id": first[f"{step}_run_id"] for step in NAMES
    }
    assert second["version"] == first["version"] == "1"
    assert [str(v.version) for v in twice["versions"]] == ["1"]  # no new version


def test_the_log_says_which_runs_it_reused_and_why(twice):
    for step in NAMES:
        assert f"{step}: reusing run {twice['first'][f'{step}_run_id']}" in twice["stderr"]
    assert "same upstream, code, settings and arguments" in twice["stderr"]


def test_no_trial_ran_the_second_time(twice, module_cli):
    mlflow.set_tracking_uri(module_cli.env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("reuse").experiment_id
    trials = client.search_runs([experiment], "tags.`tagifai.step` = 'trial'", max_results=100)
    pipelines = {t.data.tags["pipeline_run_id"] for t in trials}
    assert twice["second"]["pipeline_run_id"] not in pipelines


def test_force_runs_every_step_again(twice):
    forced, first = twice["forced"], twice["first"]
    assert forced["reused"] == []
    assert all(forced[f"{step}_run_id"] != first[f"{step}_run_id"] for step in NAMES)
    assert forced["version"] == "2"  # a model trained anew is a new version


def test_a_run_whose_artifacts_are_gone_is_a_miss_not_an_error(module_cli, twice, tmp_path):
    import shutil
    import urllib.parse
    from pathlib import Path

    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    # Both evaluate runs so far have the key this one will have (the same data, code and settings).
    for run_id in {twice["first"]["evaluate_run_id"], twice["forced"]["evaluate_run_id"]}:
        shutil.rmtree(Path(urllib.parse.urlparse(client.get_run(run_id).info.artifact_uri).path) / "evaluation")
    _, again, _ = module_cli("evaluate", "--train-run", twice["forced"]["train_run_id"])
    assert not again.get("reused")
    assert again["run_id"] not in {twice["first"]["evaluate_run_id"], twice["forced"]["evaluate_run_id"]}


def test_new_data_once_promoted_is_not_learned_again_by_the_next_run(cli: Cli):
    # The new data's validation was keyed by the old champion's data; once its model is champion, the
    # drift reference is this very data: the next run must still find that validation, and all after it.
    config = Path(cli.env["TAGIFAI_CONFIG"])
    config.write_text(config.read_text() + "\n[register]\nmax_regression = 1.0\n", encoding="utf-8")
    args = ("pipeline", "--num-trials", "1", "--experiment-name", "new-data")
    _, first, _ = cli(*args)
    synthetic.write_dataset(Path(cli.env["TAGIFAI_PROJECTS_URL"]).parent, per_tag=45)
    _, learned, _ = cli(*args)
    assert learned["reused"] == [] and learned["promoted"] and learned["version"] == "2"
    _, again, _ = cli(*args)
    assert again["reused"] == list(NAMES)
    assert again["validate_run_id"] == learned["validate_run_id"] and again["version"] == "2"
