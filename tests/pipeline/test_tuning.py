"""Workers sharing one Optuna study: exact totals, joins, stale trials, given-back surplus trials."""

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from tagifai.contract.errors import TagifaiError
from tagifai.contract.settings import SEARCHABLE
from tagifai.contract.sources import redact
from tagifai.pipeline import tuning

optuna.logging.set_verbosity(optuna.logging.ERROR)


def states(study: optuna.Study) -> dict[str, int]:
    """How many trials of `study` are in each state."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def quadratic(seconds: float = 0.0):
    """A fast objective; `seconds` of sleep lets workers overlap."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        time.sleep(seconds)
        return -(x**2)

    return objective


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_open_study_queues_the_first_params_once_and_later_workers_join(sqlite_url):
    storage = tuning.open_storage(sqlite_url)
    first = tuning.open_study("s", storage, data_run_id="d1", first_params={"x": 0.5})
    joined = tuning.open_study("s", tuning.open_storage(sqlite_url), data_run_id="d1", first_params={"x": 0.5})
    assert joined.study_name == first.study_name
    assert states(joined) == {"WAITING": 1}
    assert joined.user_attrs == {"data_run_id": "d1"}


def first_draw(study: optuna.Study) -> float:
    """The x a study's sampler proposes for its next trial."""
    return study.ask().suggest_float("x", -2, 2)


def test_a_lone_worker_is_reproducible_and_joining_workers_propose_other_trials(tmp_path):
    def create(url: str) -> optuna.Study:
        return tuning.open_study("s", tuning.open_storage(url), data_run_id="d", first_params={}, seed=7)

    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")]
    creators = [create(url) for url in urls]
    for study in creators:
        study.ask()  # the queued first trial
    draws = [first_draw(study) for study in creators]
    assert draws[0] == draws[1]  # same seed, same trials
    # A second worker on the first study, given the same seed, must not repeat the creator's trials.
    assert first_draw(create(urls[0])) != draws[0]


def test_open_study_refuses_a_study_of_other_data(sqlite_url):
    tuning.open_study("s", tuning.open_storage(sqlite_url), data_run_id="d1", first_params={})
    with pytest.raises(TagifaiError, match="study 's' tunes data run d1, not d2"):
        tuning.open_study("s", tuning.open_storage(sqlite_url), data_run_id="d2", first_params={})


def test_open_storage_names_an_unreachable_database_without_its_password():
    with pytest.raises(
        TagifaiError, match=r"cannot open the Optuna storage postgresql\+psycopg2://\*\*\*@127.0.0.1:1/"
    ):
        tuning.open_storage("postgresql+psycopg2://u:s3cret@127.0.0.1:1/optuna")


def test_workers_opening_a_new_storage_together_all_get_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    opened, errors = [], []

    def open_one() -> None:
        try:
            opened.append(tuning.open_storage(url))
        except TagifaiError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(opened) == 4


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        ("(sqlite3.OperationalError) table alembic_version already exists", True),  # SQLite
        ("(sqlite3.OperationalError) unable to open database file", False),  # a real problem
    ],
)
def test_only_the_table_creation_race_is_retried(error, lost):
    from sqlalchemy.exc import OperationalError

    assert tuning.lost_creation_race(OperationalError("CREATE TABLE", {}, Exception(error))) is lost


def test_work_runs_the_queued_first_trial_and_stops_at_the_total():
    study = tuning.open_study("s", None, data_run_id="d", first_params={"x": 1.0})
    finished_here = tuning.work(study, quadratic(), num_trials=5)
    assert finished_here == 5
    assert states(study) == {"COMPLETE": 5}
    assert study.trials[0].params == {"x": 1.0}


def test_a_retried_worker_runs_only_the_missing_trials(sqlite_url):
    study = tuning.open_study("s", tuning.open_storage(sqlite_url), data_run_id="d", first_params={})
    assert tuning.work(study, quadratic(), num_trials=3) == 3
    # The retry: same study, same total; nothing is left to do.
    again = tuning.open_study("s", tuning.open_storage(sqlite_url), data_run_id="d", first_params={})
    assert tuning.work(again, quadratic(), num_trials=3) == 0
    # A larger total continues the study where it stopped.
    assert tuning.work(again, quadratic(), num_trials=5) == 2
    assert states(again) == {"COMPLETE": 5}


def test_pruned_trials_count_toward_the_total():
    def prune_odd(trial: optuna.Trial) -> float:
        if trial.number % 2:
            raise optuna.TrialPruned()
        return 1.0

    study = tuning.open_study("s", None, data_run_id="d", first_params={})
    assert tuning.work(study, prune_odd, num_trials=4) == 4
    assert states(study) == {"COMPLETE": 2, "PRUNED": 2}


