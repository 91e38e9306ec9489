"""Gather the challenger-vs-champion report (`tagifai.core.report`) from MLflow, for `register`.

Both models are scored on the same rows: the test split of the challenger's data and the deployer's
holdout. The challenger's test figures are its evaluate run's; the champion's are computed here with
the same functions (`tagifai.core.evaluate`). The models `registry.judge` loaded are used again, so a
report costs predictions, not downloads. It is gathered before any alias moves: an error that may
pass (MLflow, the network) is raised as a `TagifaiError` and nothing has moved.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract.errors import TagifaiError
from tagifai.core import evaluate as evaluation
from tagifai.core import report as reports
from tagifai.pipeline import cards, registry, tracking
from tagifai.pipeline import holdout as holdouts

log = logging.getLogger("tagifai")


def load_or_reason(name: str, version: str) -> tuple[Any, str | None]:
    """Version `version` of `name` loaded, or None and why it can never be loaded.

    Raises:
        TagifaiError: it could not be loaded for now (MLflow, the network).
    """
    try:
        return models.load(f"models:/{name}/{version}"), None
    except models.UnloadableModelError as exc:
        return None, registry.one_line(exc)
    except TagifaiError:
        raise
    except Exception as exc:  # a timeout, MLflow's 5xx, the network: try again
        raise TagifaiError(f"register: cannot load version {version} of {name} for the report now: {exc}") from exc


def data_of(client: MlflowClient, data_run_id: str | None) -> dict[str, Any]:
    """What the model card says of a model's data (rows, splits, label counts, sha256); {} when its run is gone."""
    if not data_run_id:
        return {}
    try:
        return dict(cards.data_of(client, data_run_id))
    except (MlflowException, TagifaiError, KeyError) as exc:
        log.warning("register: the report shows no data of run %s: %s", data_run_id, registry.one_line(exc))
        return {}


def params_of(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The params of the run that trained a version; {} when it is gone."""
    try:
        return dict(client.get_run(run_id).data.params)
    except MlflowException:
        return {}


def gather(
    name: str,
    version: str,
    champion: ModelVersion | None,
    judged: dict[str, Any],
    loaded: dict[str, Any],
    trained: Run,
    evaluate_run_id: str,
    verdict: dict[str, Any],
) -> reports.Report:
    """The report of challenger `version` (trained by `trained`, evaluated by `evaluate_run_id`) vs `champion`.

    Args:
        name: the registered model.
        version: the challenger's version.
        champion: the champion's version, if any.
        judged: `registry.judge`'s decision (its holdout scores stand in for a model that cannot be loaded).
        loaded: the models judge loaded (`challenger`, `champion`), if it loaded them.
        trained: the challenger's train run.
        evaluate_run_id: the challenger's evaluate run.
        verdict: the gate's decision and settings, for the report's first section.
    """
    client = MlflowClient()
    data_run_id = trained.data.tags["data_run_id"]
    frames = {split: tracking.load_split(data_run_id, split) for split in ("test", holdouts.SPLIT)}
    evaluated = tracking.read_json_artifact(evaluate_run_id, tracking.REPORT)
    challenger: reports.Side = {
        "version": str(version),
        **{k: evaluated[k] for k in ("per_class", "slices")},
        "test": evaluated["overall"],
        "behavioral": tracking.read_json_artifact(evaluate_run_id, tracking.BEHAVIORAL),
        "holdout_f1": judged.get("holdout_f1"),
        "data": data_of(client, data_run_id),
        "params": dict(trained.data.params),
    }
    report: reports.Report = {"model_name": name, "verdict": verdict, "challenger": challenger, "champion": None}
    mine = loaded.get("challenger") or load_or_reason(name, version)[0]
    if champion is None:
        return report
    theirs: reports.Side = {
        "version": str(champion.version),
        "data": data_of(client, champion.tags.get("data_run_id")),
        "params": params_of(client, champion.run_id),
    }
    report["champion"] = theirs
    model, why = loaded.get("champion"), judged.get("champion_unloadable")
    if model is None and why is None:
        model, why = load_or_reason(name, str(champion.version))
    if model is None:
        theirs["unavailable"] = why or "it cannot be loaded"
        theirs["holdout_f1"] = judged.get("champion_holdout_f1")
        theirs["holdout_recorded"] = bool(judged.get("champion_holdout_recorded"))
        return report
    predicted = {split: models.predict_tags(model, frame) for split, frame in frames.items()}
    classes = sorted({*evaluated["per_class"], *model.unwrap_python_model().classes})
    scored = evaluation.evaluate(frames["test"], predicted["test"], classes)
    theirs.update({k: scored[k] for k in ("per_class", "slices")}, test=scored["overall"])
    theirs["holdout_f1"] = registry.f1_of(model, frames[holdouts.SPLIT])
    theirs["behavioral"] = evaluation.behavioral_tests(
        lambda texts: models.predict_tags(model, models.texts_frame(texts))
    )
    if mine is not None:
        ours = {split: models.predict_tags(mine, frame) for split, frame in frames.items()}
        report["disagreements"], report["disagreement_counts"] = reports.disagreements(frames, ours, predicted)
    return report
