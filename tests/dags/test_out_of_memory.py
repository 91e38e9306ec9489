"""A step killed for memory (`[limits] step_memory`) fails once, with one line that says what to change."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest

from harness import docker_ok, require
from harness.dags import webhook_sink

pytestmark = pytest.mark.airflow

# Read before conftest's `airflow_home` clears it for each test: the real container's engine.
DOCKER_URL = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
TRAIN_HINT = "a smaller data source or [train] max_features"


def engine_state(docker_client, exit_code: int, oom_killed: bool) -> list[str]:
    """Have the fake engine's container exit `exit_code`, `OOMKilled` or not; return the containers inspected."""
    from docker.errors import NotFound

    inspected: list[str] = []

    def inspect_container(container: str) -> dict:
        if container in docker_client.removed:  # as the engine: a removed container cannot tell
            raise NotFound(f"no such container: {container}")
        inspected.append(container)
        return {"Id": container, "State": {"Status": "exited", "ExitCode": exit_code, "OOMKilled": oom_killed}}

    docker_client.exit_code = exit_code
    docker_client.inspect_container = inspect_container
    return inspected


@pytest.mark.parametrize(
    ("dag_id", "task_id", "hint"),
    [
        ("tagifai_training", "elt", TRAIN_HINT),
        ("tagifai_training", "validate", TRAIN_HINT),
        ("tagifai_training", "train", TRAIN_HINT),
        ("tagifai_batch_predictions", "predict-batch", "lower [predict] batch_rows"),
    ],
)
def test_a_container_killed_for_memory_fails_once_naming_the_limit_and_the_steps_setting(
    parse_dags, render, docker_client, tmp_path, monkeypatch, dag_id, task_id, hint
):
    from airflow.sdk.exceptions import AirflowFailException

    # The limit named is the deployment's setting, as it spells it.
    override = tmp_path / "memory.toml"
    override.write_text('[limits]\nstep_memory = "768m"\n', encoding="utf-8")
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", "/srv/data")
    inspected = engine_state(docker_client, 137, oom_killed=True)
    docker_client.logs = [b"2026 INFO tagifai: reading\n"]
    dag = parse_dags(TAGIFAI_CONFIG=str(override), TAGIFAI_PROJECTS_URL="/srv/data/projects.csv").dags[dag_id]
    with pytest.raises(AirflowFailException) as raised:
        render(dag.get_task(task_id)).execute({})
    limit = "raise [limits] step_memory (now 768m) or make the step's work smaller"
    error = f"out of memory in {task_id}: {limit} ({hint})"
    assert str(raised.value) == f"{task_id}: {error}"
    assert raised.value.step_output == {"error": error, "run_id": None, "experiment_id": None}
    # Asked before the operator removed the container, which it still did.
    assert inspected == ["c0ffee"]
    assert docker_client.removed == ["c0ffee"]


@pytest.mark.parametrize(
    "inspect",
    [
        # `docker kill`, or the step's own SIGKILL: exit 137, but the engine saw no memory kill.
        "not-oom",
        # The engine cannot say (the container is gone, the engine refused): not known to be memory.
        "fails",
    ],
)
def test_an_exit_137_the_engine_does_not_call_memory_is_retried(load_dag, render, docker_client, inspect):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    engine_state(docker_client, 137, oom_killed=False)
    if inspect == "fails":
        docker_client.inspect_container = lambda container: (_ for _ in ()).throw(OSError("engine went away"))
    with pytest.raises(AirflowException) as raised:
        render(load_dag().get_task("validate")).execute({})
    assert not isinstance(raised.value, AirflowFailException)
    assert "out of memory" not in str(raised.value)
    assert str(raised.value).startswith("validate: Docker container failed: {'StatusCode': 137}")


def test_the_step_killed_for_memory_wins_over_an_error_it_wrote(load_dag, render, docker_client):
    import json

    from airflow.sdk.exceptions import AirflowFailException

    # Killed as it wrote its error (a worker process killed, the step failing on it): a retry dies the same way.
    engine_state(docker_client, 1, oom_killed=True)
    written = {"error": "optuna worker died", "exit_code": 1, "run_id": "r7", "experiment_id": "2"}
    docker_client.files["/tmp/tagifai-output.json"] = json.dumps(written).encode()
    with pytest.raises(AirflowFailException) as raised:
        render(load_dag().get_task("train")).execute({})
    assert str(raised.value).startswith("train: out of memory in train: raise [limits] step_memory (now 4g)")
    assert raised.value.step_output["run_id"] == "r7"  # the run it failed in is still named


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # The steps whose work a setting makes smaller: that setting.
        ("optimize", "out of memory in optimize: raise [limits] step_memory (now 4g) or make the step's work "
                     "smaller (lower [optimize] max_rows)"),
        ("predict-batch", "out of memory in predict-batch: raise [limits] step_memory (now 4g) or make the step's "
                          "work smaller (lower [predict] batch_rows)"),
        # A step no setting makes smaller: the limit alone.
        ("evaluate", "out of memory in evaluate: raise [limits] step_memory (now 4g) or make the step's work smaller"),
    ],
)  # fmt: skip
def test_the_out_of_memory_line_names_the_steps_own_setting(step, expected):
    from tagifai.orchestration.runners import out_of_memory_error

    assert out_of_memory_error(step, "4g") == expected


