"""`airflow dags test tagifai_training` with the local runner: the real steps as subprocesses.

Run with the Airflow venv: `.venv-airflow/bin/pytest tests/e2e/test_dag_local.py` (needs .venv too,
for the `tagifai` executable and MLflow). MLflow is a throwaway SQLite store. The first run also has
Airflow's OpenLineage provider configured as the stack's (its file transport, into the test's folder).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness import TAGIFAI, require, synthetic
from harness.dags import (
    STEPS,
    TASKS_WITH_TWO_WORKERS,
    champion,
    dags_test,
    pipeline_runs,
    rerun_task,
    study_states,
    webhook_sink,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.airflow, pytest.mark.slow]


def local_env(tmp_path: Path) -> dict[str, str]:
    """The Airflow worker's environment for the local runner, with stores in `tmp_path`."""
    require(TAGIFAI.exists(), f"{TAGIFAI} not found (make install)")
    (tmp_path / "mlflow").mkdir(exist_ok=True)
    return {
        "TAGIFAI_RUNNER": "local",
        "TAGIFAI_BIN": str(TAGIFAI),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        # The two optimize workers share their study in SQLite.
        "TAGIFAI_OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}",
        "TAGIFAI_CONFIG": str(write_config(tmp_path / "small.toml")),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # The deployment's data folder: the DAG refuses local data anywhere else.
        "TAGIFAI_DATA_DIRS": str(tmp_path / "data"),
    }


def local_run(tmp_path: Path, projects: Path, tags: Path, **extra_env: str):
    """Run the DAG once with the local runner on `projects`/`tags`; return the run and tracking URI."""
    # The deployment's data (the gate's holdout is its test split): here the run's too.
    env = local_env(tmp_path) | {"TAGIFAI_PROJECTS_URL": str(projects), "TAGIFAI_TAGS_URL": str(tags), **extra_env}
    run = dags_test(
        tmp_path / "airflow",
        # One a plain path, one a file:// URL: the DAG hands both forms to `tagifai elt`.
        conf={"num_trials": 3, "num_workers": 2, "projects_url": str(projects), "tags_url": tags.as_uri()},
        extra_env=env,
    )
    return run, env["MLFLOW_TRACKING_URI"]


def lineage_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The OpenLineage provider configured as the stack's (`lineage.provider_env`), its file in `tmp_path`."""
    from tagifai.contract.config import config_dir, load
    from tagifai.orchestration.lineage import provider_env

    events = tmp_path / "lineage" / "events.jsonl"
    events.parent.mkdir()
    settings = load(config_dir(), {"TAGIFAI_CONFIG_TOML": f'[lineage]\nfile_path = "{events}"\n'})
    return provider_env(settings, {}), events


def test_local_dag_run_trains_and_promotes_a_champion(tmp_path):
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    provider, events = lineage_env(tmp_path)
    run, tracking_uri = local_run(tmp_path, projects, tags, **provider)
    assert run.returncode == 0, run.output[-5000:]
    # The first model is promoted, so publish_champion emits the champion event: every task succeeds.
    assert run.states == dict.fromkeys(TASKS_WITH_TWO_WORKERS, "success")
    best = champion(tracking_uri)
    assert best is not None, "tagifai@champion was not set"
    # Every MLflow run of the pipeline carries the Airflow run id.
    assert run.run_id in best["run_tags"].values()

    # Two optimize workers, one study: 3 trials between them, and train took the study's best.
    runs = pipeline_runs(tracking_uri, run.run_id)
    workers = [r for r in runs if r["step"] == "optimize"]
    [train] = [r for r in runs if r["step"] == "train"]
    assert len(workers) == 2
    assert sum(w["metrics"]["trials_run"] for w in workers) == 3
    assert [w["metrics"]["trials"] for w in workers] == [3, 3]
    assert len([r for r in runs if r["step"] == "trial"]) == 3
    assert train["tags"]["optimize_run_id"] in {w["run_id"] for w in workers}
    study = train["tags"]["optuna_study"]
    assert {w["tags"]["optuna_study"] for w in workers} == {study}
    trials = study_states(f"sqlite:///{tmp_path / 'optuna.db'}", study)
    assert trials.get("COMPLETE", 0) + trials.get("PRUNED", 0) == 3

    # A retried worker (the task run again in the same DAG run) joins the study and repeats nothing.
    again = rerun_task(tmp_path / "airflow", local_env(tmp_path), run.run_id, "optimize", map_index=0)
    assert (again["study_name"], again["trials"], again["trials_run"]) == (study, 3, 0)
    assert study_states(f"sqlite:///{tmp_path / 'optuna.db'}", study) == trials

    assert_lineage([json.loads(line) for line in events.read_text().splitlines()], runs, best, projects, tags)


