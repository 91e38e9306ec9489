"""`tagifai monitor`: the last `[monitor] window_hours` of what the champion served and batch-scored, judged for drift.

The champion is the version holding `champion`; its data is the validate run its version names
(`data_run_id`): the train split is what it learned (the vocabulary of the text checks, and the rows left out
of the window), the val and test splits, scored here by the champion, are the reference
(`tagifai.core.drift` says why not the train split). The window is read from the tagifai database
(TAGIFAI_PREDICTIONS_DB): the inference log's rows of this model and version (`logged_at`), and the
`predictions` rows of this version (`scored_at`), the newest `MAX_ROWS` of each. Only the champion's own
rows: the reference is its predictions, and rows another version answered would report the change of model
as drift. Right after `champion` moves, the window is the new version's rows only: often too few to judge.

Each look is a run of the experiment `[monitor] experiment_name`, tagged with the model and version it
judged (the model card links to them) and its verdict, with the figures as metrics, the verdict as
`monitor/verdict.json` and Evidently's report as `monitor/report.html`.

    psql "$DATABASE_URL" -c "SELECT model_version, count(*) FROM inference_log
                             WHERE logged_at > now() - interval '1 day' GROUP BY model_version"
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import pandas as pd
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.core import drift
from tagifai.pipeline import ownership, predictions, registry, tracking

log = logging.getLogger("tagifai")

STEP = "monitor"
# The newest rows of each source a look reads at most.
MAX_ROWS = 100_000
# The monitor run's tags that name what it judged (the model card's link filters on them) and its verdict.
MODEL_NAME_TAG, MODEL_VERSION_TAG, VERDICT_TAG = "model_name", "model_version", "verdict"
REPORT = "monitor/report.html"
VERDICT = "monitor/verdict.json"
# Evidently and the telemetry library it uses send nothing home: any value of the first two switches them off.
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}

INFERENCE_LOG = sa.table(
    names.INFERENCE_LOG_TABLE,
    *(sa.column(name) for name in ("logged_at", "title", "description", "tag", "probability")),
    sa.column("model_name"),
    sa.column("model_version"),
)
PREDICTIONS = sa.table(
    names.PREDICTIONS_TABLE, *(sa.column(name) for name in ("id", "tag", "probability", "model_version", "scored_at"))
)


def telemetry_off() -> None:
    """Switch off Evidently's telemetry in this process (and what it starts), whatever the environment said."""
    os.environ.update(NO_TELEMETRY)


def reports_link(experiment_id: str, model_name: str, version: str) -> str:
    """The MLflow UI's list of the monitor's runs that judged `model_name` v`version` (relative to the UI)."""
    search = f"tags.{MODEL_NAME_TAG} = '{model_name}' and tags.{MODEL_VERSION_TAG} = '{version}'"
    return f"#/experiments/{urllib.parse.quote(str(experiment_id))}/runs?searchFilter={urllib.parse.quote(search)}"


# ---- the window, from PostgreSQL ----------------------------------------------------------------------------


@contextmanager
def connected(database_url: str) -> Iterator[sa.Connection]:
    """A read-only connection to the tagifai database.

    Raises:
        BadInputError: the URL is not PostgreSQL.
        TagifaiError: connecting or reading failed (the message has no password).
    """
    import psycopg2

    libpq_url = predictions.dsn(database_url)
    engine = sa.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(libpq_url, connect_timeout=predictions.CONNECT_TIMEOUT_SECONDS),
        poolclass=sa.pool.NullPool,
    )
    failure, connection = None, None
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(sa.text("SET TRANSACTION READ ONLY"))
            yield connection
    except sa.exc.DBAPIError as exc:
        what = "connect to" if connection is None else "read the window from"
        failure = (
            f"could not {what} {redact(database_url)}: {type(exc.orig).__name__}: {' '.join(str(exc.orig).split())}"
        )
    if failure:
        # Raised here, not chained: libpq may quote the URL, password and all, in its own message.
        raise TagifaiError(predictions.scrub(failure, database_url))


