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
import os
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from tagifai.contract import names
from tagifai.contract.settings import Settings

app = typer.Typer(
    help="Tag ML projects: elt → validate → optimize → train → evaluate → register, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProjectsUrl = Annotated[
    str | None,
    typer.Option(
        envvar=names.PROJECTS_URL_ENV, show_default="pinned upstream", help="projects.csv: http(s)/file:// URL or path."
    ),
]
TagsUrl = Annotated[
    str | None,
    typer.Option(
        envvar=names.TAGS_URL_ENV, show_default="pinned upstream", help="tags.csv: http(s)/file:// URL or path."
    ),
]
ExperimentName = Annotated[
    str | None,
    typer.Option(envvar="MLFLOW_EXPERIMENT_NAME", show_default="tagifai", help="MLflow experiment for the runs."),
]
NumTrials = Annotated[int | None, typer.Option(min=1, show_default="20 (config)", help="Optuna trials.")]
Storage = Annotated[
    str | None,
    typer.Option(
        envvar=names.OPTUNA_STORAGE_ENV,
        show_default="in-memory",
        help="Optuna RDB storage URL, to share one study between processes.",
    ),
]
StudyName = Annotated[
    str | None,
    typer.Option(show_default="tagifai-<pipeline run id>-<data run id[:8]>", help="Optuna study name."),
]
MinF1 = Annotated[float | None, typer.Option(show_default="config", help="Lowest test f1 a champion may have.")]
MaxRegression = Annotated[
    float | None, typer.Option(show_default="config", help="How far below the champion's f1 a challenger may be.")
]
Force = Annotated[
    bool,
    typer.Option(
        "--force/--no-force",
        envvar=names.FORCE_ENV,
        help="Run even when a finished run with the same key (data, code, settings, arguments) exists.",
    ),
]
ModelName = Annotated[
    str | None, typer.Option(envvar=names.MODEL_NAME_ENV, show_default="tagifai", help="Registered model name.")
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


def human(action: Callable[[Settings], None], connect: bool = True) -> None:
    """Load the settings, connect to MLflow (`connect`), run `action`; a TagifaiError exits with one line."""
    from tagifai.contract.config import load_settings
    from tagifai.contract.errors import TagifaiError

    try:
        settings = load_settings()
        if connect:
            from tagifai.pipeline import tracking

            tracking.connect(settings)
        action(settings)
    except TagifaiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def command(func: Callable[..., dict[str, Any]]) -> Callable[..., None]:
    """Run a step as `human` does, and print its result as the hand-off line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        human(lambda settings: emit(func(settings, *args, **kwargs)))

    # Typer sees the options only: `settings` is supplied here, not on the command line.
    signature = inspect.signature(func, eval_str=True)
    wrapper.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return wrapper


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


def data_urls(settings: Settings, projects_url: str | None, tags_url: str | None) -> tuple[str, str]:
    """The data sources: options/env first, then the pinned defaults."""
    return projects_url or settings.data.projects_url, tags_url or settings.data.tags_url


def gate_options(
    settings: Settings, min_f1: float | None, max_regression: float | None, model_name: str | None
) -> tuple[float, float, str]:
    """The promotion gate and model name: `[register]`, made stricter (never looser) by the options.

    Raises:
        BadInputError: an option is not a finite number, or would loosen the deployer's gate.
    """
    from tagifai.contract.errors import BadInputError

    gate = settings.register
    for name, value in (("min_f1", min_f1), ("max_regression", max_regression)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise BadInputError(f"{name} must be a finite number, not {value!r}")
    if min_f1 is not None and min_f1 < gate.min_f1:
        raise BadInputError(
            f"min_f1 {min_f1} would loosen this deployment's gate ([register] min_f1 = {gate.min_f1}): "
            "a run may only make it stricter"
        )
    if max_regression is not None and max_regression > gate.max_regression:
        raise BadInputError(
            f"max_regression {max_regression} would loosen this deployment's gate "
            f"([register] max_regression = {gate.max_regression}): a run may only make it stricter"
        )
    return (
        gate.min_f1 if min_f1 is None else min_f1,
        gate.max_regression if max_regression is None else max_regression,
        model_name or gate.model_name,
    )


def trials(settings: Settings, num_trials: int | None) -> int:
    """`--num-trials`, else `[optimize] num_trials`, at most `[limits] max_trials`.

    Raises:
        BadInputError: more trials than the deployment allows.
    """
    from tagifai.contract.errors import BadInputError

    count = num_trials or settings.optimize.num_trials
    if count > (most := settings.limits.max_trials):
        raise BadInputError(f"num_trials {count} is more than this deployment allows ([limits] max_trials = {most})")
    return count


@app.command()
@command
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

    projects, tags = data_urls(settings, projects_url, tags_url)
    experiment = experiment_name or settings.mlflow.experiment_name
    return steps.elt(settings, projects, tags, experiment, force, plan_params(settings, plan))


def plan_params(settings: Settings, plan: str | None) -> dict[str, Any] | None:
    """The pipeline params `--plan` names, checked as their own options would be.

    Raises:
        BadInputError: not a JSON object of those params, or they break the gate or `[limits]`.
    """
    from tagifai.contract.errors import BadInputError

    if not plan:
        return None
    try:
        given = json.loads(plan)
        assert isinstance(given, dict)
        min_f1, max_regression, model_name = gate_options(
            settings, given.get("min_f1"), given.get("max_regression"), given.get("model_name")
        )
        return {"num_trials": trials(settings, given.get("num_trials")), "min_f1": min_f1,
                "max_regression": max_regression, "model_name": model_name}  # fmt: skip
    except (ValueError, AssertionError, TypeError) as exc:
        raise BadInputError(f"--plan must be a JSON object of num_trials, min_f1, max_regression: {exc}") from exc


@app.command()
@command
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


@app.command()
@command
def optimize(
    settings: Settings,
    data_run: Annotated[str, typer.Option(help="Run id of the validate step.")],
    num_trials: NumTrials = None,
    storage: Storage = None,
    study_name: StudyName = None,
    force: Force = False,
) -> dict[str, Any]:
    """Tune hyperparameters with Optuna (TPE + median pruning); each trial is a child run.

    Start it in several processes with one --storage to share the study: together they run
    --num-trials trials.
    """
    from tagifai.pipeline import steps

    return steps.optimize(settings, data_run, trials(settings, num_trials), storage, study_name, force)


@app.command()
@command
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


@app.command()
@command
def evaluate(
    settings: Settings, train_run: Annotated[str, typer.Option(help="Run id of the train step.")], force: Force = False
) -> dict[str, Any]:
    """Score the trained model on the held-out test split: overall, per class, slices, behavior."""
    from tagifai.pipeline import steps

    return steps.evaluate(settings, train_run, force)


@app.command()
@command
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
    return steps.register(settings, evaluate_run, *gate, force=force)


@app.command()
@command
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
    projects, tags = data_urls(settings, projects_url, tags_url)
    experiment = experiment_name or settings.mlflow.experiment_name
    elt_out = steps.elt(settings, projects, tags, experiment, force)
    validate_out = steps.validate(settings, elt_out["run_id"], allow_drift, force=force)
    optimize_out = steps.optimize(settings, validate_out["run_id"], count, storage, force=force)
    train_out = steps.train(settings, validate_out["run_id"], optimize_out["run_id"], force)
    evaluate_out = steps.evaluate(settings, train_out["run_id"], force)
    register_out = steps.register(settings, evaluate_out["run_id"], *gate, force=force)
    outs = [elt_out, validate_out, optimize_out, train_out, evaluate_out, register_out]
    return {
        "pipeline_run_id": os.environ[names.PIPELINE_RUN_ID_ENV],
        **{f"{name}_run_id": out["run_id"] for name, out in zip(steps.NAMES, outs, strict=True)},
        **{k: evaluate_out[k] for k in ("test_f1", "test_precision", "test_recall")},
        **{k: register_out[k] for k in ("model_name", "version", "promoted")},
        "reused": [name for name, out in zip(steps.NAMES, outs, strict=True) if out.get("reused")],
    }


@app.command()
@command
def predict(
    settings: Settings,
    texts: Annotated[list[str], typer.Argument(help="Project text(s): title and description.")],
    model_uri: Annotated[str, typer.Option(envvar="TAGIFAI_MODEL_URI")] = "models:/tagifai@champion",
) -> dict[str, Any]:
    """Predict the tag of each text with a registered (or any MLflow) model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tagifai.contract.errors import TagifaiError
    from tagifai.model import texts_frame

    try:
        model = mlflow.pyfunc.load_model(model_uri)
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


@app.command()
@command
def checksum(
    settings: Settings,
    source: Annotated[str, typer.Argument(help="A data source: an http(s)/file:// URL or a path.")],
) -> dict[str, Any]:
    """The sha256 of a data source's content, read as `elt` reads it (what `tagifai_watch` compares)."""
    from tagifai.contract.sources import redact
    from tagifai.core import data
    from tagifai.pipeline import sources

    content = sources.fetch(source, settings)
    return {"source": redact(source), "sha256": data.sha256(content), "bytes": len(content)}


@app.command("predict-batch")
@command
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
    from tagifai.contract.errors import BadInputError
    from tagifai.pipeline import registry, steps

    database_url = os.environ.get(names.PREDICTIONS_DB_ENV)
    if not database_url:
        raise BadInputError("set TAGIFAI_PREDICTIONS_DB to the PostgreSQL database of the predictions table")
    predict = settings.predict
    chosen = source or predict.source or data_urls(settings, None, None)[0]
    experiment = experiment_name or predict.experiment_name
    return steps.predict_batch(
        settings, chosen, model_name or registry.model_name(settings), alias, experiment, database_url
    )


@app.command()
def serve(
    model_name: ModelName = None,
    alias: Annotated[str | None, typer.Option(show_default="[serve] alias", help="The alias to follow.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(show_default="[serve] port")] = None,
) -> None:
    """Serve the champion (MLflow's scoring protocol: /invocations, /health, /version), following the alias."""
    from tagifai.pipeline import registry
    from tagifai.serving import server as serve

    def run(settings: Settings) -> None:
        options = settings.serve
        name = model_name or registry.model_name(settings)
        serve.run(name, alias or options.alias, host, port or options.port, options.poll_seconds, options)

    human(run)


@app.command("champion-history")
def champion_history(model_name: ModelName = None) -> None:
    """Print every move of `champion`, newest first: from, to, when, by what, and why."""
    from tagifai.operations import champion
    from tagifai.pipeline import registry

    def show(settings: Settings) -> None:
        for line in champion.history_table(
            registry.sync_history(settings, model_name or registry.model_name(settings))
        ):
            typer.echo(line)

    human(show)


@app.command()
@command
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
    from tagifai.pipeline import registry

    return champion.rollback(settings, model_name or registry.model_name(settings), to, reason)


@app.command()
def card(
    model_uri: Annotated[
        str, typer.Option(help="models:/<name>/<version> or models:/<name>@<alias>.")
    ] = "models:/tagifai@champion",
) -> None:
    """Print a registered version's model card (markdown), as its description in MLflow shows it."""
    from tagifai.core import card as cards
    from tagifai.pipeline import cards as model_cards

    def show(settings: Settings) -> None:
        name, version = model_cards.resolve(model_uri)
        typer.echo(cards.render(model_cards.card_of(settings, name, version)), nl=False)

    human(show)


@app.command("settings")
def show_settings() -> None:
    """Check the settings (`config/`, then `TAGIFAI_CONFIG`) against their schema; print them as JSON."""

    def show(settings: Settings) -> None:
        typer.echo(json.dumps({k: v for k, v in settings.as_dict().items() if k != "stopwords"}, indent=2))

    human(show, connect=False)
