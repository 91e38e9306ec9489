"""Wall time of one pipeline three ways, and the tuning throughput of 1 and 2 `optimize` workers.

Every variant gets the same services: a throwaway PostgreSQL (MLflow's metadata, Optuna's studies)
and an `mlflow server` on 127.0.0.1, a fresh database for each run, so no run finds another's
champion to re-score. The services are the harness's (harness/__init__.py), and so is `airflow dags test`
(harness/dags.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from statistics import mean
from typing import Any

import harness
from harness import dags as dag_helpers

RUNS = ("inprocess", "local", "docker")
# The deployment's data, read by the gate's holdout.
DATA_ENVS = ("TAGIFAI_PROJECTS_URL", "TAGIFAI_TAGS_URL")
# Tuning throughput: every trial runs all its folds, so 1 and 2 workers do comparable work.
NO_PRUNING = '[optimize]\npruner_startup_trials = 100000\n[mlflow]\nexperiments = ["throughput"]\n'


def tagifai(*args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run `tagifai ARGS`; return the JSON of its last stdout line."""
    return harness.Cli(env, Path.cwd())(*args)[1]


def data_args(projects: str, tags: str) -> list[str]:
    """The data options of `tagifai elt` / `pipeline`."""
    return ["--projects-url", projects, "--tags-url", tags]


def client_env(tracking_uri: str, storage: str, pipeline_run_id: str, **extra: str) -> dict[str, str]:
    """The environment of a `tagifai` command against the benchmark's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGIFAI_", "MLFLOW_"))}
    # The deployment's data stays: the gate's holdout is read from it (the pinned upstream without it).
    data = {k: os.environ[k] for k in DATA_ENVS if k in os.environ}
    return {
        **data,
        **env,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TAGIFAI_OPTUNA_STORAGE": storage,
        "TAGIFAI_PIPELINE_RUN_ID": pipeline_run_id,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        **extra,
    }


def wall_times(
    projects: str, tags: str, num_trials: int, image: str, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same pipeline (data, trials, one optimize worker) in-process and through Airflow's two runners.

    Then, in-process and with the docker runner, the same once more on the same data (everything reused); and
    `tagifai reproduce` of the version the first made (retrained from its record, compared: identical).
    """
    data = {"projects_url": projects, "tags_url": tags}
    conf = {"num_trials": num_trials, "num_workers": 1, **data}
    # Local data must lie in a folder the deployment names (the DAG refuses it anywhere else); the deployment's
    # data goes to the DAG runs too: the gate's holdout is read from it (else the pinned upstream, not reachable
    # everywhere).
    folders = {
        "TAGIFAI_DATA_DIRS": ":".join({os.path.dirname(p) for p in (projects, tags) if p.startswith("/")}),
        **{k: os.environ[k] for k in DATA_ENVS if k in os.environ},
    }
    with harness.running_postgres(*(f"mlflow_{run}" for run in RUNS), "optuna") as databases:
        storage = databases["optuna"]
        with harness.running_mlflow_server(databases["mlflow_inprocess"], root / "inprocess") as server:
            env = client_env(server.uri, storage, "benchmark-inprocess")
            start = time.monotonic()
            tagifai("pipeline", "--num-trials", str(num_trials), *data_args(projects, tags), env=env)
            inprocess = time.monotonic() - start
            # The same again: every step finds its run made already.
            start = time.monotonic()
            tagifai("pipeline", "--num-trials", str(num_trials), *data_args(projects, tags), env=env)
            inprocess_again = time.monotonic() - start
            # Rebuilding that version from its record (retrain with its params, score, compare): it must match.
            start = time.monotonic()
            rebuilt = tagifai("reproduce", "--version", "1", env=env)
            reproduce = time.monotonic() - start
            if rebuilt["verdict"] != "identical":
                raise RuntimeError(f"tagifai reproduce --version 1 did not rebuild it: {rebuilt}")
        with harness.running_mlflow_server(databases["mlflow_local"], root / "local") as server:
            local = dag_helpers.dags_test(
                root / "airflow-local",
                conf,
                {
                    "TAGIFAI_RUNNER": "local",
                    "TAGIFAI_BIN": str(harness.TAGIFAI),
                    "MLFLOW_TRACKING_URI": server.uri,
                    "TAGIFAI_OPTUNA_STORAGE": storage,
                    **folders,
                },
                timeout=3600,
            )
        with harness.running_mlflow_server(databases["mlflow_docker"], root / "docker") as server:
            docker_env = {
                "TAGIFAI_RUNNER": "docker",
                "TAGIFAI_IMAGE": image,
                "TAGIFAI_DOCKER_NETWORK": "host",
                "TAGIFAI_MLFLOW_TRACKING_URI": server.uri,
                "TAGIFAI_OPTUNA_STORAGE": storage,
                **folders,
            }
            docker = dag_helpers.dags_test(root / "airflow-docker", conf, docker_env, timeout=3600)
            # The same run again: elt finds every later step made already, and no other container starts.
            docker_again = dag_helpers.dags_test(root / "airflow-docker", conf, docker_env, timeout=3600)
    for name, run in (("local", local), ("docker", docker), ("docker, again", docker_again)):
        if run.returncode != 0:
            raise RuntimeError(f"the {name}-runner DAG run failed:\n{run.output[-3000:]}")
    # Per task: the docker runner's time minus the local runner's (the same command as a subprocess).
    steps = [name for name in docker.durations if name in local.durations and name != "optimize_workers"]
    overhead = {name: docker.durations[name] - local.durations[name] for name in steps}
    return {
        "num_trials": num_trials,
        "optimize_workers": 1,
        "seconds": {"inprocess": inprocess, "local": local.seconds, "docker": docker.seconds},
        "task_seconds": {"local": local.durations, "docker": docker.durations},
        "container_overhead_seconds": overhead,
        "mean_container_overhead_seconds": mean(overhead.values()),
    }, {
        "seconds": {"inprocess": inprocess_again, "docker": docker_again.seconds},
        "ratio": {"inprocess": inprocess_again / inprocess, "docker": docker_again.seconds / docker.seconds},
        "reproduce_seconds": reproduce,
        "reproduce_ratio": reproduce / inprocess,
    }