def newest(
    connection: sa.Connection, table: sa.TableClause, when: str, columns: tuple[str, ...], *conditions: Any
) -> tuple[pd.DataFrame, int]:
    """The newest `MAX_ROWS` rows of `table` that meet `conditions`, and how many do (none: no such table)."""
    if not sa.inspect(connection).has_table(table.name):
        return pd.DataFrame({name: [] for name in columns}), 0
    total = connection.execute(sa.select(sa.func.count()).select_from(table).where(*conditions)).scalar_one()
    query = sa.select(*(table.c[name] for name in columns)).where(*conditions)
    rows = connection.execute(query.order_by(table.c[when].desc()).limit(MAX_ROWS)).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=list(columns)), int(total)


def window(database_url: str, model_name: str, version: int, since: datetime, until: datetime) -> dict[str, Any]:
    """What `model_name` v`version` served and batch-scored in [since, until], and how many rows of each there were.

    Returns:
        `served` (`title`, `description`, `tag`, `probability`), `batch` (`id`, `tag`, `probability`), and
        `totals` (rows of each in the window; more than the frames hold past `MAX_ROWS`).
    """
    log_table, batch_table = INFERENCE_LOG, PREDICTIONS
    with connected(database_url) as connection:
        served, served_total = newest(
            connection, log_table, "logged_at", ("title", "description", "tag", "probability"),
            log_table.c.model_name == model_name, log_table.c.model_version == version,
            log_table.c.logged_at >= since, log_table.c.logged_at <= until,
        )  # fmt: skip
        batch, batch_total = newest(
            connection, batch_table, "scored_at", ("id", "tag", "probability"),
            batch_table.c.model_version == version, batch_table.c.scored_at >= since, batch_table.c.scored_at <= until,
        )  # fmt: skip
    served = served.astype({"title": str, "description": str, "tag": str, "probability": float})
    batch = batch.astype({"id": str, "tag": str, "probability": float})
    return {"served": served, "batch": batch, "totals": {"served": served_total, "batch": batch_total}}


# ---- the champion and its data, from MLflow -------------------------------------------------------------------


def champion_data(settings: Settings, model_name: str, version: Any, *also: ownership.Resource) -> dict[str, Any]:
    """The champion's data run, its train split, and its val and test splits scored by the champion.

    Also checks that no login but this one may write the data run's experiment, the model, or `also`.

    Raises:
        BadInputError: the version names no data run (it was not registered by the pipeline), that run is in an
            experiment this deployment does not list, or another login may write what the monitor reads or writes.
        TagifaiError: MLflow or the model could not be read for now, or the data run is not a finished validate run.
    """
    data_run_id = version.tags.get("data_run_id")
    if not data_run_id:
        raise BadInputError(
            f"{model_name} v{version.version} has no data_run_id tag: registered outside the pipeline, its training "
            "data is unknown; promote a version the pipeline registered"
        )
    data_run = tracking.get_run(data_run_id, "validate")
    listed = ownership.listed_experiment(settings, data_run.info.experiment_id)
    ownership.check(listed, ownership.model(model_name), *also)
    train = tracking.load_split(data_run_id, "train")
    held_out = pd.concat([tracking.load_split(data_run_id, split) for split in ("val", "test")], ignore_index=True)
    model = models.load(f"models:/{model_name}/{version.version}")
    scored = predictions.score(model, held_out)
    reference = pd.DataFrame(
        {
            "title": held_out["title"],
            "description": held_out["description"],
            "tag": scored["tag"],
            "probability": scored["probability"],
        }
    )
    return {"data_run_id": data_run_id, "train": train, "reference": reference}


# ---- a look -----------------------------------------------------------------------------------------------


def metrics_of(verdict: dict[str, Any]) -> dict[str, float]:
    """The verdict's figures as MLflow metrics."""
    found = {f"{source}_rows": float(n) for source, n in verdict["rows"].items()}
    found["reference_low_confidence_share"] = verdict["reference_low_confidence_share"]
    if verdict["drifted"] is not None:
        found["drifted"] = float(verdict["drifted"])
    for source, result in verdict["sources"].items():
        found[f"{source}_drifted_columns"] = float(result["drifted_columns"])
        found[f"{source}_drifted_share"] = result["drifted_share"]
        found[f"{source}_low_confidence_share"] = result["low_confidence_share"]
        for column, figures in result["columns"].items():
            found[f"{source}_p_value_{column}"] = figures["p_value"]
    return found


