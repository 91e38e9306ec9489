"""One function per pipeline step: read upstream artifacts, call the pure core, log to MLflow.

Each returns the small dict its CLI command prints as the last stdout line.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

import tagifai
from tagifai import data, registry, sources, tracking, tuning
from tagifai import evaluate as evaluation
from tagifai import train as training
from tagifai import validate as validation
from tagifai.errors import DataValidationError, TagifaiError

log = logging.getLogger("tagifai")

LABELED = "data/labeled.csv"
PROFILE = "validation/profile.json"
# The `optuna_storage` tag of an optimize run whose study lived in its own process.
IN_MEMORY = "in-memory"
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "scipy", "scikit-learn", "nltk")


def split_path(split: str) -> str:
    """Artifact path of one prepared split."""
    return f"data/{split}.csv"


def load_split(data_run_id: str, split: str) -> pd.DataFrame:
    """Read one prepared split from a validate run."""
    return data.read_frame(tracking.read_artifact(data_run_id, split_path(split)))


def elt(settings: dict[str, Any], projects_url: str, tags_url: str, experiment_name: str) -> dict[str, Any]:
    """Extract projects and tags, keep the raw copies, join them, log the labeled data."""
    experiment = tracking.experiment_id(experiment_name)
    with tracking.step_run("elt", experiment) as run:
        mlflow.log_params({"projects_url": projects_url, "tags_url": tags_url})
        raw = {"projects.csv": sources.fetch(projects_url), "tags.csv": sources.fetch(tags_url)}
        for name, content in raw.items():
            tracking.log_bytes(content, f"raw/{name}")
        projects = data.parse_csv(raw["projects.csv"], f"projects.csv ({projects_url})", data.PROJECT_COLUMNS)
        tags = data.parse_csv(raw["tags.csv"], f"tags.csv ({tags_url})", data.TAG_COLUMNS)
        labeled = data.transform(projects, tags)
        content = data.to_csv_bytes(labeled)
        digest = data.sha256(content)
        tracking.log_bytes(content, LABELED)
        dataset = mlflow.data.from_pandas(labeled, source=projects_url, name="tagifai-labeled", digest=digest[:32])
        mlflow.log_input(dataset, context="extracted", tags={"sha256": digest})
        mlflow.set_tag("data_sha256", digest)
        mlflow.log_metrics(
            {
                "projects": len(projects),
                "tags": len(tags),
                "labeled": len(labeled),
                "untagged_projects": len(projects) - len(labeled),
            }
        )
        log.info(
            "elt: %d projects, %d tags -> %d labeled rows (sha256 %s)",
            len(projects),
            len(tags),
            len(labeled),
            digest[:12],
        )
    return {"run_id": run.info.run_id, "data_sha256": digest}


def last_validated_run(experiment: str, exclude: str | None = None) -> str | None:
    """The most recent validate run in `experiment` whose data passed, if any."""
    runs = MlflowClient().search_runs(
        [experiment],
        filter_string=f"tags.`{tracking.STEP_TAG}` = 'validate' and tags.validation = 'passed' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r.info.run_id for r in runs if r.info.run_id != exclude), None)


def validate(
    settings: dict[str, Any], elt_run_id: str, allow_drift: bool = False, reference_run_id: str | None = None
) -> dict[str, Any]:
    """Check the data contract (and drift against the last validated data); on success, split it.

    Raises:
        DataValidationError: a check failed; its report is logged before raising.
    """
    upstream = tracking.get_run(elt_run_id, "elt")
    experiment = upstream.info.experiment_id
    df = data.read_frame(tracking.read_artifact(elt_run_id, LABELED))
    reference_run_id = reference_run_id or last_validated_run(experiment)
    reference = tracking.read_json_artifact(reference_run_id, PROFILE) if reference_run_id else None
    with tracking.step_run("validate", experiment, upstream) as run:
        report = validation.validate(df, settings, reference, drift_blocks=not allow_drift)
        report["reference_run_id"] = reference_run_id
        tracking.log_json(report, "validation/report.json")
        mlflow.log_text(validation.render_markdown(report), "validation/report.md")
        failed = validation.failed_checks(report)
        mlflow.log_metrics({"checks_failed": len(failed), "checks": len(report["checks"])})
        mlflow.set_tag("validation", "passed" if report["passed"] else "failed")
        if not report["passed"]:
            raise DataValidationError(failed, report)
        tracking.log_json(report["profile"], PROFILE)
        prepared = data.prepare(df, settings["data"])
        for split in data.SPLITS:
            part = prepared[prepared["split"] == split].drop(columns="split")
            tracking.log_bytes(data.to_csv_bytes(part), split_path(split))
            mlflow.log_input(
                mlflow.data.from_pandas(
                    part, name=f"tagifai-{split}", targets="tag", digest=data.sha256(data.to_csv_bytes(part))[:32]
                ),
                context=split,
            )
        mlflow.log_params(
            {k: settings["data"][k] for k in ("accepted_tags", "min_freq", "val_size", "test_size", "seed")}
        )
        mlflow.log_metrics({f"{split}_rows": int((prepared["split"] == split).sum()) for split in data.SPLITS})
        log.info(
            "validate: %d checks passed; splits %s", len(report["checks"]), prepared["split"].value_counts().to_dict()
        )
    return {"run_id": run.info.run_id}


def optimize(
    settings: dict[str, Any],
    data_run_id: str,
    num_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
) -> dict[str, Any]:
    """Tune hyperparameters with Optuna by k-fold cross-validation of the train split; each trial is a child run.

    Any number of processes may share one study through `storage` (an Optuna RDB URL): together they
    finish `num_trials` trials, and a retried process runs only the trials still missing
    (`tagifai.tuning`). Each process is one `optimize` run; the trials it ran are its child runs.
    """
    import optuna
    from optuna_integration.mlflow import MLflowCallback
    from threadpoolctl import threadpool_limits

    upstream = tracking.get_run(data_run_id, "validate")
    train_df = load_split(data_run_id, "train")
    space, base = settings["optimize"], settings["train"]
    with tracking.step_run("optimize", upstream.info.experiment_id, upstream) as run:
        pipeline = run.data.tags[tracking.PIPELINE_TAG]
        study_name = study_name or tuning.default_study_name(pipeline, data_run_id)
        worker = tuning.worker_id()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = tuning.open_study(
            study_name,
            tuning.open_storage(storage, space["heartbeat_seconds"], space["grace_seconds"]),
            data_run_id=data_run_id,
            # The [train] defaults go first: tuning never returns worse than them.
            first_params=training.searched_defaults(space, base),
            seed=space["seed"],
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=space["pruner_startup_trials"], n_warmup_steps=space["pruner_warmup_folds"]
            ),
        )
        mlflow.set_tags(
            {
                "optuna_study": study_name,
                "optuna_storage": tuning.redact(storage) if storage else IN_MEMORY,
                "optuna_worker": worker,
            }
        )
        mlflow.log_param("num_trials", num_trials)
        callback = MLflowCallback(
            tracking_uri=mlflow.get_tracking_uri(),
            metric_name="val_f1",
            create_experiment=False,
            mlflow_kwargs={
                "nested": True,
                "tags": {tracking.STEP_TAG: "trial", tracking.PIPELINE_TAG: pipeline, "data_run_id": data_run_id},
            },
        )

        @callback.track_in_mlflow()
        def objective(trial: optuna.Trial) -> float:
            # Which worker and MLflow runs hold this trial: `train` records them for the best one.
            trial.set_user_attr("worker", worker)
            trial.set_user_attr("optimize_run_id", run.info.run_id)
            trial.set_user_attr("mlflow_run_id", mlflow.active_run().info.run_id)
            params = training.suggest_params(trial, space, base)
            fold_f1: list[float] = []

            def report(fold: int, mean_f1: float) -> None:
                fold_f1.append(mean_f1)
                trial.report(mean_f1, fold)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {fold}: mean f1 {mean_f1:.4f}")

            try:
                result = training.cross_validate(
                    params, train_df, settings["stopwords"], settings["data"]["other_label"], space["cv_folds"], report
                )
            finally:
                for fold, mean_f1 in enumerate(fold_f1):
                    mlflow.log_metric("cv_running_f1", mean_f1, step=fold)
            # val_* here: mean over held-out folds of the train split (the val split stays for `train`)
            mlflow.log_metrics({f"val_{k}": result[k] for k in ("precision", "recall", "f1", "f1_std")})
            log_history(result["history"])  # per-epoch loss, averaged over the folds
            return result["f1"]

        with threadpool_limits(limits=space["threads_per_trial"]):
            trials_run = tuning.work(study, objective, num_trials, callbacks=[callback])
        best = tuning.best_trial(study)
        finished = tuning.count(study.get_trials(deepcopy=False), tuning.FINISHED)
        best_params = {**base, **best.params}
        tracking.log_json(best_params, "best_params.json")
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({"best_val_f1": best.value, "trials": finished, "trials_run": trials_run})
        log.info(
            "optimize: %d of %d trials of study %s ran here; best trial %d val_f1 %.4f %s",
            trials_run,
            finished,
            study_name,
            best.number,
            best.value,
            best.params,
        )
    return {
        "run_id": run.info.run_id,
        "study_name": study_name,
        "best_params": best.params,
        "best_value": best.value,
        "trials": finished,
        "trials_run": trials_run,
    }


def tuned_params(optimize_run_id: str, data_run_id: str, storage: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The best params of an optimize run, and the lineage tags that say where they come from.

    A run that shared its study through a storage hands over the best trial of the whole study,
    whichever worker ran it; an in-memory run hands over its own `best_params.json`.

    Raises:
        TagifaiError: the run tuned other data, or its study cannot be read.
    """
    tuned = tracking.get_run(optimize_run_id, "optimize")
    tags = tuned.data.tags
    if tags.get("data_run_id") != data_run_id:
        raise TagifaiError(
            f"optimize run {optimize_run_id} tuned on data run {tags.get('data_run_id')}, not {data_run_id}"
        )
    if tags.get("optuna_storage", IN_MEMORY) == IN_MEMORY:
        return tracking.read_json_artifact(optimize_run_id, "best_params.json"), {"optimize_run_id": optimize_run_id}
    if not storage:
        raise TagifaiError(
            f"optimize run {optimize_run_id} shares Optuna study {tags['optuna_study']!r} in "
            f"{tags['optuna_storage']}: set --storage or TAGIFAI_OPTUNA_STORAGE to read its best trial"
        )
    study = tuning.load_study(tags["optuna_study"], tuning.open_storage(storage), data_run_id)
    best = tuning.best_trial(study)
    lineage = {
        "optimize_run_id": best.user_attrs.get("optimize_run_id", optimize_run_id),
        "optuna_study": study.study_name,
        "best_trial": str(best.number),
        "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
    }
    return best.params, lineage


