"""One function per pipeline step: read upstream runs, call the pure core, log to MLflow.

Each returns the small dict its CLI command prints as the last stdout line. A step whose key
(`tagifai.core.reuse`: its upstream, the code, the settings it reads, its arguments) matches a finished
run with its artifacts still there does no work: it hands on that run's output, `reused: true`.
`force` runs it anyway.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract import names
from tagifai.contract.errors import BadInputError, DataValidationError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.core import data, report, reuse
from tagifai.core import evaluate as evaluation
from tagifai.core import train as training
from tagifai.core import validate as validation
from tagifai.pipeline import cards as model_cards
from tagifai.pipeline import holdout as holdouts
from tagifai.pipeline import ownership, predictions, rebuild, registry, reports, sources, tracking, tuning

log = logging.getLogger("tagifai")

NAMES = ("elt", "validate", "optimize", "train", "evaluate", "register")
REFERENCE_TAG = "tagifai.drift_reference"  # on validate runs: the drift reference their key holds
# What a run must still have to be reused.
REQUIRED = {
    "elt": (tracking.LABELED,),
    "validate": (tracking.PROFILE, *map(tracking.split_path, (*data.SPLITS, holdouts.SPLIT))),
    "optimize": (tracking.BEST_PARAMS,),
    "evaluate": (tracking.REPORT,),
}


def upstream_run(settings: Settings, run_id: str, step: str, *also: ownership.Resource) -> Run:
    """The finished `step` run a step follows, in an experiment the deployer lists and only the pipeline writes.

    Checked once per step, with the other names it writes (`also`): every later run it follows must be
    in that same experiment (`tracking.get_run(..., experiment)`).
    """
    upstream = tracking.get_run(run_id, step)
    ownership.check(ownership.listed_experiment(settings, upstream.info.experiment_id), *also)
    return upstream


def earlier(experiment: str, step: str, key: str, force: bool, **check: Any) -> dict[str, Any] | None:
    """The output of a finished run of `step` with `key` to reuse (None when forced or there is none); say so."""
    if force:
        return None
    if step == "register":
        found = reusable_register(experiment, key, **check)
    else:
        found = tracking.reusable(experiment, step, key, REQUIRED.get(step, ()), **check)
    if found:
        why = "same upstream, code, settings and arguments; nothing to do"
        log.info("%s: reusing run %s (key %s…): %s", step, found["run_id"], key[:12], why)
    return found


def elt(
    settings: Settings,
    projects_url: str,
    tags_url: str,
    experiment_name: str,
    force: bool = False,
    plan_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Extract projects and tags, keep the raw copies, join them, log the labeled data.

    With `plan_params` (a pipeline's `num_trials`, `min_f1`, `max_regression`, `model_name`), also say
    which later steps of that pipeline will find their run made already (`plan`: step -> its output),
    so that an orchestrator need not start them.
    """
    shown = {"projects_url": redact(projects_url), "tags_url": redact(tags_url)}
    experiment = tracking.experiment_id(experiment_name)
    ownership.check(ownership.listed_experiment(settings, experiment))
    with tempfile.TemporaryDirectory(prefix="tagifai-elt-") as folder:
        # Streamed to files under [data] max_bytes, parsed in chunks: the sources are never held whole.
        raw = {name: Path(folder) / name for name in ("projects.csv", "tags.csv")}
        for path, url in zip(raw.values(), (projects_url, tags_url), strict=True):
            sources.download(url, settings, path)
        with raw["projects.csv"].open("rb") as projects_file, raw["tags.csv"].open("rb") as tags_file:
            projects = data.parse_csv(projects_file, f"projects.csv ({shown['projects_url']})", data.PROJECT_COLUMNS)
            tags = data.parse_csv(tags_file, f"tags.csv ({shown['tags_url']})", data.TAG_COLUMNS)
            data_sha = reuse.data_sha(projects_file, tags_file)
        labeled, rows = data.transform(projects, tags), {"projects": len(projects), "tags": len(tags)}
        del projects, tags
        result = logged_elt(experiment, reuse.elt_key(data_sha, settings), raw, labeled, rows, shown, force)
        if plan_params is not None and not force:
            fetched = {projects_url: raw["projects.csv"], tags_url: raw["tags.csv"]}
            result["plan"] = plan(settings, experiment, result["run_id"], result["data_sha256"], plan_params, fetched)
    return result