def test_notifications_tell_the_out_of_memory_line(load_dag, render, docker_client, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from tagifai.orchestration import notify

    engine_state(docker_client, 137, oom_killed=True)
    with pytest.raises(AirflowFailException) as raised:
        render(load_dag().get_task("validate")).execute({})
    ti = SimpleNamespace(dag_id="tagifai_training", run_id="manual__1", task_id="validate", log_url="http://log")
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        notify.task_failed({"ti": ti, "exception": raised.value, "run_id": "manual__1"})
    [posted] = received
    assert posted["error"] == str(raised.value)
    assert posted["text"].splitlines()[0] == f"tagifai_training run manual__1: task validate failed: {raised.value}"
    assert "out of memory in validate" in posted["text"]


# ---- kubernetes: the finished pod says why its container ended ---------------------------------------------


def pod(reason: str | None, exit_code: int = 137, container: str = "base") -> SimpleNamespace:
    """A finished `V1Pod` as the provider reads it back: its `container` terminated for `reason`; the sidecar ran."""
    terminated = SimpleNamespace(reason=reason, exit_code=exit_code, message=None)
    statuses = [
        SimpleNamespace(name=container, state=SimpleNamespace(terminated=terminated, running=None)),
        SimpleNamespace(
            name="airflow-xcom-sidecar",
            state=SimpleNamespace(terminated=None, running=SimpleNamespace(started_at="2026-01-01T00:00:00Z")),
        ),
    ]
    return SimpleNamespace(status=SimpleNamespace(phase="Failed", container_statuses=statuses))


@pytest.mark.parametrize(
    ("remote_pod", "expected"),
    [
        (pod("OOMKilled"), True),  # the kubelet killed the step's container at its limit
        (pod("Error"), False),  # exit 137 from a kill that was not for memory
        (pod("OOMKilled", container="istio-proxy"), False),  # another container's memory, not the step's
        (SimpleNamespace(status=SimpleNamespace(phase="Pending", container_statuses=None)), False),  # never ran
        (None, False),  # the pod was never made
    ],
)
def test_a_pod_is_out_of_memory_when_its_step_container_was_oom_killed(remote_pod, expected):
    from tagifai.orchestration.runners import pod_out_of_memory

    assert pod_out_of_memory(remote_pod, "base") is expected


@pytest.mark.parametrize("reason", ["OOMKilled", "Error"])
def test_a_pod_killed_for_memory_fails_once_any_other_failure_is_retried(load_dag, render, monkeypatch, reason):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    def fails(self, context):
        # As the provider's `execute_sync`: the finished pod in `remote_pod`, then `cleanup` raises.
        self.remote_pod = pod(reason, container=self.base_container_name)
        raise AirflowException(f"Pod {self.name} returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "execute", fails)
    with pytest.raises(AirflowException) as raised:
        render(load_dag(TAGIFAI_RUNNER="kubernetes").get_task("train")).execute({})
    oom = (
        "train: out of memory in train: raise [limits] step_memory (now 4g) or make the step's work smaller "
        f"({TRAIN_HINT})"
    )
    if reason == "OOMKilled":
        assert isinstance(raised.value, AirflowFailException)
        assert str(raised.value) == oom
    else:
        assert not isinstance(raised.value, AirflowFailException)
        assert str(raised.value) == "train: Pod tagifai-train returned a failure."


# ---- a real container, a real limit ----------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    ("command", "killed_for_memory"),
    [
        # Allocates 512 MiB under a 64 MiB limit: the kernel kills it, the engine says OOMKilled.
        (["python3", "-c", "b = bytearray(512 * 2**20)"], True),
        # Exits 137 as a SIGKILL would, with memory to spare: retried as today.
        (["sh", "-c", "exit 137"], False),
    ],
)
def test_a_real_container_over_its_memory_limit_fails_once(monkeypatch, command, killed_for_memory):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from tagifai.orchestration.runners import TagifaiDockerOperator

    # Any image with python3 and sh: the project's base image (`PYTHON_IMAGE`), this machine's by default.
    image = os.environ.get("PYTHON_IMAGE") or "sandbox/python:3.11-bookworm"
    require(docker_ok("info"), "no Docker engine")
    require(docker_ok("image", "inspect", image), f"no image {image} on this host")
    monkeypatch.delattr(TagifaiDockerOperator, "hook")  # conftest's fake engine: this test has the real one
    label = f"tagifai-oom-test-{uuid.uuid4().hex[:8]}"
    task = TagifaiDockerOperator(
        task_id="train",
        step="train",
        step_memory="64m",
        image=image,
        command=command,
        docker_url=DOCKER_URL,
        network_mode="none",
        mem_limit="64m",
        labels={"org.tagifai.step": label},
        auto_remove="success",
        mount_tmp_dir=False,
        force_pull=False,
        retrieve_output=True,
        retrieve_output_path="/tmp/tagifai-output.json",
    )
    with pytest.raises(AirflowException) as raised:
        task.execute({})
    assert isinstance(raised.value, AirflowFailException) is killed_for_memory
    if killed_for_memory:
        assert str(raised.value) == (
            "train: out of memory in train: raise [limits] step_memory (now 64m) or make the step's work smaller "
            f"({TRAIN_HINT})"
        )
    else:
        assert str(raised.value).startswith("train: Docker container failed: ")
        assert "'StatusCode': 137" in str(raised.value)
    # The operator removed its container after the engine was asked.
    assert task.cli.containers(all=True, filters={"label": [f"org.tagifai.step={label}"]}) == []
