"""Train, evaluate and register the tagifai model every day.

`elt → validate → optimize → train → evaluate → register`, each the `tagifai` command of the same
name, run in its own container (`TAGIFAI_RUNNER=docker`, the default), as a local subprocess
(`local`) or in a Kubernetes pod (`kubernetes`). Steps share no disk: each prints a one-line JSON
object last (`{"run_id": ...}`), and the next step gets that MLflow run id as an argument.

| step | reads | writes (MLflow) |
| --- | --- | --- |
| `elt` | projects and tags CSVs (`projects_url`, `tags_url`) | the labelled dataset |
| `validate` | the `elt` run | data contract + drift report; fails the run on bad data |
| `optimize` | the `validate` run | trials of one Optuna study, shared by `num_workers` parallel tasks |
| `train` | the `validate` run, the study's best trial | the model |
| `evaluate` | the `train` run | test metrics, slices, behavioral checks |
| `register` | the `evaluate` run | a model version; `@champion` when it passes the gate |

`optimize_workers` copies the `optimize` command once per worker and `optimize` maps over the
copies: the workers run the trials of one Optuna study together, stored where
`TAGIFAI_OPTUNA_STORAGE` says (the stack's PostgreSQL), until it holds `num_trials` of them.

The params' defaults are the settings the steps read (`config/tagifai.toml`, with `TAGIFAI_CONFIG`
over it): a param left alone changes nothing. Trigger with a config to override them, e.g.
`{"num_trials": 5, "num_workers": 4}`. Deployment settings come from the environment of the Airflow
workers: `TAGIFAI_IMAGE`, `TAGIFAI_DOCKER_NETWORK`, `TAGIFAI_MLFLOW_TRACKING_URI`,
`TAGIFAI_OPTUNA_STORAGE`, `DOCKER_HOST`, `TAGIFAI_BIN` (see `dags/tagifai_runners.py`). A data URL
that is a local path or `file://` URL must be a path
on the Docker host; its folder is mounted read-only into the `elt` container.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import tagifai_config
from airflow.sdk import DAG, Param
from tagifai_runners import (
    USER_DEFINED_FILTERS,
    RunnerSettings,
    data_url,
    run_id_from,
    tagifai_step,
    tagifai_workers,
)

settings = RunnerSettings.from_env()
config = tagifai_config.load(tagifai_config.repository_dir())

with DAG(
    dag_id="tagifai_training",
    schedule="@daily",
    # With catchup off, only the latest day runs however far back this is.
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "tagifai",
        "retries": settings.retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    params={
        "num_trials": Param(
            config["optimize"]["num_trials"],
            type="integer",
            minimum=1,
            description="Optuna trials of all `optimize` workers.",
        ),
        "num_workers": Param(
            config["optimize"]["num_workers"],
            type="integer",
            minimum=1,
            maximum=64,
            description="Parallel `optimize` tasks sharing one Optuna study (in TAGIFAI_OPTUNA_STORAGE).",
        ),
        "experiment_name": Param(
            config["mlflow"]["experiment_name"], type="string", minLength=1, description="MLflow experiment."
        ),
        "projects_url": Param(
            data_url(os.environ.get("TAGIFAI_PROJECTS_URL"), config["data"]["projects_url"]),
            type="string",
            description="projects.csv (id, created_on, title, description): http(s)://, file:// or a host path.",
        ),
        "tags_url": Param(
            data_url(os.environ.get("TAGIFAI_TAGS_URL"), config["data"]["tags_url"]),
            type="string",
            description="tags.csv (id, tag): http(s)://, file:// or a host path.",
        ),
        "min_f1": Param(
            config["register"]["min_f1"],
            type="number",
            minimum=0,
            maximum=1,
            description="Promotion gate: minimum test F1.",
        ),
        "max_regression": Param(
            config["register"]["max_regression"],
            type="number",
            minimum=0,
            maximum=1,
            description="Promotion gate: largest test-F1 drop allowed against the current champion.",
        ),
    },
    user_defined_filters=USER_DEFINED_FILTERS,
    doc_md=__doc__,
    tags=["tagifai", "ml", "training"],
) as dag:

    def step(task_id: str, *args: str, data_sources: tuple[str, ...] = ()):
        """The `tagifai <task_id> <args>` task, run by the configured runner."""
        return tagifai_step(
            task_id,
            [task_id, *args],
            settings,
            experiment_name="{{ params.experiment_name }}",
            data_sources=data_sources,
        )

    def parallel_step(task_id: str, *args: str):
        """`<task_id>_workers`, then `tagifai <task_id> <args>` in `num_workers` mapped tasks."""
        return tagifai_workers(
            task_id,
            [task_id, *args],
            settings,
            experiment_name="{{ params.experiment_name }}",
            num_workers="{{ params.num_workers }}",
        )

    elt = step(
        "elt",
        "--projects-url", "{{ params.projects_url }}",
        "--tags-url", "{{ params.tags_url }}",
        "--experiment-name", "{{ params.experiment_name }}",
        data_sources=("{{ params.projects_url }}", "{{ params.tags_url }}"),
    )  # fmt: skip
    validate = step("validate", "--elt-run", run_id_from("elt"))
    optimize_workers, optimize = parallel_step(
        "optimize", "--data-run", run_id_from("validate"), "--num-trials", "{{ params.num_trials }}"
    )
    # Any worker's run leads to the study; train takes its best trial, whoever ran it.
    train = step("train", "--data-run", run_id_from("validate"), "--optimize-run", run_id_from("optimize", 0))
    evaluate = step("evaluate", "--train-run", run_id_from("train"))
    register = step(
        "register",
        "--evaluate-run", run_id_from("evaluate"),
        "--min-f1", "{{ params.min_f1 }}",
        "--max-regression", "{{ params.max_regression }}",
    )  # fmt: skip

    elt >> validate >> optimize_workers >> optimize >> train >> evaluate >> register