def logged_elt(
    experiment: str,
    key: str,
    raw: dict[str, Path],
    labeled: Any,
    rows: dict[str, int],
    shown: dict[str, str],
    force: bool,
) -> dict[str, Any]:
    """The elt run of `key`: one made already, or a new one logging the raw files and the labeled data.

    `rows`: how many projects and tags the sources had; `shown`: their URLs as logged (redacted).
    """
    result = earlier(experiment, "elt", key, force)
    if result is None:
        with tracking.step_run("elt", experiment, key=key):
            mlflow.log_params(shown)
            # Raw copies only of what parsed as the data: nothing else a source returned is kept.
            for path in raw.values():
                mlflow.log_artifact(str(path), artifact_path="raw")
            source = shown["projects_url"]
            digest = tracking.log_frame(labeled, tracking.LABELED, "tagifai-labeled", "extracted", source=source)
            mlflow.set_tag("data_sha256", digest)
            counts = {"projects": rows["projects"], "tags": rows["tags"], "labeled": len(labeled)}
            mlflow.log_metrics({**counts, "untagged_projects": counts["projects"] - len(labeled)})
            log.info("elt: %(projects)d projects, %(tags)d tags -> %(labeled)d labeled rows", counts)
            result = tracking.record_output({"run_id": mlflow.active_run().info.run_id, "data_sha256": digest})
    return result


