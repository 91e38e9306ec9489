"""One Optuna study shared by several `optimize` workers: its storage, the worker loop, the best trial.

Any number of processes (Airflow's mapped `optimize` tasks, on one machine or many) run `work` on
one study kept in an RDB storage (PostgreSQL, or SQLite on one machine). Together they finish
exactly `num_trials` trials (COMPLETE or PRUNED):

- a worker starts a trial only while fewer than `num_trials` are finished, running or queued;
- a trial that finds, as it starts, that the total is already claimed (two workers raced for the
  last slot) is given back before any work: it ends FAIL with the user attr `surplus`;
- a killed worker's trial stops sending heartbeats and is failed after the grace period, which
  frees its slot for the others, or for the worker's retry;
- a retried worker finds the finished trials in the study and runs only what is missing;
- a worker returns only when the study holds `num_trials` finished trials, so every worker ends
  with the same, final best trial.

Without a storage URL the study lives in memory: one process, the same loop.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, Trial, TrialState

from tagifai.contract.errors import TagifaiError
from tagifai.contract.settings import Optimize, Settings, Train
from tagifai.contract.sources import redact
from tagifai.core import train as training

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials that hold a slot of the requested total: done, in progress, or queued for the next worker.
CLAIMED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
# How often a worker whose slots are all taken looks again (for trials that finish or go stale).
POLL_SECONDS = 1.0
OPEN_ATTEMPTS = 3

# Float params the search space draws on a log scale.
LOG_SCALE = {"alpha", "learning_rate"}

Objective = Callable[[Trial], float]
Callback = Callable[[optuna.Study, FrozenTrial], None]
# What one trial leaves for its record: the running mean f1 after each fold, and the
# cross-validation result (None when the trial was pruned or failed).
TrialRecord = Callable[[list[float], dict[str, Any] | None], None]


class SurplusTrial(Exception):
    """A trial started after the requested total was claimed; it is given back unrun."""


def suggest_params(trial: Any, space: Optimize, base: Train) -> dict[str, Any]:
    """Draw one set of params from the `[optimize]` search space on top of `base`.

    An int or float param searches its range `[low, high]` (the floats in LOG_SCALE log-uniformly);
    any other searches its list of choices.
    """
    params = base.model_dump()
    for name, values in space.search_space().items():
        kind = training.PARAM_TYPES[name]
        if kind is int:
            params[name] = trial.suggest_int(name, values[0], values[1])
        elif kind is float:
            params[name] = trial.suggest_float(name, values[0], values[1], log=name in LOG_SCALE)
        else:
            params[name] = trial.suggest_categorical(name, values)
    return params


def objective(train_df: Any, settings: Settings, record: TrialRecord, folds_run: int | None = None) -> Objective:
    """Score params drawn from `[optimize]` by k-fold cross-validation of `train_df` (its first `folds_run` folds).

    Each fold reports the running mean f1, on which the study's pruner may stop the trial early.
    `record` gets what the trial measured, pruned or not.
    """
    space = settings.optimize

    def score(trial: Trial) -> float:
        params = suggest_params(trial, space, settings.train)
        running: list[float] = []
        result = None

        def report(fold: int, mean_f1: float) -> None:
            running.append(mean_f1)
            trial.report(mean_f1, fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold}: mean f1 {mean_f1:.4f}")

        try:
            result = training.cross_validate(
                params, train_df, settings.stopwords, settings.data.other_label, space.cv_folds, report, folds_run
            )
        finally:
            record(running, result)
        return result["f1"]

    return score


def traced(objective: Objective, **attrs: str | Callable[[], str]) -> Objective:
    """`objective`, first recording on each trial where it runs (user attrs; callables are asked per trial)."""

    def run(trial: Trial) -> float:
        for name, value in attrs.items():
            trial.set_user_attr(name, value() if callable(value) else value)
        return objective(trial)

    return run


def study_options(settings: Settings) -> dict[str, Any]:
    """How `open_study` sets up a tuning study from the settings: first trial, seed and pruner."""
    space = settings.optimize
    return {
        # The [train] defaults go first: tuning never returns worse than them.
        "first_params": {name: getattr(settings.train, name) for name in space.search_space()},
        "seed": space.seed,
        # Median of the running fold means, after a warm-up.
        "pruner": optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.pruner_warmup_folds
        ),
    }


def worker_id() -> str:
    """Who runs trials here: host (the container or pod name) and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_study_name(pipeline_run_id: str, data_run_id: str) -> str:
    """The study of one pipeline run and its data: a cleared and re-run DAG run gets a fresh one."""
    return f"tagifai-{pipeline_run_id}-{data_run_id[:8]}"


