"""Judge drift daily, and whenever the champion moves: is the champion still seeing what it was made for?

`monitor` (the `tagifai monitor` command, in the same image and with the same runners as training) reads the
last `[monitor] window_hours` of what the champion answered: the inference log that `tagifai serve` writes,
and the `predictions` table of batch scoring (the tagifai database, `TAGIFAI_PREDICTIONS_DB`, handed to the
step privately). It compares them with the champion's own held-out data and its predictions there, in an
Evidently report: the predicted tags' shares, the share of low-confidence predictions, and what the texts
are like (length, words and character 4-grams the training data never had). The report and the verdict are
a run of the MLflow experiment `[monitor] experiment_name`, tagged with the version it judged.

`publish_drift` emits an event on the `tagifai_drift` Asset and tells people (`tagifai/orchestration/notify.py`)
when the monitor found drift; with no drift, or too few rows to judge (`[monitor] min_rows`), it skips and
says why. With `[monitor] retrain_on_drift`, the event starts `tagifai_training`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule

from tagifai.contract.config import config_dir, load
from tagifai.orchestration.assets import CHAMPION, DAILY, publish_drift
from tagifai.orchestration.runners import USER_DEFINED_FILTERS, RunnerSettings, tagifai_step

config = load(config_dir())
settings = RunnerSettings.from_env(config=config)

with DAG(
    dag_id="tagifai_monitor",
    schedule=AssetOrTimeSchedule(timetable=DAILY, assets=CHAMPION),
    # No start date: the first daily run is the next midnight; the champion's event runs it any time.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=config.limits.run_minutes),
    default_args=settings.default_args(),
    user_defined_filters=USER_DEFINED_FILTERS,
    doc_md=__doc__,
    tags=["tagifai", "ml", "monitoring"],
) as dag:
    monitor = tagifai_step(settings, "monitor", experiment_name=config.monitor.experiment_name)
    monitor >> publish_drift(monitor.output)
