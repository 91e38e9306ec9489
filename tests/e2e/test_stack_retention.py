"""Retention in the running stack: `tagifai_maintenance` shrinks MLflow and Airflow's history, keeps what is
needed.

Three cheap forced training runs of this module's own (one trial, one worker, every step anew): one that no
gate promotes (its version is never champion), one on bad data (it fails at validate), and a last one like
the first (its version becomes the challenger). The first two are then made old, as if run 400 days ago
(their MLflow runs, their Airflow rows and task logs), so that `[retention]` of 30 days finds them and nothing
of the session's other tests. (Each forced run costs the session 60-70 s: three, not the ten of the issue,
keep CI under its bound: a retired pipeline, a failed one and the newest, each kind once.) A dry run of
`tagifai_maintenance` lists them and deletes nothing; a run deletes them for good (`deleted_days` 0: MLflow's
rows and artifact files, the model, the archived version; Airflow's rows and logs). The champion, the
challenger, every version of the champion history and the newest runs are whole, and a run like the newest
one reuses every step.

The deployer's settings are changed in the stack's settings file (read by each task when it runs: no
re-parse) and put back before the module ends. It changes the session's stack (it deletes): it runs after the
tests that read the session's runs (tests/e2e/conftest.py `LAST`).
"""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import synthetic
from harness.stack import pause_watcher, step_outputs

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

DAG, TRAINING = "tagifai_maintenance", "tagifai_training"
# One trial on one worker, every step anew, through a gate no model here meets (test f1 1.0): never promoted.
FORCED = {"num_trials": 1, "num_workers": 1, "force": True, "min_f1": 1.0}
RETENTION = (
    "\n[retention]\ndeleted_days = 0\nrun_days = 30\nkeep_versions = 1\ninference_days = 30\n"
    "airflow_days = 30\nlog_days = 30\n"
)
AGE_DAYS = 400
# Forced runs made old besides the failed one; with it and the newest: three forced runs.
OLD_RUNS = 1
STEPS = ("elt", "validate", "optimize", "train", "evaluate", "register")


def wait_until_no_run(client, timeout: float = 900) -> None:
    """Wait until no run of the stack's DAGs is queued or running (nothing else writes meanwhile)."""
    deadline = time.monotonic() + timeout
    dags = [d["dag_id"] for d in client.request("GET", "/api/v2/dags?limit=100")["dags"]]
    while going := [r["dag_run_id"] for d in dags for r in client.runs(d) if r["state"] in ("queued", "running")]:
        assert time.monotonic() < deadline, f"runs still going: {going}"
        time.sleep(5)


def run_dag(client, conf: dict, dag_id: str = TRAINING, state: str = "success") -> str:
    """Trigger a run and wait until it ends in `state`; its run id."""
    run_id = client.trigger(conf, dag_id=dag_id)
    run = client.wait(run_id, timeout=1800, dag_id=dag_id)
    assert run["state"] == state, client.task_states(run_id, dag_id=dag_id)
    return run_id


