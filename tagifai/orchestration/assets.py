"""tagifai's Airflow Assets, the tasks that emit their events, and the daily time schedule.

- One Asset per training data source (`tagifai_projects`, `tagifai_tags`): `tagifai_watch` emits an
  event when the source changed, and `tagifai_training` runs on either (or daily).
- `tagifai_champion`: `tagifai_training` (and `tagifai rollback`, through the REST API) emits an event
  only when `champion` moved (its `extra`: model_name, from_version, version, test_f1, holdout_f1, action,
  by, pipeline_run_id, history_run_id), for whichever DAG follows the champion (`tagifai_champion` tells
  people, batch scoring scores).
- `tagifai_drift`: `tagifai_monitor` emits an event only when it found drift (its `extra`: `notify.drift_extra`);
  `tagifai_training` runs on it when `[monitor] retrain_on_drift` is true.

Standard library and Airflow only.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, CronTriggerTimetable, Variable, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tagifai.contract import names
from tagifai.contract.config import holdout_sources
from tagifai.contract.settings import Settings
from tagifai.orchestration import notify
from tagifai.orchestration.runners import data_url, fromjson

log = logging.getLogger(__name__)

CHAMPION = Asset(name=names.CHAMPION_ASSET, uri=names.CHAMPION_ASSET_URI)
# The drift monitor found the champion's inputs or predictions drifted (`publish_drift`).
DRIFT = Asset(name=names.DRIFT_ASSET, uri=names.DRIFT_ASSET_URI)
# Midnight UTC. A DAG without a start date that is unpaused first runs at the next midnight:
# `run_immediately=False` would still run the past midnight's when it is under 2.4 hours old (Airflow
# 3.3 treats False like None, "10% of the interval"); a zero timedelta never does.
DAILY = CronTriggerTimetable("@daily", timezone="UTC", run_immediately=timedelta(0))


def sources(config: Settings) -> dict[str, str]:
    """The configured training data: `TAGIFAI_PROJECTS_URL`/`TAGIFAI_TAGS_URL`, else `[data]`'s URLs."""
    return {
        "projects": data_url(os.environ.get(names.PROJECTS_URL_ENV), config.data.projects_url),
        "tags": data_url(os.environ.get(names.TAGS_URL_ENV), config.data.tags_url),
    }


def holdout(config: Settings) -> tuple[str, str]:
    """The sources of the gate's holdout (`holdout_sources`): `validate` reads them, and `elt` for its plan."""
    projects, tags, _ = holdout_sources(config)
    return data_url(projects, projects), data_url(tags, tags)


def source_asset(name: str, source: str) -> Asset:
    """The Asset of one data source, named for it; its URI is the source (a path as a file:// URI)."""
    uri = source if urllib.parse.urlparse(source).scheme else f"file://{source}"
    return Asset(name=f"tagifai_{name}", uri=uri)


@task
def watch(checksum_line: Any, source: str, asset: Asset, **context: Any) -> dict[str, str]:
    """Emit an event on `asset` when `source` changed since the last look; else skip (no event).

    `checksum_line` is the output of `tagifai checksum <source>`, run by the steps' runner (so the
    source is read where and as `elt` reads it). The last sha256 seen is an Airflow Variable per
    asset. The first look records it and emits nothing.

    Raises:
        AirflowSkipException: the source is unchanged, or seen for the first time.
    """
    sha = fromjson(checksum_line)["sha256"]
    seen_key = f"{asset.name}_sha256"
    previous = Variable.get(seen_key, default=None)
    if sha == previous:
        raise AirflowSkipException(f"{source} unchanged (sha256 {sha[:12]})")
    Variable.set(seen_key, sha, description=f"sha256 of {source} when tagifai_watch last looked")
    if previous is None:
        raise AirflowSkipException(f"{source} first seen (sha256 {sha[:12]}): watching it from now on")
    extra = {"source": source, "sha256": sha, "previous_sha256": previous}
    context["outlet_events"][asset].extra = extra
    return extra


@task(outlets=[CHAMPION])
def publish_champion(line: Any, **context: Any) -> dict[str, Any]:
    """Emit an event on the champion Asset when the run moved `champion`; else tell people why not, and skip.

    `line` is `register`'s output (approval "auto") or `decide`'s ("human"). The event's `extra` is the
    champion move's contract (`notify.champion_extra`), which `tagifai_champion` reads to tell people.

    Raises:
        AirflowSkipException: the run did not move the champion (not promoted, rejected, or a reused register).
    """
    out = fromjson(line)
    if out.get("reused"):
        raise AirflowSkipException("champion did not move: made already")
    if not out.get("promoted"):
        why = out.get("reason") or out.get("decision") or "not promoted"
        notify.not_promoted(out, context["run_id"])
        raise AirflowSkipException(f"champion did not move: {why}")
    # decide's `by` is the approver's name; register's promotion is the gate's.
    by = f"approved by {out['by']}" if out.get("decision") else f"the gate ({context['run_id']})"
    extra = notify.champion_extra(
        {
            "model_name": out["model_name"],
            "from_version": out.get("from_version"),
            "version": out["version"],
            "test_f1": out.get("test_f1"),
            "holdout_f1": out.get("holdout_f1"),
            "action": "promote",
            "by": by[:200],
            "pipeline_run_id": context["run_id"],
            "history_run_id": out.get("history_run_id"),
        }
    )
    context["outlet_events"][CHAMPION].extra = extra
    return extra


@task
def tell_champion_moved(**context: Any) -> list[dict[str, Any]]:
    """Tell people of each champion move that started this run (promotions and `tagifai rollback`s).

    Raises:
        AirflowFailException: an event's extra breaks the contract (one line; nothing sent for it).
    """
    moves, bad = [], []
    for events in context["triggering_asset_events"].values():
        for event in events:
            try:
                moves.append(notify.champion_extra(event.extra))
            except notify.BadChampionEvent as exc:
                bad.append(str(exc))
    for move in moves:
        notify.champion_moved(move)
    if bad:
        raise AirflowFailException(f"{len(bad)} malformed champion event(s): {bad[0]}")
    return moves


@task(outlets=[DRIFT])
def publish_drift(line: Any, **context: Any) -> dict[str, Any]:
    """Emit an event on the drift Asset and tell people when the monitor found drift; else skip, saying why.

    `line` is `tagifai monitor`'s output: `drifted` true (drift), false (no drift) or null (too few rows, or no
    champion: nothing judged), with its `reasons`.

    Raises:
        AirflowSkipException: no drift, or nothing judged: no event, no message.
    """
    out = fromjson(line)
    if out.get("drifted") is not True:
        why = "; ".join(map(str, out.get("reasons") or [])) or "no reasons given"
        message = f"no drift event ({out.get('status', 'no verdict')}): {why}"
        log.info("%s", message)  # the task log says why (a skip's message is not shown there)
        raise AirflowSkipException(message)
    extra = notify.drift_extra(out, context["run_id"])
    context["outlet_events"][DRIFT].extra = extra
    notify.drift_detected(extra)
    return extra
