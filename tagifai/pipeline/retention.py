"""`tagifai maintain`: retention of the MLflow store and the inference log, as `[retention]` says.

It reads the training experiments (`[mlflow]`), the registered model and the champion history, and asks
the pure core (`tagifai.core.retention`) what to do; then, in this order:

1. restores the deleted runs that something kept points at (so that nothing below removes them);
2. archives the never-promoted versions beyond the newest `keep_versions`: tag `tagifai.archived`;
3. deletes the runs that nothing needs (MLflow's soft delete: restorable for `deleted_days`);
4. removes for good what was deleted more than `deleted_days` ago, with MLflow's own `mlflow gc` (the click
   command, in this process: the backend store's URI, `TAGIFAI_MLFLOW_BACKEND_STORE_URI`, holds MLflow's
   database password and is never on a command line). First, for the runs it will remove: the models they
   logged are deleted too (a logged model outlives its run in MLflow 3: its own gc removes it, and its files,
   `deleted_days` after), and an archived version whose run goes is deleted from the registry (it can never
   load again). gc deletes each run's artifacts through the tracking server (`mlflow-artifacts:` URIs are
   proxied, so it needs `MLFLOW_TRACKING_URI` and the login: the bytes go from the server's store), then its
   rows; it also removes experiments deleted that long ago;
5. deletes the inference log's rows older than `inference_days` (table `inference_log` in
   `TAGIFAI_PREDICTIONS_DB`; no table yet: nothing to delete).

Every count is in the command's JSON line, the log and a `maintain` run of `[mlflow] experiment_name`
(with the whole plan as `maintenance/plan.json`). `--dry-run` lists all of it and changes nothing (no run).
Like the steps, it first checks that only the pipeline's login may write what it reads (`ownership`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import sqlalchemy as sa
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.core import retention
from tagifai.pipeline import ownership, predictions, registry, tracking

log = logging.getLogger("tagifai")

# How many ids of each kind the JSON line lists (all of them: the log and `maintenance/plan.json`).
LISTED = 100
PAGE = 1000
# The inference log's time column (`tagifai.serving.inference_log.SCHEMA`).
LOGGED_AT = "logged_at"
PLAN_ARTIFACT = "maintenance/plan.json"


def backend_store_uri() -> str:
    """MLflow's backend store, for `mlflow gc`.

    `TAGIFAI_MLFLOW_BACKEND_STORE_URI`, else the tracking URI when it is the store itself (SQLite, a
    database, a folder: not a server).

    Raises:
        BadInputError: the tracking URI is a server and the variable is unset (gc could remove nothing).
    """
    if uri := os.environ.get(names.MLFLOW_BACKEND_STORE_ENV):
        return uri
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise BadInputError(
            f"set {names.MLFLOW_BACKEND_STORE_ENV} to the database of the MLflow server at {redact(uri)}: "
            "runs deleted long ago are removed for good from it (`mlflow gc`)"
        )
    return uri


def pages(search: Any, **kwargs: Any) -> list[Any]:
    """Every item a paged MLflow search returns."""
    found, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        found += list(page)
        if not (token := page.token):
            return found


def experiments(client: MlflowClient, settings: Settings) -> dict[str, str]:
    """The training experiments that exist (`[mlflow]`), by id."""
    found = {}
    for name in settings.mlflow.choices():
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "active":
            found[experiment.experiment_id] = name
    return found


def read_runs(client: MlflowClient, experiment_ids: list[str]) -> list[dict[str, Any]]:
    """Every run of the experiments, deleted ones too, as `tagifai.core.retention.plan` takes them."""
    if not experiment_ids:
        return []
    runs = pages(client.search_runs, experiment_ids=experiment_ids, run_view_type=ViewType.ALL, max_results=PAGE)
    return [
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time or 0,
            "end_time": run.info.end_time,
            "tags": dict(run.data.tags),
            "deleted": run.info.lifecycle_stage == "deleted",
            "artifact_uri": run.info.artifact_uri,
        }
        for run in runs
    ]


def read_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of the registered model `name` (none when there is no such model), with its aliases."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    held: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        held.setdefault(str(version), []).append(alias)
    found = pages(client.search_model_versions, filter_string=f"name = '{name}'", max_results=PAGE)
    return [
        {"version": str(v.version), "run_id": v.run_id, "aliases": sorted(held.get(str(v.version), [])),
         "tags": dict(v.tags), "model_id": model_id(v)}
        for v in found
    ]  # fmt: skip


def model_id(version: Any) -> str | None:
    """The logged model a version loads: its `model_id`, else the one its source names (`models:/<model id>`)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/") and source.count("/") == 1 else None