def same_trials(num_trials: int) -> list[dict[str, Any]]:
    """`num_trials` param sets drawn at random from the `[optimize]` search space, the same every time."""
    import optuna

    from tagifai.contract.config import load_settings
    from tagifai.pipeline import tuning

    settings = load_settings()
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=settings.optimize.seed))
    out = []
    for _ in range(num_trials):
        trial = draws.ask()
        tuning.suggest_params(trial, settings.optimize, settings.train)
        out.append(trial.params)
    return out


def throughput(projects: str, tags: str, num_trials: int, root: Path) -> dict[str, Any]:
    """Trials per minute of 1 and of 2 `tagifai optimize` processes sharing one study in PostgreSQL.

    Both runs work through the same queued trials, without pruning, so they do the same work.
    """
    from tagifai.pipeline import tuning

    config = root / "no-pruning.toml"
    config.write_text(NO_PRUNING, encoding="utf-8")
    trials = same_trials(num_trials)
    out: dict[str, Any] = {"num_trials": num_trials, "pruning": False, "workers": {}}
    with ExitStack() as stack:
        databases = stack.enter_context(harness.running_postgres("mlflow", "optuna"))
        uri = stack.enter_context(harness.running_mlflow_server(databases["mlflow"], root / "mlflow")).uri
        env = client_env(uri, databases["optuna"], "benchmark-throughput", TAGIFAI_CONFIG=str(config))
        elt = tagifai("elt", *data_args(projects, tags), "--experiment-name", "throughput", env=env)
        data_run = tagifai("validate", "--elt-run", elt["run_id"], env=env)["run_id"]
        for workers in (1, 2):
            name = f"throughput-{workers}-workers"
            storage = tuning.open_storage(databases["optuna"])
            study = tuning.open_study(name, storage, data_run_id=data_run, first_params=trials[0])
            for params in trials[1:]:
                study.enqueue_trial(params)
            args = [
                harness.TAGIFAI,
                "optimize",
                "--data-run",
                data_run,
                "--num-trials",
                str(num_trials),
                "--study-name",
                name,
            ]
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
            start = time.monotonic()
            procs = [subprocess.Popen(args, env=env, **quiet) for _ in range(workers)]
            results = [proc.communicate(timeout=3600) for proc in procs]
            wall = time.monotonic() - start
            if any(proc.returncode for proc in procs):
                raise RuntimeError(f"optimize with {workers} workers failed:\n{results[-1][1].decode()[-3000:]}")
            done = [t for t in study.get_trials(deepcopy=False) if t.state in tuning.FINISHED]
            # Tuning proper: first trial start to last trial end (no process start-up, no data loading).
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            out["workers"][str(workers)] = {
                "wall_seconds": wall,
                "tuning_seconds": span,
                "trials": len(done),
                "trials_per_minute": 60 * len(done) / span,
            }
    one, two = out["workers"]["1"], out["workers"]["2"]
    out["speedup"] = two["trials_per_minute"] / one["trials_per_minute"]
    return out


def measure(projects: str, tags: str, num_trials: int, image: str) -> dict[str, Any]:
    """Both measurements, in a scratch folder that is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tagifai-bench-pipeline-"))
    try:
        wall, reuse = wall_times(projects, tags, num_trials, image, root)
        return {"wall": wall, "reuse": reuse, "throughput": throughput(projects, tags, num_trials, root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
