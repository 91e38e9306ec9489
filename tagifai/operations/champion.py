"""What people do with the champion: its history, a rollback, and its event for Airflow.

Airflow hears of a move so that batch scoring follows it. The shell around
`tagifai.pipeline.registry` (the gate and its record of moves); serving follows the alias on its own
(`tagifai.serving`).
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import time
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.operations.airflow_api import Airflow, AirflowError
from tagifai.pipeline import ownership, registry, tracking

log = logging.getLogger("tagifai")


def history_table(moves: list[dict[str, Any]]) -> list[str]:
    """The moves of `champion` (and people's decisions on promotions), as given, as text table lines."""
    header = ("when (UTC)", "from", "to", "action", "by", "why")
    rows: list[tuple[str, ...]] = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(move["when"]) / 1000)),
            f"v{move['from_version']}" if move["from_version"] else "-",
            f"v{move['to_version']}",
            move["action"],
            move["by"],
            move["reason"],
        )
        for move in moves
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join([*(row[i].ljust(widths[i]) for i in range(len(widths))), row[-1]]) for row in [header, *rows]]


def rollback(settings: Settings, name: str, to_version: str | None, reason: str | None) -> dict[str, Any]:
    """Move `champion` back to `to_version` (default: the one before it), re-scored, recorded, announced.

    The target is re-scored on the current champion's test split first: a version that cannot be
    loaded is refused, and its f1 goes into the record of the move.

    Raises:
        BadInputError: no champion, no earlier version to go back to, or the target cannot be used.
    """
    client = MlflowClient()
    history = settings.register.history_experiment
    ownership.check(ownership.model(name), ownership.experiment(tracking.experiment_id(history), history))
    moves = registry.sync_history(settings, name)
    current = registry.version_by_alias(client, name, names.CHAMPION_ALIAS)
    if current is None:
        raise BadInputError(f"{name} has no champion to roll back")
    target = to_version or previous_champion(moves, str(current.version))
    if target is None:
        raise BadInputError(f"{name} v{current.version} is the only champion there has been: give --to VERSION")
    if str(target) == str(current.version):
        raise BadInputError(f"{name} v{target} is the champion already")
    if not registry.version_exists(client, name, target):
        raise BadInputError(f"{name} has no version {target}")
    data_run_id = current.tags.get("data_run_id")
    f1, unloadable = registry.rescore_or_reason(name, target, data_run_id)
    if f1 is None:
        choose = "" if to_version else "; choose another with --to VERSION (make rollback TO=...)"
        raise BadInputError(
            f"{name} v{target} cannot be rolled back to: it cannot be loaded and scored ({unloadable}){choose}"
        )
    by = f"tagifai rollback by {getpass.getuser()}"
    why = f"{reason or 'rolled back'}: v{current.version} → v{target}; v{target} re-scored test f1 {f1:.4f} "
    why += f"on the current test split (data run {data_run_id})"
    client.set_registered_model_alias(name, names.CHAMPION_ALIAS, target)
    record = registry.record_move(settings, name, str(current.version), str(target), "rollback", by, why)
    log.info("rollback: %s champion v%s -> v%s (test f1 %.4f)", name, current.version, target, f1)
    version = client.get_model_version(name, target)
    try:
        announced = announce(name, version, f1, record, str(current.version), by)
    except TagifaiError as exc:  # the move is made and recorded: say what did not follow, do not fail it
        log.warning("rollback: no champion event (%s); batch scoring follows at its next daily run", exc)
        announced = False
    return {
        "model_name": name,
        "from_version": str(current.version),
        "version": str(target),
        "test_f1": f1,
        "history_run_id": record,
        "announced": announced,
        "reason": why,
    }


def previous_champion(moves: list[dict[str, Any]], current: str) -> str | None:
    """The version that was champion before `current` (the latest move's origin), if any."""
    for move in moves:
        if move["to_version"] == current and move["from_version"]:
            return move["from_version"]
    return None


def announce(
    name: str, version: ModelVersion, test_f1: float, record_run_id: str, from_version: str | None, by: str
) -> bool:
    """Tell Airflow the champion moved: an event on the champion Asset (batch scoring follows, people are told).

    Needs `TAGIFAI_AIRFLOW_URL` and the login `TAGIFAI_AIRFLOW_USERNAME`/`TAGIFAI_AIRFLOW_PASSWORD`; without
    the URL it says so and returns False (serving follows the alias anyway).

    Raises:
        TagifaiError: Airflow refused or could not be reached.
    """
    url = os.environ.get(names.AIRFLOW_URL_ENV, "").rstrip("/")
    if not url:
        log.warning("rollback: TAGIFAI_AIRFLOW_URL is not set: no champion event (tagifai serve follows the alias)")
        return False
    extra = event_extra(name, version, test_f1, record_run_id, from_version, by)
    login = os.environ.get(names.AIRFLOW_USERNAME_ENV, "admin"), os.environ.get(names.AIRFLOW_PASSWORD_ENV, "")
    try:
        Airflow(url, *login).asset_event(names.CHAMPION_ASSET, extra)
    except AirflowError as exc:
        raise TagifaiError(f"Airflow at {url}: {exc}") from None
    except OSError as exc:
        raise TagifaiError(f"Airflow at {url} did not answer: {exc}") from None
    log.info("rollback: champion event sent to Airflow (%s)", names.CHAMPION_ASSET)
    return True


def event_extra(
    name: str, version: ModelVersion, test_f1: float, record_run_id: str, from_version: str | None, by: str
) -> dict[str, Any]:
    """The champion Asset event's `extra` for a rollback to `version`: the same keys as a promotion's.

    `holdout_f1` is the one `register` recorded on the version (None if it recorded none).
    """
    try:
        holdout_f1 = float(version.tags.get(registry.HOLDOUT_F1) or "nan")
    except ValueError:  # "None": no holdout score was recorded
        holdout_f1 = math.nan
    return {
        "model_name": name,
        "from_version": from_version,
        "version": str(version.version),
        "test_f1": test_f1,
        "holdout_f1": None if math.isnan(holdout_f1) else holdout_f1,
        "action": "rollback",
        "by": by,
        "pipeline_run_id": version.tags.get("pipeline_run_id", ""),
        "history_run_id": record_run_id,
    }
