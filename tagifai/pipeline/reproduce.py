"""`tagifai reproduce`: rebuild a registered version from what its train run recorded, and compare.

`reproduce` retrains the version's model from its recorded split and params (no tuning) with the code,
packages and settings of this process, scores the recorded test split, and compares everything with the
recorded manifest (`tagifai.core.rebuild`): identical, or the first thing that differs. `on_current_data`
trains the same recipe on today's sources (through the pipeline's own elt and validate) and scores it against
the champion on the deployer's holdout: a report, never a promotion. Each attempt is a run of `[reproduce]
experiment_name`, tagged `reproduces=<version>`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.core import data, rebuild
from tagifai.core import evaluate as evaluation
from tagifai.core import train as training
from tagifai.pipeline import holdout as holdouts
from tagifai.pipeline import rebuild as records
from tagifai.pipeline import registry, steps, tracking

log = logging.getLogger("tagifai")

# The tags of an attempt's run (besides `rebuild.REPRODUCES_TAG` and `rebuild.MODEL_NAME_TAG`).
MODE_TAG, VERDICT_TAG, FIRST_TAG = "reproduce.mode", "reproduce.verdict", "reproduce.first_difference"
RESULT = "reproduce/result.json"
REPORT = "reproduce/current_data.md"


class NotReproduced(TagifaiError):
    """The rebuild ran and came out different (exit 1); the message names the first difference."""


def trained_run(settings: Settings, model_name: str, version: str) -> Run:
    """The train run behind `version`: a finished train run in an experiment only the pipeline writes.

    Raises:
        BadInputError: no such version, or its run is not such a train run.
    """
    registered = records.registered_version(model_name, version)
    try:
        return steps.upstream_run(settings, registered.run_id, "train")
    except TagifaiError as exc:
        raise BadInputError(f"version {version} of {model_name}: {exc}") from None


@contextmanager
def attempt_run(settings: Settings, model_name: str, version: str, mode: str) -> Iterator[Run]:
    """The MLflow run of one attempt, in `[reproduce] experiment_name`, tagged `reproduces=<version>`."""
    experiment = tracking.experiment_id(settings.reproduce.experiment_name)
    tags = {
        records.REPRODUCES_TAG: version,
        records.MODEL_NAME_TAG: model_name,
        MODE_TAG: mode,
        tracking.STEP_TAG: "reproduce",
    }
    with mlflow.start_run(experiment_id=experiment, run_name=f"reproduce {model_name} v{version} ({mode})", tags=tags):
        yield mlflow.active_run()


def retrain(recipe: dict[str, Any], stopwords: Any, other_label: str, raw: dict[str, bytes]) -> Any:
    """The model the recorded `recipe` makes of the train and val split files `raw` (no tuning)."""
    params = recipe.get("params")
    if not isinstance(params, dict):
        raise records.Untestable("the rebuild record holds no params")
    train_df, val_df = data.read_frame(raw["train"]), data.read_frame(raw["val"])
    try:
        return training.train(params, train_df, val_df, list(stopwords), other_label, n_jobs=-1)["model"]
    except (KeyError, TypeError, ValueError) as exc:  # a record no train run of this code wrote
        raise records.Untestable(
            f"the recorded params cannot train a model here: {type(exc).__name__}: {exc}"
        ) from None


def compare(settings: Settings, made: dict[str, Any], raw: dict[str, bytes], predictions: bytes | None) -> Any:
    """Retrain from `made` (a recorded manifest) here, and every difference, in the order they are named."""
    current: dict[str, Any] = {
        "environment": records.environment(),
        "code": records.code(),
        "config": records.config(settings),
        "data": {"splits": records.splits_sha256(raw)},
    }
    model = retrain(made["recipe"], settings.stopwords, settings.data.other_label, raw)
    test_df = data.read_frame(raw["test"])
    tags, probabilities = records.scored(model, test_df)
    current["params"] = rebuild.estimator_params(model)
    current["outputs"] = rebuild.outputs(model, tags, probabilities)
    first_row = None
    if predictions is not None:
        now = rebuild.prediction_frame(tags, probabilities, model.classes)
        first_row = rebuild.first_differing_row(records.read_predictions(predictions), now, list(test_df["title"]))
    return current, rebuild.differences(made, current, first_row)


def reproduce(settings: Settings, model_name: str, version: str) -> dict[str, Any]:
    """Rebuild `version` from its record and compare; return what matched (exit 0).

    Raises:
        NotReproduced: something differs (exit 1): the message names the first difference.
        Untestable: it cannot be tried (exit 3): the record or the split files are gone.
    """
    run = trained_run(settings, model_name, version)
    failure: TagifaiError | None = None
    with attempt_run(settings, model_name, version, "recorded") as attempt:
        try:
            made = records.recorded_manifest(run.info.run_id, version)
            raw = records.recorded_splits(made, version)
        except records.Untestable as exc:
            mlflow.set_tags({VERDICT_TAG: "untestable", FIRST_TAG: str(exc)[:5000]})
            failure = exc
        else:
            try:
                predictions = tracking.read_artifact(run.info.run_id, records.PREDICTIONS)
            except TagifaiError:
                predictions = None  # the digests still compare; no row can be named
            current, found = compare(settings, made, raw, predictions)
            verdict = "different" if found else "identical"
            mlflow.set_tags({VERDICT_TAG: verdict, **({FIRST_TAG: found[0][:5000]} if found else {})})
            mlflow.log_metric("differences", len(found))
            tracking.log_json({"verdict": verdict, "differences": found, "current": current}, RESULT)
            log.info("reproduce: version %s of %s: %s", version, model_name, found[0] if found else "identical")
            if found:
                more = f" (and {len(found) - 1} more: {RESULT})" if len(found) > 1 else ""
                failure = NotReproduced(f"version {version} is not reproduced: {found[0]}{more}")
    if failure is not None:
        failure.run_id, failure.experiment_id = attempt.info.run_id, attempt.info.experiment_id
        raise failure
    return {
        "model_name": model_name,
        "version": version,
        "verdict": "identical",
        "run_id": attempt.info.run_id,
        "predictions_sha256": made["outputs"]["predictions_sha256"],
        "probabilities_sha256": made["outputs"]["probabilities_sha256"],
        "fitted_sha256": made["outputs"]["fitted_sha256"],
    }


def f1(frame: Any, tags: list[str]) -> float:
    """Weighted f1 of `tags` against the frame's labels."""
    return evaluation.overall_metrics(frame["tag"].to_numpy(), tags)["f1"]