def sql(stack, database: str, query: str) -> str:
    """A query to one of the stack's databases as its owner (inside the container: its socket trusts)."""
    proc = stack.compose("exec", "-T", "postgres", "psql", "-U", database, "-d", database, "-At", "-v",
                         "ON_ERROR_STOP=1", "-c", query)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def quoted(values: list[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def shell(stack, service: str, script: str) -> str:
    proc = stack.compose("exec", "-T", service, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def experiment_id(stack) -> str:
    return stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]


def mlflow_runs(stack, pipeline_run_id: str | None = None) -> list[dict]:
    """The training experiment's runs (deleted ones too), of one pipeline run if given."""
    body: dict[str, Any] = {"experiment_ids": [experiment_id(stack)], "max_results": 5000, "run_view_type": "ALL"}
    if pipeline_run_id:
        body["filter"] = f"tags.pipeline_run_id = '{pipeline_run_id}'"
    return stack.mlflow_post("runs/search", body).get("runs", [])


def run_state(stack, run_id: str) -> str | None:
    """A run's lifecycle stage (active, deleted), None once it is gone for good."""
    try:
        return stack.mlflow("runs/get", run_id=run_id)["run"]["info"]["lifecycle_stage"]
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc
        return None


def stored_bytes(stack, *paths: str) -> int:
    """Bytes of the files under paths of the MLflow server's artifact store (a path that is not there: 0)."""
    script = " ".join(f"'/mlartifacts/{p}'" for p in paths)
    return int(shell(stack, "mlflow", f"for p in {script}; do [ -e \"$p\" ] && find \"$p\" -type f -printf '%s\\n'; "
                                      "done | awk '{s += $1} END {print s + 0}'"))  # fmt: skip


def version(stack, number: str) -> dict | None:
    try:
        return stack.mlflow("model-versions/get", name="tagifai", version=number)["model_version"]
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc
        return None


def model_files(stack, model_version: dict) -> list[str]:
    """The files of the logged model a version loads."""
    model_id = model_version["source"].removeprefix("models:/")
    location = stack.mlflow(f"logged-models/{model_id}")["model"]["info"]["artifact_uri"]
    path = urllib.parse.quote(location.removeprefix("mlflow-artifacts:/"))
    request = stack.mlflow_request(f"/api/2.0/mlflow-artifacts/artifacts?path={path}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return [f["path"] for f in json.loads(response.read()).get("files", [])]


def predict(stack, model_uri: str) -> dict:
    """`tagifai predict` in the tools container: the version at `model_uri` loads and scores."""
    proc = stack.compose("--profile", "tools", "run", "--rm", "--no-deps", "-T", "tagifai", "predict",
                         "Transformers for text classification", "--model-uri", model_uri)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def airflow_rows(stack, run_ids: list[str]) -> dict[str, int]:
    """Rows of these DAG runs in Airflow's database: the run, its task instances, their XCom."""
    where = f"dag_id = '{TRAINING}' AND run_id IN ({quoted(run_ids)})"
    return {table: int(sql(stack, "airflow", f"SELECT count(*) FROM {table} WHERE {where}"))
            for table in ("dag_run", "task_instance", "xcom")}  # fmt: skip


def log_files(stack, run_ids: list[str]) -> int:
    """Task log files of these DAG runs in Airflow's log folder."""
    paths = " ".join(f"-path '*/run_id={run_id}/*'" for run_id in run_ids).replace("' -path", "' -o -path")
    return int(shell(stack, "airflow-apiserver", f"find /opt/airflow/logs -type f \\( {paths} \\) | wc -l"))


def make_old(stack, run_ids: list[str]) -> None:
    """Make these training runs look AGE_DAYS old: their MLflow runs, Airflow rows and task log files."""
    ms = AGE_DAYS * 86_400_000
    sql(
        stack,
        "mlflow",
        f"UPDATE runs SET start_time = start_time - {ms}, end_time = end_time - {ms} WHERE run_uuid "
        f"IN (SELECT run_uuid FROM tags WHERE key = 'pipeline_run_id' AND value IN ({quoted(run_ids)}))",
    )
    where = f"dag_id = '{TRAINING}' AND run_id IN ({quoted(run_ids)})"
    age = f"interval '{AGE_DAYS} days'"
    sql(
        stack,
        "airflow",
        f"UPDATE dag_run SET start_date = start_date - {age}, end_date = end_date - {age}, "
        f"queued_at = queued_at - {age} WHERE {where}",
    )
    sql(
        stack,
        "airflow",
        f"UPDATE task_instance SET start_date = start_date - {age}, end_date = end_date - {age} WHERE {where}",
    )
    sql(stack, "airflow", f'UPDATE xcom SET "timestamp" = "timestamp" - {age} WHERE {where}')
    when = int(time.time()) - AGE_DAYS * 86_400
    for run_id in run_ids:
        shell(stack, "airflow-apiserver",
              f"find /opt/airflow/logs -path '*/run_id={run_id}*' -exec touch -h -d @{when} {{}} +")  # fmt: skip


@pytest.fixture(scope="module")
def retention(stack, first_run) -> dict[str, Any]:
    """The three runs, all but the newest made old, `[retention]` set; a dry run of the maintenance, then a run.

    Returns what was there before, after the dry run and after the run, and what each task said.
    """
    client = stack.airflow()
    was_paused = pause_watcher(client)
    wait_until_no_run(client)
    projects = Path(stack.env["TAGIFAI_PROJECTS_URL"])
    with projects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bad = synthetic.write_csv(projects.parent / "projects-retention.csv", rows + rows[:3])
    bad.chmod(0o644)
    override = Path(stack.env["TAGIFAI_CONFIG"])
    settings = override.read_text(encoding="utf-8")
    try:
        olds = [run_dag(client, FORCED) for _ in range(OLD_RUNS)]
        failed = run_dag(client, {**FORCED, "projects_url": str(bad)}, state="failed")
        newest = run_dag(client, FORCED)
        old, aged = olds[0], [*olds, failed]
        outputs = {run_id: step_outputs(client, run_id) for run_id in (*olds, newest)}
        for run_id, out in outputs.items():
            assert out["register"]["promoted"] is False, f"{run_id} was promoted: the stack's data reaches f1 1.0"
        make_old(stack, aged)
        experiment = experiment_id(stack)
        doomed = [r["info"]["run_id"] for run_id in aged for r in mlflow_runs(stack, run_id)]
        model_id = version(stack, outputs[old]["register"]["version"])["source"].removeprefix("models:/")
        before = {
            "runs": len(mlflow_runs(stack)),
            "store": stored_bytes(stack, "."),
            "doomed_bytes": stored_bytes(stack, *(f"{experiment}/{r}" for r in doomed)),
            "model_bytes": stored_bytes(stack, f"{experiment}/models/{model_id}"),
            "airflow": airflow_rows(stack, aged),
            "logs": log_files(stack, aged),
        }
        with override.open("r+", encoding="utf-8") as f:  # the same inode: the containers see the change
            f.write(settings + RETENTION)
            f.truncate()

        dry_run = run_dag(client, {"dry_run": True}, dag_id=DAG)
        dry = {task: client.xcom(dry_run, task, dag_id=DAG) for task in ("maintain", "airflow_db_clean",
                                                                          "airflow_logs_clean")}  # fmt: skip
        after_dry = {
            "states": {r: run_state(stack, r) for r in doomed},
            "doomed_bytes": stored_bytes(stack, *(f"{experiment}/{r}" for r in doomed)),
            "airflow": airflow_rows(stack, aged),
            "logs": log_files(stack, aged),
            "version": version(stack, outputs[old]["register"]["version"]),
        }
        done_run = run_dag(client, {}, dag_id=DAG)
        done = {task: client.xcom(done_run, task, dag_id=DAG) for task in ("maintain", "airflow_db_clean",
                                                                            "airflow_logs_clean")}  # fmt: skip
        after = {
            "runs": len(mlflow_runs(stack)),
            "store": stored_bytes(stack, "."),
            "states": {r: run_state(stack, r) for r in doomed},
            "doomed_bytes": stored_bytes(stack, *(f"{experiment}/{r}" for r in doomed)),
            "model_bytes": stored_bytes(stack, f"{experiment}/models/{model_id}"),
            "airflow": airflow_rows(stack, aged),
            "logs": log_files(stack, aged),
        }
    finally:
        with override.open("r+", encoding="utf-8") as f:
            f.write(settings)
            f.truncate()
        bad.unlink(missing_ok=True)
        pause_watcher(client, was_paused)
    return {"old": old, "aged": aged, "newest": newest, "outputs": outputs, "doomed": doomed,
            "before": before, "dry": dry, "after_dry": after_dry, "done": done, "after": after}  # fmt: skip


def parsed(value: Any) -> dict:
    """A task's XCom: the docker runner's object, or a line of JSON (a bash task's last line)."""
    return value if isinstance(value, dict) else json.loads(value)


def test_a_dry_run_lists_what_would_go_and_deletes_nothing(retention):
    dry, before, after = retention["dry"], retention["before"], retention["after_dry"]
    maintain = parsed(dry["maintain"])
    assert maintain["dry_run"] is True
    assert set(maintain["delete"]) == set(retention["doomed"])
    assert retention["outputs"][retention["old"]]["register"]["version"] in maintain["archive"]
    assert set(maintain["purge"]) >= set(retention["doomed"]) and maintain["logged_models_to_delete"] >= 1
    db = parsed(dry["airflow_db_clean"])
    assert db["dry_run"] is True and db["tables"]["dag_run"] == len(retention["aged"]) == OLD_RUNS + 1
    assert db["tables"]["task_instance"] >= before["airflow"]["task_instance"]
    logs = parsed(dry["airflow_logs_clean"])
    assert logs["dry_run"] is True and logs["files"] >= before["logs"] > 0
    # Nothing went.
    assert set(after["states"].values()) == {"active"}
    assert after["doomed_bytes"] == before["doomed_bytes"] > 0
    assert after["airflow"] == before["airflow"] and after["logs"] == before["logs"]
    assert "tagifai.archived" not in {t["key"] for t in after["version"].get("tags", [])}


def test_a_run_removes_the_old_runs_for_good_and_shrinks_mlflow_and_airflow(retention, stack):
    done, before, after, doomed = retention["done"], retention["before"], retention["after"], retention["doomed"]
    maintain = parsed(done["maintain"])
    assert maintain["dry_run"] is False and maintain["runs_deleted"] == len(doomed)
    assert maintain["runs_purged"] >= len(doomed) and maintain["logged_models_purged"] >= 1
    assert maintain["versions_archived"] >= 1 and maintain["versions_removed"] >= 1
    assert isinstance(maintain["inference_rows_deleted"], int)
    # MLflow: the runs, their rows and files, the model's files and the archived version are gone.
    assert set(after["states"].values()) == {None}
    assert after["doomed_bytes"] == 0 and after["model_bytes"] == 0 < before["model_bytes"]
    assert after["runs"] <= before["runs"] - len(doomed) + 1  # + the maintenance's own run
    assert after["store"] < before["store"]
    assert version(stack, retention["outputs"][retention["old"]]["register"]["version"]) is None
    # Airflow: the old runs' rows and task logs.
    assert after["airflow"] == {"dag_run": 0, "task_instance": 0, "xcom": 0} != before["airflow"]
    assert parsed(done["airflow_db_clean"])["tables"]["dag_run"] == len(retention["aged"])
    assert after["logs"] == 0 and parsed(done["airflow_logs_clean"])["files"] >= before["logs"]
    print(f"retention: MLflow store {before['store']} -> {after['store']} bytes, runs {before['runs']} -> "
          f"{after['runs']}, Airflow rows of the old runs {before['airflow']} -> {after['airflow']}")  # fmt: skip


def test_the_champion_the_challenger_the_history_and_the_newest_runs_stay_whole(retention, stack):
    newest = retention["outputs"][retention["newest"]]
    challenger = stack.mlflow("registered-models/alias", name="tagifai", alias="challenger")["model_version"]
    assert challenger["version"] == newest["register"]["version"]
    for uri in ("models:/tagifai@champion", "models:/tagifai@challenger"):
        assert predict(stack, uri)["predictions"]
    # Every version the champion history names is registered, with its model's files.
    history = stack.mlflow("experiments/get-by-name", experiment_name="tagifai-champion-history")["experiment"]
    body = {"experiment_ids": [history["experiment_id"]], "filter": "tags.`tagifai.step` = 'champion-move'",
            "max_results": 1000}  # fmt: skip
    moves = stack.mlflow_post("runs/search", body)["runs"]
    named = {t["value"] for m in moves for t in m["data"]["tags"] if t["key"] in ("from_version", "to_version")}
    assert moves and named - {""}
    for number in named - {""}:
        found = version(stack, number)
        assert found is not None and "MLmodel" in {Path(p).name for p in model_files(stack, found)}, number
    # The newest pipeline's runs are all there, active.
    runs = mlflow_runs(stack, retention["newest"])
    assert {r["info"]["lifecycle_stage"] for r in runs} == {"active"}
    assert {t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "tagifai.step"} >= set(STEPS)


def test_a_run_like_the_newest_still_reuses_every_step(retention, stack):
    client = stack.airflow()
    conf = {k: v for k, v in FORCED.items() if k != "force"}
    run_id = run_dag(client, conf)
    outputs = step_outputs(client, run_id)
    assert {step: out.get("reused") for step, out in outputs.items()} == dict.fromkeys(outputs, True)
    assert outputs["register"]["version"] == retention["outputs"][retention["newest"]]["register"]["version"]
