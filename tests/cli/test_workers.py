"""Several `tagifai optimize` processes share one Optuna study, as the DAG's mapped workers do.

SQLite holds the study here (workers on one machine); the docker-runner DAG test in tests/e2e runs
two workers on PostgreSQL.
"""

import signal
import time

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import Cli, synthetic
from tagifai.pipeline import tuning

NUM_TRIALS = 8


@pytest.fixture(scope="module")
def data_run(module_cli) -> str:
    _, elt, _ = module_cli("elt", "--experiment-name", "workers")
    return module_cli("validate", "--elt-run", elt["run_id"])[1]["run_id"]


@pytest.fixture(scope="module")
def storage(module_cli) -> str:
    return f"sqlite:///{module_cli.cwd / 'optuna-workers.db'}"


def finished(study: optuna.Study) -> int:
    return tuning.count(study.get_trials(deepcopy=False), tuning.FINISHED)


@pytest.fixture(scope="module")
def workers(module_cli, data_run, storage):
    """Two optimize processes started together on one study; their JSON results."""
    env = {"TAGIFAI_PIPELINE_RUN_ID": "two-workers", "TAGIFAI_OPTUNA_STORAGE": storage}
    args = ("optimize", "--data-run", data_run, "--num-trials", str(NUM_TRIALS))
    procs = [module_cli.start(*args, **env) for _ in range(2)]
    return [module_cli.wait(proc)[1] for proc in procs]


def test_two_workers_share_one_study_and_run_the_requested_trials_between_them(workers, storage, data_run):
    first, second = workers
    assert first["study_name"] == second["study_name"] == tuning.default_study_name("two-workers", data_run)
    study = optuna.load_study(study_name=first["study_name"], storage=storage)
    assert finished(study) == NUM_TRIALS
    assert first["trials"] == second["trials"] == NUM_TRIALS
    assert first["trials_run"] + second["trials_run"] == NUM_TRIALS
    # Both ended with the study's final best trial.
    assert first["best_value"] == second["best_value"] == study.best_value
    # Trials no worker ran (a lost race for the last slot) hold no params.
    assert all(t.params == {} for t in study.trials if t.state == TrialState.FAIL)


def test_each_worker_is_an_optimize_run_whose_trials_are_its_child_runs(workers, module_cli):
    mlflow.set_tracking_uri(module_cli.env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("workers").experiment_id
    runs = client.search_runs([experiment], "tags.pipeline_run_id = 'two-workers'", max_results=100)
    optimize = {r.info.run_id: r for r in runs if r.data.tags["tagifai.step"] == "optimize"}
    trials = [r for r in runs if r.data.tags["tagifai.step"] == "trial"]
    assert set(optimize) == {w["run_id"] for w in workers}
    assert len({r.data.tags["optuna_worker"] for r in optimize.values()}) == 2
    assert len(trials) == NUM_TRIALS
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} <= set(optimize)
    ran = {run_id: sum(t.data.tags["mlflow.parentRunId"] == run_id for t in trials) for run_id in optimize}
    assert ran == {w["run_id"]: w["trials_run"] for w in workers}


def test_train_takes_the_best_trial_of_the_whole_study(workers, module_cli, data_run, storage):
    study = optuna.load_study(study_name=workers[0]["study_name"], storage=storage)
    best = study.best_trial
    # Whichever worker's run train is given, it reads the study.
    for worker in workers:
        _, out, _ = module_cli("train", "--data-run", data_run, "--optimize-run", worker["run_id"])
        run = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"]).get_run(out["run_id"])
        assert {k: run.data.params[k] for k in best.params} == {k: str(v) for k, v in best.params.items()}
        assert run.data.tags["best_trial"] == str(best.number)
        assert run.data.tags["optimize_run_id"] == best.user_attrs["optimize_run_id"]
        assert run.data.tags["best_trial_run_id"] == best.user_attrs["mlflow_run_id"]


def test_train_reads_the_best_trial_from_mlflow_without_the_storage(workers, module_cli, data_run, storage):
    best = optuna.load_study(study_name=workers[0]["study_name"], storage=storage).best_trial
    without_storage = Cli({k: v for k, v in module_cli.env.items() if k != "TAGIFAI_OPTUNA_STORAGE"}, module_cli.cwd)
    _, out, _ = without_storage("train", "--data-run", data_run, "--optimize-run", workers[1]["run_id"])
    run = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"]).get_run(out["run_id"])
    assert run.data.tags["best_trial"] == str(best.number)
    assert {k: run.data.params[k] for k in best.params} == {k: str(v) for k, v in best.params.items()}


def test_a_killed_worker_leaves_the_study_usable_and_its_retry_runs_only_whats_missing(
    module_cli, data_run, storage, tmp_path
):
    # Fast heartbeats, so the killed worker's trial goes stale within seconds.
    config = tmp_path / "heartbeat.toml"
    config.write_text(
        synthetic.SMALL_CONFIG.replace("[optimize]\n", "[optimize]\nheartbeat_seconds = 1\ngrace_seconds = 2\n")
    )
    env = {"TAGIFAI_PIPELINE_RUN_ID": "killed", "TAGIFAI_OPTUNA_STORAGE": storage, "TAGIFAI_CONFIG": str(config)}
    args = ("optimize", "--data-run", data_run, "--num-trials", "5")
    name = tuning.default_study_name("killed", data_run)
    worker = module_cli.start(*args, **env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # not created yet
            trials = []
        if tuning.count(trials, tuning.FINISHED) >= 1 and tuning.count(trials, (TrialState.RUNNING,)):
            break
        assert worker.poll() is None, "the worker finished before it could be killed"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    done_before = tuning.count(before, tuning.FINISHED)
    assert done_before < 5

    # The retry joins the same study, waits out the dead trial's grace period, runs the rest.
    _, retry, _ = module_cli(*args, **env)
    study = optuna.load_study(study_name=name, storage=storage)
    assert (retry["trials"], retry["trials_run"]) == (5, 5 - done_before)
    assert finished(study) == 5
    # The trial that was running when the worker died (maybe before it drew its params).
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [
        t.number for t in before if t.state == TrialState.RUNNING
    ]
    assert retry["best_value"] == study.best_value
