"""Score projects with the champion: whenever it moves, and daily.

One step, `predict-batch` (the `tagifai` command of the same name, in the same image, with the same
runners as training): it scores the CSV of projects `source` (`[predict] source`, else the training
projects; read under the same source policy as the training data) with the version holding
`champion`, and upserts `(id, tag, probability, model_version, pipeline_run_id, scored_at)` into the
PostgreSQL table `predictions` (`TAGIFAI_PREDICTIONS_DB`, handed to the step privately), once per
project and model version. It also logs the predictions file and the count of each tag to MLflow.

It runs on an event of the `tagifai_champion` Asset (a promotion in `tagifai_training`, or
`tagifai rollback`), and daily. A move made in the MLflow UI is scored at the next daily run. A task
that fails for good is told (`tagifai/orchestration/notify.py`).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, Param

from tagifai.contract import names
from tagifai.contract.config import config_dir, load
from tagifai.orchestration.assets import CHAMPION, DAILY, sources
from tagifai.orchestration.runners import USER_DEFINED_FILTERS, RunnerSettings, data_url, tagifai_step

config = load(config_dir())
settings = RunnerSettings.from_env(config=config)
# [predict] source, else the training projects exactly as tagifai_training reads them (a relative path made absolute).
default_source = config.predict.source or sources(config)["projects"]

with DAG(
    dag_id="tagifai_batch_predictions",
    schedule=AssetOrTimeSchedule(timetable=DAILY, assets=CHAMPION),
    # No start date: the first daily run is the next midnight; the champion's event runs it any time.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=config.limits.run_minutes),
    default_args=settings.default_args(),
    params={
        "source": Param(
            data_url(os.environ.get(names.PREDICT_SOURCE_ENV), default_source),
            type="string",
            description="projects CSV (id, title, description) to score: an allowed http(s) URL, or a file in one of "
            "the deployment's data folders.",
        ),
    },
    user_defined_filters=USER_DEFINED_FILTERS,
    doc_md=__doc__,
    tags=["tagifai", "ml", "predictions"],
) as dag:
    tagifai_step(
        settings,
        "predict-batch", "--source", "{{ params.source }}",
        experiment_name=config.predict.experiment_name,
        data_sources=("{{ params.source }}",),
    )  # fmt: skip