def read_history(client: MlflowClient, settings: Settings, name: str) -> list[dict[str, str]]:
    """The tags of every champion history record of `name` (moves and decisions), deleted ones too."""
    experiment = client.get_experiment_by_name(settings.register.history_experiment)
    if experiment is None:
        return []
    runs = pages(
        client.search_runs,
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.model_name = '{name}'",
        run_view_type=ViewType.ALL,
        max_results=PAGE,
    )
    return [
        dict(run.data.tags)
        for run in runs
        if run.data.tags.get(retention.STEP_TAG) in (retention.MOVE, retention.DECISION)
    ]


def logged_models(client: MlflowClient, experiment_ids: list[str]) -> dict[str, list[str]]:
    """The models the experiments' runs logged (not deleted): run id -> model ids."""
    by_run: dict[str, list[str]] = {}
    if experiment_ids:
        for model in pages(client.search_logged_models, experiment_ids=experiment_ids, max_results=100):
            if model.source_run_id:
                by_run.setdefault(model.source_run_id, []).append(model.model_id)
    return by_run


class Store:
    """MLflow's backend store, as `mlflow gc` opens it: what it would remove for good, and gc itself."""

    def __init__(self, uri: str) -> None:
        """Open the store at `uri` (the same call `mlflow gc` makes)."""
        from mlflow.tracking import _get_store

        self.uri = uri
        try:
            self.store = _get_store(uri)
        except Exception as exc:  # a driver's error may quote the URL, password and all
            raise TagifaiError(predictions.scrub(f"cannot open MLflow's store {uri}: {exc}", uri)) from None

    @contextlib.contextmanager
    def asked(self, what: str) -> Iterator[None]:
        """Turn the store's errors into one line without the URL's password (it may pass: exit 1)."""
        try:
            yield
        except Exception as exc:
            raise TagifaiError(predictions.scrub(f"MLflow's store: {what}: {type(exc).__name__}: {exc}", self.uri)
                               .splitlines()[0]) from None  # fmt: skip

    def deleted_runs(self, older_than_ms: int) -> set[str]:
        """Runs deleted at least `older_than_ms` ago (gc's own query)."""
        with self.asked("deleted runs"):
            return set(self.store._get_deleted_runs(older_than=older_than_ms))

    def deleted_models(self, older_than_ms: int) -> set[str]:
        """Logged models deleted at least `older_than_ms` ago (gc's own query)."""
        with self.asked("deleted logged models"):
            return set(self.store._get_deleted_logged_models(older_than=older_than_ms))

    def deleted_experiments(self, older_than_ms: int) -> set[str]:
        """Experiments deleted at least `older_than_ms` ago, as gc finds them."""
        threshold = int(time.time() * 1000) - older_than_ms
        with self.asked("deleted experiments"):
            found = pages(
                self.store.search_experiments,
                view_type=ViewType.DELETED_ONLY,
                filter_string=f"last_update_time < {threshold}",
            )
        return {experiment.experiment_id for experiment in found}

    def gc(self, older_than_ms: int, tracking_uri: str) -> None:
        """`mlflow gc --older-than <s>s`, in this process, its output in the log (stderr)."""
        from mlflow.cli import gc

        args = ["--older-than", f"{older_than_ms // 1000}s", "--backend-store-uri", self.uri]
        args += ["--tracking-uri", tracking_uri]
        try:
            with contextlib.redirect_stdout(sys.stderr):
                gc.main(args=args, standalone_mode=False, prog_name="mlflow gc")
        except Exception as exc:  # MLflow or the artifact server refused, or did not answer: try again later
            message = predictions.scrub(f"mlflow gc failed: {type(exc).__name__}: {exc}".splitlines()[0], self.uri)
            raise TagifaiError(message) from None


def inference_rows(database_url: str, before: datetime, delete: bool) -> int:
    """How many inference-log rows were logged before `before`; deleted too when `delete`. No table: 0.

    Raises:
        BadInputError: the URL is not PostgreSQL.
        TagifaiError: PostgreSQL could not be reached or refused (the message has no password).
    """
    import psycopg2

    libpq_url = predictions.dsn(database_url)
    engine = sa.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(libpq_url, connect_timeout=predictions.CONNECT_TIMEOUT_SECONDS),
        poolclass=sa.pool.NullPool,
    )
    table = sa.table(names.INFERENCE_LOG_TABLE, sa.column(LOGGED_AT))
    old = table.c[LOGGED_AT] < before
    failure = None
    try:
        with engine.connect() as connection, connection.begin():
            if not sa.inspect(connection).has_table(names.INFERENCE_LOG_TABLE):
                return 0
            if delete:
                return connection.execute(sa.delete(table).where(old)).rowcount
            return connection.execute(sa.select(sa.func.count()).select_from(table).where(old)).scalar_one()
    except sa.exc.DBAPIError as exc:
        reason = " ".join(str(exc.orig).split())
        failure = f"inference log at {redact(database_url)}: {type(exc.orig).__name__}: {reason}"
    raise TagifaiError(predictions.scrub(failure, database_url))  # not chained: libpq may quote the URL