def open_storage(
    url: str | None, heartbeat_seconds: int | None = None, grace_seconds: int | None = None
) -> optuna.storages.BaseStorage | None:
    """The RDB storage at `url`, or None (in memory) without a URL.

    Workers that run trials set `heartbeat_seconds`: a trial whose worker sent no heartbeat for
    `grace_seconds` is failed, and its slot goes to another worker.

    Raises:
        TagifaiError: the database cannot be reached or is not an Optuna storage.
    """
    if not url:
        return None
    sqlite = url.startswith("sqlite")
    # SQLite serializes writers: wait for the lock instead of failing at once. isolation_level=None
    # leaves BEGIN to SQLAlchemy, which `serialize_sqlite` turns into BEGIN IMMEDIATE.
    engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    # Workers that start together on a new database race to create its tables: the losers try again.
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds, grace_period=grace_seconds
                )
            break
        except Exception as exc:  # noqa: BLE001 — sqlalchemy, driver and alembic errors alike
            if attempt == OPEN_ATTEMPTS - 1 or not lost_creation_race(exc):
                raise TagifaiError(f"cannot open the Optuna storage {redact(url)}: {exc}".splitlines()[0]) from exc
            time.sleep(1 + attempt)
    if sqlite:
        serialize_sqlite(storage.engine)
    return storage


def lost_creation_race(exc: Exception) -> bool:
    """Another worker created the same table or row first (PostgreSQL and SQLite say so differently)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if isinstance(exc, (IntegrityError, ProgrammingError)):
        return True
    # SQLite: "table alembic_version already exists"; a refused connection is an OperationalError too.
    return isinstance(exc, OperationalError) and "already exists" in str(exc)


def serialize_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins.

    SQLite ignores SELECT ... FOR UPDATE, and by default locks only at the first write, so two
    workers could both read a queued trial as WAITING and both run it. PostgreSQL needs none of this.
    """
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened before the listener was added


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage | None,
    *,
    data_run_id: str,
    first_params: dict[str, Any],
    seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create study `name` (queueing `first_params` as its first trial), or join it if it exists.

    Exactly one worker creates the study, so the first trial is queued once however many start
    together. The creator's TPE sampler draws from `seed` (one worker alone is reproducible);
    a joining worker's draws from fresh entropy, or it would propose the very trials the creator
    does. Every sampler treats the trials running elsewhere as done ("constant liar"), so workers
    spread out instead of piling onto one promising region.

    Raises:
        TagifaiError: the study exists but tunes another data run.
    """
    options = {"study_name": name, "storage": storage, "pruner": pruner}
    try:
        study = optuna.create_study(direction="maximize", sampler=sampler(seed), **options)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(sampler=sampler(None), **options)
        tuned = study.user_attrs.get("data_run_id", data_run_id)  # not yet marked: its creator is setting it up
        if tuned != data_run_id:
            raise TagifaiError(f"Optuna study {name!r} tunes data run {tuned}, not {data_run_id}") from None
        return study
    study.set_user_attr("data_run_id", data_run_id)
    study.enqueue_trial(first_params)
    return study


def sampler(seed: int | None) -> optuna.samplers.TPESampler:
    """TPE that counts other workers' running trials as done (seed None: fresh entropy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar: stable in use
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def count(trials: Sequence[FrozenTrial], states: Sequence[TrialState]) -> int:
    """How many of `trials` are in one of `states`."""
    return sum(trial.state in states for trial in trials)


