"""The small MLflow shell every step uses: where to log, step runs and their lineage, artifacts, metrics."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import tagifai
from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.core import data

# Run tags that tie the steps of one pipeline together; each step carries its upstream's forward.
STEP_TAG = "tagifai.step"
# A step run's reuse key (`tagifai.core.reuse`), and what it printed: handed on again when it is reused.
KEY_TAG = "tagifai.key"
OUTPUT_TAG = "tagifai.output"
PIPELINE_TAG = "pipeline_run_id"
# The OpenLineage run of the Airflow task that started a step (tagifai.orchestration.lineage), when it has one.
OPENLINEAGE_RUN_TAG = "openlineage.run_id"
OPENLINEAGE_JOB_TAG = "openlineage.job"
UPSTREAM_TAGS = {
    "elt": "elt_run_id",
    "validate": "data_run_id",
    "optimize": "optimize_run_id",
    "train": "train_run_id",
    "evaluate": "evaluate_run_id",
    "register": "register_run_id",
}
# Artifacts one step logs and a later step (or a model card) reads.
LABELED = "data/labeled.csv"
PROFILE = "validation/profile.json"
BEST_PARAMS = "best_params.json"
REPORT = "evaluation/report.json"
BEHAVIORAL = "evaluation/behavioral.json"
# The register run's challenger-vs-champion report (`tagifai.core.report`).
COMPARISON = "report/challenger_vs_champion.md"


def connect(settings: Settings) -> None:
    """Point MLflow (tracking and registry) at `MLFLOW_TRACKING_URI`, else SQLite under the local store."""
    if not (uri := os.environ.get("MLFLOW_TRACKING_URI")):
        store = Path(settings.mlflow.local_store).resolve()
        store.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)


def experiment_id(name: str) -> str:
    """Return the id of experiment `name`, creating it if needed."""
    client, uri = MlflowClient(), mlflow.get_tracking_uri()
    # A new experiment keeps its artifacts beside a SQLite store; a server decides for itself.
    sqlite = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            root = (Path(sqlite).resolve().parent / "artifacts").as_uri() if sqlite else None
            return client.create_experiment(name, artifact_location=root)
    except MlflowException as exc:
        if "already exists" in str(exc):  # created concurrently by another step
            return client.get_experiment_by_name(name).experiment_id
        raise TagifaiError(f"MLflow at {uri} refused experiment {name!r}: {exc.message}") from exc
    if experiment.lifecycle_stage == "deleted":
        raise TagifaiError(f"experiment {name!r} is deleted; restore it or choose another --experiment-name")
    return experiment.experiment_id


def code_version() -> str:
    """What the code is, for the `code_version` tag: `described_version()`, else the package version."""
    return described_version() or tagifai.__version__


def described_version() -> str:
    """`TAGIFAI_CODE_VERSION` (an image's: `make image` passes it), else the checkout's `git describe --dirty`.

    A commit, with "-dirty" when the tree had changes; "" outside a checkout.
    """
    if version := os.environ.get("TAGIFAI_CODE_VERSION"):
        return version
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(tagifai.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return described.stdout.strip() if described.returncode == 0 else ""


def fresh_pipeline_run_id() -> str:
    """A new pipeline run id, for runs that Airflow (`TAGIFAI_PIPELINE_RUN_ID`) did not name."""
    return f"manual__{uuid.uuid4().hex[:12]}"


def get_run(run_id: str, step: str, experiment: str | None = None) -> Run:
    """Fetch an upstream run and check it is a finished run of `step` (in `experiment`, if given).

    Raises:
        TagifaiError: the run is missing, of another step, or did not finish.
        BadInputError: the run is not in `experiment`.
    """
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise TagifaiError(f"no MLflow run {run_id!r} at {mlflow.get_tracking_uri()} (expected a {step} run)") from exc
    if experiment is not None and run.info.experiment_id != experiment:
        where = f"experiment {run.info.experiment_id}, not this pipeline's {experiment}"
        raise BadInputError(f"{step} run {run_id} is in {where}: a pipeline follows only its own runs")
    actual = run.data.tags.get(STEP_TAG)
    if actual != step:
        raise TagifaiError(f"run {run_id} is a {actual or 'non-tagifai'} run, not a {step} run")
    if run.info.status != "FINISHED":
        raise TagifaiError(f"{step} run {run_id} did not finish successfully (status {run.info.status})")
    return run


@contextmanager
def step_run(
    step: str, experiment: str, upstream: Run | None = None, key: str | None = None, **tags: str
) -> Iterator[Run]:
    """Start the MLflow run of one step, tagged with its lineage and its reuse `key`.

    The pipeline id comes from `TAGIFAI_PIPELINE_RUN_ID`, else from the upstream run, else is new.
    Lineage tags of the upstream run are carried over, and the upstream run itself is recorded; so is the
    OpenLineage run of the task that started the step (`openlineage_tags`).
    A step that raises ends its run FAILED with the error as a tag; a `TagifaiError` also names the
    run (`run_id`, `experiment_id`), for the failure output (`tagifai.cli`).
    """
    carried = {*UPSTREAM_TAGS.values(), "data_sha256"}
    lineage = {k: v for k, v in (upstream.data.tags.items() if upstream else []) if k in carried}
    if upstream is not None:
        lineage[UPSTREAM_TAGS[upstream.data.tags[STEP_TAG]]] = upstream.info.run_id
    pipeline = pipeline_run_id(upstream) if upstream else os.environ.get(names.PIPELINE_RUN_ID_ENV)
    all_tags = {
        STEP_TAG: step,
        PIPELINE_TAG: pipeline or fresh_pipeline_run_id(),
        "code_version": code_version(),
        "image": os.environ.get(names.IMAGE_ENV, ""),
        **({KEY_TAG: key} if key else {}),
        **lineage,
        **openlineage_tags(),
        **tags,
    }
    mlflow.set_experiment(experiment_id=experiment)  # nested runs (Optuna trials) land beside their parent
    run_name = f"{step}-{all_tags[PIPELINE_TAG]}"[:250]
    with mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=all_tags) as run:
        try:
            yield run
        except Exception as exc:
            mlflow.set_tag("error", str(exc)[:5000] or type(exc).__name__)
            if isinstance(exc, TagifaiError) and exc.run_id is None:
                exc.run_id, exc.experiment_id = run.info.run_id, run.info.experiment_id
            raise  # start_run's context then ends the run FAILED


def openlineage_tags() -> dict[str, str]:
    """The task's OpenLineage run (`TAGIFAI_OPENLINEAGE_RUN_ID`) and job (`namespace/job`), as run tags; {} outside one.

    `TAGIFAI_OPENLINEAGE_JOB` is the provider's parent id, `namespace/job/run id`: the job is it without the run id.
    """
    run_id = os.environ.get(names.OPENLINEAGE_RUN_ID_ENV, "")
    parent = os.environ.get(names.OPENLINEAGE_JOB_ENV, "")
    tags = {OPENLINEAGE_RUN_TAG: run_id, OPENLINEAGE_JOB_TAG: parent.removesuffix(f"/{run_id}") if run_id else parent}
    return {tag: value for tag, value in tags.items() if value}


def record_output(result: dict[str, Any]) -> dict[str, Any]:
    """Keep what the active step run prints, for a later run that reuses it; return it, with its run's experiment."""
    result.setdefault("experiment_id", mlflow.active_run().info.experiment_id)
    mlflow.set_tag(OUTPUT_TAG, json.dumps(result, default=str))
    return result


def pipeline_run_id(upstream: Run) -> str | None:
    """The pipeline run a step belongs to: `TAGIFAI_PIPELINE_RUN_ID`, else its upstream run's."""
    return os.environ.get(names.PIPELINE_RUN_ID_ENV) or upstream.data.tags.get(PIPELINE_TAG)


def reusable(
    experiment: str, step: str, key: str, artifacts: tuple[str, ...] = (), other_pipeline_than: str | None = None
) -> dict[str, Any] | None:
    """The output of the newest finished `step` run with `key` whose artifacts are all still there, else None.

    A run whose artifacts (or logged model's files) are gone is a miss, not an error: the step runs
    again. With `other_pipeline_than`, runs of that pipeline run do not count.
    """
    runs = MlflowClient().search_runs(
        [experiment],
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    for run in runs:
        output = run.data.tags.get(OUTPUT_TAG)
        if other_pipeline_than and run.data.tags.get(PIPELINE_TAG) == other_pipeline_than:
            continue
        if output and all(has_artifact(run.info.run_id, path) for path in artifacts):
            if step == "train" and not model_files_exist(run):
                continue
            return {**json.loads(output), "reused": True}
    return None


def has_artifact(run_id: str, path: str) -> bool:
    """Whether the run still has the artifact file `path`."""
    try:
        return any(info.path == path for info in MlflowClient().list_artifacts(run_id, posixpath.dirname(path) or None))
    except (MlflowException, OSError):
        return False


def logged_model_uri(run: Run) -> str:
    """`models:/<model id>` of the one model the (train) `run` logged: whose source run it is, never a tag's URI.

    Raises:
        BadInputError: the run logged no model, or more than one.
    """
    found = MlflowClient().search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", max_results=2
    )
    if len(found) != 1:
        raise BadInputError(f"run {run.info.run_id} logged {len(found) or 'no'} model(s), not one")
    return f"models:/{found[0].model_id}"


def model_files_exist(run: Run) -> bool:
    """Whether the model `run` logged still has its files."""
    try:
        location = MlflowClient().get_logged_model(logged_model_uri(run).removeprefix("models:/")).artifact_location
        return any(Path(info.path).name == "MLmodel" for info in mlflow.artifacts.list_artifacts(artifact_uri=location))
    except (MlflowException, OSError, TagifaiError):
        return False


def latest_run(step: str, condition: str) -> str | None:
    """The id of the most recent finished run of `step` that meets `condition`, in any experiment."""
    runs = mlflow.search_runs(
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED' and {condition}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
        search_all_experiments=True,
    )
    return runs[0].info.run_id if runs else None


def log_bytes(content: bytes, artifact_file: str) -> None:
    """Log `content` as the artifact `artifact_file` (e.g. "data/labeled.csv") of the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / posixpath.basename(artifact_file)
        local.write_bytes(content)
        mlflow.log_artifact(str(local), artifact_path=posixpath.dirname(artifact_file) or None)


def log_json(obj: Any, artifact_file: str) -> None:
    """Log `obj` as a JSON artifact."""
    log_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), artifact_file)


def read_artifact(run_id: str, artifact_file: str) -> bytes:
    """Download one artifact of a run and return its bytes.

    Raises:
        TagifaiError: the run has no such artifact.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise TagifaiError(f"run {run_id} has no artifact {artifact_file!r}: {exc}".splitlines()[0]) from exc
        return Path(local).read_bytes()


def read_json_artifact(run_id: str, artifact_file: str) -> Any:
    """Download and parse a JSON artifact."""
    return json.loads(read_artifact(run_id, artifact_file))


def log_frame(df: pd.DataFrame, artifact_file: str, dataset: str, context: str, **dataset_kwargs: Any) -> str:
    """Log a frame as a CSV artifact and as an MLflow dataset input of the active run; return its sha256."""
    content = data.to_csv_bytes(df)
    digest = data.sha256(content)
    log_bytes(content, artifact_file)
    mlflow.log_input(
        mlflow.data.from_pandas(df, name=dataset, digest=digest[:32], **dataset_kwargs),
        context=context,
        tags={"sha256": digest},
    )
    return digest


def split_path(split: str) -> str:
    """Artifact path of one prepared split of a validate run."""
    return f"data/{split}.csv"


def load_split(data_run_id: str, split: str) -> pd.DataFrame:
    """Read one prepared split (train, val, test) from a validate run."""
    return data.read_frame(read_artifact(data_run_id, split_path(split)))


def log_history(history: list[dict[str, float]]) -> None:
    """Log per-epoch train/val losses of the active run in one request (none for no epochs)."""
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(name, h[name], timestamp, int(h["epoch"])) for h in history for name in ("train_loss", "val_loss")
    ]
    MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=metrics)


def trial_runs(pipeline_run_id: str, data_run_id: str) -> Any:
    """Optuna's MLflow callback: each trial a child run of the active run, tagged as a `trial` of the pipeline."""
    from optuna_integration.mlflow import MLflowCallback

    tags = {STEP_TAG: "trial", PIPELINE_TAG: pipeline_run_id, "data_run_id": data_run_id}
    return MLflowCallback(
        tracking_uri=mlflow.get_tracking_uri(),
        metric_name="val_f1",
        create_experiment=False,
        mlflow_kwargs={"nested": True, "tags": tags},
    )


def log_trial(running_f1: list[float], result: dict[str, Any] | None) -> None:
    """What one cross-validated trial measured, on its (active) child run.

    `val_*` here: the mean over held-out folds of the train split (the val split stays for `train`).
    """
    for fold, mean_f1 in enumerate(running_f1):
        mlflow.log_metric("cv_running_f1", mean_f1, step=fold)
    if result is not None:
        mlflow.log_metrics({f"val_{k}": result[k] for k in ("precision", "recall", "f1", "f1_std")})
        log_history(result["history"])  # per-epoch loss, averaged over the folds
