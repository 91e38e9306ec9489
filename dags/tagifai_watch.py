"""Watch the training data; when a source changed, emit an event that runs `tagifai_training`.

Every `[watch] interval_seconds` (15 min), for each source: `checksum_<source>` runs `tagifai checksum`
with the steps' runner (a container of the tagifai image, with the source's data folder mounted as
for `elt`, under the same source policy), and `watch_<source>` compares the sha256 with the last
one seen. Changed: an event on the source's Asset (`tagifai_projects`, `tagifai_tags`; `extra`:
source, sha256, previous), and `tagifai_training` starts. Unchanged, or seen for the first time:
the watch task is skipped and nothing is emitted.

A small DAG rather than an AssetWatcher: an AssetWatcher's trigger runs in the triggerer, which
must import it from an installed package (this repo's dags/ is not one) and keeps its state in
memory, so a restart would re-emit or miss a change; here each look is a task with its log, its
state is an Airflow Variable, and `airflow dags test tagifai_watch` runs it.

People are told (`tagifai/orchestration/notify.py`) when a look fails, and when a run is not finished
`[notify] watch_missed_intervals` intervals after it was queued (a look that hangs: no news of the data).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG

from tagifai.contract.config import config_dir, load
from tagifai.orchestration import notify
from tagifai.orchestration.assets import source_asset, sources, watch
from tagifai.orchestration.runners import RunnerSettings, tagifai_step

config = load(config_dir())
settings = RunnerSettings.from_env(config=config)
interval = timedelta(seconds=config.watch.interval_seconds)
missed = config.notify.watch_missed_intervals

with DAG(
    dag_id="tagifai_watch",
    schedule=interval,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # The next look is the retry; a failed look is told (notify.task_failed).
    default_args={"owner": "tagifai", "retries": 0, "on_failure_callback": notify.task_failed},
    deadline=notify.deadline(missed * interval, f"not finished within {missed} watch intervals of being queued"),
    doc_md=__doc__,
    tags=["tagifai", "assets"],
) as dag:
    for name, source in sources(config).items():
        asset = source_asset(name, source)
        checksum = tagifai_step(
            settings,
            "checksum", source,
            task_id=f"checksum_{name}",
            experiment_name=config.mlflow.experiment_name,
            data_sources=(source,),
        )  # fmt: skip
        watch.override(task_id=f"watch_{name}", outlets=[asset])(checksum.output, source, asset)
