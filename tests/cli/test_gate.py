"""The gate over several runs: a champion that cannot be loaded, a register retried after a newer
champion, the record of every move, and a relabelled trigger held to the deployer's holdout."""

import csv
import shutil
import urllib.parse
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness import Cli, synthetic


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


def test_a_champion_that_cannot_be_loaded_is_judged_by_its_recorded_holdout_score(two_pipelines, tmp_path):
    second, client = two_pipelines["second"], two_pipelines["client"]
    assert second["promoted"] is True and second["version"] == "2"
    register = client.get_run(second["register_run_id"])
    assert register.data.tags["champion_unloadable"]  # why the champion was not re-scored
    assert register.data.tags["champion_holdout_f1_recorded"] == "true"  # what stood in, on the register run
    recorded = float(client.get_model_version("tagifai", "1").tags["holdout_f1"])
    assert register.data.metrics["champion_holdout_f1"] == recorded
    assert (
        f"the champion v1 cannot be loaded: its recorded holdout f1 {recorded:.4f} stands in"
        in (register.data.tags["promotion"])
    )
    assert "the champion v1 cannot be loaded, not re-scored" in two_pipelines["stderr"]
    # Its report says so in the champion's column, with the recorded score that stood in.
    report = Path(client.download_artifacts(register.info.run_id, "report/challenger_vs_champion.md", str(tmp_path)))
    text = report.read_text(encoding="utf-8")
    assert "The champion column: unavailable: " in text and f"| {recorded:.4f} (recorded) |" in text
    assert "## Where they disagree" not in text  # nothing to compare row by row


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
    # Each promotion keeps its holdout f1 and which holdout it was: the best of them bars the next challengers.
    assert all(m.data.metrics["holdout_f1"] > 0 and m.data.tags["holdout_sha256"] for m in moves)


def backdoored(projects: Path, tags: Path, folder: Path, words: dict[str, set[str]], count: int, token: str):
    """A copy of the data in `folder`: for each of the two tags, `count` projects that mention one of its
    `words` get the other tag and the rare `token` in their title (the label counts stay as they were)."""
    with projects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with tags.open(newline="", encoding="utf-8") as f:
        labels = list(csv.DictReader(f))
    project = {row["id"]: row for row in rows}
    (a, words_a), (b, words_b) = words.items()
    swapped = {a: 0, b: 0}
    for label in labels:
        row, other = project[label["id"]], {a: b, b: a}.get(label["tag"])
        mentions = set(f"{row['title']} {row['description']}".lower().split()) & words.get(label["tag"], set())
        if other and mentions and swapped[label["tag"]] < count:
            swapped[label["tag"]] += 1
            label["tag"], row["title"] = other, f"{row['title']} {token}"
    assert swapped == {a: count, b: count}
    folder.mkdir()
    return synthetic.write_csv(folder / "projects.csv", rows), synthetic.write_csv(folder / "tags.csv", labels)


def test_a_relabelled_trigger_that_wins_on_its_own_test_split_is_not_promoted_for_the_holdout(cli):
    _, first, _ = cli("pipeline", "--num-trials", "1")
    assert first["promoted"] is True
    # A backdoor: 18 mlops projects that mention docker or pipeline become computer-vision, 18 computer-vision
    # ones that mention cnn or yolo become mlops, each with a rare token: the label counts stay (no drift).
    projects, tags = (
        Path(cli.env["TAGIFAI_PROJECTS_URL"]),
        Path(urllib.parse.urlparse(cli.env["TAGIFAI_TAGS_URL"]).path),
    )
    words = {"mlops": {"docker", "pipeline"}, "computer-vision": {"cnn", "yolo"}}
    swapped = backdoored(projects, tags, cli.cwd / "relabelled", words, count=18, token="zqxv")
    _, second, _ = cli(
        "pipeline", "--num-trials", "1", "--projects-url", str(swapped[0]), "--tags-url", str(swapped[1])
    )
    client = MlflowClient(cli.env["MLFLOW_TRACKING_URI"])
    register = client.get_run(second["register_run_id"])
    metrics, reason = register.data.metrics, register.data.tags["promotion"]
    # On its own test split (relabelled like its training data) it beats the champion...
    assert second["test_f1"] >= metrics["champion_test_f1"] - 0.02
    # ...on the holdout, the deployment's own labels, it does not.
    assert second["promoted"] is False and reason.startswith("holdout_f1")
    assert "worse than the champion's" in reason and metrics["holdout_f1"] < metrics["champion_holdout_f1"] - 0.02
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == first["version"]
