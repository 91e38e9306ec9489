"""A registered version's model card: gathered from its runs in MLflow, rendered by `tagifai.core.card`."""

from __future__ import annotations

import ast
import time
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai.contract.errors import BadInputError
from tagifai.contract.settings import Settings
from tagifai.core import card as cards
from tagifai.core import data
from tagifai.pipeline import monitor as monitoring
from tagifai.pipeline import rebuild, tracking


def card_of(settings: Settings, name: str, version: ModelVersion) -> cards.Card:
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
    card: cards.Card = {"model": model, "other_label": settings.data.other_label}
    if "promotion" in tags:  # what the gate decided when the version was registered (and a person, if asked)
        card["promotion"] = tags["promotion"]
        card["promoted"] = tags.get("promoted") == "true"
        card["approval"] = tags.get("approval", "")
    trained = client.get_run(version.run_id)
    card["params"] = dict(trained.data.params)
    if "threshold" in trained.data.metrics:
        card["threshold"] = trained.data.metrics["threshold"]
    # The register run is the one that logged its challenger-vs-champion report.
    roles = {"evaluate": "evaluate_run_id", "data": "data_run_id", "register": "register_run_id"}
    runs = {"train": trained.info.run_id, **{role: tags[k] for role, k in roles.items() if tags.get(k)}}
    if evaluate := runs.get("evaluate"):
        card["metrics"] = tracking.read_json_artifact(evaluate, tracking.REPORT)
        card["behavioral"] = tracking.read_json_artifact(evaluate, tracking.BEHAVIORAL)
    if data_run := runs.get("data"):
        card["data"] = data_of(client, data_run)
    # Each run's page, relative to the MLflow UI (which shows the card).
    card["links"] = {role: f"#/experiments/{client.get_run(r).info.experiment_id}/runs/{r}" for role, r in runs.items()}
    if "register" in runs:  # MLflow 3.17's UI opens a run's artifact at <run page>/artifacts/<path>
        card["report"] = f"{card['links']['register']}/artifacts/{tracking.COMPARISON}"
    if monitor := client.get_experiment_by_name(settings.monitor.experiment_name):  # `tagifai claim` makes it
        card["monitoring"] = monitoring.reports_link(monitor.experiment_id, name, str(version.version))
    if attempts := client.get_experiment_by_name(settings.reproduce.experiment_name):  # `tagifai claim` makes it
        card["reproductions"] = rebuild.attempts_link(attempts.experiment_id, name, str(version.version))
    return card


def data_of(client: MlflowClient, data_run_id: str) -> dict[str, Any]:
    """What the card says of the data: sources, sha256, rows per split, labels, the label settings."""
    validated = client.get_run(data_run_id)
    extracted = client.get_run(validated.data.tags["elt_run_id"])
    profile = tracking.read_json_artifact(data_run_id, tracking.PROFILE)
    metrics, params = validated.data.metrics, validated.data.params
    splits = {s: int(metrics[f"{s}_rows"]) for s in data.SPLITS if f"{s}_rows" in metrics}
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


def write_card(settings: Settings, name: str, version: str) -> str:
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
    get = client.get_model_version_by_alias if "@" in path else client.get_model_version
    try:
        return name, get(name, rest)
    except MlflowException:
        raise BadInputError(f"no registered model version {model_uri}") from None