def assert_lineage(events: list[dict], runs: list[dict], champion: dict, projects: Path, tags: Path) -> None:
    """What the run's OpenLineage events say, checked against its MLflow runs and the champion it made."""
    task_runs = defaultdict(list)  # OpenLineage run id of each task instance -> its events, in order
    for event in events:
        if event["job"]["name"] != "tagifai_training":  # the DAG run's own events aside
            task_runs[event["run"]["runId"]].append(event)
    # Every task instance (each optimize worker too): a START, then a COMPLETE.
    jobs = Counter(task_events[0]["job"]["name"] for task_events in task_runs.values())
    assert jobs == Counter(f"tagifai_training.{name.partition('[')[0]}" for name in TASKS_WITH_TWO_WORKERS)
    assert {tuple(e["eventType"] for e in task_events) for task_events in task_runs.values()} == {("START", "COMPLETE")}
    # ... each with the DAG run as its parent (ParentRunFacet).
    [dag_run] = [e for e in events if e["job"]["name"] == "tagifai_training" and e["eventType"] == "COMPLETE"]
    parents = [e["run"]["facets"]["parent"] for task_events in task_runs.values() for e in task_events]
    assert {(p["job"]["namespace"], p["job"]["name"], p["run"]["runId"]) for p in parents} == {
        ("tagifai", "tagifai_training", dag_run["run"]["runId"])
    }
    done = {task_events[-1]["run"]["runId"]: task_events[-1] for task_events in task_runs.values()}

    def datasets(event: dict, side: str) -> list[tuple[str, str]]:
        return [(d["namespace"], d["name"]) for d in event[side]]

    def completed(task: str) -> list[dict]:
        return [e for e in done.values() if e["job"]["name"] == f"tagifai_training.{task}"]

    steps = {r["run_id"]: r for r in runs if r["step"] in STEPS}
    # elt read the two files and wrote the labeled data, named by its sha256; register wrote the champion's version.
    [elt] = completed("elt")
    [elt_run] = [r for r in steps.values() if r["step"] == "elt"]
    assert datasets(elt, "inputs") == [("file", str(projects)), ("file", str(tags))]
    assert datasets(elt, "outputs") == [("tagifai", f"tagifai-labeled@sha256:{elt_run['tags']['data_sha256']}")]
    [register] = completed("register")
    assert datasets(register, "outputs") == [("tagifai", f"models:/tagifai/{champion['version']}")]
    # One graph: each dataset of tagifai's that a step read, an earlier step wrote.
    written: set[tuple[str, str]] = set()
    for step in STEPS:
        for event in completed(step):
            assert {d for d in datasets(event, "inputs") if d[0] == "tagifai"} <= written, step
        written |= {d for event in completed(step) for d in datasets(event, "outputs")}
    # Both ways: each step's MLflow run names its task's OpenLineage run and job, and that run names the MLflow run.
    assert len(steps) == 7  # two optimize workers
    for mlflow_run in steps.values():
        event = done[mlflow_run["tags"]["openlineage.run_id"]]
        assert event["job"]["name"] == f"tagifai_training.{mlflow_run['step']}"
        assert mlflow_run["tags"]["openlineage.job"] == f"tagifai/tagifai_training.{mlflow_run['step']}"
        facet = event["run"]["facets"]["mlflow"]
        experiment = json.loads(mlflow_run["tags"]["tagifai.output"])["experiment_id"]
        assert (facet["runId"], facet["experimentId"], facet["reused"]) == (mlflow_run["run_id"], experiment, False)


def test_local_dag_run_stops_at_validate_on_duplicate_ids(tmp_path):
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    with projects.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Three projects appear twice under the same id.
    synthetic.write_csv(projects, rows + rows[:3])
    # People are told, by a chat webhook (a real HTTP server here).
    with webhook_sink() as (url, received):
        run, tracking_uri = local_run(
            tmp_path, projects, tags, TAGIFAI_NOTIFY_WEBHOOK_URL=url, TAGIFAI_MLFLOW_PUBLIC_URL="http://mlflow.example"
        )
    assert run.returncode != 0
    assert run.states == {
        "elt": "success",
        "validate": "failed",
        "optimize_workers": "upstream_failed",
        "optimize": "upstream_failed",
        "train": "upstream_failed",
        "evaluate": "upstream_failed",
        "register": "upstream_failed",
        "publish_champion": "upstream_failed",
    }
    assert champion(tracking_uri) is None
    # The task log names the failed check.
    assert "error: validation failed: unique_ids" in run.output
    # One message (the task failed for good: no retry left), naming the task, the check, and where to look.
    [told] = received
    assert told["event"] == "task_failed" and told["task_id"] == "validate"
    first, log, mlflow = told["text"].splitlines()
    assert first.startswith(f"tagifai_training run {run.run_id}: task validate failed: validate: validation failed")
    assert "unique_ids" in first
    assert log.startswith("log: ") and "/dags/tagifai_training/runs/" in log and "/tasks/validate" in log
    # The failed step's run when it wrote one (TAGIFAI_OUTPUT), else elt's: a run of this pipeline run.
    assert told["mlflow_run_id"] in {r["run_id"] for r in pipeline_runs(tracking_uri, run.run_id)}
    assert mlflow.startswith("MLflow run: http://mlflow.example/#/") and mlflow.endswith(told["mlflow_run_id"])


