"""`tagifai`: one command per pipeline step, plus `pipeline` and `predict`.

Logs go to stderr; each command's last stdout line is a one-line JSON object (run ids and
whatever the next step needs), which Airflow pushes to XCom. Errors print one line `error: …` and
exit 1 (may pass: retried) or 3 (bad input or setup: never retried); see `tagifai.contract.errors`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import operator
import os
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from tagifai.contract import names
from tagifai.contract.config import load_settings
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings

app = typer.Typer(
    help="Tag ML projects: elt → validate → optimize → train → evaluate → register, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def from_env(envvar: str, help: str, shown: str | bool = True, kind: Any = str | None) -> Any:
    """An option that the variable `envvar` may set; `shown` says what its default means in `--help`."""
    return Annotated[kind, typer.Option(envvar=envvar, show_default=shown, help=help)]


ProjectsUrl = from_env(names.PROJECTS_URL_ENV, "projects.csv: http(s)/file:// URL or path.", "pinned upstream")
TagsUrl = from_env(names.TAGS_URL_ENV, "tags.csv: http(s)/file:// URL or path.", "pinned upstream")
ExperimentName = from_env(
    "MLFLOW_EXPERIMENT_NAME", "MLflow experiment for the runs: one of [mlflow] experiments.", "tagifai"
)
Storage = from_env(
    names.OPTUNA_STORAGE_ENV, "Optuna RDB storage URL, to share one study between processes.", "in-memory"
)
ModelName = from_env(names.MODEL_NAME_ENV, "Registered model name.", "tagifai")
Force = from_env(
    names.FORCE_ENV,
    "Run even when a finished run with the same key (data, code, settings, arguments) exists.",
    kind=bool,
)
NumTrials = Annotated[int | None, typer.Option(min=1, show_default="20 (config)", help="Optuna trials.")]
MinF1 = Annotated[float | None, typer.Option(show_default="config", help="Lowest test f1 a champion may have.")]
MaxRegression = Annotated[
    float | None, typer.Option(show_default="config", help="How far below the champion's f1 a challenger may be.")
]


def emit(result: dict[str, Any]) -> None:
    """Print the hand-off line, the last line of stdout; also write it to the file `TAGIFAI_OUTPUT` names.

    The file is for runners that read a container's output from its log, where stdout and stderr
    arrive interleaved: the docker runner copies it out of the finished container instead.
    """
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    line = json.dumps(result, default=str)
    if path := os.environ.get(names.OUTPUT_ENV):
        with open(path, "w", encoding="utf-8") as output:
            output.write(line + "\n")
    print(line, flush=True)


def write_failure(exc: TagifaiError) -> None:
    """Write a failed command's error, exit code and failed MLflow run as one JSON object to `TAGIFAI_OUTPUT`.

    The docker runner reads it from the failed container, to name the error in the task's exception.
    """
    if path := os.environ.get(names.OUTPUT_ENV):
        line = " ".join(str(exc).split()) or type(exc).__name__
        failure = {"error": line, "exit_code": exc.exit_code, "run_id": exc.run_id, "experiment_id": exc.experiment_id}
        with open(path, "w", encoding="utf-8") as output:
            output.write(json.dumps(failure) + "\n")


def command(name: str | None = None, connect: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """Register `func(settings, ...)` as a command: Typer sees its options, the settings are loaded here.

    The command connects to MLflow (if `connect`), prints what `func` returns, if anything, as the
    hand-off line, and turns a TagifaiError into one line `error: …`, its exit code and the failure
    output (`write_failure`).
    """

    def decorate(func: Callable[..., dict[str, Any] | None]) -> Callable[..., None]:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                settings = load_settings()
                if connect:
                    from tagifai.pipeline import tracking

                    tracking.connect(settings)
                result = func(settings, *args, **kwargs)
            except TagifaiError as exc:
                typer.echo(f"error: {exc}", err=True)
                write_failure(exc)
                raise typer.Exit(exc.exit_code) from None
            if result is not None:
                emit(result)

        signature = inspect.signature(func, eval_str=True)
        run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        return app.command(name)(run)

    return decorate


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Configure logging to stderr (only when a command runs, never at import)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "git", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is experimental.*")


def gate_options(
    settings: Settings, min_f1: float | None, max_regression: float | None, model_name: str | None
) -> dict[str, Any]:
    """The promotion gate and model name: `[register]`, made stricter (never looser) by the options.

    Raises:
        BadInputError: an option is not a finite number, or would loosen the deployer's gate.
    """
    gate = {"model_name": model_name or settings.register.model_name}
    for name, value, loosens in (("min_f1", min_f1, operator.lt), ("max_regression", max_regression, operator.gt)):
        limit = getattr(settings.register, name)
        # A --plan's JSON may hold a string, a bool or NaN (which passes every comparison).
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            raise BadInputError(f"{name} must be a finite number, not {value!r}")
        if value is not None and loosens(value, limit):
            raise BadInputError(
                f"{name} {value} would loosen this deployment's gate ([register] {name} = {limit}): "
                "a run may only make it stricter"
            )
        gate[name] = limit if value is None else value
    return gate


def trials(settings: Settings, num_trials: int | None) -> int:
    """`--num-trials`, else `[optimize] num_trials`, at most `[limits] max_trials`.

    Raises:
        BadInputError: not a whole number of at least 1 (a --plan's JSON may hold anything), or more
            trials than the deployment allows.
    """
    count = settings.optimize.num_trials if num_trials is None else num_trials
    if type(count) is not int or count < 1:
        raise BadInputError(f"num_trials must be a whole number of at least 1, not {count!r}")
    if count > (most := settings.limits.max_trials):
        raise BadInputError(f"num_trials {count} is more than this deployment allows ([limits] max_trials = {most})")
    return count


@command()
def elt(
    settings: Settings,
    projects_url: ProjectsUrl = None,
    tags_url: TagsUrl = None,
    experiment_name: ExperimentName = None,
    force: Force = False,
    plan: Annotated[
        str | None,
        typer.Option(
            envvar="TAGIFAI_PLAN",
            help='JSON params of the pipeline this elt starts ({"num_trials", "min_f1", "max_regression"}): '
            "also print which of its later steps are made already.",
        ),
    ] = None,
) -> dict[str, Any]:
    """Extract projects.csv and tags.csv, join them on id, log raw and labeled data to MLflow."""
    from tagifai.pipeline import steps

    params = None
    if plan:  # checked as the pipeline's own options would be
        try:
            given = json.loads(plan)
            if not isinstance(given, dict):
                raise TypeError(f"got {type(given).__name__}")
            gate = gate_options(settings, given.get("min_f1"), given.get("max_regression"), given.get("model_name"))
            params = {"num_trials": trials(settings, given.get("num_trials")), **gate}
        except (ValueError, TypeError) as exc:
            raise BadInputError(f"--plan must be a JSON object of num_trials, min_f1, max_regression: {exc}") from exc
    projects, tags = projects_url or settings.data.projects_url, tags_url or settings.data.tags_url
    experiment = settings.mlflow.experiment(experiment_name)  # only one the deployer listed
    return steps.elt(settings, projects, tags, experiment, force, params)


@command()
def validate(
    settings: Settings,
    elt_run: Annotated[str, typer.Option(help="Run id of the elt step.")],
    allow_drift: Annotated[
        bool, typer.Option(help="Report drift against the last validated data as a warning instead of failing.")
    ] = False,
    reference_run: Annotated[
        str | None, typer.Option(help="Validate run to compare against for drift.", show_default="the champion's")
    ] = None,
    force: Force = False,
) -> dict[str, Any]:
    """Check the data contract and drift; on success log train/val/test splits."""
    from tagifai.pipeline import steps

    return steps.validate(settings, elt_run, allow_drift, reference_run, force)


@command()
def optimize(
    settings: Settings,
    data_run: Annotated[str, typer.Option(help="Run id of the validate step.")],
    num_trials: NumTrials = None,
    storage: Storage = None,
    study_name: Annotated[
        str | None, typer.Option(show_default="tagifai-<pipeline run id>-<data run id[:8]>", help="Optuna study name.")
    ] = None,
    force: Force = False,
) -> dict[str, Any]:
    """Tune hyperparameters with Optuna (TPE + median pruning); each trial is a child run.

    Start it in several processes with one --storage to share the study: together they run
    --num-trials trials.
    """
    from tagifai.pipeline import steps

    return steps.optimize(settings, data_run, trials(settings, num_trials), storage, study_name, force)


@command()
def train(
    settings: Settings,
    data_run: Annotated[str, typer.Option(help="Run id of the validate step.")],
    optimize_run: Annotated[
        str | None,
        typer.Option(
            help="Run id of the optimize step, or of any worker of a shared study: the study's best params.",
            show_default="config defaults",
        ),
    ] = None,
    force: Force = False,
) -> dict[str, Any]:
    """Train the model and log it as an MLflow pyfunc model (raw text in, tag out)."""
    from tagifai.pipeline import steps

    return steps.train(settings, data_run, optimize_run, force)


@command()
def evaluate(
    settings: Settings, train_run: Annotated[str, typer.Option(help="Run id of the train step.")], force: Force = False
) -> dict[str, Any]:
    """Score the trained model on the held-out test split: overall, per class, slices, behavior."""
    from tagifai.pipeline import steps

    return steps.evaluate(settings, train_run, force)


@command()
def register(
    settings: Settings,
    evaluate_run: Annotated[str, typer.Option(help="Run id of the evaluate step.")],
    min_f1: MinF1 = None,
    max_regression: MaxRegression = None,
    model_name: ModelName = None,
    force: Force = False,
) -> dict[str, Any]:
    """Register the model as `challenger`; move `champion` to it only if the gate passes."""
    from tagifai.pipeline import steps

    gate = gate_options(settings, min_f1, max_regression, model_name)
    return steps.register(settings, evaluate_run, **gate, force=force)


@command()
def decide(
    settings: Settings,
    register_run: Annotated[str, typer.Option(help="Run id of a register step that held its promotion.")],
    choice: Annotated[str, typer.Option(help="Approve or Reject.")],
    by: Annotated[str, typer.Option(help='Who decided ("": nobody answered in time).')],
) -> dict[str, Any]:
    """Apply a person's answer to a held promotion (`[register] approval = "human"`); record who decided."""
    from tagifai.pipeline import steps

    return steps.decide(settings, register_run, choice, by)


@command()
def pipeline(
    settings: Settings,
    num_trials: NumTrials = None,
    projects_url: ProjectsUrl = None,
    tags_url: TagsUrl = None,
    experiment_name: ExperimentName = None,
    min_f1: MinF1 = None,
    max_regression: MaxRegression = None,
    model_name: ModelName = None,
    allow_drift: Annotated[bool, typer.Option(help="Do not fail on drift.")] = False,
    storage: Storage = None,
    force: Force = False,
) -> dict[str, Any]:
    """Run the six steps in order in this process (no Airflow or Docker needed)."""
    from tagifai.pipeline import steps, tracking

    # Every option is checked before the first step runs.
    gate, count = gate_options(settings, min_f1, max_regression, model_name), trials(settings, num_trials)
    os.environ.setdefault(names.PIPELINE_RUN_ID_ENV, tracking.fresh_pipeline_run_id())
    projects, tags = projects_url or settings.data.projects_url, tags_url or settings.data.tags_url
    experiment = settings.mlflow.experiment(experiment_name)  # only one the deployer listed
    elt_out = steps.elt(settings, projects, tags, experiment, force)
    validate_out = steps.validate(settings, elt_out["run_id"], allow_drift, force=force)
    optimize_out = steps.optimize(settings, validate_out["run_id"], count, storage, force=force)
    train_out = steps.train(settings, validate_out["run_id"], optimize_out["run_id"], force)
    evaluate_out = steps.evaluate(settings, train_out["run_id"], force)
    register_out = steps.register(settings, evaluate_out["run_id"], **gate, force=force)
    outs = [elt_out, validate_out, optimize_out, train_out, evaluate_out, register_out]
    return {
        "pipeline_run_id": os.environ[names.PIPELINE_RUN_ID_ENV],
        **{f"{name}_run_id": out["run_id"] for name, out in zip(steps.NAMES, outs, strict=True)},
        **{k: evaluate_out[k] for k in ("test_f1", "test_precision", "test_recall")},
        **{k: register_out[k] for k in ("model_name", "version", "promoted")},
        "reused": [name for name, out in zip(steps.NAMES, outs, strict=True) if out.get("reused")],
    }


@command()
def predict(
    settings: Settings,
    texts: Annotated[list[str], typer.Argument(help="Project text(s): title and description.")],
    model_uri: Annotated[str, typer.Option(envvar="TAGIFAI_MODEL_URI")] = "models:/tagifai@champion",
) -> dict[str, Any]:
    """Predict the tag of each text with a registered (or any MLflow) model."""
    from mlflow.exceptions import MlflowException

    from tagifai.model import load, texts_frame

    try:
        model = load(model_uri)
    except (MlflowException, OSError) as exc:
        raise TagifaiError(f"cannot load model {model_uri}: {exc}".splitlines()[0]) from exc
    output = model.predict(texts_frame(texts))
    return {
        "model_uri": model_uri,
        "predictions": [
            {"text": text, "tag": row.tag, "probability": float(row.probability)}
            for text, row in zip(texts, output.itertuples(), strict=True)
        ],
    }


@command()
def checksum(
    settings: Settings,
    source: Annotated[str, typer.Argument(help="A data source: an http(s)/file:// URL or a path.")],
) -> dict[str, Any]:
    """The sha256 of a data source's content, read as `elt` reads it (what `tagifai_watch` compares)."""
    from tagifai.contract.sources import redact
    from tagifai.pipeline import sources

    read = sources.copy(source, settings, None)  # hashed as it streams: nothing is kept
    return {"source": redact(source), "sha256": read.sha256, "bytes": read.size}


@command()
def predict_batch(
    settings: Settings,
    source: Annotated[
        str | None,
        typer.Option(
            envvar=names.PREDICT_SOURCE_ENV,
            show_default="[predict] source, else the training projects",
            help="projects CSV (id, title, description) to score: an http(s)/file:// URL or a path.",
        ),
    ] = None,
    model_name: ModelName = None,
    alias: Annotated[str, typer.Option(help="The alias whose version scores.")] = names.CHAMPION_ALIAS,
    experiment_name: Annotated[
        str | None, typer.Option(show_default="[predict] experiment_name", help="MLflow experiment of the run.")
    ] = None,
) -> dict[str, Any]:
    """Score projects with the champion; upsert them into PostgreSQL (`predictions`), once per version."""
    from tagifai.pipeline import steps

    if not (database_url := os.environ.get(names.PREDICTIONS_DB_ENV)):
        raise BadInputError("set TAGIFAI_PREDICTIONS_DB to the PostgreSQL database of the predictions table")
    source = source or settings.predict.source or settings.data.projects_url
    name = model_name or settings.register.model_name
    experiment = experiment_name or settings.predict.experiment_name
    return steps.predict_batch(settings, source, name, alias, experiment, database_url)


@command()
def monitor(settings: Settings, model_name: ModelName = None) -> dict[str, Any]:
    """Judge the champion's recent served and batch-scored rows for drift from its own data; log Evidently's report."""
    from tagifai.pipeline import monitor as monitoring

    if not (database_url := os.environ.get(names.PREDICTIONS_DB_ENV)):
        raise BadInputError("set TAGIFAI_PREDICTIONS_DB to the PostgreSQL database of the inference log")
    return monitoring.monitor(settings, model_name or settings.register.model_name, database_url)


@command()
def serve(
    settings: Settings,
    model_name: ModelName = None,
    alias: Annotated[str | None, typer.Option(show_default="[serve] alias", help="The alias to follow.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(show_default="[serve] port")] = None,
) -> None:
    """Serve the champion (MLflow's scoring protocol: /invocations, /health, /version, /metrics), following the alias.

    Answered rows go to the inference log in TAGIFAI_PREDICTIONS_DB (unset: no log).
    """
    from tagifai.serving import server

    options, name = settings.serve, model_name or settings.register.model_name
    database_url = os.environ.get(names.PREDICTIONS_DB_ENV)
    server.run(
        name, alias or options.alias, host, port or options.port, options.poll_seconds, options, settings.monitor,
        database_url,
    )  # fmt: skip


@command()
def champion_history(settings: Settings, model_name: ModelName = None) -> None:
    """Print every move of `champion` and every person's decision on one, newest first: from, to, when, by whom, why."""
    from tagifai.operations import champion
    from tagifai.pipeline import registry

    name = model_name or settings.register.model_name
    rows = registry.sync_history(settings, name) + registry.decisions(settings, name)
    for line in champion.history_table(sorted(rows, key=lambda row: int(row["when"]), reverse=True)):
        typer.echo(line)


@command()
def rollback(
    settings: Settings,
    to: Annotated[
        str | None, typer.Option(help="The version to move champion to.", show_default="the one before")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the record.")] = None,
    model_name: ModelName = None,
) -> dict[str, Any]:
    """Move `champion` back (re-scored on the current test split), record the move, tell Airflow."""
    from tagifai.operations import champion

    return champion.rollback(settings, model_name or settings.register.model_name, to, reason)


@command()
def card(
    settings: Settings,
    model_uri: Annotated[
        str, typer.Option(help="models:/<name>/<version> or models:/<name>@<alias>.")
    ] = "models:/tagifai@champion",
) -> None:
    """Print a registered version's model card (markdown), as its description in MLflow shows it."""
    from tagifai.core import card as cards
    from tagifai.pipeline import cards as model_cards

    name, version = model_cards.resolve(model_uri)
    typer.echo(cards.render(model_cards.card_of(settings, name, version)), nl=False)


@command()
def reproduce(
    settings: Settings,
    version: Annotated[str, typer.Option(help="The registered version to rebuild.")],
    on_current_data: Annotated[
        bool,
        typer.Option(
            "--on-current-data",
            help="Train its recipe on the data the pipeline validated last; score it against the champion (a report).",
        ),
    ] = False,
    recorded_image: Annotated[
        bool, typer.Option("--recorded-image", help="Only print the image and commit the version was trained with.")
    ] = False,
    projects_url: ProjectsUrl = None,
    tags_url: TagsUrl = None,
    model_name: ModelName = None,
) -> dict[str, Any]:
    """Rebuild a version from its record (split, params, settings) and compare: exit 0 identical, 1 different, 3 cannot.

    Different names the first thing that differs (a package, the code, a setting, a split, the params, the first
    prediction); cannot names what is missing. Each attempt is a run of the settings' reproduce experiment.
    With --on-current-data, the sources (--projects-url, --tags-url) go through the pipeline's elt and validate.
    """
    from tagifai.pipeline import rebuild
    from tagifai.pipeline import reproduce as reproducing

    name = model_name or settings.register.model_name
    if recorded_image:
        return rebuild.recorded_image(name, version)
    if on_current_data:  # today's sources: the deployment's, as `elt` reads them
        projects, tags = projects_url or settings.data.projects_url, tags_url or settings.data.tags_url
        return reproducing.on_current_data(settings, name, version, projects, tags)
    return reproducing.reproduce(settings, name, version)


@command()
def claim(settings: Settings) -> dict[str, Any]:
    """Create the deployment's experiments and registered model, and take EDIT/MANAGE on them from other logins.

    Run as the MLflow admin (`make up` does): the steps refuse names another login may write.
    """
    from tagifai.operations import claim as claiming

    return claiming.claim(settings)


@command()
def maintain(
    settings: Settings,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run/--no-dry-run", help="List what it would delete, archive and remove; change nothing."),
    ] = False,
) -> dict[str, Any]:
    """Retention: delete old runs nothing needs, archive never-promoted versions, prune the inference log.

    Also removes for good what was deleted long ago (`mlflow gc`, in TAGIFAI_MLFLOW_BACKEND_STORE_URI). How old
    and how many: the settings' retention section.
    """
    from tagifai.pipeline import retention

    return retention.maintain(settings, dry_run)


@command("settings", connect=False)
def show_settings(settings: Settings) -> None:
    """Check the settings (`config/`, then `TAGIFAI_CONFIG`) against their schema; print them as JSON."""
    typer.echo(json.dumps({k: v for k, v in settings.as_dict().items() if k != "stopwords"}, indent=2))
