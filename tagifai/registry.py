"""Register model versions and move the `champion` alias only through the promotion gate."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai import evaluate as evaluation
from tagifai import model as models
from tagifai import tracking

CHAMPION = "champion"
CHALLENGER = "challenger"


def gate(f1: float, champion_f1: float | None, min_f1: float, max_regression: float) -> dict[str, Any]:
    """Decide whether a challenger with test `f1` replaces the champion.

    Args:
        f1: the challenger's weighted test f1.
        champion_f1: the current champion's f1 on the same test data, or None without a champion.
        min_f1: the lowest f1 a champion may have.
        max_regression: how much worse than the champion the challenger may be.

    Returns:
        `promote` (bool) and a human-readable `reason`.
    """
    if f1 < min_f1:
        return {"promote": False, "reason": f"test_f1 {f1:.4f} is below the minimum {min_f1:.4f}"}
    if champion_f1 is not None and f1 < champion_f1 - max_regression:
        return {
            "promote": False,
            "reason": f"test_f1 {f1:.4f} is worse than the champion's {champion_f1:.4f} "
            f"on the same test data by more than {max_regression:.4f}",
        }
    if champion_f1 is None:
        return {"promote": True, "reason": f"test_f1 {f1:.4f} >= {min_f1:.4f} and there is no champion yet"}
    return {
        "promote": True,
        "reason": f"test_f1 {f1:.4f} >= {min_f1:.4f} and within {max_regression:.4f} "
        f"of the champion's {champion_f1:.4f}",
    }


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """Return the version of `name` that holds `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def existing_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """Return a version of `name` already registered from `run_id` (a retried register step)."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def register(client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name` (reusing one from the same run) with `tags`."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Tags ML project descriptions (tagifai).")
    version = existing_version(client, name, run_id)
    if version is None:
        version = mlflow.register_model(model_uri, name, tags=tags)
    else:
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    return version


def rescore(model_name: str, alias: str, data_run_id: str) -> float:
    """Weighted test f1 of the version holding `alias`, on the test split of `data_run_id`: a fair comparison."""
    test_df = tracking.load_split(data_run_id, "test")
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@{alias}")
    return evaluation.overall_metrics(test_df["tag"].to_numpy(), models.predict_tags(model, test_df))["f1"]


def version_tags(metrics: dict[str, float], trained: Run, registering: Run, evaluate_run_id: str) -> dict[str, str]:
    """What a model version records: its test scores and where it came from."""
    return {
        **{k: f"{metrics[k]:.4f}" for k in ("test_f1", "test_precision", "test_recall")},
        **{k: trained.data.tags.get(k, "") for k in ("data_sha256", "code_version", "image", "data_run_id")},
        "pipeline_run_id": registering.data.tags[tracking.PIPELINE_TAG],
        "evaluate_run_id": evaluate_run_id,
    }


def apply(client: MlflowClient, name: str, version: str, decision: dict[str, Any]) -> None:
    """Make `version` the challenger, and the champion if the gate said so; record the gate's reason on it."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision["promote"]:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", decision["reason"])
