"""Tuning throughput through Airflow: the stack's LocalExecutor, then Celery with 1, 2, 4 worker processes.

A throwaway compose project (`tagifai-bench`) on the real data: first with the LocalExecutor, then
switched to Celery the way a user does it (`.env`: `AIRFLOW_EXECUTOR`, `COMPOSE_PROFILES`), with one
task at a time per worker (`CELERY_WORKER_CONCURRENCY=1`) and 1, 2, then 4 worker containers. Each
measurement is a DAG run with 4 `optimize` workers sharing one study (every run forced, so nothing is
reused); trials per minute are counted from the study's trial runs in MLflow, from the first trial's
start to the last one's end. Once every `optimize` task has ended the run is stopped (marked failed
through the REST API, its step containers stopped): train, evaluate and register are not measured,
and would only make the benchmark longer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import REPO, free_port, world_readable
from harness.stack import Stack, make, task_containers
from scripts import stack as stack_script

PROJECT = "tagifai-bench"
OPTIMIZE_WORKERS = 4
CELERY_PROCESSES = (1, 2, 4)


@contextlib.contextmanager
def bench_stack(projects: str, tags: str, dags: str = "tagifai_training") -> Iterator[Stack]:
    """A throwaway stack (LocalExecutor, running `dags`: space-separated ids) on copies of the data.

    Deleted, volumes and all, afterwards. The copies' folder is the stack's data folder (its files may be
    read by the DAGs' sources).
    """
    root = Path(tempfile.mkdtemp(prefix="tagifai-bench-celery-", dir="/tmp"))
    for source, name in ((projects, "projects.csv"), (tags, "tags.csv")):
        shutil.copy(source, root / name)
    world_readable(root)
    env_file = root / "bench.env"
    overrides = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "TAGIFAI_DOCKER_NETWORK": PROJECT,
        **{
            name: str(free_port())
            for name in ("AIRFLOW_PORT", "MLFLOW_PORT", "SERVE_PORT", "REDIS_PORT", "POSTGRES_PORT", "FLOWER_PORT")
        },
        "TAGIFAI_PROJECTS_URL": str(root / "projects.csv"),
        "TAGIFAI_TAGS_URL": str(root / "tags.csv"),
        **{name: os.environ.get(name, "") for name in ("PYTHON_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE")},
    }
    stack_script.write_env(REPO / ".env.example", env_file, overrides)
    try:
        # Only the DAGs measured (by default the training DAG): no watcher or batch scoring in the figures.
        make("up", f"STACK_DAGS={dags}", env_file=env_file)
        yield Stack(env_file)
    finally:
        make("clean", env_file=env_file, timeout=600)
        shutil.rmtree(root, ignore_errors=True)


def trials_per_minute(stack: Stack, num_trials: int) -> dict[str, Any]:
    """Run the DAG once (forced) with OPTIMIZE_WORKERS optimize tasks; its study's trials per minute."""
    client = stack.airflow()
    run_id = client.trigger({"num_trials": num_trials, "num_workers": OPTIMIZE_WORKERS, "force": True})
    tuned(client, run_id, timeout=3600)
    stop_run(client, run_id)
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]
    query = f"tags.pipeline_run_id = '{run_id}' and tags.`tagifai.step` = 'trial'"
    trials = stack.mlflow_post("runs/search", {"experiment_ids": [experiment], "filter": query, "max_results": 1000})
    spans = [(int(t["info"]["start_time"]), int(t["info"]["end_time"])) for t in trials.get("runs", [])]
    seconds = (max(end for _, end in spans) - min(start for start, _ in spans)) / 1000
    return {"trials": len(spans), "tuning_seconds": seconds, "trials_per_minute": 60 * len(spans) / seconds}


def tuned(client: Any, run_id: str, timeout: float) -> None:
    """Wait until all OPTIMIZE_WORKERS `optimize` tasks of the run succeeded; fail if one did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = client.task_states(run_id)
        workers = [state for task, state in states.items() if task.startswith("optimize[")]
        if len(workers) == OPTIMIZE_WORKERS and all(state == "success" for state in workers):
            return
        if any(state in ("failed", "upstream_failed") for state in states.values()):
            raise RuntimeError(f"the benchmark run {run_id} failed: {states}")
        time.sleep(3)
    raise TimeoutError(f"the benchmark run {run_id} was still tuning after {timeout:.0f}s")


def stop_run(client: Any, run_id: str) -> None:
    """End the run now (marked failed) and stop the step containers it started after tuning."""
    path = f"/api/v2/dags/tagifai_training/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    client.request("PATCH", path, {"state": "failed"})
    deadline = time.monotonic() + 120
    while containers := task_containers(**{"org.tagifai.pipeline-run-id": run_id}):
        subprocess.run(["docker", "stop", "-t", "5", *containers], capture_output=True)
        if time.monotonic() > deadline:
            raise RuntimeError(f"step containers of {run_id} still running: {containers}")


def measure(projects: str, tags: str, num_trials: int) -> dict[str, Any]:
    """Trials per minute: LocalExecutor, then Celery with each of CELERY_PROCESSES worker processes."""
    out: dict[str, Any] = {"num_trials": num_trials, "optimize_workers": OPTIMIZE_WORKERS, "runs": {}}
    with bench_stack(projects, tags) as stack:
        out["runs"]["LocalExecutor"] = trials_per_minute(stack, num_trials)
        make("down", env_file=stack.env_file, timeout=600)
        stack_script.update_env(
            stack.env_file,
            {"AIRFLOW_EXECUTOR": "CeleryExecutor", "COMPOSE_PROFILES": "celery", "CELERY_WORKER_CONCURRENCY": "1"},
        )
        for processes in CELERY_PROCESSES:
            stack_script.update_env(stack.env_file, {"CELERY_WORKERS": str(processes)})
            started = time.monotonic()
            make("up", "STACK_DAGS=tagifai_training", env_file=stack.env_file)
            stack.reread()
            out["runs"][f"Celery, {processes} worker process{'es' if processes > 1 else ''}"] = {
                **trials_per_minute(stack, num_trials),
                "scale_seconds": time.monotonic() - started,
            }
    return out


def table(result: dict[str, Any]) -> list[str]:
    """Printed lines for the Celery section."""
    lines = [f"  {'':<50} {'trials/min':>10} {'tuning s':>9}"]
    for name, row in result["runs"].items():
        lines.append(f"  {name:<50} {row['trials_per_minute']:>10.1f} {row['tuning_seconds']:>9.1f}")
    return lines
