"""`tagifai maintain` against a real `mlflow server` (PostgreSQL-backed, proxied artifacts, basic auth, as in
the stack) and a real PostgreSQL inference log.

Four pipelines: the champion's, a failed one (bad data), and two whose promotion a person was to approve
(never promoted): the older one's version is archived, and its runs, its model's files and at last the
version itself go; the champion, the challenger, the history and what the next run reuses stay.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import harness
from harness import Cli, synthetic
from tagifai.pipeline import predictions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "s3cret-db-pw"  # in the backend store's URL: PostgreSQL here trusts, so any password connects
RETENTION = """
[retention]
deleted_days = {deleted_days}
run_days = 0
keep_versions = 1
inference_days = 30
airflow_days = 90
log_days = 30
[limits]
run_minutes = 0.001
"""


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """A basic-auth MLflow server of its own (its database is gc'd), its backend URL with a password in it."""
    folder = tmp_path_factory.mktemp("mlflow-retention")
    backend = postgres.create_database("mlflow_retention")
    with harness.running_mlflow_server(backend, folder, auth=True) as running:
        yield running, backend.replace("postgres@", f"postgres:{PASSWORD}@")


@pytest.fixture(scope="module")
def inference_db(postgres) -> str:
    return postgres.create_database("tagifai_retention")


def config(root: Path, name: str, deleted_days: float, approval: str = "auto") -> str:
    path = synthetic.write_small_config(root / f"{name}.toml")
    extra = RETENTION.format(deleted_days=deleted_days) + f'[register]\napproval = "{approval}"\n'
    path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def cli(server, inference_db, tmp_path_factory):
    """`tagifai` as the MLflow admin (the pipeline's login), small data and settings."""
    running, backend = server
    root = tmp_path_factory.mktemp("maintain")
    projects, tags = synthetic.write_dataset(root / "data")
    env = {
        **os.environ,
        **running.as_admin(),
        "TAGIFAI_CONFIG": config(root, "keep", deleted_days=30),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
        "TAGIFAI_MLFLOW_BACKEND_STORE_URI": backend,
        "TAGIFAI_PREDICTIONS_DB": inference_db,
    }
    for name in ("MLFLOW_EXPERIMENT_NAME", "TAGIFAI_PIPELINE_RUN_ID"):
        env.pop(name, None)
    cli = Cli(env, root)
    cli.configs = {
        "keep": env["TAGIFAI_CONFIG"],
        "purge": config(root, "purge", deleted_days=0),
        "held": config(root, "held", deleted_days=30, approval="human"),
    }
    cli.data = root / "data"
    return cli


def bad_data(folder: Path) -> Path:
    """The projects with three ids repeated: validate fails (`unique_ids`)."""
    with (folder / "projects.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return synthetic.write_csv(folder / "bad.csv", rows + rows[:3])


def size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def runs_of(client: MlflowClient, pipeline: str) -> list:
    experiment = client.get_experiment_by_name("tagifai").experiment_id
    return client.search_runs([experiment], f"tags.pipeline_run_id = '{pipeline}'", max_results=1000)


def maintain_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("tagifai").experiment_id
    return client.search_runs([experiment], "tags.`tagifai.step` = 'maintain'")


def folder_bytes(root: Path, *parts: str) -> int:
    """The bytes of the files under one folder of the artifact store (0: none, or no folder)."""
    return size(root.joinpath(*parts)) if root.joinpath(*parts).exists() else 0


def inference_log(url: str, *ages_days: float) -> None:
    """The inference log (the server's own schema), with one row logged `age` days ago each."""
    from tagifai.serving import inference_log as serving_log

    with psycopg2.connect(predictions.dsn(url)) as connection, connection.cursor() as cursor:
        cursor.execute(serving_log.SCHEMA)
        for i, age in enumerate(ages_days):
            cursor.execute(
                "INSERT INTO inference_log (logged_at, request_id, row_index, title, description, tag, probability, "
                "model_name, model_version, latency_ms) VALUES (%s, %s, 0, 't', 'd', 'mlops', 0.9, 'tagifai', 1, 1.0)",
                (datetime.now(UTC) - timedelta(days=age), f"r{i}"),
            )
    connection.close()


def inference_rows(url: str) -> int:
    with psycopg2.connect(predictions.dsn(url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM inference_log")
        (count,) = cursor.fetchone()
    connection.close()
    return count


def test_maintain_deletes_what_nothing_needs_and_removes_it_for_good(cli, server, inference_db, monkeypatch):
    running, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", running.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", running.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", running.admin[1])
    client = MlflowClient(tracking_uri=running.uri)  # not the process-wide URI an earlier module may have set
    assert cli("claim")[1]["auth"] is True

    # The champion (v1); a failed pipeline on bad data; two held for a person's approval (v2, v3: never promoted).
    champion = cli("pipeline", "--num-trials", "1", TAGIFAI_PIPELINE_RUN_ID="champion")[1]
    assert champion["promoted"] is True
    bad = bad_data(cli.data)
    elt = cli("elt", "--projects-url", str(bad), TAGIFAI_PIPELINE_RUN_ID="failed")[1]
    assert cli("validate", "--elt-run", elt["run_id"], check=False, TAGIFAI_PIPELINE_RUN_ID="failed")[0] == 3
    held = {}
    for pipeline in ("held-old", "held-new"):
        held[pipeline] = cli("pipeline", "--num-trials", "1", "--force", TAGIFAI_PIPELINE_RUN_ID=pipeline,
                             TAGIFAI_CONFIG=cli.configs["held"])[1]  # fmt: skip
        assert held[pipeline]["promoted"] is False
    old, new = held["held-old"], held["held-new"]
    assert (old["version"], new["version"]) == ("2", "3")
    # Someone deleted a run of the champion's in the UI.
    client.delete_run(champion["validate_run_id"])
    inference_log(inference_db, 100, 45, 31, 2, 0)

    model_id = client.get_model_version("tagifai", "2").source.removeprefix("models:/")
    experiment = client.get_experiment_by_name("tagifai").experiment_id
    assert folder_bytes(running.artifacts, experiment, "models", model_id) > 0
    doomed = {run.info.run_id for run in [*runs_of(client, "held-old"), *runs_of(client, "failed")]}
    kept = {run.info.run_id for name in ("champion", "held-new") for run in runs_of(client, name)}
    artifacts = size(running.artifacts)
    held_bytes = {run_id: folder_bytes(running.artifacts, experiment, run_id) for run_id in doomed}
    assert sum(held_bytes.values()) > 0

    # A dry run lists it all, and changes nothing.
    _, dry, stderr = cli("maintain", "--dry-run", TAGIFAI_CONFIG=cli.configs["purge"])
    assert dry["dry_run"] is True
    assert set(dry["delete"]) == doomed and dry["runs_to_delete"] == len(doomed)
    assert dry["archive"] == ["2"] and dry["restore"] == [champion["validate_run_id"]]
    # deleted_days 0: what it deletes would be removed for good now, the archived version with its model.
    assert set(dry["purge"]) == doomed and dry["remove"] == ["2"] and dry["logged_models_to_delete"] == 1
    assert dry["inference_rows_to_delete"] == 3
    assert f"would delete run {old['train_run_id']} (train of held-old: retired pipeline)" in stderr
    assert {client.get_run(r).info.lifecycle_stage for r in doomed} == {"active"}
    assert client.get_run(champion["validate_run_id"]).info.lifecycle_stage == "deleted"
    assert "tagifai.archived" not in client.get_model_version("tagifai", "2").tags
    assert size(running.artifacts) == artifacts and inference_rows(inference_db) == 5
    assert maintain_runs(client) == []

    # deleted_days 30: runs deleted (restorable), v2 archived and still loads; nothing removed for good yet.
    _, done, stderr = cli("maintain")
    assert (done["runs_deleted"], done["versions_archived"], done["runs_restored"]) == (len(doomed), 1, 1)
    assert (done["runs_purged"], done["versions_removed"], done["inference_rows_deleted"]) == (0, 0, 3)
    assert {client.get_run(r).info.lifecycle_stage for r in doomed} == {"deleted"}
    assert {client.get_run(r).info.lifecycle_stage for r in kept} == {"active"}
    assert client.get_model_version("tagifai", "2").tags["tagifai.archived"]
    assert cli("predict", "a text", "--model-uri", "models:/tagifai/2")[1]["predictions"]
    assert {run_id: folder_bytes(running.artifacts, experiment, run_id) for run_id in doomed} == held_bytes
    assert folder_bytes(running.artifacts, experiment, "models", model_id) > 0 and inference_rows(inference_db) == 2
    maintain_run = client.get_run(done["run_id"])
    assert maintain_run.data.tags["tagifai.step"] == "maintain"
    assert maintain_run.data.metrics["runs_deleted"] == len(doomed)

    # deleted_days 0: what was deleted goes for good: rows, artifacts, the model's files, the archived version.
    _, purged, stderr = cli("maintain", TAGIFAI_CONFIG=cli.configs["purge"])
    assert purged["runs_deleted"] == 0 and purged["runs_purged"] == len(doomed)
    assert (purged["logged_models_deleted"], purged["logged_models_purged"], purged["versions_removed"]) == (1, 1, 1)
    for run_id in doomed:
        with pytest.raises(MlflowException, match="not found"):
            client.get_run(run_id)
        assert folder_bytes(running.artifacts, experiment, run_id) == 0
    assert folder_bytes(running.artifacts, experiment, "models", model_id) == 0
    assert size(running.artifacts) < artifacts
    assert sorted(v.version for v in client.search_model_versions("name = 'tagifai'")) == ["1", "3"]
    assert PASSWORD not in stderr + str(purged)

    # The champion, the challenger and the history are whole; the next run like the newest one reuses it all.
    for uri in ("models:/tagifai@champion", "models:/tagifai@challenger", "models:/tagifai/1"):
        assert cli("predict", "a text", "--model-uri", uri)[1]["predictions"]
    history = client.get_experiment_by_name("tagifai-champion-history").experiment_id
    [move] = client.search_runs([history], "tags.`tagifai.step` = 'champion-move'")
    assert move.data.tags["to_version"] == "1"
    again = cli("pipeline", "--num-trials", "1", TAGIFAI_PIPELINE_RUN_ID="again", TAGIFAI_CONFIG=cli.configs["held"])
    assert again[1]["reused"] == ["elt", "validate", "optimize", "train", "evaluate", "register"]
    assert again[1]["version"] == "3"


def test_maintain_without_the_backend_store_says_what_to_set_and_changes_nothing(cli, server):
    running, _ = server
    code, out, stderr = cli("maintain", check=False, TAGIFAI_MLFLOW_BACKEND_STORE_URI="")
    assert code == 3 and out is None
    assert stderr.strip().splitlines()[-1].startswith("error: set TAGIFAI_MLFLOW_BACKEND_STORE_URI to the database")
