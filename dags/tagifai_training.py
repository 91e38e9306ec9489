"""Train, evaluate and register the tagifai model every day.

`elt → validate → optimize → train → evaluate → register`, each the `tagifai` command of the same
name, run in its own container (`TAGIFAI_RUNNER=docker`, the default), as a local subprocess
(`local`) or in a Kubernetes pod (`kubernetes`). Steps share no disk: each prints a one-line JSON
object last (`{"run_id": ...}`), and the next step gets that MLflow run id as an argument.

| step | reads | writes (MLflow) |
| --- | --- | --- |
| `elt` | projects and tags CSVs (`projects_url`, `tags_url`) | the labelled dataset |
| `validate` | the `elt` run; the deployment's data | contract + drift report (bad data fails it); splits, holdout |
| `optimize` | the `validate` run | trials of one Optuna study, shared by `num_workers` parallel tasks |
| `train` | the `validate` run, the study's best trial | the model |
| `evaluate` | the `train` run | test metrics, slices, behavioral checks |
| `register` | the `evaluate` run | a model version; `@champion` when it passes the gate (test split and holdout) |

Approval (`[register] approval`): "auto", `register` moves `champion` when the gate says so and
`publish_champion` tells whoever follows it. "human": `register` holds the move; `approve` (an
`ApprovalOperator`: its body is register's challenger-vs-champion report) waits, holding no worker slot,
for a person with the permission to answer in the Airflow UI or REST API, at most
`[register] approval_timeout_hours` (then: Reject); `approved` shows the outcome (skipped on reject); and
`decide` (the `tagifai decide` command) applies it: approved, the gate's decision; rejected or timed out,
the version stays `challenger`. Either way the decision and who made it are in the champion history.

People are told (`tagifai/orchestration/notify.py`, channels from `TAGIFAI_NOTIFY_*`) when a task fails for
good, when an approval waits, when a challenger is not promoted, when `champion` moves (`tagifai_champion`),
and when a run is not finished `[notify] run_deadline_minutes` after it was queued.

`optimize_workers` copies the `optimize` command once per worker and `optimize` maps over the
copies: the workers run the trials of one Optuna study together, stored where
`TAGIFAI_OPTUNA_STORAGE` says (the stack's PostgreSQL), until it holds `num_trials` of them.

The params' defaults are the settings the steps read (`config/tagifai.toml`, with `TAGIFAI_CONFIG`
over it): a param left alone changes nothing. Trigger with a config to override them, e.g.
`{"num_trials": 5, "num_workers": 4}`. Deployment settings come from the environment of the Airflow
workers: `TAGIFAI_IMAGE`, `TAGIFAI_DOCKER_NETWORK`, `TAGIFAI_MLFLOW_TRACKING_URI`,
`TAGIFAI_OPTUNA_STORAGE`, `DOCKER_HOST`, `TAGIFAI_BIN` (see `tagifai/orchestration/runners.py`).
`experiment_name` is one of the experiments the deployer lists (`[mlflow]`), never free text.

The trigger form is untrusted input. Data sources must pass the deployment's policy before any step
starts (`tagifai/contract/sources.py`): local files only inside `TAGIFAI_DATA_DIRS` (host paths; the
folder of `TAGIFAI_PROJECTS_URL`/`TAGIFAI_TAGS_URL` counts), URLs only from
`TAGIFAI_ALLOWED_URL_HOSTS` (default: the pinned upstream folder) and never private addresses
(unless in `TAGIFAI_PRIVATE_URL_HOSTS`). The gate's params may only be stricter than `[register]`,
and `[limits]` bounds trials, workers, each step's time and memory, and the whole run. Bad input
fails its task once; it is not retried.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, AssetAny, AssetOrTimeSchedule, Param

from tagifai.contract.config import config_dir, load
from tagifai.orchestration import notify
from tagifai.orchestration.approval import ANSWER, Approval
from tagifai.orchestration.assets import DAILY, DRIFT, holdout, publish_champion, source_asset, sources
from tagifai.orchestration.runners import (
    FINITE,
    USER_DEFINED_FILTERS,
    RunnerSettings,
    run_id_from,
    tagifai_step,
    tagifai_workers,
)

config = load(config_dir())
settings = RunnerSettings.from_env(config=config)
limits, gate, data = config.limits, config.register, sources(config)
# The gate's holdout: the deployment's, never the trigger's (`tagifai.pipeline.holdout`).
held = holdout(config)
# Who approves a promotion: the gate alone ("auto") or a person after it ("human").
approval, approval_timeout = gate.approval, timedelta(hours=gate.approval_timeout_hours)
late = config.notify.run_deadline_minutes

with DAG(
    dag_id="tagifai_training",
    # Daily, and whenever tagifai_watch saw a data source change (and tagifai_monitor found drift, if asked).
    schedule=AssetOrTimeSchedule(
        timetable=DAILY,
        assets=AssetAny(
            source_asset("projects", data["projects"]),
            source_asset("tags", data["tags"]),
            *([DRIFT] if config.monitor.retrain_on_drift else []),
        ),
    ),
    # No start date: the first scheduled run is the next midnight (UTC), not one the moment the DAG is
    # unpaused; `make train` (or the UI) runs it now, and new data does (an asset event).
    catchup=False,
    max_active_runs=1,
    # A stuck run cannot block the next ones for longer than this (each step has its own timeout too).
    dagrun_timeout=timedelta(minutes=limits.run_minutes),
    # Told before that: a run still going `[notify] run_deadline_minutes` after it was queued.
    deadline=notify.deadline(timedelta(minutes=late), f"not finished {late:g} min after it was queued"),
    default_args=settings.default_args(),
    params={
        "num_trials": Param(
            config.optimize.num_trials,
            type="integer",
            minimum=1,
            maximum=limits.max_trials,
            description="Optuna trials of all `optimize` workers.",
        ),
        "num_workers": Param(
            config.optimize.num_workers,
            type="integer",
            minimum=1,
            maximum=limits.max_workers,
            description="Parallel `optimize` tasks sharing one Optuna study (in TAGIFAI_OPTUNA_STORAGE).",
        ),
        # Only experiments the deployer lists (`[mlflow]`): `make up` made them, and only the pipeline writes them.
        "experiment_name": Param(
            config.mlflow.experiment_name,
            type="string",
            enum=config.mlflow.choices(),
            description="MLflow experiment of the runs: one this deployment lists ([mlflow] experiments).",
        ),
        "projects_url": Param(
            data["projects"],
            type="string",
            description="projects.csv (id, created_on, title, description): an allowed http(s) URL, or a file in "
            "one of the deployment's data folders (TAGIFAI_DATA_DIRS, host paths).",
        ),
        "tags_url": Param(
            data["tags"],
            type="string",
            description="tags.csv (id, tag): an allowed http(s) URL, or a file in one of the deployment's data "
            "folders.",
        ),
        "force": Param(
            False,
            type="boolean",
            description="Run every step, even those whose run is made already (same data, code, settings, params).",
        ),
        # The gate is the deployer's: a run may make it stricter, never looser.
        "min_f1": Param(
            gate.min_f1,
            type="number",
            **FINITE,
            minimum=gate.min_f1,
            maximum=1,
            description="Promotion gate: minimum F1, on the test split and the holdout "
            f"(this deployment: at least {gate.min_f1}).",
        ),
        "max_regression": Param(
            gate.max_regression,
            type="number",
            **FINITE,
            minimum=0,
            maximum=gate.max_regression,
            description="Promotion gate: largest F1 drop allowed against the champion (test split and holdout) "
            f"and the best champion ever on the holdout (this deployment: at most {gate.max_regression}).",
        ),
    },
    user_defined_filters=USER_DEFINED_FILTERS,
    doc_md=__doc__,
    tags=["tagifai", "ml", "training"],
) as dag:
    # Each step: the `tagifai` command of its name, in the run's MLflow experiment.
    step = partial(tagifai_step, settings, experiment_name="{{ params.experiment_name }}")

    # elt also says which later steps find their run made already (same data, code, settings, params):
    # those hand the earlier run on without starting anything.
    elt = step(
        "elt",
        "--projects-url", "{{ params.projects_url }}",
        "--tags-url", "{{ params.tags_url }}",
        "--experiment-name", "{{ params.experiment_name }}",
        "--plan", "{{ {'num_trials': params.num_trials, 'min_f1': params.min_f1, "
                  "'max_regression': params.max_regression} | tojson }}",
        data_sources=("{{ params.projects_url }}", "{{ params.tags_url }}", *held),
    )  # fmt: skip
    validate = step("validate", "--elt-run", run_id_from("elt"), data_sources=held)
    optimize_workers, optimize = tagifai_workers(
        settings,
        "optimize", "--data-run", run_id_from("validate"), "--num-trials", "{{ params.num_trials }}",
        experiment_name="{{ params.experiment_name }}",
        num_workers="{{ params.num_workers }}",
    )  # fmt: skip
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
    # An event on the champion Asset when the run moved it: batch scoring, serving and tagifai_champion follow.
    if approval == "auto":
        register >> publish_champion(register.output)
    else:
        report = "(ti.xcom_pull(task_ids='register') | fromjson)"
        approve = Approval(
            task_id="approve",
            subject=f"tagifai: promote v{{{{ {report}['version'] }}}}?",
            body=f"{{{{ {report}['report'] }}}}",
            defaults="Reject",
            response_timeout=approval_timeout,
            notifiers=[notify.ApprovalRequested()],
        )
        # Skipped when approve's answer is Reject (or none came in time).
        approved = EmptyOperator(task_id="approved")
        # Runs whatever the answer (approved skipped: a rejection, or no answer in time), so every decision
        # is recorded; not when register or approve failed (nothing was asked or answered: nothing moves).
        # An answer that is missing all the same is a Reject.
        answer = f"(ti.xcom_pull(task_ids='approve', key='{ANSWER}') or {{}})"
        decide = step(
            "decide",
            "--register-run", run_id_from("register"),
            "--choice", f"{{{{ {answer}.get('choice') or 'Reject' }}}}",
            "--by", f"{{{{ {answer}.get('by') or '' }}}}",
            trigger_rule="none_failed",
        )  # fmt: skip
        register >> approve >> approved >> decide >> publish_champion(decide.output)
