"""What people do with the champion: its history, a rollback, a version's card, its event for Airflow.

Airflow hears of a move so that batch scoring follows it.

The shell around `tagifai.registry` (the gate and its record of moves) and `tagifai.card` (the card
itself). Serving follows the alias on its own (`tagifai.serve`).
"""

from __future__ import annotations

import ast
import getpass
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tagifai import card as cards
from tagifai import registry, tracking
from tagifai.errors import BadInputError, TagifaiError

log = logging.getLogger("tagifai")

# The Airflow Asset whose events say the champion moved (dags/tagifai_assets.py).
CHAMPION_ASSET = "tagifai_champion"


# ---- history --------------------------------------------------------------------------------------


def history_table(moves: list[dict[str, Any]]) -> list[str]:
    """The moves of `champion`, newest first, as text table lines."""
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


# ---- rollback -------------------------------------------------------------------------------------


def rollback(settings: dict[str, Any], name: str, to_version: str | None, reason: str | None) -> dict[str, Any]:
    """Move `champion` back to `to_version` (default: the one before it), re-scored, recorded, announced.

    The target is re-scored on the current champion's test split first: a version that cannot be
    loaded is refused, and its f1 goes into the record of the move.

    Raises:
        BadInputError: no champion, no earlier version to go back to, or the target cannot be used.
    """
    client = MlflowClient()
    moves = registry.sync_history(settings, name)
    current = registry.version_by_alias(client, name, registry.CHAMPION)
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
    client.set_registered_model_alias(name, registry.CHAMPION, target)
    record = registry.record_move(settings, name, str(current.version), str(target), "rollback", by, why)
    log.info("rollback: %s champion v%s -> v%s (test f1 %.4f)", name, current.version, target, f1)
    version = client.get_model_version(name, target)
    try:
        announced = announce(name, version, f1, record)
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


# ---- the champion's event, for Airflow ------------------------------------------------------------


def announce(name: str, version: ModelVersion, test_f1: float, record_run_id: str) -> bool:
    """Tell Airflow the champion moved: an event on the champion Asset (batch scoring follows).

    Needs `TAGIFAI_AIRFLOW_URL` and `TAGIFAI_AIRFLOW_USERNAME`/`TAGIFAI_AIRFLOW_PASSWORD`; without them it
    says so and returns False (serving follows the alias anyway).

    Raises:
        TagifaiError: Airflow refused or could not be reached.
    """
    url = os.environ.get("TAGIFAI_AIRFLOW_URL", "").rstrip("/")
    if not url:
        log.warning("rollback: TAGIFAI_AIRFLOW_URL is not set: no champion event (tagifai serve follows the alias)")
        return False
    token = airflow_request(
        url,
        "/auth/token",
        {
            "username": os.environ.get("TAGIFAI_AIRFLOW_USERNAME", "admin"),
            "password": os.environ.get("TAGIFAI_AIRFLOW_PASSWORD", ""),
        },
    )["access_token"]
    found = airflow_request(url, f"/api/v2/assets?name_pattern={CHAMPION_ASSET}", token=token)["assets"]
    asset = next((a for a in found if a["name"] == CHAMPION_ASSET), None)
    if asset is None:
        raise TagifaiError(f"Airflow at {url} has no asset {CHAMPION_ASSET} (is the DAG tagifai_training there?)")
    extra = {
        "model_name": name,
        "version": str(version.version),
        "test_f1": test_f1,
        "pipeline_run_id": version.tags.get("pipeline_run_id", ""),
        "history_run_id": record_run_id,
        "action": "rollback",
    }
    airflow_request(url, "/api/v2/assets/events", {"asset_id": asset["id"], "extra": extra}, token=token)
    log.info("rollback: champion event sent to Airflow (%s)", CHAMPION_ASSET)
    return True


def airflow_request(base: str, path: str, body: dict | None = None, token: str | None = None) -> Any:
    """One JSON request to Airflow's REST API.

    Raises:
        TagifaiError: an HTTP error or no answer (one line, no secret).
    """
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise TagifaiError(f"Airflow {base}{path.split('?')[0]}: HTTP {exc.code}") from None
    except OSError as exc:
        raise TagifaiError(f"Airflow {base} did not answer: {exc}") from None