def test_a_run_without_params_follows_the_deployers_config(tmp_path):
    # One source of defaults: the trigger form shows TAGIFAI_CONFIG's values, and a run that sets no
    # params uses them.
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    env = local_env(tmp_path)
    override = synthetic.SMALL_CONFIG.replace("[optimize]\n", "[optimize]\nnum_trials = 2\nnum_workers = 1\n")
    write_config(Path(env["TAGIFAI_CONFIG"]), "[register]\nmin_f1 = 0.99\n", base=override)
    env |= {"TAGIFAI_PROJECTS_URL": str(projects), "TAGIFAI_TAGS_URL": str(tags)}
    run = dags_test(tmp_path / "airflow", conf={}, extra_env=env)
    assert run.returncode == 0, run.output[-5000:]
    assert run.states["optimize[0]"] == "success" and "optimize[1]" not in run.states
    runs = pipeline_runs(env["MLFLOW_TRACKING_URI"], run.run_id)
    [optimize] = [r for r in runs if r["step"] == "optimize"]
    [register] = [r for r in runs if r["step"] == "register"]
    assert optimize["metrics"]["trials"] == 2
    assert register["tags"]["promoted"] == "false"
    assert "below the minimum 0.9900" in register["tags"]["promotion"]
    assert run.states["publish_champion"] == "skipped"  # no promotion, no champion event
    assert champion(env["MLFLOW_TRACKING_URI"]) is None


def test_the_watcher_emits_an_event_only_when_a_source_changed(tmp_path):
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    env = local_env(tmp_path) | {"TAGIFAI_PROJECTS_URL": str(projects), "TAGIFAI_TAGS_URL": str(tags)}
    home = tmp_path / "airflow"

    def look() -> dict:
        run = dags_test(home, conf={}, extra_env=env, dag_id="tagifai_watch", timeout=600)
        assert run.returncode == 0, run.output[-5000:]
        return run.states

    # First look: both sources recorded, nothing emitted (skipped).
    checked = {"checksum_projects": "success", "checksum_tags": "success"}
    assert look() == {**checked, "watch_projects": "skipped", "watch_tags": "skipped"}
    assert look() == {**checked, "watch_projects": "skipped", "watch_tags": "skipped"}  # unchanged
    with projects.open("a", encoding="utf-8") as f:
        f.write("9999,2020-03-01 10:00:00,A new project,with a description\n")
    # The changed source's task succeeds: its asset event starts tagifai_training.
    assert look() == {**checked, "watch_projects": "success", "watch_tags": "skipped"}


def test_a_step_that_fails_after_its_retry_is_told_once_naming_its_last_try(tmp_path):
    # A stand-in `tagifai` (no MLflow needed): elt hands on a run, validate fails with an error that may pass
    # (exit 1), so Airflow retries it; only the failure with no retry left is told.
    tries = tmp_path / "tries"
    fake = tmp_path / "bin" / "tagifai"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/bash\n"
        'case "$1" in\n'
        '  elt) echo \'{"run_id": "elt-run", "plan": {}}\' ;;\n'
        f'  validate) echo try >> {tries}; echo "error: MLflow at http://mlflow:5000 did not answer" >&2; exit 1 ;;\n'
        "esac\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    config = tmp_path / "retry.toml"
    config.write_text(f"{synthetic.SMALL_CONFIG}\n[retry]\nretries = 1\ndelay_seconds = 1\nmax_delay_minutes = 1\n")
    with webhook_sink() as (url, received):
        env = {
            "TAGIFAI_RUNNER": "local",
            "TAGIFAI_BIN": str(fake),
            "TAGIFAI_CONFIG": str(config),
            "TAGIFAI_DATA_DIRS": str(tmp_path / "data"),
            "TAGIFAI_PROJECTS_URL": str(projects),
            "TAGIFAI_TAGS_URL": str(tags),
            "TAGIFAI_NOTIFY_WEBHOOK_URL": url,
            "AIRFLOW__API__BASE_URL": "https://airflow.example",
        }
        run = dags_test(tmp_path / "airflow", conf={"num_workers": 1}, extra_env=env, timeout=600)
    assert run.states["validate"] == "failed", run.output[-5000:]
    assert tries.read_text().split() == ["try", "try"]  # retried once
    [told] = received  # the first try's failure is not told
    assert told["text"].startswith(
        f"tagifai_training run {run.run_id}: task validate failed: validate: MLflow at http://mlflow:5000 did not "
        "answer\nlog: https://airflow.example/dags/tagifai_training/runs/"
    )
    assert told["log_url"].endswith("/tasks/validate?try_number=2")
    assert "MLflow run" not in told["text"]  # no public MLflow URL set: no link
