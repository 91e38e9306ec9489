"""The tagifai_training DAG: structure, params, and what each runner would run."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from tests.dags.helpers import DAG_IDS, RUNNERS, bash_argv, rendered_command

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[2] / "dags"
STEPS = ["elt", "validate", "optimize", "train", "evaluate", "register"]
# The graph: the six steps, with `optimize` mapped over the copies `optimize_workers` renders, and the
# champion's asset event after `register`.
GRAPH = ["elt", "validate", "optimize_workers", "optimize", "train", "evaluate", "register", "publish_champion"]
UPSTREAM = (
    "https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/e8dfdbe98f55cba8befaf8409e16e48fac2d26d8/datasets"
)


def worker_copies(dag, render, **params) -> list:
    """What `optimize_workers` hands the mapped `optimize` task: one rendered command per worker."""
    fan_out = render(dag.get_task("optimize_workers"), **params)
    return fan_out.python_callable(*fan_out.op_args, **fan_out.op_kwargs)


def unmapped_steps(dag) -> list:
    """The step tasks that are not mapped (all but `optimize` and its fan-out)."""
    return [task for task in dag.tasks if task.task_id in STEPS and task.task_id != "optimize"]


def step_operators(dag, render, **params) -> list:
    """The six steps as the rendered operators that run them; `optimize` as its first worker."""
    tasks = [render(task, **params) for task in unmapped_steps(dag)]
    optimize = dag.get_task("optimize")
    [field] = optimize.expand_input.value  # command, bash_command or arguments
    [worker] = worker_copies(dag, render, num_workers=1, **params)
    unmapped = optimize.unmap({field: worker})
    unmapped.dag = dag
    return [*tasks, render(unmapped, **params)]


# ---- the DAG file ------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_dagbag_imports_without_errors(parse_dags, runner):
    bag = parse_dags(TAGIFAI_RUNNER=runner)
    assert bag.import_errors == {}
    assert sorted(bag.dags) == DAG_IDS


def test_unknown_runner_is_an_import_error(parse_dags):
    bag = parse_dags(TAGIFAI_RUNNER="ssh")
    assert "TAGIFAI_RUNNER='ssh'" in "".join(bag.import_errors.values())


@pytest.mark.parametrize("runner", RUNNERS)
def test_graph_is_the_six_steps_in_order_with_optimize_fanned_out(load_dag, runner):
    dag = load_dag(TAGIFAI_RUNNER=runner)
    assert sorted(dag.task_ids) == sorted(GRAPH)
    for upstream, downstream in zip(GRAPH, GRAPH[1:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("elt").upstream_task_ids == set()
    assert dag.get_task("publish_champion").downstream_task_ids == set()
    # `optimize` is mapped over the list `optimize_workers` returns.
    optimize = dag.get_task("optimize")
    assert type(optimize).__name__ == "MappedOperator"
    assert [op.task_id for op in optimize.iter_mapped_dependencies()] == ["optimize_workers"]


def test_schedule_catchup_and_run_limits(load_dag):
    from airflow.sdk import AssetOrTimeSchedule

    dag = load_dag()
    # Daily, or when tagifai_watch saw a data source change (either asset).
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 0 * * *"  # @daily
    assert type(dag.timetable.asset_condition).__name__ == "AssetAny"
    assert {a.name for a in dag.timetable.asset_condition.objects} == {"tagifai_projects", "tagifai_tags"}
    assert dag.catchup is False
    # No start date: unpausing does not start a run at once; the first daily one is the next midnight.
    assert dag.start_date is None
    assert dag.max_active_runs == 1
    assert dag.doc_md and dag.doc_md.startswith("Train, evaluate and register")
    assert {"tagifai", "ml"} <= set(dag.tags)


def test_every_task_retries_at_least_twice_with_exponential_backoff(load_dag):
    for task in load_dag().tasks:  # the fan-out too: it reads XCom through the API server
        assert task.retries >= 2
        assert task.retry_exponential_backoff > 1
        assert task.retry_delay >= timedelta(seconds=30)
        assert task.max_retry_delay is not None


def test_the_deployers_retry_settings_reach_every_task(load_dag, tmp_path):
    config = tmp_path / "retry.toml"
    config.write_text("[retry]\nretries = 1\ndelay_seconds = 5\nmax_delay_minutes = 2\n", encoding="utf-8")
    for task in load_dag(TAGIFAI_CONFIG=str(config)).tasks:
        assert (task.retries, task.retry_delay, task.max_retry_delay) == (
            1, timedelta(seconds=5), timedelta(minutes=2)
        )  # fmt: skip


def test_params_shown_in_the_trigger_form_have_defaults_and_descriptions(load_dag):
    params = load_dag().params
    assert {name: params[name] for name in params} == {
        "num_trials": 20,
        "num_workers": 2,
        "experiment_name": "tagifai",
        "projects_url": f"{UPSTREAM}/projects.csv",
        "tags_url": f"{UPSTREAM}/tags.csv",
        "min_f1": 0.6,
        "max_regression": 0.02,
        "force": False,
    }
    for name in params:
        assert params.get_param(name).description


def test_params_default_to_the_settings_the_steps_read(load_dag, tmp_path):
    # One source of defaults: config/tagifai.toml with TAGIFAI_CONFIG over it, as `tagifai` reads them.
    override = tmp_path / "deploy.toml"
    override.write_text(
        "[optimize]\nnum_trials = 7\nnum_workers = 3\n[register]\nmin_f1 = 0.75\n[mlflow]\nexperiment_name = 'team'\n"
    )
    params = load_dag(TAGIFAI_CONFIG=str(override)).params
    assert (params["num_trials"], params["num_workers"], params["min_f1"]) == (7, 3, 0.75)
    assert params["experiment_name"] == "team"
    assert params["max_regression"] == 0.02  # not overridden: the versioned default


def test_the_experiment_is_chosen_from_those_the_deployer_lists(load_dag, tmp_path):
    from airflow.sdk.exceptions import ParamValidationError

    override = tmp_path / "deploy.toml"
    override.write_text("[mlflow]\nexperiments = ['team-a', 'team-b']\n")
    param = load_dag(TAGIFAI_CONFIG=str(override)).params.get_param("experiment_name")
    assert param.schema["enum"] == ["tagifai", "team-a", "team-b"]  # the form's dropdown, the default first
    assert param.resolve("team-b") == "team-b"
    with pytest.raises(ParamValidationError):
        param.resolve("team-c")


def test_data_url_params_default_to_the_environment(load_dag):
    params = load_dag(TAGIFAI_PROJECTS_URL="/data/p.csv", TAGIFAI_TAGS_URL="file:///data/t.csv").params
    assert (params["projects_url"], params["tags_url"]) == ("/data/p.csv", "file:///data/t.csv")


def test_relative_data_paths_become_absolute(load_dag, tmp_path, monkeypatch):
    # Steps run elsewhere (a temporary folder, a container): a relative path would not resolve.
    monkeypatch.chdir(tmp_path)
    params = load_dag(TAGIFAI_PROJECTS_URL="data/p.csv", TAGIFAI_TAGS_URL="").params
    assert params["projects_url"] == str(tmp_path / "data" / "p.csv")
    assert params["tags_url"] == f"{UPSTREAM}/tags.csv"


def test_params_reject_out_of_range_values(load_dag):
    from airflow.sdk.exceptions import ParamValidationError

    params = load_dag().params
    with pytest.raises(ParamValidationError):
        params.get_param("min_f1").resolve(1.5)
    with pytest.raises(ParamValidationError):
        params.get_param("num_trials").resolve(0)
    with pytest.raises(ParamValidationError):
        params.get_param("num_workers").resolve(0)


# ---- what each step runs -----------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_each_task_runs_the_tagifai_command_of_its_name(load_dag, render, runner):
    dag = load_dag(TAGIFAI_RUNNER=runner, TAGIFAI_BIN="tagifai")
    conf = {"num_trials": 3, "projects_url": "/data/projects.csv", "tags_url": "file:///data/tags.csv"}
    commands = {task.task_id: rendered_command(render(task, **conf), runner) for task in unmapped_steps(dag)}
    [worker, *_] = worker_copies(dag, render, num_workers=1, **conf)
    commands["optimize"] = ["tagifai", *worker] if runner != "local" else bash_argv(worker)
    assert commands == {
        "elt": [
            "tagifai", "elt",
            "--projects-url", "/data/projects.csv",
            "--tags-url", "file:///data/tags.csv",
            "--experiment-name", "tagifai",
            "--plan", '{"max_regression": 0.02, "min_f1": 0.6, "num_trials": 3}',
        ],
        "validate": ["tagifai", "validate", "--elt-run", "elt-run-id"],
        "optimize": ["tagifai", "optimize", "--data-run", "validate-run-id", "--num-trials", "3"],
        # The first worker's run: train reads the best trial of the study it belongs to.
        "train": ["tagifai", "train", "--data-run", "validate-run-id", "--optimize-run", "optimize-0-run-id"],
        "evaluate": ["tagifai", "evaluate", "--train-run", "train-run-id"],
        "register": [
            "tagifai", "register", "--evaluate-run", "evaluate-run-id", "--min-f1", "0.6", "--max-regression", "0.02"
        ],
    }  # fmt: skip


def test_docker_tasks_use_the_one_image_and_the_configured_network(load_dag, render):
    env = {
        "TAGIFAI_IMAGE": "registry.example/tagifai:1.2.3",
        "TAGIFAI_DOCKER_NETWORK": "host",
        "DOCKER_HOST": "tcp://docker:2375",
        "TAGIFAI_MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
    }
    dag = load_dag(**env)
    assert {t.task_id for t in step_operators(dag, render)} == set(STEPS)
    for task in step_operators(dag, render):
        assert type(task).__name__ == "TagifaiDockerOperator"
        assert task.image == "registry.example/tagifai:1.2.3"
        assert task.network_mode == "host"
        assert task.docker_url == "tcp://docker:2375"
        assert task.auto_remove == "success"
        assert task.labels == {
            "org.tagifai.step": task.task_id,
            "org.tagifai.pipeline-run-id": "manual__2026-01-01T00:00:00+00:00",
            "org.tagifai.map-index": "-1",
        }
        assert task.mount_tmp_dir is False
        assert task.environment == {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
            "MLFLOW_EXPERIMENT_NAME": "tagifai",
            "TAGIFAI_PIPELINE_RUN_ID": "manual__2026-01-01T00:00:00+00:00",
            "TAGIFAI_IMAGE": "registry.example/tagifai:1.2.3",
            "TAGIFAI_FORCE": "False",
            "TAGIFAI_OUTPUT": "/tmp/tagifai-output.json",
        }
        # The JSON line comes from that file, not the log (where stdout and stderr interleave).
        assert (task.retrieve_output, task.retrieve_output_path) == (True, "/tmp/tagifai-output.json")


def test_docker_defaults_fit_the_compose_stack(load_dag, render):
    for task in step_operators(load_dag(), render):
        assert task.image == "tagifai:latest"
        assert task.network_mode == "tagifai"
        assert task.docker_url == "unix:///var/run/docker.sock"
        assert task.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_docker_mounts_local_data_read_only_at_the_same_path_and_keeps_secrets_private(
    load_dag, render, monkeypatch, tmp_path
):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    config = tmp_path / "small.toml"
    config.write_text("[optimize]\nnum_trials = 3\n")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(config))
    # The deployer's data folders: what a container may see of the host.
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data:/srv/other data")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("TAGIFAI_OPTUNA_STORAGE", "postgresql+psycopg2://optuna:s3cret@postgres/optuna")
    elt = render(
        load_dag().get_task("elt"),
        projects_url="/srv/data/projects.csv",
        tags_url="file:///srv/other%20data/tags.csv",
    )
    elt.execute({})
    task = seen["task"]
    assert sorted(task.mounts, key=lambda m: m["Target"]) == [
        {"Target": "/srv/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": True},
        {"Target": "/srv/other data", "Source": "/srv/other data", "Type": "bind", "ReadOnly": True},
    ]
    # The settings override travels as its content: no path of the worker's is needed in the container.
    assert task.environment["TAGIFAI_CONFIG_TOML"] == "[optimize]\nnum_trials = 3\n"
    # elt's own secrets only: the MLflow login, not optimize's study (tests/dags/test_orchestration.py).
    assert task._private_environment == {"MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert "s3cret" not in json.dumps(task.environment)
    # The step enforces the same policy inside its container.
    assert task.environment["TAGIFAI_DATA_DIRS"] == "/srv/data:/srv/other data"


# ---- optimize fans out ---------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_optimize_workers_renders_one_copy_of_the_command_per_worker(load_dag, render, monkeypatch, runner):
    monkeypatch.setenv("TAGIFAI_OPTUNA_STORAGE", "sqlite:////tmp/optuna.db")
    dag = load_dag(TAGIFAI_RUNNER=runner, TAGIFAI_BIN="tagifai")
    copies = worker_copies(dag, render, num_workers=3, num_trials=12)
    assert len(copies) == 3 and all(copy == copies[0] for copy in copies)
    argv = ["tagifai", *copies[0]] if runner != "local" else bash_argv(copies[0])
    assert argv == ["tagifai", "optimize", "--data-run", "validate-run-id", "--num-trials", "12"]


@pytest.mark.parametrize("runner", ["docker", "local"])
def test_several_workers_without_a_shared_storage_fail_at_once_naming_the_setting(load_dag, render, runner):
    from airflow.sdk.exceptions import AirflowFailException

    # Not retried: without a shared study each worker would run every trial on its own.
    with pytest.raises(AirflowFailException, match="num_workers=2 needs one Optuna study .* TAGIFAI_OPTUNA_STORAGE"):
        worker_copies(load_dag(TAGIFAI_RUNNER=runner), render, num_workers=2)
    # (Rendering works in place: a fresh DAG for the next render.)
    assert len(worker_copies(load_dag(TAGIFAI_RUNNER=runner), render, num_workers=1)) == 1


def test_kubernetes_workers_take_the_storage_from_the_pod_secret(load_dag, render):
    # The Airflow worker cannot see the pods' Secret, so it does not insist on the variable.
    dag = load_dag(TAGIFAI_RUNNER="kubernetes", TAGIFAI_K8S_SECRET="tagifai-secrets")
    assert len(worker_copies(dag, render, num_workers=2)) == 2


def test_docker_mounts_nothing_for_remote_data(load_dag, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    render(load_dag().get_task("elt")).execute({})
    assert seen["task"].mounts == []


def test_local_runner_runs_the_configured_binary_and_inherits_the_environment(load_dag, render):
    from airflow.providers.standard.operators.bash import BashOperator

    dag = load_dag(TAGIFAI_RUNNER="local", TAGIFAI_BIN="/opt/tagifai/bin/tagifai")
    for task in step_operators(dag, render):
        assert isinstance(task, BashOperator)
        assert f"out=$(/opt/tagifai/bin/tagifai {task.task_id} " in task.bash_command
        assert task.append_env is True
        assert task.env["TAGIFAI_PIPELINE_RUN_ID"] == "manual__2026-01-01T00:00:00+00:00"
        assert "TAGIFAI_IMAGE" not in task.env
        # Without TAGIFAI_MLFLOW_TRACKING_URI the worker's own MLFLOW_TRACKING_URI applies.
        assert "MLFLOW_TRACKING_URI" not in task.env


def test_local_runner_quotes_params_for_bash(load_dag, render):
    task = render(load_dag(TAGIFAI_RUNNER="local").get_task("elt"), projects_url="/d/it's here; rm -rf x.csv")
    assert rendered_command(task, "local")[3] == "/d/it's here; rm -rf x.csv"


def test_local_runner_prints_the_step_json_last_even_when_it_logs_after_it(load_dag, render, tmp_path):
    # A stand-in `tagifai` that logs to stderr after printing its JSON line.
    fake = tmp_path / "tagifai"
    fake.write_text(
        "#!/bin/bash\necho 'starting' >&2\necho '{\"run_id\": \"r-'\"$1\"'\"}'\necho 'closing log' >&2\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    task = render(load_dag(TAGIFAI_RUNNER="local", TAGIFAI_BIN=str(fake)).get_task("evaluate"))
    proc = subprocess.run(
        ["bash", "-c", task.bash_command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1] == '{"run_id": "r-evaluate"}'


def test_local_runner_fails_the_task_when_the_step_fails(load_dag, render, tmp_path):
    fake = tmp_path / "tagifai"
    fake.write_text("#!/bin/bash\necho 'error: validation failed: unique_ids: 3 duplicates' >&2\nexit 1\n")
    fake.chmod(0o755)
    task = render(load_dag(TAGIFAI_RUNNER="local", TAGIFAI_BIN=str(fake)).get_task("validate"))
    proc = subprocess.run(["bash", "-c", task.bash_command], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "unique_ids" in proc.stderr


def test_kubernetes_runner_renders_pods_with_the_same_image_and_commands(load_dag, render):
    dag = load_dag(
        TAGIFAI_RUNNER="kubernetes",
        TAGIFAI_IMAGE="registry.example/tagifai:1.2.3",
        TAGIFAI_K8S_NAMESPACE="ml",
        TAGIFAI_K8S_SECRET="tagifai-secrets",
    )
    for task in step_operators(dag, render):
        pod = task.build_pod_request_obj(dry_run=True)
        base, *sidecars = pod.spec.containers
        assert pod.metadata.namespace == "ml"
        assert base.image == "registry.example/tagifai:1.2.3"
        assert base.command[:2] == ["/bin/sh", "-c"]
        assert base.args == task.arguments
        assert base.args[0] == task.task_id
        env = {var.name: var.value for var in base.env}
        assert env["TAGIFAI_PIPELINE_RUN_ID"] == "manual__2026-01-01T00:00:00+00:00"
        assert env["TAGIFAI_IMAGE"] == "registry.example/tagifai:1.2.3"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert [source.secret_ref.name for source in base.env_from] == ["tagifai-secrets"]
        # The XCom sidecar reads the JSON line the wrapper copies to /airflow/xcom/return.json.
        assert [c.name for c in sidecars] == ["airflow-xcom-sidecar"]
        assert "/airflow/xcom/return.json" in base.command[2]


# ---- safe to share: the trigger form is untrusted input ----------------------------------------

REFUSED_SOURCES = [
    # (projects_url, the rule the task log names)
    ("/etc/passwd", "outside the data folders this deployment allows"),  # a host file
    ("/srv/elsewhere/projects.csv", "outside the data folders"),  # a path outside TAGIFAI_DATA_DIRS
    ("/srv/data/../../etc/passwd", "outside the data folders"),  # `..` out of a data folder
    ("file:///etc/shadow", "outside the data folders"),  # a file:// URL
    ("http://mlflow:5000/api/2.0/mlflow/experiments/search", "is not an allowed host"),  # the stack's MLflow
    ("http://169.254.169.254/latest/meta-data/", "is not an allowed host"),  # link-local: cloud metadata
    ("https://raw.githubusercontent.com/someone/else/main/x.csv", "is not under an allowed URL prefix"),  # anyone's
    ("ftp://example.org/projects.csv", r"is not an http\(s\) URL"),  # another scheme
]


@pytest.mark.parametrize("runner", ["docker", "local"])
@pytest.mark.parametrize(("source", "rule"), REFUSED_SOURCES, ids=[s for s, _ in REFUSED_SOURCES])
def test_a_refused_data_source_fails_elt_before_anything_starts(load_dag, render, monkeypatch, runner, source, rule):
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk.exceptions import AirflowFailException

    started = []
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: started.append(self))
    monkeypatch.setattr(BashOperator, "execute", lambda self, context: started.append(self))
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data")
    elt = render(load_dag(TAGIFAI_RUNNER=runner).get_task("elt"), projects_url=source)
    with pytest.raises(AirflowFailException, match=rule):
        elt.execute({})
    assert started == []  # no container, no subprocess


def test_allowed_sources_pass_and_only_their_data_folder_is_mounted(load_dag, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data:/srv/unused")
    elt = render(load_dag().get_task("elt"), projects_url="/srv/data/sub/projects.csv", tags_url=f"{UPSTREAM}/tags.csv")
    elt.execute({})
    assert seen["task"].mounts == [{"Target": "/srv/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": True}]


def test_validate_reads_the_holdout_from_the_deployments_data_never_the_triggers(load_dag, render, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    deployment = {"TAGIFAI_PROJECTS_URL": "/srv/deploy/projects.csv", "TAGIFAI_TAGS_URL": "/srv/deploy/tags.csv"}
    dag = load_dag(TAGIFAI_DATA_DIRS="/srv/trigger", **deployment)
    validate = render(dag.get_task("validate"), projects_url="/srv/trigger/p.csv", tags_url="/srv/trigger/t.csv")
    assert validate.data_sources == list(deployment.values())
    validate.execute({})
    assert seen["task"].mounts == [{"Target": "/srv/deploy", "Source": "/srv/deploy", "Type": "bind", "ReadOnly": True}]
    assert seen["task"].environment["TAGIFAI_PROJECTS_URL"] == deployment["TAGIFAI_PROJECTS_URL"]


@pytest.mark.parametrize(
    ("runner", "exit_code", "final"),
    [
        ("local", 3, True),  # bad input (data contract, source policy, a loosening param): no retry
        ("local", 127, True),  # the tagifai executable is missing: a setup error, no retry
        ("local", 1, False),  # may pass (MLflow or the network down): retried
    ],
)
def test_input_and_setup_errors_fail_at_once_other_errors_are_retried(
    load_dag, render, tmp_path, runner, exit_code, final
):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    fake = tmp_path / "tagifai"
    fake.write_text(
        f"#!/bin/bash\necho 'error: validation failed: unique_ids: 3 duplicated id(s)' >&2\nexit {exit_code}\n"
    )
    fake.chmod(0o755)
    binary = str(fake) if exit_code != 127 else str(tmp_path / "missing" / "tagifai")
    task = render(load_dag(TAGIFAI_RUNNER=runner, TAGIFAI_BIN=binary).get_task("validate"))
    with pytest.raises(AirflowException) as raised:
        task.execute({})
    assert isinstance(raised.value, AirflowFailException) is final


def test_docker_exit_code_3_fails_without_retry(load_dag, render, monkeypatch):
    from airflow.providers.docker.exceptions import DockerContainerFailedSkipException
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.sdk.exceptions import AirflowFailException

    def exits_3(self, context):
        assert 3 in self.skip_on_exit_code  # the code tagifai uses for bad input
        raise DockerContainerFailedSkipException("Docker container returned exit code [3]. Skipping.", logs=[])

    monkeypatch.setattr(DockerOperator, "execute", exits_3)
    with pytest.raises(AirflowFailException, match="cannot run with this input or setup"):
        render(load_dag().get_task("validate")).execute({})


def test_step_containers_are_bounded_and_unprivileged(load_dag, render):
    from tagifai.orchestration.runners import HARDENING, HardenedClient

    for task in step_operators(load_dag(), render):
        assert task.mem_limit == "4g"
        assert task.cpus == 1  # [limits] step_cpu_request lists no training step: 1024 CPU shares, the services' own
        assert task.execution_timeout is not None
        assert isinstance(task.cli, HardenedClient)

    class Recorder:
        def create_host_config(self, **kwargs):
            return kwargs

    assert HardenedClient(Recorder()).create_host_config(mem_limit="4g") == {"mem_limit": "4g", **HARDENING}
    assert HARDENING == {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"]}


def test_runs_and_steps_have_time_limits_from_the_settings(load_dag):
    dag = load_dag()
    assert dag.dagrun_timeout == timedelta(minutes=360)
    assert dag.get_task("optimize").partial_kwargs["execution_timeout"] == timedelta(minutes=120)
    assert dag.get_task("elt").execution_timeout == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("min_f1", 0.0),  # looser than [register] min_f1 = 0.6
        ("max_regression", 1.0),  # looser than [register] max_regression = 0.02
        ("num_trials", 201),  # more than [limits] max_trials
        ("num_workers", 9),  # more than [limits] max_workers
        ("experiment_name", "x\ny"),  # a control character
        ("experiment_name", "someone-elses"),  # an experiment the deployer did not list ([mlflow])
        ("min_f1", float("nan")),  # NaN passes every bound unless refused as such (runners.FINITE)
        ("max_regression", float("nan")),
        ("min_f1", float("inf")),
    ],
)
def test_the_trigger_form_refuses_a_looser_gate_and_unbounded_runs(load_dag, param, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        load_dag().params.get_param(param).resolve(value)


def test_the_trigger_form_accepts_a_stricter_gate(load_dag):
    params = load_dag().params
    assert params.get_param("min_f1").resolve(0.8) == 0.8
    assert params.get_param("max_regression").resolve(0.0) == 0.0


def test_kubernetes_exit_code_3_fails_without_retry(load_dag, render, monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    def exits_3(self, context):
        assert 3 in self.skip_on_exit_code  # the pod's exit code for bad input: the operator skips
        raise AirflowSkipException("Pod returned exit code 3. Skipping.")

    monkeypatch.setattr(KubernetesPodOperator, "execute", exits_3)
    dag = load_dag(TAGIFAI_RUNNER="kubernetes", TAGIFAI_K8S_SECRET="tagifai-secrets")
    with pytest.raises(AirflowFailException, match="cannot run with this input or setup"):
        render(dag.get_task("validate")).execute({})


def test_kubernetes_pods_get_the_source_policy_and_the_settings_override(load_dag, render, monkeypatch, tmp_path):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    seen = {}
    monkeypatch.setattr(KubernetesPodOperator, "execute", lambda self, context: seen.setdefault("task", self))
    config = tmp_path / "small.toml"
    config.write_text("[optimize]\nnum_trials = 3\n")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(config))
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data")
    monkeypatch.setenv("TAGIFAI_ALLOWED_URL_HOSTS", "data.example")
    monkeypatch.setenv("TAGIFAI_PRIVATE_URL_HOSTS", "minio:9000")
    # The deployment's own data (elt reads the gate's holdout from it for its plan), allowed by its policy.
    data = {"TAGIFAI_PROJECTS_URL": "/srv/data/projects.csv", "TAGIFAI_TAGS_URL": "/srv/data/tags.csv"}
    dag = load_dag(TAGIFAI_RUNNER="kubernetes", TAGIFAI_K8S_SECRET="tagifai-secrets", **data)
    render(dag.get_task("elt"), projects_url="/srv/data/projects.csv", tags_url="/srv/data/tags.csv").execute({})
    env = {var.name: var.value for var in seen["task"].build_pod_request_obj(dry_run=True).spec.containers[0].env}
    assert env["TAGIFAI_DATA_DIRS"] == "/srv/data" and env["TAGIFAI_ALLOWED_URL_HOSTS"] == "data.example"
    assert env["TAGIFAI_PRIVATE_URL_HOSTS"] == "minio:9000"
    assert env["TAGIFAI_CONFIG_TOML"] == "[optimize]\nnum_trials = 3\n"
    assert env["MLFLOW_EXPERIMENT_NAME"] == "tagifai"  # the DAG's own env kept


def test_kubernetes_pods_are_bounded_and_unprivileged(load_dag, render):
    dag = load_dag(TAGIFAI_RUNNER="kubernetes", TAGIFAI_K8S_SECRET="tagifai-secrets")
    for task in step_operators(dag, render):
        pod = task.build_pod_request_obj(dry_run=True)
        base = pod.spec.containers[0]
        assert base.resources.limits == {"memory": "4Gi"}
        assert base.security_context.allow_privilege_escalation is False
        assert base.security_context.capabilities.drop == ["ALL"]


# ---- change-driven: reuse and asset events --------------------------------------------------------


class PlannedRun:
    """`ti` of a run whose elt found some later steps made already."""

    def __init__(self, plan):
        self.line = json.dumps({"run_id": "elt-run", "data_sha256": "a" * 64, "plan": plan})

    def xcom_pull(self, task_ids, **_):
        assert task_ids == "elt"
        return self.line


@pytest.mark.parametrize("runner", ["docker", "local"])
def test_a_step_elt_found_made_already_is_handed_on_without_starting_anything(load_dag, monkeypatch, runner):
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.providers.standard.operators.bash import BashOperator

    started = []
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: started.append(self))
    monkeypatch.setattr(BashOperator, "execute", lambda self, context: started.append(self))
    made = {"run_id": "train-run", "model_uri": "models:/m-1", "reused": True}
    dag = load_dag(TAGIFAI_RUNNER=runner)
    assert json.loads(dag.get_task("train").execute({"ti": PlannedRun({"train": made})})) == made
    assert started == []
    # A step the plan does not name runs.
    dag.get_task("evaluate").execute({"ti": PlannedRun({"train": made})})
    assert len(started) == 1


@pytest.mark.parametrize(
    ("register", "emits"),
    [
        ({"promoted": True, "version": "3", "from_version": "2", "test_f1": 0.85, "holdout_f1": 0.8}, True),  # moved
        ({"promoted": False, "version": "3", "reason": "below the minimum"}, False),  # not promoted
        ({"promoted": True, "version": "3", "reused": True}, False),  # made already: it moved nothing now
    ],
)
def test_the_champion_event_is_emitted_only_when_champion_moved(load_dag, register, emits):
    from collections import defaultdict

    from airflow.sdk.exceptions import AirflowSkipException

    from tagifai.orchestration.assets import CHAMPION

    task = load_dag().get_task("publish_champion")
    line = json.dumps({"run_id": "register-run", "model_name": "tagifai", **register})
    events = defaultdict(lambda: type("Event", (), {"extra": None})())
    context = {"outlet_events": events, "run_id": "manual__1"}
    assert [a.name for a in task.outlets] == ["tagifai_champion"]
    if emits:
        task.python_callable(line, **context)
        assert events[CHAMPION].extra == {
            "model_name": "tagifai",
            "from_version": "2",
            "version": "3",
            "test_f1": 0.85,
            "holdout_f1": 0.8,
            "action": "promote",
            "by": "the gate (manual__1)",
            "pipeline_run_id": "manual__1",
            "history_run_id": None,
        }
    else:
        with pytest.raises(AirflowSkipException, match="champion did not move"):
            task.python_callable(line, **context)


def test_a_retry_stops_then_removes_the_containers_its_earlier_tries_left(load_dag, render, monkeypatch, docker_client):
    from airflow.providers.docker.operators.docker import DockerOperator

    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: "ran")
    docker_client.existing = [
        {"Id": "0123456789abcdef", "State": "running"},  # its worker died while it ran
        {"Id": "fedcba9876543210", "State": "exited"},  # a failed try's, or a dead worker's that finished
    ]
    assert render(load_dag().get_task("train")).execute({}) == "ran"
    assert docker_client.stopped == ["0123456789abcdef"]
    assert docker_client.removed == ["0123456789abcdef", "fedcba9876543210"]
    assert docker_client.filters == [
        {
            "label": [
                "org.tagifai.step=train",
                "org.tagifai.pipeline-run-id=manual__2026-01-01T00:00:00+00:00",
                "org.tagifai.map-index=-1",
            ]
        }
    ]


def test_kubernetes_pods_are_valid_v1pods_without_secrets(load_dag, render, monkeypatch):
    # No cluster runs here: what the runner would submit, checked against the Kubernetes models.
    from kubernetes.client import ApiClient, V1Pod

    monkeypatch.setenv("TAGIFAI_OPTUNA_STORAGE", "postgresql+psycopg2://optuna:s3cret@postgres/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    dag = load_dag(
        TAGIFAI_RUNNER="kubernetes", TAGIFAI_IMAGE="registry.example/tagifai:1.2.3", TAGIFAI_K8S_SECRET="tagifai"
    )
    client = ApiClient()
    for task in step_operators(dag, render):
        body = client.sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))
        response = type("Response", (), {"data": json.dumps(body)})()
        pod = client.deserialize(response, "V1Pod")  # the models accept what the runner would submit
        assert isinstance(pod, V1Pod) and client.sanitize_for_serialization(pod) == body
        base = pod.spec.containers[0]
        assert base.image == "registry.example/tagifai:1.2.3"
        assert base.args[0] == task.task_id
        assert base.resources.limits == {"memory": "4Gi"}  # [limits] step_memory; the CPU is never capped
        assert base.resources.requests == {"memory": "4Gi", "cpu": "1000m"}  # and one CPU (step_cpu_request)
        assert [source.secret_ref.name for source in base.env_from] == ["tagifai"]  # secrets: the Secret, only
        assert "s3cret" not in json.dumps(body)
        assert base.security_context.run_as_non_root is True