def plan(
    settings: Settings,
    experiment: str,
    elt_run_id: str,
    data_sha256: str,
    params: dict[str, Any],
    fetched: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """The later steps of a pipeline with `params` whose runs are made already: step -> that run's output.

    It walks the steps as the pipeline will, each key from the run the step before hands on, and stops
    at the first step that must run: what follows it cannot be the same. `fetched`: the sources elt
    read (URL -> its file), so that the holdout is not read twice when it is the same data.
    """
    found: dict[str, Any] = {}
    keys: dict[str, str] = {}
    gate = (params["min_f1"], params["max_regression"], params["model_name"])
    reference = reference_key(drift_reference_run(settings), data_sha256)
    holdout_sha = holdouts.fetch(settings, fetched)[1]
    key_of = {
        "validate": lambda: reuse.validate_key(elt_run_id, reference, False, holdout_sha, settings),
        "optimize": lambda: reuse.optimize_key(found["validate"]["run_id"], params["num_trials"], settings),
        "train": lambda: reuse.train_key(found["validate"]["run_id"], keys["optimize"], settings),
        "evaluate": lambda: reuse.evaluate_key(found["train"]["run_id"], settings),
        "register": lambda: reuse.register_key(found["evaluate"]["run_id"], gate, settings),
    }
    for step, key in key_of.items():
        keys[step] = key()
        if step == "register":
            output = reusable_register(experiment, keys[step], gate[2])
        else:
            output = tracking.reusable(experiment, step, keys[step], REQUIRED.get(step, ()))
        if output is None:
            break
        found[step] = output
    log.info("elt: %d later step(s) of this pipeline are made already: %s", len(found), ", ".join(found) or "none")
    return found


def drift_reference_run(settings: Settings) -> str | None:
    """The validate run whose data new data is checked for drift: the champion's, else the last that passed."""
    champion = registry.version_by_alias(MlflowClient(), registry.model_name(settings), names.CHAMPION_ALIAS)
    if champion and champion.tags.get("data_run_id"):
        return champion.tags["data_run_id"]
    return tracking.latest_run("validate", "tags.validation = 'passed'")


def reference_key(reference_run_id: str | None, data_sha256: str) -> str | None:
    """What of a drift reference decides validation (`reuse.drift_reference`)."""
    tags = MlflowClient().get_run(reference_run_id).data.tags if reference_run_id else {}
    return reuse.drift_reference(tags.get("data_sha256"), data_sha256, tags.get(REFERENCE_TAG))


def validate(
    settings: Settings,
    elt_run_id: str,
    allow_drift: bool = False,
    reference_run_id: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Check the data contract, and drift against the data the champion learned from; on success, split it.

    The drift reference is the champion's data (its `data_run_id`), else the last data that passed
    validation anywhere: never something a run's own params choose. The gate's holdout
    (`tagifai.pipeline.holdout`) is logged beside the splits, and its rows are not in train and val.

    Raises:
        DataValidationError: a check failed; its report is logged before raising.
    """
    upstream = upstream_run(settings, elt_run_id, "elt")
    experiment = upstream.info.experiment_id
    reference_run_id = reference_run_id or drift_reference_run(settings)
    reference = reference_key(reference_run_id, upstream.data.tags["data_sha256"])
    holdout, holdout_sha = holdouts.fetch(settings)
    key = reuse.validate_key(elt_run_id, reference, allow_drift, holdout_sha, settings)
    if found := earlier(experiment, "validate", key, force):
        return found
    df = data.read_frame(tracking.read_artifact(elt_run_id, tracking.LABELED))
    profile = tracking.read_json_artifact(reference_run_id, tracking.PROFILE) if reference_run_id else None
    with tracking.step_run("validate", experiment, upstream, key=key) as run:
        mlflow.set_tag(REFERENCE_TAG, reference or "")
        report = {**validation.validate(df, settings, profile, not allow_drift), "reference_run_id": reference_run_id}
        tracking.log_json(report, "validation/report.json")
        mlflow.log_text(validation.render_markdown(report), "validation/report.md")
        failed = validation.failed_checks(report)
        mlflow.log_metrics({"checks_failed": len(failed), "checks": len(report["checks"])})
        mlflow.set_tag("validation", "passed" if report["passed"] else "failed")
        if not report["passed"]:
            raise DataValidationError(failed)
        tracking.log_json(report["profile"], tracking.PROFILE)
        split_all = data.prepare(df, settings.data)
        prepared = data.without_holdout(split_all, holdout, settings.stopwords)
        if prepared["split"].value_counts().reindex(["train", "val"]).fillna(0).min() == 0:
            raise BadInputError(f"no train or val rows are left once the {len(holdout)} holdout rows are taken out")
        # Each split's sha256 (its CSV's) is printed: what its OpenLineage dataset is named by.
        holdout_file = tracking.split_path(holdouts.SPLIT)
        shas = {holdouts.SPLIT: tracking.log_frame(holdout, holdout_file, "tagifai-holdout", "holdout", targets="tag")}
        mlflow.set_tag(holdouts.SHA_TAG, holdout_sha)
        mlflow.log_metrics({"holdout_rows": len(holdout), "holdout_rows_removed": len(split_all) - len(prepared)})
        for split in data.SPLITS:
            part = prepared[prepared["split"] == split].drop(columns="split")
            shas[split] = tracking.log_frame(part, tracking.split_path(split), f"tagifai-{split}", split, targets="tag")
            mlflow.log_metric(f"{split}_rows", len(part))
        mlflow.log_params(
            settings.data.model_dump(include={"accepted_tags", "min_freq", "val_size", "test_size", "seed"})
        )
        log.info(
            "validate: %d checks passed; splits %s", len(report["checks"]), prepared["split"].value_counts().to_dict()
        )
        labeled = upstream.data.tags["data_sha256"]
        return tracking.record_output({"run_id": run.info.run_id, "data_sha256": labeled, "split_sha256": shas})


def optimize(
    settings: Settings,
    data_run_id: str,
    num_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Tune hyperparameters with Optuna by k-fold cross-validation of the train split; each trial is a child run.

    Any number of processes may share one study through `storage` (an Optuna RDB URL): together they
    finish `num_trials` trials, and a retried process runs only the trials still missing
    (`tagifai.pipeline.tuning`). Each process is one `optimize` run; the trials it ran are its child runs. Every
    process ends with the best trial of the whole study, which `train` reads from any of their runs.
    Workers of one pipeline run never reuse each other's runs: they share the study instead.
    """
    from threadpoolctl import threadpool_limits

    upstream = upstream_run(settings, data_run_id, "validate")
    space, experiment = settings.optimize, upstream.info.experiment_id
    key = reuse.optimize_key(data_run_id, num_trials, settings)
    if found := earlier(experiment, "optimize", key, force, other_pipeline_than=tracking.pipeline_run_id(upstream)):
        return found
    with tracking.step_run("optimize", experiment, upstream, key=key) as run:
        pipeline, worker = run.data.tags[tracking.PIPELINE_TAG], tuning.worker_id()
        study_name = study_name or tuning.default_study_name(pipeline, data_run_id)
        rdb = tuning.open_storage(storage, space.heartbeat_seconds, space.grace_seconds)
        study = tuning.open_study(study_name, rdb, data_run_id=data_run_id, **tuning.study_options(settings))
        storage_tag = redact(storage) if storage else "in-memory"
        mlflow.set_tags({"optuna_study": study_name, "optuna_storage": storage_tag, "optuna_worker": worker})
        mlflow.log_param("num_trials", num_trials)
        callback = tracking.trial_runs(pipeline, data_run_id)
        # The tuning budget: trials see at most [optimize] max_rows rows; `train` fits the best params on all.
        train_df = tracking.load_split(data_run_id, "train")
        rows, folds, budget = training.tuning_budget(
            train_df, space.max_rows, space.cv_max_rows, space.cv_folds, space.seed
        )
        del train_df
        mlflow.set_tags({"tuning_rows": str(len(rows)), "tuning_folds": str(folds), "tuning_sample": budget})
        log.info("optimize: trials cross-validate %s", budget)
        score = tuning.objective(rows, settings, tracking.log_trial, folds)
        # Each trial records which worker and MLflow runs hold it: `train` names them for the best one.
        traced = tuning.traced(
            score, worker=worker, optimize_run_id=run.info.run_id, mlflow_run_id=lambda: mlflow.active_run().info.run_id
        )
        objective = callback.track_in_mlflow()(traced)
        with threadpool_limits(limits=space.threads_per_trial):
            trials_run = tuning.work(study, objective, num_trials, callbacks=[callback], storage=rdb)
        best = tuning.best_trial(study)
        finished = tuning.count(study.get_trials(deepcopy=False), tuning.FINISHED)
        tracking.log_json({**settings.train.model_dump(), **best.params}, tracking.BEST_PARAMS)
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({"best_val_f1": best.value, "trials": finished, "trials_run": trials_run})
        mlflow.set_tags(tuning.best_trial_lineage(best, run.info.run_id))
        log.info(
            "optimize: %d of %d trials ran here; best trial %d val_f1 %.4f",
            trials_run,
            finished,
            best.number,
            best.value,
        )
        return tracking.record_output(
            {
                "run_id": run.info.run_id,
                "study_name": study_name,
                "best_params": best.params,
                "best_value": best.value,
                "trials": finished,
                "trials_run": trials_run,
                "tuning_rows": len(rows),
            }
        )


def train(
    settings: Settings, data_run_id: str, optimize_run_id: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Train with the best params of an optimize run (or the `[train]` defaults); log a pyfunc model."""
    upstream = upstream_run(settings, data_run_id, "validate")
    params, lineage, tuning_key = settings.train.model_dump(), {}, None
    if optimize_run_id:
        params, lineage, tuning_key = tuned(optimize_run_id, data_run_id, upstream.info.experiment_id)
    key = reuse.train_key(data_run_id, tuning_key, settings)
    if found := earlier(upstream.info.experiment_id, "train", key, force):
        return found
    # The files as the validate run logged them: their sha256 goes into the rebuild record.
    raw = {split: tracking.read_artifact(data_run_id, tracking.split_path(split)) for split in data.SPLITS}
    train_df, val_df = data.read_frame(raw["train"]), data.read_frame(raw["val"])
    with tracking.step_run("train", upstream.info.experiment_id, upstream, key=key, **lineage) as run:
        mlflow.log_params(params)
        # Whatever tuning sampled (its `tuning_sample` tag, carried here), the model learns from every train row.
        mlflow.set_tag("trained_rows", str(len(train_df)))
        # Alone in its process: a thread per core fits the one-vs-rest problems (the same model as one thread).
        result = training.train(params, train_df, val_df, settings.stopwords, settings.data.other_label, n_jobs=-1)
        tracking.log_history(result["history"])
        mlflow.log_metrics({**{f"val_{k}": v for k, v in result["val"].items()}, "threshold": result["threshold"]})
        example = val_df[list(models.INPUT_COLUMNS)].head(3).reset_index(drop=True)
        with tempfile.TemporaryDirectory() as folder:  # models from code: the fitted parts in skops, no pickle
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(models.MODEL_CODE),
                artifacts={models.FITTED: str(models.save_fitted(result["model"], Path(folder) / "fitted.skops"))},
                signature=mlflow.models.infer_signature(example, result["model"].predict(None, example)),
                input_example=example,
                code_paths=[str(models.copy_code(Path(folder)))],
                pip_requirements=models.pinned_requirements(),
            )
        mlflow.set_tag("model_uri", info.model_uri)  # for people: evaluate and register find the model by its run
        seeds = {"split": settings.data.seed, "train": result["params"]["seed"], "optimize": settings.optimize.seed}
        recipe = {"params": params, "seeds": seeds, "tuning": {**lineage, "optimize_key": tuning_key}}
        rebuild.record(settings, recipe, data_run_id, raw, result["model"])
        log.info("train: val_f1 %.4f threshold %.3f -> %s", result["val"]["f1"], result["threshold"], info.model_uri)
        return tracking.record_output({"run_id": run.info.run_id, "model_uri": info.model_uri})


def tuned(optimize_run_id: str, data_run_id: str, experiment: str) -> tuple[dict[str, Any], dict[str, str], str]:
    """The best params an optimize run reported (its study's best, whichever worker ran it), their lineage, its key.

    Raises:
        TagifaiError: the run tuned other data.
    """
    run = tracking.get_run(optimize_run_id, "optimize", experiment)
    tags = run.data.tags
    if tags.get("data_run_id") != data_run_id:
        raise TagifaiError(
            f"optimize run {optimize_run_id} tuned data run {tags.get('data_run_id')}, not {data_run_id}"
        )
    lineage = {k: tags[k] for k in (*tuning.LINEAGE_TAGS, "tuning_sample") if k in tags}
    # The worker that ran the best trial, which need not be the run given here.
    lineage["optimize_run_id"] = lineage.pop("best_trial_optimize_run_id", optimize_run_id)
    params = tracking.read_json_artifact(optimize_run_id, tracking.BEST_PARAMS)
    # Its key, not its id: the workers of one study are several runs with one result.
    return params, lineage, tags.get(tracking.KEY_TAG, run.info.run_id)


def evaluate(settings: Settings, train_run_id: str, force: bool = False) -> dict[str, Any]:
    """Score the trained model on the held-out test split: overall, per class, slices, behavior."""
    upstream = upstream_run(settings, train_run_id, "train")
    experiment = upstream.info.experiment_id
    key = reuse.evaluate_key(train_run_id, settings)
    if found := earlier(experiment, "evaluate", key, force):
        return found
    data_run = tracking.get_run(upstream.data.tags["data_run_id"], "validate", experiment)
    test_df = tracking.load_split(data_run.info.run_id, "test")
    model = models.load(tracking.logged_model_uri(upstream))  # the model the train run logged, whatever its tags say
    report = evaluation.evaluate(test_df, models.predict_tags(model, test_df), model.unwrap_python_model().classes)
    behavioral = evaluation.behavioral_tests(lambda texts: models.predict_tags(model, models.texts_frame(texts)))
    overall = report["overall"]
    with tracking.step_run("evaluate", experiment, upstream, key=key) as run:
        mlflow.log_metrics({**evaluation.flat_metrics(report), "behavioral_pass_rate": behavioral["pass_rate"]})
        if model_id := model.metadata.model_id:  # also on the logged model, so the Models page shows test scores
            mlflow.log_metrics({f"test_{k}": v for k, v in overall.items()}, model_id=model_id)
        tracking.log_json(report, tracking.REPORT)
        tracking.log_json(behavioral, tracking.BEHAVIORAL)
        mlflow.log_figure(evaluation.plot_confusion_matrix(report), "evaluation/confusion_matrix.png")
        mlflow.log_figure(evaluation.plot_per_class_f1(report), "evaluation/per_class_f1.png")
        log.info(
            "evaluate: test precision %(precision).4f recall %(recall).4f f1 %(f1).4f; behavioral %(rate).0f%%",
            {**overall, "rate": 100 * behavioral["pass_rate"]},
        )
        scores = {f"test_{k}": overall[k] for k in ("f1", "precision", "recall")}
        return tracking.record_output({"run_id": run.info.run_id, **scores})


def register(
    settings: Settings,
    evaluate_run_id: str,
    min_f1: float,
    max_regression: float,
    model_name: str,
    force: bool = False,
) -> dict[str, Any]:
    """Register the evaluated model as `challenger`; promote it to `champion` through the gate, and record the move.

    A model is never registered twice: its version is reused, and a version not newer than the
    champion moves no alias. The gate scores on the holdout the validate run logged (`registry.judge`).
    Its challenger-vs-champion report is logged (`tracking.COMPARISON`) and printed (`report`). With
    `[register] approval = "human"` the champion does not move here (`held`): `decide` applies a
    person's answer.
    """
    history = tracking.experiment_id(settings.register.history_experiment)
    owned = ownership.model(model_name), ownership.experiment(history, settings.register.history_experiment)
    evaluated = upstream_run(settings, evaluate_run_id, "evaluate", *owned)
    experiment = evaluated.info.experiment_id
    key = reuse.register_key(evaluate_run_id, (min_f1, max_regression, model_name), settings)
    if found := earlier(experiment, "register", key, force, model_name=model_name):
        return found
    trained = tracking.get_run(evaluated.data.tags["train_run_id"], "train", experiment)
    client = MlflowClient()
    registry.sync_history(settings, model_name)
    champion = registry.version_by_alias(client, model_name, names.CHAMPION_ALIAS)
    held = settings.register.approval == "human"
    with tracking.step_run("register", experiment, evaluated, key=key) as run:
        tags = registry.version_tags(evaluated.data.metrics, trained, run, evaluate_run_id)
        version = registry.register(client, model_name, tracking.logged_model_uri(trained), trained.info.run_id, tags)
        gate, data_run = (min_f1, max_regression), (trained.data.tags["data_run_id"], experiment)
        test_f1 = evaluated.data.metrics["test_f1"]
        # Everything is scored, and the report made, before any alias moves: an error here (exit 1)
        # leaves both where they were.
        judged = registry.judge(settings, model_name, version.version, champion, data_run, test_f1, gate)
        loaded = judged.pop("models", {})
        verdict = {**{k: judged[k] for k in ("promote", "reason", "stale")}, "min_f1": min_f1,
                   "max_regression": max_regression, "approval": settings.register.approval}  # fmt: skip
        text = report.render(reports.gather(model_name, version.version, champion, judged, loaded, trained,
                                            evaluate_run_id, verdict))  # fmt: skip
        registry.apply(client, model_name, version.version, judged, held)
        previous = str(champion.version) if champion else None
        promoted = judged["promote"] and not held
        if promoted:
            by, holdout = run.data.tags[tracking.PIPELINE_TAG], (judged["holdout_f1"], judged["holdout_sha256"])
            reason = judged["reason"]
            registry.record_move(settings, model_name, previous, version.version, "promote", by, reason, holdout)
        mlflow.log_param("model_name", model_name)
        registry.log_decision(judged, version.version, previous, gate)
        mlflow.set_tags(
            {"promoted": str(promoted).lower(), "gate_promote": str(judged["promote"]).lower(),
             "held": str(held).lower(), "approval": settings.register.approval}
        )  # fmt: skip
        mlflow.log_text(text, tracking.COMPARISON)
        if not judged["stale"]:  # the version's description: its model card, with the gate's decision
            model_cards.write_card(settings, model_name, str(version.version))
        outcome = "champion" if promoted else "held for approval" if held and judged["promote"] else "not promoted"
        log.info("register: %s v%s: %s -> %s", model_name, version.version, judged["reason"], outcome)
        output = tracking.record_output(
            {
                "run_id": run.info.run_id,
                "model_name": model_name,
                "version": str(version.version),
                "promoted": promoted,
                "reason": judged["reason"],
                "test_f1": test_f1,
                "holdout_f1": judged["holdout_f1"],
                "held": held,
                "gate_promote": judged["promote"],
                "from_version": previous,
                "experiment_id": experiment,
                "report_artifact": tracking.COMPARISON,
            }
        )
        return {**output, "report": text}  # the report is an artifact, too long for the output tag


def reusable_register(experiment: str, key: str, model_name: str) -> dict[str, Any] | None:
    """A finished register run with `key` whose version still exists and is not older than the champion."""
    found = tracking.reusable(experiment, "register", key, (tracking.COMPARISON,))
    client = MlflowClient()
    if found is None or not registry.version_exists(client, model_name, found["version"]):
        return None
    champion = registry.version_by_alias(client, model_name, names.CHAMPION_ALIAS)
    if champion is not None and int(found["version"]) < int(champion.version):
        return None  # the champion moved on since: judge this old version again (it will not move back)
    return {**found, "report": tracking.read_artifact(found["run_id"], tracking.COMPARISON).decode()}


# A person's answer to a held promotion (Airflow's ApprovalOperator's options), and what it is recorded as.
CHOICES = {"Approve": "approved", "Reject": "rejected"}


def held_register_run(run_id: str) -> Run:
    """The finished register run `run_id` that held its promotion for a person (`[register] approval = "human"`).

    Raises:
        BadInputError: there is no such run, or it is not a held register run.
        TagifaiError: MLflow could not be asked for now.
    """
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise BadInputError(f"no MLflow run {run_id!r}: give a held register run") from None
        raise TagifaiError(f"cannot read run {run_id} now: {registry.one_line(exc)}") from exc
    tags = run.data.tags
    if tags.get(tracking.STEP_TAG) != "register" or run.info.status != "FINISHED" or tags.get("held") != "true":
        what = f"a run of step {tags.get(tracking.STEP_TAG, '')!r} ({run.info.status})"
        if tags.get(tracking.STEP_TAG) == "register" and run.info.status == "FINISHED":
            what = "a register run that did not hold its promotion (approval was auto)"
        raise BadInputError(f"run {run_id} is {what}, not a held register run: there is nothing to decide")
    return run


def decide(settings: Settings, register_run_id: str, choice: str, by: str) -> dict[str, Any]:
    """Apply a person's answer to the promotion a held register run asked for, and record it.

    Approve (and the gate said promote, and the version is still newer than the champion): `champion`
    moves to it, recorded as a move by "approved by <by>". Approve of a version the gate did not
    promote: nothing moves (the gate's decision is applied). Reject, or no answer (`by` ""): nothing
    moves, the version stays `challenger`. Every decision is recorded in the history
    (`registry.record_decision`). Once per register run: a retried or repeated decide hands on the first.

    Raises:
        BadInputError: an unknown choice, or not a held register run of a listed experiment.
    """
    if choice not in CHOICES:
        raise BadInputError(f"--choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    held = held_register_run(register_run_id)
    asked = json.loads(held.data.tags[tracking.OUTPUT_TAG])  # what register printed
    name, version, experiment = asked["model_name"], asked["version"], held.info.experiment_id
    history = tracking.experiment_id(settings.register.history_experiment)
    owned = ownership.model(name), ownership.experiment(history, settings.register.history_experiment)
    upstream_run(settings, register_run_id, "register", *owned)  # a listed experiment only the pipeline writes
    if found := tracking.reusable(experiment, "decide", register_run_id):
        log.info("decide: register run %s was decided already (run %s): %s", register_run_id, found["run_id"],
                 found["decision"])  # fmt: skip
        return found
    client = MlflowClient()
    moves = registry.sync_history(settings, name)
    champion = registry.version_by_alias(client, name, names.CHAMPION_ALIAS)
    decision = CHOICES[choice] if by else "timed out"
    with tracking.step_run("decide", experiment, held, key=register_run_id) as run:
        # A retry after the move was made and recorded: it is made.
        made = bool(moves) and moves[0]["to_version"] == version and moves[0]["by"] == f"approved by {by}"
        stale = None if made else registry.moves_back(version, champion)
        gate = asked["reason"]
        if decision == "approved" and asked["gate_promote"] and not stale:
            promoted, reason = True, f"approved by {by}; the gate: {gate}"
        elif decision == "approved":
            why = f"{stale}: nothing moves" if stale else f"the gate did not promote: {gate}"
            promoted, reason = False, f"approved by {by}, but {why}"
        elif decision == "rejected":
            promoted, reason = False, f"rejected by {by}: v{version} stays challenger"
        else:
            hours = settings.register.approval_timeout_hours
            promoted, reason = False, f"nobody answered within {hours:g} hours: v{version} stays challenger"
        before = (moves[0]["from_version"] or None) if made else (str(champion.version) if champion else None)
        if promoted and not made:
            holdout = (asked["holdout_f1"], held.data.tags[holdouts.SHA_TAG])
            client.set_registered_model_alias(name, names.CHAMPION_ALIAS, version)
            registry.record_move(settings, name, before, version, "promote", f"approved by {by}", reason, holdout)
        outcome = {"decision": decision, "by": by, "reason": reason, "promoted": promoted}
        registry.record_decision(settings, name, version, before, outcome, register_run_id)
        mlflow.set_tags({"decision": decision, "by": by, "model_version": version, "promoted": str(promoted).lower()})
        if not stale and registry.version_exists(client, name, version):  # a stale one is the champion's, or older
            approval = decision if decision == "timed out" else f"{decision} by {by}"
            client.set_model_version_tag(name, version, registry.APPROVAL, approval)
            client.set_model_version_tag(name, version, "promoted", str(promoted).lower())
            model_cards.write_card(settings, name, version)
        log.info("decide: %s v%s %s -> %s", name, version, decision, "champion" if promoted else "not promoted")
        return tracking.record_output(
            {
                "run_id": run.info.run_id,
                "model_name": name,
                "version": version,
                "from_version": before,
                "promoted": promoted,
                "decision": decision,
                "by": by,
                "reason": reason,
                "test_f1": asked["test_f1"],
                "holdout_f1": asked["holdout_f1"],
                "experiment_id": experiment,
            }
        )


def predict_batch(
    settings: Settings, source: str, model_name: str, alias: str, experiment_name: str, database_url: str
) -> dict[str, Any]:
    """Score a CSV of projects with the version holding `alias`; write them into PostgreSQL's `predictions`.

    The source is streamed to a temporary file, then read, scored (in `predictions.SCORING_WORKERS` processes)
    and COPYed `[predict] batch_rows` rows at a time: memory holds a few batches, whatever the number of
    projects. The batches reach the table in ONE transaction (`predictions.write`): a bad row in a late
    batch, the database going away or the process killed leaves it as it was. Idempotent per (project id,
    model version): the same projects scored by the same version again insert and rewrite nothing. Also logs
    the predictions file (written a batch at a time), the rows and the count of each tag to MLflow.
    """
    predictions.dsn(database_url)  # a URL that is not PostgreSQL fails before anything is read
    client = MlflowClient()
    version = registry.version_by_alias(client, model_name, alias)
    if version is None:
        raise TagifaiError(f"{model_name} has no @{alias} to score with yet")
    with tempfile.TemporaryDirectory(prefix="tagifai-predict-") as folder:
        downloaded, scored_file = Path(folder) / "projects.csv", Path(folder) / "predictions.csv"
        sources.download(source, settings, downloaded)
        name, batch_rows = f"projects ({redact(source)})", settings.predict.batch_rows
        # The file's encoding, header and first batch are checked on entering, before a run starts.
        with downloaded.open("rb") as file, predictions.read_projects(file, name, batch_rows) as projects:
            predictions.return_freed_memory()  # before the model: what scoring frees goes back (and the forks')
            model = models.load(f"models:/{model_name}/{version.version}")
            params = {"source": redact(source), "model_name": model_name, "model_version": version.version}
            with (
                predictions.Scoring(model, scored_file, predictions.scoring_workers()) as scoring,
                tracking.step_run("predict-batch", tracking.experiment_id(experiment_name)) as run,
            ):
                pipeline_run_id = run.data.tags[tracking.PIPELINE_TAG]
                written = predictions.write(
                    database_url, scoring(projects), int(version.version), pipeline_run_id, datetime.now(UTC)
                )
                counts, rows, batches = scoring.counts(), scoring.rows, scoring.batches
                mlflow.log_params(params)
                tag_counts = {f"tag_{tag}": n for tag, n in counts.items()}
                mlflow.log_metrics({"rows": rows, "batches": batches, **written, **tag_counts})
                mlflow.log_artifact(str(scored_file), "predictions")
                log.info("predict-batch: %d projects scored by %s v%s: %s", rows, model_name, version.version, counts)
                return {
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "model_name": model_name,
                    "model_version": str(version.version),
                    "rows": rows,
                    "batches": batches,
                    **written,
                    "counts": counts,
                }