def guarded(objective: Objective, num_trials: int) -> Objective:
    """`objective`, but a trial that starts beyond the `num_trials` claimed before it is given back unrun."""

    def run(trial: Trial) -> float:
        claimed = trial.study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in claimed) >= num_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is past the {num_trials} requested: another worker took the slot")
        return objective(trial)

    return run


def work(
    study: optuna.Study,
    objective: Objective,
    num_trials: int,
    callbacks: Sequence[Callback] = (),
    poll_seconds: float = POLL_SECONDS,
    storage: optuna.storages.RDBStorage | None = None,
) -> int:
    """Run trials of `study` until it holds `num_trials` finished ones, whoever ran them; return how many ran here.

    `objective` may raise `optuna.TrialPruned`; `callbacks` follow each trial this worker finishes (never
    a given-back one); while every remaining slot is taken by another worker, it looks again every `poll_seconds`.
    """
    finished_here = 0

    def counted(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal finished_here
        if trial.user_attrs.get("surplus"):
            return
        finished_here += trial.state in FINISHED
        for callback in callbacks:
            callback(study, trial)

    objective = guarded(objective, num_trials)
    while True:
        fail_dead_trials(study, storage)
        trials = study.get_trials(deepcopy=False)
        if count(trials, FINISHED) >= num_trials:
            return finished_here
        if count(trials, CLAIMED) >= num_trials and not count(trials, (TrialState.WAITING,)):
            # The last trials run in other workers: wait for them to finish, or to go stale.
            time.sleep(poll_seconds)
            continue
        study.optimize(objective, n_trials=1, callbacks=[counted], catch=(SurplusTrial,))


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage | None) -> None:
    """Fail the trials of workers that died: no heartbeat for the grace period, or none ever.

    Optuna fails a RUNNING trial whose last heartbeat is too old, but skips one that has none: a worker
    killed between taking a trial and its first heartbeat would hold that slot for ever, and every
    other worker wait for it. Such a trial is failed once it started longer ago than the grace period.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if storage is None or storage.heartbeat_interval is None:
        return
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    never_beat = sqlalchemy.text(
        "SELECT trial_id FROM trials WHERE study_id = :study AND state = 'RUNNING' AND datetime_start < :cutoff "
        "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats WHERE trial_heartbeats.trial_id = trials.trial_id)"
    )
    # Optuna writes datetime_start as this machine's naive local time.
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    study_id = storage.get_study_id_from_name(study.study_name)
    with storage.engine.connect() as db:  # closed before the writes: SQLite has one writer
        dead = db.execute(never_beat, {"study": study_id, "cutoff": cutoff}).scalars().all()
    for trial_id in dead:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker failed it
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


# Where the best trial came from, as tags of every worker's run (and, carried over, of `train`'s).
LINEAGE_TAGS = ("optuna_study", "best_trial", "best_trial_run_id", "best_trial_optimize_run_id")


def best_trial_lineage(best: FrozenTrial, optimize_run_id: str) -> dict[str, str]:
    """Tags naming the best trial and the MLflow runs that hold it (the trial's run, its worker's run)."""
    return {
        "best_trial": str(best.number),
        "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
        "best_trial_optimize_run_id": best.user_attrs.get("optimize_run_id", optimize_run_id),
    }


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best completed trial.

    Raises:
        TagifaiError: no trial completed (all pruned or failed).
    """
    try:
        return study.best_trial
    except ValueError as exc:
        raise TagifaiError(f"no Optuna trial of study {study.study_name!r} completed") from exc
