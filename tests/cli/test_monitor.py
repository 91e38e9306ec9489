"""`tagifai monitor` as a deployment runs it: a basic-auth `mlflow server` on PostgreSQL, the tagifai database with
the inference log and batch predictions, a champion the pipeline trained; no drift, then drift, then too few rows.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg2
import pytest

import harness
from harness import Cli, query, synthetic
from harness.packages import package_summaries
from tagifai.pipeline import predictions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "tagifai"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """PostgreSQL (MLflow's database and the tagifai one), a basic-auth MLflow server, `tagifai` as its admin, and a
    champion: `tagifai claim`, then `tagifai pipeline` on synthetic projects."""
    root = tmp_path_factory.mktemp("monitor")
    projects, tags = synthetic.write_dataset(root / "data", per_tag=100)
    with harness.running_postgres("mlflow", "tagifai") as postgres:
        with harness.running_mlflow_server(postgres["mlflow"], root / "mlflow", auth=True) as server:
            env = {
                **os.environ,
                **server.as_admin(),
                "TAGIFAI_CONFIG": str(synthetic.write_small_config(root / "small.toml")),
                "TAGIFAI_PROJECTS_URL": str(projects),
                "TAGIFAI_TAGS_URL": str(tags),
                "TAGIFAI_PREDICTIONS_DB": postgres["tagifai"],
            }
            for name in ("TAGIFAI_PIPELINE_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "TAGIFAI_MODEL_NAME"):
                env.pop(name, None)
            cli = Cli(env, root)
            cli("claim")
            trained = cli("pipeline", "--num-trials", "2")[1]
            assert trained["promoted"], trained
            yield {"cli": cli, "server": server, "db": postgres["tagifai"], "env": env, "version": trained["version"]}


@contextmanager
def logged_in(env: dict[str, str]):
    """This process talks to the deployment's MLflow as its admin while the block runs."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {name: os.environ.get(name) for name in names}
    previous = tracking_utils._tracking_uri  # the process-wide URI, which wins over the environment
    os.environ.update({name: env[name] for name in names})
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="module")
def champion(deployment):
    """The champion as `tagifai serve` and batch scoring use it, and the projects it was trained on."""
    import mlflow

    from tagifai import model as models
    from tagifai.pipeline import tracking

    with logged_in(deployment["env"]):
        version = mlflow.MlflowClient().get_model_version(MODEL, deployment["version"])
        model = models.load(f"models:/{MODEL}/{deployment['version']}")
        train = tracking.load_split(version.tags["data_run_id"], "train")
    return {"model": model, "version": int(deployment["version"]), "train": train}


@pytest.fixture
def window(deployment):
    """An empty inference log (the table as `tagifai serve` creates it) and no batch predictions."""
    from tagifai.serving.inference_log import SCHEMA

    query(deployment["db"], "DROP TABLE IF EXISTS inference_log; DROP TABLE IF EXISTS predictions")
    query(deployment["db"], SCHEMA)
    return deployment["db"]


