"""Tell people whenever `champion` moved: a promotion in `tagifai_training`, or a `tagifai rollback`.

Runs on each event of the `tagifai_champion` Asset. Its one task, `tell_champion_moved`, checks each
event's `extra` (model, from and to version, test and holdout f1, promote or rollback, by whom; a malformed
one fails the task in one line and is not told) and sends one message per move, with a link to the
version's page in MLflow (its description is the model card), to the channels of `TAGIFAI_NOTIFY_*`
(`tagifai/orchestration/notify.py`; none set: nothing is sent, said once in the log).
"""

from __future__ import annotations

from airflow.sdk import DAG

from tagifai.orchestration import notify
from tagifai.orchestration.assets import CHAMPION, tell_champion_moved

with DAG(
    dag_id="tagifai_champion",
    schedule=[CHAMPION],
    catchup=False,
    # A retry would tell the same moves twice.
    default_args={"owner": "tagifai", "retries": 0, "on_failure_callback": notify.task_failed},
    doc_md=__doc__,
    tags=["tagifai", "assets", "notifications"],
) as dag:
    tell_champion_moved()
