"""What `tagifai_maintenance` runs on the Airflow worker itself: `airflow db clean`, and old task logs away.

Both read `[retention]` when they run (as the steps do), so a changed setting needs no re-parse of the DAG.

- `airflow_db_clean`: Airflow's own `airflow db clean` of the run history older than `airflow_days`
  (`TABLES`: DAG runs with their task instances, XCom and task-instance history, the audit log, jobs, asset
  events, ...; never the DAGs themselves), the purged rows not archived. Airflow 3 gives a task no database
  access (its environment names a blocked database), so the task reads Airflow's database URL from
  `TAGIFAI_AIRFLOW_DB` (`AIRFLOW_DB_ENV`: a secret, set on the workers) and hands it to the command in its
  environment: never on a command line, never in the rendered template. Its last output line is a JSON
  object: the rows of each table it removed (or would, in a dry run).
- `airflow_logs_clean`: the files under Airflow's log folder (`[logging] base_log_folder`) last written more
  than `log_days` ago, and the folders they leave empty. A dry run lists them and deletes nothing. Remote
  task logs (S3, GCS, ...) are the store's own lifecycle rules' business.

Standard library, Airflow and `tagifai.contract` only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import CronTriggerTimetable, task
from airflow.sdk.exceptions import AirflowFailException

from tagifai.contract import names
from tagifai.contract.config import config_dir, load
from tagifai.contract.settings import Retention

log = logging.getLogger(__name__)

# Airflow's metadata database URL on the workers, for `airflow db clean` (tasks cannot use Airflow's own).
AIRFLOW_DB_ENV = names.AIRFLOW_DB_ENV
# Sunday, midnight UTC; unpaused, it waits for the next Sunday (see `tagifai.orchestration.assets.DAILY`).
WEEKLY = CronTriggerTimetable("@weekly", timezone="UTC", run_immediately=timedelta(0))
# The run history `airflow db clean` prunes; with them go what hangs on them (a DAG run's task instances,
# their XCom and history). Not `dag` nor `dag_version`: a DAG is the deployment's, however long unparsed.
TABLES = (
    "dag_run", "task_instance", "task_instance_history", "task_reschedule", "xcom", "log", "job", "asset_event",
    "import_error", "trigger", "callback", "celery_taskmeta", "celery_tasksetmeta",
)  # fmt: skip
# How many of the old log files a task's log names (all are counted).
SHOWN_FILES = 20
DAY_SECONDS = 86_400

# The age in seconds `execute` hands the script (`[retention] airflow_days`, read when the task runs).
AGE_ENV = "TAGIFAI_AIRFLOW_CLEAN_SECONDS"
# `airflow db clean` with Airflow's database from AIRFLOW_DB_ENV; its output, then a JSON summary line.
DB_CLEAN = r"""set -euo pipefail
before=$(date -u -d "@$(( $(date +%s) - __AGE__ ))" '+%Y-%m-%dT%H:%M:%S+00:00')
echo "airflow db clean: rows older than $before{{ ', dry run' if params.dry_run else '' }}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${__ENV__:?set __ENV__ to the Airflow database URL}"
unset AIRFLOW__CORE__SQL_ALCHEMY_CONN
airflow db clean --clean-before-timestamp "$before" --tables __TABLES__ --skip-archive --yes \
  --error-on-cleanup-failure{{ ' --dry-run' if params.dry_run else '' }} 2>&1 |
awk -v before="$before" -v dry="{{ 'true' if params.dry_run else 'false' }}" '
  { print }
  /^Checking table / { table = $3 }
  /^Found [0-9]+ rows meeting deletion criteria/ { rows[table] = $2; total += $2 }
  END {
    printf "{\"before\": \"%s\", \"dry_run\": %s, \"rows\": %d, \"tables\": {", before, dry, total
    sep = ""
    for (t in rows) { printf "%s\"%s\": %d", sep, t, rows[t]; sep = ", " }
    print "}}"
  }'