def log_history(history: list[dict[str, float]]) -> None:
    """Log per-epoch losses of the active run in one request."""
    from mlflow.entities import Metric

    if not history:
        return
    run_id = mlflow.active_run().info.run_id
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(name, h[name], timestamp, int(h["epoch"])) for h in history for name in ("train_loss", "val_loss")
    ]
    MlflowClient().log_batch(run_id, metrics=metrics)


def train(
    settings: dict[str, Any], data_run_id: str, optimize_run_id: str | None = None, storage: str | None = None
) -> dict[str, Any]:
    """Train with the best params of an optimize run (or the defaults); log a pyfunc model."""
    upstream = tracking.get_run(data_run_id, "validate")
    params = dict(settings["train"])
    extra_tags = {}
    if optimize_run_id:
        best, extra_tags = tuned_params(optimize_run_id, data_run_id, storage)
        params = {**params, **best}
    train_df, val_df = load_split(data_run_id, "train"), load_split(data_run_id, "val")
    with tracking.step_run("train", upstream.info.experiment_id, upstream, **extra_tags) as run:
        mlflow.log_params(params)
        result = training.train(params, train_df, val_df, settings["stopwords"], settings["data"]["other_label"])
        log_history(result["history"])
        mlflow.log_metrics({**{f"val_{k}": v for k, v in result["val"].items()}, "threshold": result["threshold"]})
        example = val_df[list(("title", "description"))].head(3).reset_index(drop=True)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=result["model"],
            signature=mlflow.models.infer_signature(example, result["model"].predict(None, example)),
            input_example=example,
            code_paths=[str(Path(tagifai.__file__).parent)],
            pip_requirements=pinned_requirements(),
        )
        mlflow.set_tag("model_uri", info.model_uri)
        log.info("train: val_f1 %.4f threshold %.3f -> %s", result["val"]["f1"], result["threshold"], info.model_uri)
    return {"run_id": run.info.run_id, "model_uri": info.model_uri}