# ---- the model card -------------------------------------------------------------------------------


def card_of(settings: dict[str, Any], name: str, version: ModelVersion) -> cards.Card:
    """The model card of a registered version, gathered from its runs in MLflow."""
    client = MlflowClient()
    tags = version.tags
    model = {
        "name": name,
        "version": str(version.version),
        "pipeline_run_id": tags.get("pipeline_run_id", ""),
        "code_version": tags.get("code_version", ""),
        "image": tags.get("image", ""),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(version.creation_timestamp) / 1000)),
    }
    card: cards.Card = {"model": model, "other_label": settings["data"]["other_label"]}
    if "promotion" in tags:  # what the gate decided when the version was registered
        card["promotion"] = tags["promotion"]
        card["promoted"] = tags.get("promoted") == "true"
    trained = client.get_run(version.run_id)
    card["params"] = dict(trained.data.params)
    if "threshold" in trained.data.metrics:
        card["threshold"] = trained.data.metrics["threshold"]
    runs = {
        "train": trained.info.run_id,
        **{k.removesuffix("_run_id"): tags[k] for k in ("evaluate_run_id", "data_run_id") if tags.get(k)},
    }
    if evaluate := runs.get("evaluate"):
        card["metrics"] = tracking.read_json_artifact(evaluate, "evaluation/report.json")
        card["behavioral"] = tracking.read_json_artifact(evaluate, "evaluation/behavioral.json")
    if data_run := runs.get("data"):
        card["data"] = data_of(client, data_run)
    card["links"] = {role: run_link(client, run_id) for role, run_id in runs.items()}
    return card


def data_of(client: MlflowClient, data_run_id: str) -> dict[str, Any]:
    """What the card says of the data: sources, sha256, rows per split, labels, the label settings."""
    validated = client.get_run(data_run_id)
    extracted = client.get_run(validated.data.tags["elt_run_id"])
    profile = tracking.read_json_artifact(data_run_id, "validation/profile.json")
    splits = {
        s: int(validated.data.metrics[f"{s}_rows"])
        for s in ("train", "val", "test")
        if f"{s}_rows" in validated.data.metrics
    }
    params = validated.data.params
    return {
        "projects_url": extracted.data.params.get("projects_url", ""),
        "tags_url": extracted.data.params.get("tags_url", ""),
        "sha256": validated.data.tags.get("data_sha256", ""),
        "rows": profile["rows"],
        "splits": splits,
        "label_counts": profile["label_counts"],
        "min_freq": int(params.get("min_freq", 0)),
        "accepted_tags": ast.literal_eval(params["accepted_tags"]) if "accepted_tags" in params else [],
    }


def run_link(client: MlflowClient, run_id: str) -> str:
    """A run's page in the MLflow UI, relative to the UI (the card is shown there), else its id."""
    experiment = client.get_run(run_id).info.experiment_id
    return f"#/experiments/{experiment}/runs/{run_id}"


def write_card(settings: dict[str, Any], name: str, version: str) -> str:
    """Make the version's description its model card; return the card."""
    client = MlflowClient()
    text = cards.render(card_of(settings, name, client.get_model_version(name, version)))
    client.update_model_version(name, version, description=text)
    return text


def resolve(model_uri: str) -> tuple[str, ModelVersion]:
    """The registered model and version a `models:/<name>/<version>` or `models:/<name>@<alias>` URI names.

    Raises:
        BadInputError: not such a URI, or no such version.
    """
    path = model_uri.removeprefix("models:/")
    name, sep, rest = path.partition("@") if "@" in path else path.partition("/")
    if not model_uri.startswith("models:/") or not sep or not rest:
        raise BadInputError(f"{model_uri} is not models:/<name>/<version> or models:/<name>@<alias>")
    client = MlflowClient()
    version = registry.version_by_alias(client, name, rest) if "@" in path else None
    if "@" not in path and registry.version_exists(client, name, rest):
        version = client.get_model_version(name, rest)
    if version is None:
        raise BadInputError(f"no registered model version {model_uri}")
    return name, version