"""


def db_clean_command() -> str:
    """The bash script (a template: `params.dry_run`) of `airflow db clean` for rows older than `$AGE_ENV` s."""
    script = DB_CLEAN.replace("__AGE__", f"${{{AGE_ENV}:?}}").replace("__ENV__", AIRFLOW_DB_ENV)
    return script.replace("__TABLES__", ",".join(TABLES))


def retention() -> Retention:
    """`[retention]` as the settings say now (config/, then `TAGIFAI_CONFIG`)."""
    return load(config_dir()).retention


class AirflowDbClean(BashOperator):
    """`airflow db clean` on the worker, with Airflow's database from `TAGIFAI_AIRFLOW_DB` (`db_clean_command`)."""

    def __init__(self, **kwargs: Any) -> None:
        """The task: `db_clean_command` is its command."""
        super().__init__(bash_command=db_clean_command(), **kwargs)

    def execute(self, context: Any) -> Any:
        """Run it with this worker's `airflow`, on rows older than `airflow_days`.

        Raises:
            AirflowFailException: no database URL (no retry sets it).
        """
        if not os.environ.get(AIRFLOW_DB_ENV):
            raise AirflowFailException(
                f"set {AIRFLOW_DB_ENV} on the Airflow workers to Airflow's database URL (a task may not use "
                "Airflow's own connection): nothing was cleaned"
            )
        days = retention().airflow_days
        self.log.info("airflow db clean: [retention] airflow_days = %g", days)
        # Over the worker's environment (where the database URL is): only these two, so no secret is in `env`.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env, self.append_env = {**(self.env or {}), "PATH": path, AGE_ENV: str(int(days * DAY_SECONDS))}, True
        return super().execute(context)


def old_logs(folder: Path, before: float) -> tuple[list[Path], list[Path]]:
    """The files under `folder` last written before `before` (epoch seconds), and the folders they leave empty.

    Folders deepest first; never `folder` itself, nor one written since. Links are left alone.
    """
    files: list[Path] = []
    folders: list[Path] = []
    for root, dirs, filenames in os.walk(folder, topdown=False):
        here = Path(root)
        old = [here / n for n in filenames if not (here / n).is_symlink() and (here / n).stat().st_mtime < before]
        files += old
        left = len(filenames) - len(old) + sum(1 for d in dirs if here / d not in folders)
        if here != folder and left == 0 and here.stat().st_mtime < before and not here.is_symlink():
            folders.append(here)
    return files, folders


def clean_logs(folder: Path, days: float, dry_run: bool, now: float | None = None) -> dict[str, Any]:
    """Delete (or, `dry_run`, list) the log files under `folder` older than `days`, then the folders left empty.

    Returns:
        `before` (ISO time), `dry_run`, `files`, `bytes` and `folders`: what went, or would.
    """
    before = (time.time() if now is None else now) - days * DAY_SECONDS
    when = datetime.fromtimestamp(before, UTC).isoformat(timespec="seconds")
    if not folder.is_dir():
        log.info("no log folder %s: nothing to clean", folder)
        return {"before": when, "dry_run": dry_run, "files": 0, "bytes": 0, "folders": 0}
    files, folders = old_logs(folder, before)
    size = sum(path.stat().st_size for path in files)
    verb = "would delete" if dry_run else "deleting"
    log.info("%s %d log file(s), %d bytes, last written before %s, under %s", verb, len(files), size, when, folder)
    for path in files[:SHOWN_FILES]:
        log.info("  %s", path.relative_to(folder))
    if len(files) > SHOWN_FILES:
        log.info("  ... and %d more", len(files) - SHOWN_FILES)
    if not dry_run:
        for path in files:
            path.unlink(missing_ok=True)
        for path in folders:
            try:
                path.rmdir()
            except OSError:  # something was written there meanwhile: it stays
                pass
    return {"before": when, "dry_run": dry_run, "files": len(files), "bytes": size, "folders": len(folders)}


@task
def airflow_logs_clean(**context: Any) -> dict[str, Any]:
    """Delete Airflow's log files older than `[retention] log_days` (the run's `dry_run` param: only list them)."""
    from airflow.configuration import conf

    folder = Path(conf.get("logging", "base_log_folder")).expanduser()
    result = clean_logs(folder, retention().log_days, bool(context["params"].get("dry_run")))
    log.info("%s", json.dumps(result))
    return result