def listed(ids: Any) -> list[str]:
    """At most `LISTED` of `ids`, for the JSON line."""
    return list(ids)[:LISTED]


def describe(run: dict[str, Any], reason: str) -> str:
    """A run as the log names it: id, step, pipeline, why."""
    tags = run["tags"]
    return f"{run['run_id']} ({tags.get(retention.STEP_TAG)} of {tags.get(retention.PIPELINE_TAG)}: {reason})"


def maintain(settings: Settings, dry_run: bool = False) -> dict[str, Any]:
    """Apply `[retention]` to MLflow and the inference log (see the module); what it did, or would do.

    Raises:
        BadInputError: MLflow's backend store is not known, or a login but the pipeline's may write a name.
        TagifaiError: MLflow or PostgreSQL refused or did not answer (what was done before it is in the
            failed `maintain` run; the next maintenance picks up where this one stopped).
    """
    try:
        return maintained(settings, dry_run)
    except MlflowException as exc:
        raise TagifaiError(f"MLflow at {redact(mlflow.get_tracking_uri())}: {registry.one_line(exc)}") from exc


def maintained(settings: Settings, dry_run: bool) -> dict[str, Any]:
    """`maintain`, MLflow's errors raised as they come."""
    keep = settings.retention
    store = Store(backend_store_uri())
    client, name = MlflowClient(), registry.model_name(settings)
    training = experiments(client, settings)
    history_experiment = client.get_experiment_by_name(settings.register.history_experiment)
    owned = [ownership.experiment(experiment_id, label) for experiment_id, label in training.items()]
    if history_experiment is not None:
        owned.append(ownership.experiment(history_experiment.experiment_id, settings.register.history_experiment))
    ownership.check(*owned, ownership.model(name))

    runs, versions = read_runs(client, list(training)), read_versions(client, name)
    now = datetime.now(UTC)
    plan = retention.plan(
        runs,
        versions,
        read_history(client, settings, name),
        now_ms=int(now.timestamp() * 1000),
        run_days=keep.run_days,
        keep_versions=keep.keep_versions,
        grace_minutes=settings.limits.run_minutes,
    )
    index = {run["run_id"]: run for run in runs}
    older_than_ms = int(keep.deleted_days * retention.DAY_MS)
    verb = "would " if dry_run else ""
    for run_id in plan["restore"]:
        log.info("maintain: %srestore run %s (something kept points at it)", verb, run_id)
    for version in plan["archive"]:
        log.info("maintain: %sarchive %s v%s (never champion, beyond the newest %d)", verb, name, version,
                 keep.keep_versions)  # fmt: skip
    for run_id, reason in plan["delete"].items():
        log.info("maintain: %sdelete run %s", verb, describe(index[run_id], reason))
    out: dict[str, Any] = {"dry_run": dry_run, "model_name": name, **plan["counts"]}
    lists = {"delete": listed(plan["delete"]), "archive": listed(plan["archive"]), "restore": listed(plan["restore"])}
    inference = (os.environ.get(names.PREDICTIONS_DB_ENV), now - timedelta(days=keep.inference_days))
    if dry_run:
        return {**out, **forecast(client, store, name, versions, plan, list(training), older_than_ms),
                "inference_rows_to_delete": prune_inference(*inference, dry_run=True), **lists}  # fmt: skip

    with tracking.step_run("maintain", tracking.experiment_id(settings.mlflow.experiment_name)) as run:
        mlflow.log_params({f"retention_{k}": v for k, v in keep.model_dump().items()})
        tracking.log_json({**plan, "model_name": name}, PLAN_ARTIFACT)
        done = apply(client, name, plan, now)
        mlflow.log_metrics(done)
        gc = collect(client, store, name, versions, plan, list(training), older_than_ms)
        mlflow.log_metrics(gc)
        rows = prune_inference(*inference, dry_run=False)
        if rows is not None:
            mlflow.log_metric("inference_rows_deleted", rows)
        log.info("maintain: %s", ", ".join(f"{k} {v}" for k, v in {**done, **gc}.items()))
        return {**out, **done, **gc, "inference_rows_deleted": rows, "run_id": run.info.run_id, **lists}