@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_sharing_a_study_finish_exactly_the_requested_trials(sqlite_url, num_workers):
    tuning.open_study("s", tuning.open_storage(sqlite_url, 1, 3), data_run_id="d", first_params={"x": 0.0})
    results: dict[int, int] = {}

    def worker(index: int) -> None:
        # A storage of its own, as a separate process would have.
        study = tuning.open_study("s", tuning.open_storage(sqlite_url, 1, 3), data_run_id="d", first_params={})
        results[index] = tuning.work(study, quadratic(0.05), num_trials=7, poll_seconds=0.05)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(num_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    study = optuna.load_study(study_name="s", storage=sqlite_url)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 7
    assert sum(results.values()) == 7
    # Workers wait for the last slots instead of racing for them: few trials are given back, and
    # those did no work (no params, marked surplus).
    assert states(study).get("FAIL", 0) < num_workers
    for trial in study.trials:
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs == {"surplus": True} and trial.params == {}


def test_a_trial_started_past_the_total_is_given_back_unrun():
    study = tuning.open_study("s", None, data_run_id="d", first_params={})
    ran = []
    objective = tuning.guarded(lambda trial: ran.append(trial.number) or 1.0, num_trials=2)
    # Two trials claimed by (other) workers and still running.
    study.ask()
    study.ask()
    study.optimize(objective, n_trials=1, catch=(tuning.SurplusTrial,))
    assert ran == []
    assert study.trials[-1].state == TrialState.FAIL
    assert study.trials[-1].user_attrs == {"surplus": True}


def test_a_dead_workers_trial_goes_stale_and_its_slot_is_run_again(sqlite_url):
    study = tuning.open_study("s", tuning.open_storage(sqlite_url, 1, 2), data_run_id="d", first_params={})
    # A worker claims a trial, beats once, and dies: the trial stays RUNNING with an old heartbeat.
    dead = study.ask()
    study._storage.record_heartbeat(dead._trial_id)
    survivor = tuning.open_study("s", tuning.open_storage(sqlite_url, 1, 2), data_run_id="d", first_params={})
    assert tuning.work(survivor, quadratic(), num_trials=3, poll_seconds=0.2) == 3
    assert states(survivor) == {"FAIL": 1, "COMPLETE": 3}
    assert survivor.trials[dead.number].state == TrialState.FAIL


def test_a_worker_that_died_before_its_first_heartbeat_frees_its_slot_too(sqlite_url):
    storage = tuning.open_storage(sqlite_url, 1, 2)
    study = tuning.open_study("s", storage, data_run_id="d", first_params={})
    # A worker claims a trial and dies before its heartbeat thread ran: RUNNING, no heartbeat, ever.
    dead = study.ask()
    survivor_storage = tuning.open_storage(sqlite_url, 1, 2)
    survivor = tuning.open_study("s", survivor_storage, data_run_id="d", first_params={})
    done = []
    worker = threading.Thread(
        target=lambda: done.append(tuning.work(survivor, quadratic(), 3, poll_seconds=0.2, storage=survivor_storage))
    )
    worker.start()
    worker.join(timeout=60)
    assert done == [3], "the survivor waited for the dead worker's trial"
    assert survivor.trials[dead.number].state == TrialState.FAIL
    assert states(survivor) == {"FAIL": 1, "COMPLETE": 3}


def test_best_trial_names_a_study_where_nothing_completed():
    study = optuna.create_study(study_name="empty")
    with pytest.raises(TagifaiError, match="no Optuna trial of study 'empty' completed"):
        tuning.best_trial(study)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg2://optuna:s3cret@postgres:5432/optuna",
            "postgresql+psycopg2://***@postgres:5432/optuna",
        ),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),  # nothing to hide
    ],
)
def test_the_storage_is_shown_without_its_login(url, shown):
    # The one redactor (tagifai.contract.sources.redact), as the optimize run's tag shows the storage.
    assert redact(url) == shown


def test_default_study_name_is_the_pipeline_run_and_its_data():
    assert tuning.default_study_name("manual__2026-11-22T10:00:00+00:00", "0123456789abcdef") == (
        "tagifai-manual__2026-11-22T10:00:00+00:00-01234567"
    )


def test_suggest_params_draws_from_the_search_space(settings):
    searched = {"analyzer": ["char", "char_wb"], "ngram_max_range": [3, 8], "alpha": [1e-6, 1e-3]}
    space = settings.optimize.model_copy(update={**dict.fromkeys(SEARCHABLE), **searched})
    fixed = {"analyzer": "char", "ngram_max_range": 5, "alpha": 1e-4}
    params = tuning.suggest_params(optuna.trial.FixedTrial(fixed), space, settings.train)
    assert {k: params[k] for k in fixed} == fixed
    assert params["seed"] == settings.train.seed  # not searched
    assert params["num_epochs"] == settings.train.num_epochs  # defaults fill the rest