def serve_log(url: str, champion, frame: pd.DataFrame, version: int | None = None, hours_ago: float = 1.0) -> None:
    """Rows as `tagifai serve` logs them: the texts sent, the champion's answers, when."""
    texts = frame[["title", "description"]].reset_index(drop=True)
    scored = champion["model"].predict(texts)
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    rows = [
        (at, f"request-{i // 50}", i % 50, t.title, t.description, s.tag, float(s.probability), MODEL,
         version or champion["version"], 12.5)
        for i, (t, s) in enumerate(zip(texts.itertuples(), scored.itertuples(), strict=True))
    ]  # fmt: skip
    with psycopg2.connect(predictions.dsn(url)) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO inference_log (logged_at, request_id, row_index, title, description, tag, probability, "
            "model_name, model_version, latency_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    connection.close()


def batch_score(url: str, champion, frame: pd.DataFrame) -> None:
    """`frame` (`id`, `title`, `description`) scored by the champion, as `tagifai predict-batch` writes it."""
    scored = predictions.score(champion["model"], frame)
    predictions.upsert(url, scored, champion["version"], "scheduled__batch", datetime.now(UTC) - timedelta(hours=2))


def new_projects(per_tag: int, seed: int) -> pd.DataFrame:
    """Projects like the training ones (the same generator), none of them a training project."""
    projects, _ = synthetic.make_projects(per_tag, seed)
    return pd.DataFrame(projects).assign(id=lambda f: "new-" + f["id"].astype(str))


def run_of(deployment, run_id: str) -> dict:
    return json.loads(mlflow_get(deployment, "runs/get", run_id=run_id))["run"]


def basic(login: tuple[str, str]) -> str:
    return base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()


def artifact(deployment, run: dict, path: str) -> bytes:
    server, info = deployment["server"], run["info"]
    url = f"{server.uri}/api/2.0/mlflow-artifacts/artifacts/{info['experiment_id']}/{info['run_id']}/artifacts/{path}"
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + basic(server.admin)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def test_projects_like_the_training_ones_are_no_drift(deployment, champion, window):
    fresh = new_projects(per_tag=40, seed=21)
    serve_log(window, champion, fresh)
    serve_log(window, champion, champion["train"].head(30))  # the training projects again: left out
    # Out-of-domain rows that are not this window's: another version's, and rows older than window_hours.
    packages = pd.DataFrame(package_summaries(300))
    serve_log(window, champion, packages, version=champion["version"] + 7)
    serve_log(window, champion, packages, hours_ago=30)
    batch_score(window, champion, pd.concat([new_projects(per_tag=30, seed=22), champion["train"].head(20)]))

    _, out, _ = deployment["cli"]("monitor")
    assert out["drifted"] is False and out["status"] == "no drift", out["reasons"]
    assert out["model_name"] == MODEL and out["model_version"] == str(champion["version"])
    assert out["rows"]["served"] == {"judged": len(fresh), "in_window": len(fresh) + 30, "training_rows_left_out": 30}
    assert out["rows"]["batch"] == {"judged": 120, "in_window": 140, "training_rows_left_out": 20}
    assert out["report"] == "monitor/report.html"
    run = run_of(deployment, out["run_id"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["model_version"] == str(champion["version"]) and tags["verdict"] == "no drift"
    assert tags["drifted"] == "false" and tags["tagifai.step"] == "monitor"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["drifted"] == 0 and metrics["served_judged"] == len(fresh)
    assert "<html" in artifact(deployment, run, "monitor/report.html").decode().lower()
    verdict = json.loads(artifact(deployment, run, "monitor/verdict.json"))
    assert verdict["status"] == "no drift" and verdict["window"]["hours"] == 24


def test_package_summaries_are_drift_with_the_report_in_mlflow(deployment, champion, window):
    serve_log(window, champion, new_projects(per_tag=30, seed=23))
    serve_log(window, champion, pd.DataFrame(package_summaries(500, seed=9)))

    _, out, stderr = deployment["cli"]("monitor")
    assert out["drifted"] is True and out["status"] == "drift"
    assert any(reason.startswith("served requests: ") and "columns drifted" in reason for reason in out["reasons"])
    assert "too few rows, not judged: batch predictions (0 < 100)" in out["reasons"]
    run = run_of(deployment, out["run_id"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["verdict"] == "drift" and tags["drifted"] == "true"
    html = artifact(deployment, run, out["report"]).decode()
    assert "unseen_char_4grams" in html
    assert f"monitor: {MODEL} v{champion['version']}: served requests: " in stderr  # the reasons, in the step's log


def test_too_few_rows_judge_nothing_but_the_look_is_recorded(deployment, champion, window):
    serve_log(window, champion, new_projects(per_tag=10, seed=24))  # 40 rows

    _, out, _ = deployment["cli"]("monitor")
    assert out["drifted"] is None and out["status"] == "insufficient" and out["report"] is None
    assert out["reasons"] == [
        "too few rows: served requests (40 < 100) and batch predictions (0 < 100); judged nothing"
    ]
    tags = {t["key"]: t["value"] for t in run_of(deployment, out["run_id"])["data"]["tags"]}
    assert tags["verdict"] == "insufficient" and tags["drifted"] == "none"


def test_no_inference_log_yet_is_nothing_to_judge(deployment, champion):
    query(deployment["db"], "DROP TABLE IF EXISTS inference_log; DROP TABLE IF EXISTS predictions")
    _, out, _ = deployment["cli"]("monitor")
    assert out["status"] == "insufficient" and out["rows"]["served"]["in_window"] == 0


def test_the_model_card_links_to_the_monitor_reports_of_its_version(deployment, champion):
    cli = deployment["cli"]
    done = cli.forked(["card", "--model-uri", f"models:/{MODEL}/{champion['version']}"], cli.env)
    assert done.returncode == 0, done.stderr
    experiment = json.loads(mlflow_get(deployment, "experiments/get-by-name", experiment_name="tagifai-monitor"))
    search = urllib.parse.quote(f"tags.model_name = '{MODEL}' and tags.model_version = '{champion['version']}'")
    link = f"#/experiments/{experiment['experiment']['experiment_id']}/runs?searchFilter={search}"
    assert f"- drift monitor: [its reports on this version]({link})" in done.stdout


def mlflow_get(deployment, path: str, **params: str) -> bytes:
    server = deployment["server"]
    url = f"{server.uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + basic(server.admin)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@pytest.mark.parametrize(
    ("database", "code", "message"),
    [
        # Not set: the step cannot know where the window is.
        (None, 3, "error: set TAGIFAI_PREDICTIONS_DB to the PostgreSQL database of the inference log"),
        # Not PostgreSQL: refused before anything is read.
        ("sqlite:///tmp/x.db", 3, "is not postgresql://user:password@host:port/database"),
        # Nobody listening: may pass, retried; the password is never shown.
        (
            "postgresql://tagifai:pw-s3cret@127.0.0.1:9/tagifai",
            1,
            "could not connect to postgresql://***@127.0.0.1:9/tagifai",
        ),
    ],
)
def test_a_window_that_cannot_be_read_fails_in_one_line(deployment, champion, database, code, message):
    env = {k: v for k, v in deployment["env"].items() if k != "TAGIFAI_PREDICTIONS_DB"}
    if database:
        env["TAGIFAI_PREDICTIONS_DB"] = database
    done = Cli(env, deployment["cli"].cwd)("monitor", check=False)
    assert done[0] == code
    errors = [line for line in done[2].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "pw-s3cret" not in done[2]