def prune_inference(database_url: str | None, before: datetime, dry_run: bool) -> int | None:
    """Delete (or count, `dry_run`) the inference-log rows logged before `before`; None without a database."""
    if not database_url:
        log.warning("maintain: %s is unset: no inference log to prune", names.PREDICTIONS_DB_ENV)
        return None
    rows = inference_rows(database_url, before, delete=not dry_run)
    log.info("maintain: %s %d inference-log rows logged before %s", "would delete" if dry_run else "deleted", rows,
             before.isoformat(timespec="seconds"))  # fmt: skip
    return rows


def forecast(
    client: MlflowClient,
    store: Store,
    name: str,
    versions: list[dict[str, Any]],
    plan: dict[str, Any],
    experiment_ids: list[str],
    older_than_ms: int,
) -> dict[str, Any]:
    """What `collect` would remove for good after `plan`, and list it.

    The runs deleted long enough ago and, with `deleted_days` 0, those `plan` deletes; the models they logged,
    the archived versions they held.
    """
    purge = (store.deleted_runs(older_than_ms) - set(plan["restore"])) | (
        set(plan["delete"]) if older_than_ms == 0 else set()
    )
    gone = retention.gone_versions(versions, set(plan["live"]), purge)
    models = logged_models(client, experiment_ids)
    doomed = {m for run_id in purge for m in models.get(run_id, [])} - live_models(versions, plan["live"])
    purge_models = store.deleted_models(older_than_ms) | (doomed if older_than_ms == 0 else set())
    for run_id in sorted(purge):
        log.info("maintain: would remove run %s for good (mlflow gc)", run_id)
    for version in gone:
        log.info("maintain: would remove archived %s v%s from the registry (its run goes for good)", name, version)
    return {
        "runs_to_purge": len(purge),
        "logged_models_to_delete": len(doomed),
        "logged_models_to_purge": len(purge_models),
        "experiments_to_purge": len(store.deleted_experiments(older_than_ms)),
        "versions_to_remove": len(gone),
        "purge": listed(sorted(purge)),
        "remove": listed(gone),
    }


def live_models(versions: list[dict[str, Any]], live: list[str]) -> set[str]:
    """The logged models the live versions load (never deleted)."""
    return {v["model_id"] for v in versions if v["version"] in set(live) and v.get("model_id")}


def apply(client: MlflowClient, name: str, plan: dict[str, Any], now: datetime) -> dict[str, int]:
    """Restore, archive, delete as `plan` says; how many of each."""
    for run_id in plan["restore"]:
        client.restore_run(run_id)
    for version in plan["archive"]:
        client.set_model_version_tag(name, version, retention.ARCHIVED_TAG, now.isoformat(timespec="seconds"))
    for run_id in plan["delete"]:
        client.delete_run(run_id)
    return {"runs_restored": len(plan["restore"]), "versions_archived": len(plan["archive"]),
            "runs_deleted": len(plan["delete"])}  # fmt: skip


def collect(
    client: MlflowClient,
    store: Store,
    name: str,
    versions: list[dict[str, Any]],
    plan: dict[str, Any],
    experiment_ids: list[str],
    older_than_ms: int,
) -> dict[str, int]:
    """Remove for good what was deleted `older_than_ms` ago (`mlflow gc`); how many of each went.

    The models its runs logged go too (but those a live version loads), and the archived versions they held.
    """
    purge = store.deleted_runs(older_than_ms)
    models = logged_models(client, experiment_ids)
    doomed = {m for run_id in purge for m in models.get(run_id, [])} - live_models(versions, plan["live"])
    for model_id in sorted(doomed):
        client.delete_logged_model(model_id)
    gone = retention.gone_versions(versions, set(plan["live"]), purge)
    for version in gone:
        client.delete_model_version(name, version)
        log.info("maintain: removed archived %s v%s from the registry (its run goes for good)", name, version)
    purge_models, purge_experiments = store.deleted_models(older_than_ms), store.deleted_experiments(older_than_ms)
    if purge or purge_models or purge_experiments:
        store.gc(older_than_ms, mlflow.get_tracking_uri())
    left_runs, left_models = store.deleted_runs(0), store.deleted_models(0)
    return {
        "runs_purged": len(purge - left_runs),
        "logged_models_deleted": len(doomed),
        "logged_models_purged": len(purge_models - left_models),
        "experiments_purged": len(purge_experiments - store.deleted_experiments(0)),
        "versions_removed": len(gone),
    }
