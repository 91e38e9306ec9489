"""Keep what tagifai keeps from growing forever, weekly, as `[retention]` in config/tagifai.toml says.

Three tasks, each on its own store:

- `maintain` (the `tagifai maintain` command, in the tagifai image like the training steps): in MLflow, it
  deletes the runs older than `run_days` of failed, reused or retired pipelines that nothing points at (never
  a run of the champion, of the challenger, of the history or that the next run would reuse, nor anything
  upstream of one), archives the versions never promoted beyond the newest `keep_versions`, and removes for
  good (`mlflow gc`: rows and artifact files) what was deleted more than `deleted_days` ago; it deletes the
  inference log's rows older than `inference_days`.
- `airflow_db_clean`: `airflow db clean` of Airflow's run history older than `airflow_days` (DAG runs, task
  instances, XCom, the audit log, ...), with Airflow's database from `TAGIFAI_AIRFLOW_DB` on the worker.
- `airflow_logs_clean`: Airflow's task log files older than `log_days`, on the worker.

Each reads `[retention]` when it runs (a changed setting needs no re-parse). Trigger with `{"dry_run": true}`
(`make maintain DRY_RUN=1`) to see what each would delete: it lists, and deletes nothing. Each task logs what
it counted; one run at a time, so no two deletions ever overlap. A task that fails is told
(`tagifai/orchestration/notify.py`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from tagifai.contract.config import config_dir, load
from tagifai.orchestration.maintenance import WEEKLY, AirflowDbClean, airflow_logs_clean
from tagifai.orchestration.runners import USER_DEFINED_FILTERS, RunnerSettings, tagifai_step

config = load(config_dir())
settings = RunnerSettings.from_env(config=config)

with DAG(
    dag_id="tagifai_maintenance",
    schedule=WEEKLY,
    # No start date: unpaused, its first run is the next Sunday's; a manual trigger runs it now.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=config.limits.run_minutes),
    default_args=settings.default_args(),
    params={
        "dry_run": Param(False, type="boolean", description="List what each task would delete; delete nothing."),
    },
    user_defined_filters=USER_DEFINED_FILTERS,
    doc_md=__doc__,
    tags=["tagifai", "maintenance"],
) as dag:
    tagifai_step(
        settings,
        "maintain", "{{ '--dry-run' if params.dry_run else '--no-dry-run' }}",
        experiment_name=config.mlflow.experiment_name,
    )  # fmt: skip
    AirflowDbClean(task_id="airflow_db_clean")
    airflow_logs_clean()