def on_current_data(
    settings: Settings, model_name: str, version: str, projects_url: str, tags_url: str
) -> dict[str, Any]:
    """Train `version`'s recipe (its params, stopwords and labels) on today's sources; score it against the champion.

    Today's data is what the pipeline's own `elt` and `validate` make of the sources, in the version's
    experiment: runs the pipeline made of the same data already are reused, not made again. Both models are
    scored on that validate run's holdout (the deployer's) and test split. Nothing is registered, no alias moves.

    Raises:
        Untestable: the record or the champion is missing (exit 3).
        BadInputError: today's data is refused (a source, the data contract), as the pipeline would refuse it.
    """
    run = trained_run(settings, model_name, version)
    experiment_name = MlflowClient().get_experiment(run.info.experiment_id).name
    made = records.recorded_manifest(run.info.run_id, version)
    champion_version = registry.version_by_alias(MlflowClient(), model_name, settings.serve.alias)
    if champion_version is None:
        raise records.Untestable(f"{model_name} has no {settings.serve.alias!r} version to compare with")
    extracted = steps.elt(settings, projects_url, tags_url, experiment_name)
    current = tracking.get_run(steps.validate(settings, extracted["run_id"])["run_id"], "validate")
    with attempt_run(settings, model_name, version, "current-data") as attempt:
        recorded_config = made["config"]
        raw = {
            split: tracking.read_artifact(current.info.run_id, tracking.split_path(split))
            for split in (*data.SPLITS, holdouts.SPLIT)
        }
        other_label = recorded_config.get("data.other_label", settings.data.other_label)
        model = retrain(made["recipe"], recorded_config.get("stopwords", ()), other_label, raw)
        champion = models.load(f"models:/{model_name}@{settings.serve.alias}")
        scores = {}
        for split in (holdouts.SPLIT, "test"):
            frame = data.read_frame(raw[split])
            scores[f"{split}_f1_recipe"] = f1(frame, records.scored(model, frame)[0])
            scores[f"{split}_f1_champion"] = f1(frame, models.predict_tags(champion, frame))
        better = scores["holdout_f1_recipe"] > scores["holdout_f1_champion"]
        mlflow.log_metrics(scores)
        mlflow.set_tags(
            {
                VERDICT_TAG: "recipe-better" if better else "champion-better",
                "data_run_id": current.info.run_id,
                "data_sha256": current.data.tags.get("data_sha256", ""),
                holdouts.SHA_TAG: current.data.tags.get(holdouts.SHA_TAG, ""),
                "champion_version": str(champion_version.version),
            }
        )
        report = current_data_report(model_name, version, str(champion_version.version), current, scores)
        tracking.log_bytes(report.encode(), REPORT)
        log.info("reproduce --on-current-data: %s", report.splitlines()[-1])
    return {
        "model_name": model_name,
        "version": version,
        "mode": "current-data",
        "run_id": attempt.info.run_id,
        "data_run_id": current.info.run_id,
        "champion_version": str(champion_version.version),
        **{k: round(v, 4) for k, v in scores.items()},
        "recipe_better": better,
    }


def current_data_report(model_name: str, version: str, champion: str, current: Run, scores: dict[str, float]) -> str:
    """The attempt's report: the old recipe against the champion, on the current holdout and test split."""
    rows = [
        f"| {split} | {scores[f'{split}_f1_recipe']:.4f} | {scores[f'{split}_f1_champion']:.4f} |"
        for split in (holdouts.SPLIT, "test")
    ]
    better = scores["holdout_f1_recipe"] > scores["holdout_f1_champion"]
    verdict = "would do better now" if better else "would not do better now"
    return "\n".join(
        [
            f"# Version {version}'s recipe on the current data",
            "",
            f"Version {version} of {model_name}: its params, stopwords and labels, trained on today's data "
            f"(validate run {current.info.run_id}, data sha256 {current.data.tags.get('data_sha256', '?')[:12]}…), "
            f"against the champion (version {champion}). Nothing was registered; no alias moved.",
            "",
            "| split | weighted f1, the old recipe | weighted f1, the champion |",
            "| --- | --- | --- |",
            *rows,
            "",
            f"On the holdout, version {version}'s recipe {verdict} than the champion.",
        ]
    )