def pinned_requirements() -> list[str]:
    """The serving requirements of the model, pinned to what trained it."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def predict_tags(model: Any, df: pd.DataFrame) -> list[str]:
    """Tags a pyfunc model predicts for the rows of `df`."""
    return model.predict(df[["title", "description"]].reset_index(drop=True))["tag"].tolist()


def texts_frame(texts: list[str]) -> pd.DataFrame:
    """Free texts as model input: the text is the title, the description empty."""
    return pd.DataFrame({"title": list(texts), "description": [""] * len(texts)})


def evaluate(settings: dict[str, Any], train_run_id: str) -> dict[str, Any]:
    """Score the trained model on the held-out test split: overall, per class, slices, behavior."""
    upstream = tracking.get_run(train_run_id, "train")
    data_run_id = upstream.data.tags["data_run_id"]
    test_df = load_split(data_run_id, "test")
    model_uri = upstream.data.tags["model_uri"]
    model = mlflow.pyfunc.load_model(model_uri)
    classes = model.unwrap_python_model().classes
    report = evaluation.evaluate(test_df, predict_tags(model, test_df), classes)
    behavioral = evaluation.behavioral_tests(lambda texts: predict_tags(model, texts_frame(texts)))
    with tracking.step_run("evaluate", upstream.info.experiment_id, upstream) as run:
        metrics = {**evaluation.flat_metrics(report), "behavioral_pass_rate": behavioral["pass_rate"]}
        mlflow.log_metrics(metrics)
        model_id = model.metadata.model_id
        if model_id:  # also on the logged model, so the Models page shows test scores
            mlflow.log_metrics({f"test_{k}": v for k, v in report["overall"].items()}, model_id=model_id)
        tracking.log_json(report, "evaluation/report.json")
        tracking.log_json(behavioral, "evaluation/behavioral.json")
        mlflow.log_figure(evaluation.plot_confusion_matrix(report), "evaluation/confusion_matrix.png")
        mlflow.log_figure(evaluation.plot_per_class_f1(report), "evaluation/per_class_f1.png")
        overall = report["overall"]
        log.info(
            "evaluate: test precision %.4f recall %.4f f1 %.4f; behavioral %.0f%%",
            overall["precision"],
            overall["recall"],
            overall["f1"],
            100 * behavioral["pass_rate"],
        )
    return {
        "run_id": run.info.run_id,
        "test_f1": overall["f1"],
        "test_precision": overall["precision"],
        "test_recall": overall["recall"],
    }


def register(
    settings: dict[str, Any], evaluate_run_id: str, min_f1: float, max_regression: float, model_name: str
) -> dict[str, Any]:
    """Register the evaluated model as `challenger`; promote it to `champion` through the gate."""
    evaluated = tracking.get_run(evaluate_run_id, "evaluate")
    train_run = tracking.get_run(evaluated.data.tags["train_run_id"], "train")
    data_run_id = train_run.data.tags["data_run_id"]
    metrics = evaluated.data.metrics
    client = MlflowClient()
    champion = registry.version_by_alias(client, model_name, registry.CHAMPION)
    champion_f1 = None
    if champion is not None and champion.run_id != train_run.info.run_id:
        # Re-score the champion on this pipeline's test split: same data, fair comparison.
        test_df = load_split(data_run_id, "test")
        champion_model = mlflow.pyfunc.load_model(f"models:/{model_name}@{registry.CHAMPION}")
        champion_f1 = evaluation.overall_metrics(test_df["tag"].to_numpy(), predict_tags(champion_model, test_df))["f1"]
    decision = registry.gate(metrics["test_f1"], champion_f1, min_f1, max_regression)
    with tracking.step_run("register", evaluated.info.experiment_id, evaluated) as run:
        tags = {
            "test_f1": f"{metrics['test_f1']:.4f}",
            "test_precision": f"{metrics['test_precision']:.4f}",
            "test_recall": f"{metrics['test_recall']:.4f}",
            "data_sha256": train_run.data.tags.get("data_sha256", ""),
            "pipeline_run_id": run.data.tags[tracking.PIPELINE_TAG],
            "code_version": train_run.data.tags.get("code_version", ""),
            "image": train_run.data.tags.get("image", ""),
            "data_run_id": data_run_id,
            "evaluate_run_id": evaluate_run_id,
        }
        version = registry.register(client, model_name, train_run.data.tags["model_uri"], train_run.info.run_id, tags)
        client.set_registered_model_alias(model_name, registry.CHALLENGER, version.version)
        if decision["promote"]:
            client.set_registered_model_alias(model_name, registry.CHAMPION, version.version)
        client.set_model_version_tag(model_name, version.version, "promotion", decision["reason"])
        mlflow.log_params({"min_f1": min_f1, "max_regression": max_regression, "model_name": model_name})
        if champion_f1 is not None:
            mlflow.log_metric("champion_test_f1", champion_f1)
        mlflow.set_tags(
            {
                "promoted": str(decision["promote"]).lower(),
                "promotion": decision["reason"],
                "model_version": version.version,
                "previous_champion": champion.version if champion else "",
            }
        )
        log.info(
            "register: %s version %s; %s -> %s",
            model_name,
            version.version,
            decision["reason"],
            "champion" if decision["promote"] else "stays challenger",
        )
    return {
        "run_id": run.info.run_id,
        "model_name": model_name,
        "version": str(version.version),
        "promoted": decision["promote"],
        "reason": decision["reason"],
    }
