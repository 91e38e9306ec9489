"""`airflow dags test tagifai_training` with the docker runner: every step in its own container.

The containers come from the image built here (`make image`; `TAGIFAI_IMAGE`, default
`tagifai:latest`) and reach a real `mlflow server` backed by PostgreSQL on 127.0.0.1 through the
host network. Skips with the reason when Docker, the image or PostgreSQL is missing, unless
TAGIFAI_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import docker_ok, require, running_mlflow_server, running_postgres, synthetic, world_readable
from harness.dags import (
    STEPS,
    TASKS_WITH_TWO_WORKERS,
    champion,
    dags_test,
    pipeline_runs,
    study_states,
    write_config,
)
from harness.stack import running_containers

pytestmark = [pytest.mark.e2e, pytest.mark.airflow, pytest.mark.docker, pytest.mark.slow]

IMAGE = os.environ.get("TAGIFAI_IMAGE") or "tagifai:latest"


@pytest.fixture
def host_folder():
    """A folder under /tmp that the image's non-root user can read once it is bind-mounted.

    pytest's tmp_path lives under a root-only folder, which a container user cannot enter.
    """
    folder = Path(tempfile.mkdtemp(prefix="tagifai-dag-docker-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_docker_dag_run_trains_and_promotes_a_champion(tmp_path, host_folder):
    require(docker_ok("info"), "Docker engine unavailable (bash ../shared/ci/docker-sandbox.sh starts one)")
    require(docker_ok("image", "inspect", IMAGE), f"image {IMAGE} not built (make image)")
    projects, tags = synthetic.write_dataset(host_folder / "data")
    config = write_config(host_folder / "small.toml")
    world_readable(host_folder)

    with (
        running_postgres("mlflow", "optuna") as databases,
        running_mlflow_server(databases["mlflow"], tmp_path / "mlflow") as mlflow_server,
    ):
        tracking_uri = mlflow_server.uri
        run = dags_test(
            tmp_path / "airflow",
            conf={"num_trials": 3, "num_workers": 2, "projects_url": str(projects), "tags_url": tags.as_uri()},
            extra_env={
                "TAGIFAI_RUNNER": "docker",
                "TAGIFAI_IMAGE": IMAGE,
                # Containers reach the mlflow server and PostgreSQL on the host's 127.0.0.1.
                "TAGIFAI_DOCKER_NETWORK": "host",
                "TAGIFAI_MLFLOW_TRACKING_URI": tracking_uri,
                # The optimize workers' study; handed to the containers as a private variable.
                "TAGIFAI_OPTUNA_STORAGE": databases["optuna"],
                # A host path: the docker runner mounts its folder read-only and forwards it.
                "TAGIFAI_CONFIG": str(config),
                # The deployment's data folder, mounted read-only into the elt container.
                "TAGIFAI_DATA_DIRS": str(host_folder / "data"),
                # The deployment's data (the gate's holdout is its test split): here the run's too.
                "TAGIFAI_PROJECTS_URL": str(projects),
                "TAGIFAI_TAGS_URL": tags.as_uri(),
            },
        )
        assert run.returncode == 0, run.output[-5000:]
        # The first model is promoted, so publish_champion emits the champion event: every task succeeds.
        assert run.states == dict.fromkeys(TASKS_WITH_TWO_WORKERS, "success")
        best = champion(tracking_uri)
        runs = pipeline_runs(tracking_uri, run.run_id)
        [train] = [r for r in runs if r["step"] == "train"]
        trials = study_states(databases["optuna"], train["tags"]["optuna_study"])

    assert best is not None, "tagifai@champion was not set"
    assert IMAGE in best["tags"].values(), "the model version does not record the image it was trained in"
    # ... and its id, which `make reproduce` runs again; the image's lock file and commit came with it.
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE]
    image_id = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    assert best["tags"]["rebuild.image_id"] == image_id == train["tags"]["rebuild.image_id"]
    assert len(best["tags"]["rebuild.lock_sha256"]) == 64
    assert run.run_id in best["run_tags"].values()
    # Two optimize containers shared one study in PostgreSQL: 3 trials between them.
    workers = [r for r in runs if r["step"] == "optimize"]
    assert len(workers) == 2 and sum(w["metrics"]["trials_run"] for w in workers) == 3
    assert trials.get("COMPLETE", 0) + trials.get("PRUNED", 0) == 3
    assert train["tags"]["optimize_run_id"] in {w["run_id"] for w in workers}
    # Each step ran in its own container (optimize in two), and auto_remove="success" cleaned them up.
    assert run.output.count("Starting docker container from image") == len(STEPS) + 1
    assert running_containers(stopped_too=True, **{"org.tagifai.pipeline-run-id": run.run_id}) == []