def monitor(settings: Settings, model_name: str, database_url: str, until: datetime | None = None) -> dict[str, Any]:
    """Judge the window ending `until` (now) for the champion of `model_name`; log the look as an MLflow run.

    Returns:
        `run_id`, `experiment_id`, `drifted` (None: nothing judged), `status` ("drift", "no drift",
        "insufficient", or "no champion": no run then), `reasons`, `rows` (the reference's; per source: judged,
        in the window, left out as training rows), `model_name`, `model_version`, and `report` (the HTML
        report's artifact path; None without one).

    Raises:
        BadInputError: the database URL is not PostgreSQL, the champion's data cannot be followed, or another
            login may write the monitor's experiment, the model or the champion's data.
        TagifaiError: MLflow, the model or the database could not be read for now.
    """
    telemetry_off()
    options = settings.monitor
    client = MlflowClient()
    champion = registry.version_by_alias(client, model_name, names.CHAMPION_ALIAS)
    if champion is None:  # nothing to judge yet, and nothing a retry would change
        reason = f"{model_name} has no @{names.CHAMPION_ALIAS} yet: nothing to judge"
        log.info("monitor: %s", reason)
        return {"run_id": None, "drifted": None, "status": "no champion", "reasons": [reason], "rows": {},
                "model_name": model_name, "model_version": None, "report": None}  # fmt: skip
    predictions.dsn(database_url)  # a URL that is not PostgreSQL fails before anything is read
    experiment_id = tracking.experiment_id(options.experiment_name)
    own = ownership.experiment(experiment_id, options.experiment_name)
    found = champion_data(settings, model_name, champion, own)
    version = int(champion.version)
    until = until or datetime.now(UTC)
    since = until - timedelta(hours=options.window_hours)
    seen = window(database_url, model_name, version, since, until)
    train = found["train"]
    # What the champion was trained on says nothing of new data (its confidence there is higher): left out.
    served = seen["served"][~drift.seen_in_training(seen["served"], train)]
    batch = seen["batch"][~seen["batch"]["id"].isin(set(train["id"].astype(str)))]
    verdict, html = drift.judge(found["reference"], train, served, batch[["tag", "probability"]], options)
    rows: dict[str, Any] = {"reference": len(found["reference"])}
    for source, frame in (("served", served), ("batch", batch)):
        left_out = len(seen[source]) - len(frame)
        rows[source] = {"judged": len(frame), "in_window": seen["totals"][source], "training_rows_left_out": left_out}
    verdict["window"] = {"since": since.isoformat(), "until": until.isoformat(), "hours": options.window_hours}
    tags = {
        MODEL_NAME_TAG: model_name,
        MODEL_VERSION_TAG: str(version),
        VERDICT_TAG: verdict["status"],
        "drifted": str(verdict["drifted"]).lower(),
        "data_run_id": found["data_run_id"],
    }
    with tracking.step_run(STEP, experiment_id, **tags) as run:
        params = {"window_hours": options.window_hours, "since": since.isoformat(), "until": until.isoformat()}
        mlflow.log_params({**params, "max_rows": MAX_ROWS, **verdict["settings"]})
        counts = {f"{s}_{k}": float(v) for s, c in rows.items() if isinstance(c, dict) for k, v in c.items()}
        mlflow.log_metrics({**metrics_of(verdict), **counts})
        tracking.log_json({**verdict, "rows_read": rows}, VERDICT)
        if html is not None:
            tracking.log_bytes(html.encode(), REPORT)
        for reason in verdict["reasons"]:
            log.info("monitor: %s v%s: %s", model_name, version, reason)
        log.info("monitor: %s v%s: %s", model_name, version, verdict["status"])
        return tracking.record_output(
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "drifted": verdict["drifted"],
                "status": verdict["status"],
                "reasons": verdict["reasons"],
                "rows": rows,
                "model_name": model_name,
                "model_version": str(version),
                "report": REPORT if html is not None else None,
            }
        )
