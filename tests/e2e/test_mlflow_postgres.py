"""The pipeline against a real `mlflow server` backed by PostgreSQL, with Optuna's study in PostgreSQL too."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request

import pytest

from harness import MLFLOW, Cli, answers, free_port, stop, synthetic, tagifai_python, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def api(server, path, **params):
    """GET an MLflow REST endpoint and decode its JSON."""
    url = f"{server.uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def pipeline(mlflow_server, postgres, tmp_path_factory):
    """One `tagifai pipeline` run against the server; returns its JSON and the client's folder."""
    root = tmp_path_factory.mktemp("client")
    projects, tags = synthetic.write_dataset(root / "data")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "TAGIFAI_CONFIG": str(synthetic.write_small_config(root / "small.toml")),
        "TAGIFAI_OPTUNA_STORAGE": postgres.create_database("optuna"),
        "TAGIFAI_PIPELINE_RUN_ID": "e2e-postgres",
        "TAGIFAI_IMAGE": "tagifai:e2e",
        # The deployment's data (the gate's holdout is its test split): here the run's too.
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
    }
    _, out, _ = Cli(env, root)(
        "pipeline", "--num-trials", "3",
        "--projects-url", str(projects), "--tags-url", str(tags),
        "--experiment-name", "e2e",
    )  # fmt: skip
    return {"out": out, "cwd": root, "env": env}


def test_champion_is_registered_with_metrics_and_lineage(pipeline, mlflow_server):
    version = api(mlflow_server, "registered-models/alias", name="tagifai", alias="champion")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert version["version"] == pipeline["out"]["version"]
    assert {
        "test_f1",
        "test_precision",
        "test_recall",
        "data_sha256",
        "pipeline_run_id",
        "code_version",
        "image",
    } <= set(tags)
    assert tags["pipeline_run_id"] == "e2e-postgres" and tags["image"] == "tagifai:e2e"
    assert float(tags["test_f1"]) == pytest.approx(pipeline["out"]["test_f1"], abs=1e-4)
    run = api(mlflow_server, "runs/get", run_id=pipeline["out"]["evaluate_run_id"])["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test_f1"] == pytest.approx(pipeline["out"]["test_f1"])


def test_artifacts_live_on_the_server_not_the_client(pipeline, mlflow_server):
    run_id = pipeline["out"]["evaluate_run_id"]
    experiment_id = api(mlflow_server, "runs/get", run_id=run_id)["run"]["info"]["experiment_id"]
    on_server = mlflow_server.artifacts / experiment_id / run_id / "artifacts" / "evaluation" / "report.json"
    assert on_server.exists()
    path = f"{experiment_id}/{run_id}/artifacts/evaluation/report.json"
    url = f"{mlflow_server.uri}/api/2.0/mlflow-artifacts/artifacts/{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert json.loads(response.read())["overall"]["f1"] == pytest.approx(pipeline["out"]["test_f1"])
    assert not (pipeline["cwd"] / "mlruns").exists() and not (pipeline["cwd"] / "stores").exists()


def test_optuna_study_lives_in_postgres(pipeline):
    import optuna

    name = f"tagifai-e2e-postgres-{pipeline['out']['validate_run_id'][:8]}"
    study = optuna.load_study(study_name=name, storage=pipeline["env"]["TAGIFAI_OPTUNA_STORAGE"])
    assert len(study.trials) == 3


def test_predict_cli_uses_the_champion(pipeline):
    _, out, _ = Cli(pipeline["env"], pipeline["cwd"])("predict", "yolo object detection on video and images")
    [prediction] = out["predictions"]
    assert prediction["tag"] == "computer-vision" and 0 < prediction["probability"] <= 1


def test_mlflow_models_serve_answers_on_raw_text(pipeline, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    command = [
        str(MLFLOW),
        "models",
        "serve",
        "-m",
        "models:/tagifai@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**pipeline["env"], "PATH": f"{MLFLOW.parent}:{os.environ['PATH']}"}  # an activated venv
    server = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "mlflow models serve", 120, server)
        body = {
            "dataframe_split": {
                "columns": ["title", "description"],
                "data": [
                    ["Sentiment of text with BERT", "language and translation"],
                    ["Object detection in photos", "yolo and a cnn on images"],
                ],
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert [p["tag"] for p in predictions] == ["natural-language-processing", "computer-vision"]
    finally:
        stop(server)


# Logs a model the old way (a cloudpickled PythonModel, as tagifai < 0.2.0 did), registers it, deletes the
# files of the version named (if any) on the server, then loads both through `tagifai.model.load`.
UNLOADABLE = """
import json, shutil, sys, mlflow
from tagifai import model as models
class Old(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input
def log():
    return mlflow.pyfunc.log_model(name="model", python_model=Old(), pip_requirements=["mlflow"])
with mlflow.start_run(experiment_id=mlflow.create_experiment("old-models")):
    kept, deleted = log(), log()
pickled = mlflow.register_model(kept.model_uri, "tagifai").version
gone = mlflow.register_model(deleted.model_uri, "tagifai").version
artifacts = mlflow.get_logged_model(deleted.model_id).artifact_location.removeprefix("mlflow-artifacts:/")
shutil.rmtree(f"{sys.argv[1]}/{artifacts}")
out = {}
for version in (pickled, gone):
    try:
        models.load(f"models:/tagifai/{version}")
    except Exception as exc:
        out[str(version)] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def test_a_pickled_version_or_one_whose_files_are_gone_is_unloadable_from_the_server(pipeline, mlflow_server):
    from tagifai.model import NO_PICKLE_SINCE

    env = {**pipeline["env"], "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}  # refused by tagifai, not MLflow
    out = tagifai_python(UNLOADABLE, str(mlflow_server.artifacts), env=env)
    (pickled, refused), (gone, missing) = sorted(out.items(), key=lambda item: int(item[0]))
    assert refused == [
        "UnloadableModelError",
        f"models:/tagifai/{pickled} is a pickled model (python_model.pkl); this deployment loads only models "
        f"without pickle (logged by tagifai >= {NO_PICKLE_SINCE})",
    ]
    assert missing == [
        "UnloadableModelError",
        f"models:/tagifai/{gone} cannot be loaded: it has no MLmodel (its files are gone, or it is not a model)",
    ]
