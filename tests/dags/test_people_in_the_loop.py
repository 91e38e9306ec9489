"""People in the loop: approval before promotion, deadlines, failure notifications, the champion's messages."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from harness.dags import webhook_sink
from tests.dags.helpers import DAG_IDS, rendered_command

pytestmark = pytest.mark.airflow

REPORT = "## challenger v3 vs champion v2\n| | v3 | v2 |\n| test f1 | 0.86 | 0.84 |"


@pytest.fixture
def human(tmp_path) -> dict[str, str]:
    """The environment that parses tagifai_training with `[register] approval = "human"` (2 h to answer)."""
    override = tmp_path / "human.toml"
    override.write_text('[register]\napproval = "human"\napproval_timeout_hours = 2\n', encoding="utf-8")
    return {"TAGIFAI_CONFIG": str(override)}


class ApprovalRun:
    """`ti` of a run at its approval: register held v3 (with its report); approve answered `answer` (or not)."""

    map_index = -1

    def __init__(self, answer=None):
        self.answer = answer

    def xcom_pull(self, task_ids, **kwargs):
        if task_ids == "register":
            return json.dumps({"run_id": "register-run-id", "version": "3", "held": True, "report": REPORT})
        if task_ids == "approve":
            return self.answer if kwargs.get("key") == "answer" else None
        return json.dumps({"run_id": f"{task_ids}-run-id"})


def render_with(task, ti):
    context = {
        "params": {name: task.dag.params[name] for name in task.dag.params},
        "ti": ti,
        "run_id": "manual__1",
        "dag": task.dag,
        "task": task,
    }
    task.render_template_fields(context, jinja_env=task.dag.get_template_env())
    return task


# ---- approval ------------------------------------------------------------------------------------------


def test_auto_approval_keeps_the_graph_register_then_publish(load_dag):
    dag = load_dag()
    assert dag.get_task("register").downstream_task_ids == {"publish_champion"}
    assert not {"approve", "approved", "decide"} & set(dag.task_ids)


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_human_approval_sits_between_register_and_the_alias_move(load_dag, human, runner):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from tagifai.orchestration import notify

    dag = load_dag(TAGIFAI_RUNNER=runner, TAGIFAI_K8S_SECRET="s", **human)
    chain = ["register", "approve", "approved", "decide", "publish_champion"]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)  # the provider's, keeping its answer for decide
    assert approve.defaults == ["Reject"]  # no answer in time: rejected
    assert approve.response_timeout == timedelta(hours=2)
    assert [type(n) for n in approve.notifiers] == [notify.ApprovalRequested]
    # decide runs whatever the answer (approved skipped: a rejection, recorded too), not after a failure.
    assert dag.get_task("decide").trigger_rule == "none_failed"
    assert type(dag.get_task("approved")).__name__ == "EmptyOperator"


def test_the_approval_asks_with_registers_report(load_dag, human):
    approve = render_with(load_dag(**human).get_task("approve"), ApprovalRun())
    assert approve.subject == "tagifai: promote v3?"
    assert approve.body == REPORT


class AnsweredTI:
    """The `ti` approve resumes with: keeps what it pushes to XCom."""

    map_index = -1

    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def answered(approve, event) -> dict | None:
    """What approve's real `execute_complete` keeps of `event` (a Reject skips what follows: it raises)."""
    from airflow.sdk.exceptions import DownstreamTasksSkipped

    ti = AnsweredTI()
    try:
        approve.execute_complete({"ti": ti, "task": approve}, event)
    except DownstreamTasksSkipped as skipped:  # a Reject: what follows is skipped, nothing is returned
        assert skipped.tasks == ["approved"]
    return ti.pushed.get("answer")


@pytest.mark.parametrize("runner", ["docker", "local"])
@pytest.mark.parametrize(
    ("event", "choice", "by"),
    [
        ({"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "alice"}}, "Approve", "alice"),
        ({"chosen_options": ["Reject"], "responded_by_user": {"id": "8", "name": "bob"}}, "Reject", "bob"),
        ({"chosen_options": ["Reject"], "responded_by_user": None}, "Reject", ""),  # timed out: the default
        (None, "Reject", ""),  # approve failed or was cleared: never an approval
    ],
)
def test_decide_applies_the_answer_of_approve(load_dag, human, runner, event, choice, by):
    dag = load_dag(TAGIFAI_RUNNER=runner, **human)
    common = {"params_input": {}, "responded_at": datetime.now(UTC)}
    answer = answered(dag.get_task("approve"), {**event, **common}) if event else None
    decide = render_with(dag.get_task("decide"), ApprovalRun(answer))
    assert rendered_command(decide, runner) == [
        "tagifai", "decide", "--register-run", "register-run-id", "--choice", choice, "--by", by,
    ]  # fmt: skip


def test_decides_container_gets_the_pipelines_login(load_dag, human, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}
    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: seen.setdefault("task", self))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("MLFLOW_BATCH_PASSWORD", "batch-s3cret")
    render_with(load_dag(**human).get_task("decide"), ApprovalRun()).execute({})
    assert seen["task"]._private_environment == {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "s3cret",
    }


def publish(load_dag, env, line, monkeypatch):
    """Run publish_champion on `line`; return its extra (None: skipped) and what the webhook got."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tagifai.orchestration.assets import CHAMPION

    task = load_dag(**env).get_task("publish_champion")
    events = defaultdict(lambda: SimpleNamespace(extra=None))
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        try:
            task.python_callable(json.dumps(line), outlet_events=events, run_id="manual__1")
        except AirflowSkipException:
            return None, received
    return events[CHAMPION].extra, received


DECIDED = {
    "run_id": "decide-run",
    "model_name": "tagifai",
    "version": "3",
    "from_version": "2",
    "test_f1": 0.86,
    "holdout_f1": 0.81,
    "experiment_id": "1",
}


def test_an_approved_promotion_is_published_as_the_approvers(load_dag, human, monkeypatch):
    line = {**DECIDED, "promoted": True, "decision": "approved", "by": "alice", "reason": "passes the gate"}
    extra, received = publish(load_dag, human, line, monkeypatch)
    assert extra == {
        "model_name": "tagifai",
        "from_version": "2",
        "version": "3",
        "test_f1": 0.86,
        "holdout_f1": 0.81,
        "action": "promote",
        "by": "approved by alice",
        "pipeline_run_id": "manual__1",
        "history_run_id": None,
    }
    assert received == []  # the move itself is told by tagifai_champion, once


@pytest.mark.parametrize(
    ("decided", "why"),
    [
        ({"decision": "rejected", "by": "bob", "reason": "rejected by bob"}, "rejected by bob"),
        ({"decision": "timed out", "by": "", "reason": "no answer within 2 h"}, "no answer within 2 h"),
        ({"decision": "approved", "by": "alice", "reason": "test f1 0.41 < min_f1 0.6"}, "test f1 0.41 < min_f1"),
    ],
)
def test_a_challenger_left_a_challenger_is_told_why_and_publishes_nothing(load_dag, human, monkeypatch, decided, why):
    extra, received = publish(load_dag, human, {**DECIDED, "promoted": False, **decided}, monkeypatch)
    assert extra is None
    [message] = received
    assert message["event"] == "not_promoted" and message["text"].startswith("tagifai v3 not promoted (run manual__1)")
    assert why in message["text"]


def test_a_reused_register_tells_nothing(load_dag, monkeypatch):
    line = {**DECIDED, "promoted": False, "reused": True, "reason": "below the minimum"}
    assert publish(load_dag, {}, line, monkeypatch) == (None, [])


# ---- deadlines --------------------------------------------------------------------------------------


def deadline_of(dag):
    from airflow.sdk import DeadlineReference

    [alert] = dag.deadline
    assert type(alert.reference) is type(DeadlineReference.DAGRUN_QUEUED_AT)
    assert alert.callback.path == "tagifai.orchestration.notify.DeadlineNotifier"  # imported by the triggerer
    assert type(alert.callback).__name__ == "AsyncCallback"
    return alert


def test_training_and_watch_have_deadlines_from_the_settings(parse_dags, tmp_path):
    bag = parse_dags()
    training, watch = deadline_of(bag.dags["tagifai_training"]), deadline_of(bag.dags["tagifai_watch"])
    assert training.interval == timedelta(minutes=240)
    assert training.callback.kwargs == {"rule": "not finished 240 min after it was queued"}
    assert watch.interval == 3 * timedelta(seconds=900)

    override = tmp_path / "late.toml"
    override.write_text(
        "[notify]\nrun_deadline_minutes = 1\nwatch_missed_intervals = 2\n[watch]\ninterval_seconds = 60\n"
    )
    bag = parse_dags(TAGIFAI_CONFIG=str(override))
    assert deadline_of(bag.dags["tagifai_training"]).interval == timedelta(minutes=1)
    assert deadline_of(bag.dags["tagifai_watch"]).interval == timedelta(minutes=2)


def test_airflow_dags_test_parses_the_dags_without_deadlines(parse_dags, monkeypatch):
    # No scheduler watches deadlines there, and Airflow 3.3.2 fails its successful runs of a DAG with one
    # (apache/airflow#73428); tests/e2e/test_dag_local.py runs them.
    monkeypatch.setattr("sys.argv", ["/venv/bin/airflow", "dags", "test", "tagifai_training"])
    bag = parse_dags()
    assert bag.import_errors == {}
    assert not bag.dags["tagifai_training"].deadline and not bag.dags["tagifai_watch"].deadline


@pytest.mark.parametrize("approval", ["auto", "human"])
def test_the_dags_and_their_deadlines_serialize(parse_dags, request, approval):
    # What the scheduler reads is the serialized DAG: the deadline's callback path must come through, and
    # the approval task (with its notifier) must serialize.
    from airflow.serialization.serialized_objects import DagSerialization

    bag = parse_dags(**(request.getfixturevalue("human") if approval == "human" else {}))
    for dag_id in DAG_IDS:
        data = json.dumps(DagSerialization.to_dict(bag.dags[dag_id]))
        assert ("tagifai.orchestration.notify.DeadlineNotifier" in data) is (
            dag_id in ("tagifai_training", "tagifai_watch")
        )
    assert ('"approve"' in json.dumps(DagSerialization.to_dict(bag.dags["tagifai_training"]))) is (approval == "human")


# ---- failure notifications ----------------------------------------------------------------------------


def callbacks(task):
    found = task.partial_kwargs.get("on_failure_callback") if hasattr(task, "partial_kwargs") else None
    found = found or task.on_failure_callback
    return found if isinstance(found, list) else [found]


@pytest.mark.parametrize("approval", ["auto", "human"])
def test_every_task_of_every_tagifai_dag_tells_its_failure(parse_dags, request, approval):
    from tagifai.orchestration import notify

    bag = parse_dags(**(request.getfixturevalue("human") if approval == "human" else {}))
    assert sorted(bag.dags) == DAG_IDS
    for dag in bag.dags.values():
        for task in dag.tasks:
            assert notify.task_failed in callbacks(task), f"{dag.dag_id}.{task.task_id}"


@pytest.mark.parametrize(
    ("exit_code", "written", "expected", "final"),
    [
        # Bad data: the step's output file names the error and its run; not retried.
        (3, {"error": "validation failed: unique_ids: 3 duplicated id(s)", "exit_code": 3, "run_id": "r1",
             "experiment_id": "4"}, "validate: validation failed: unique_ids: 3 duplicated id(s)", True),
        # MLflow down, no file written: the log's last `error:` line; retried.
        (1, None, "validate: MLflow at http://mlflow:5000 answered 503", False),
        # Neither: the exit code says what it can.
        (3, None, "validate: the step cannot run with this input or setup", True),
    ],
)  # fmt: skip
def test_a_failed_container_names_its_error(load_dag, render, docker_client, exit_code, written, expected, final):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    # The real DockerOperator against a fake engine: it removes the failed container in its `finally`.
    docker_client.exit_code = exit_code
    if expected.endswith("MLflow at http://mlflow:5000 answered 503") or written:
        docker_client.logs = [b"2026 INFO tagifai: validating\nerror: MLflow at http://mlflow:5000 answered 503\n"]
    if written:
        docker_client.files["/tmp/tagifai-output.json"] = json.dumps(written).encode()
    with pytest.raises(AirflowException) as raised:
        render(load_dag().get_task("validate")).execute({})
    assert str(raised.value).startswith(expected)
    assert isinstance(raised.value, AirflowFailException) is final
    assert raised.value.step_output["run_id"] == (written or {}).get("run_id")
    assert docker_client.removed == ["c0ffee"]


@pytest.mark.parametrize(
    ("script", "expected", "run_id", "final"),
    [
        # Writes its error's JSON (TAGIFAI_OUTPUT) and its error line; exit 3: not retried.
        ('echo \'{"error": "validation failed: labels: 2 unknown tag(s)", "exit_code": 3, "run_id": "r9", '
         '"experiment_id": "1"}\' > "$TAGIFAI_OUTPUT"\necho "error: validation failed: labels: 2 unknown tag(s)" >&2\n'
         "exit 3", "validate: validation failed: labels: 2 unknown tag(s)", "r9", True),
        # Only an error line (an older tagifai, or it died before writing); exit 1: retried.
        ('echo "error: MLflow did not answer" >&2\nexit 1', "validate: MLflow did not answer", None, False),
    ],
)  # fmt: skip
def test_a_failed_local_step_names_its_error(load_dag, render, tmp_path, script, expected, run_id, final):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    fake = tmp_path / "tagifai"
    fake.write_text(f"#!/bin/bash\necho 'starting' >&2\n{script}\n", encoding="utf-8")
    fake.chmod(0o755)
    task = render(load_dag(TAGIFAI_RUNNER="local", TAGIFAI_BIN=str(fake)).get_task("validate"))
    with pytest.raises(AirflowException) as raised:
        task.execute({})
    assert str(raised.value) == expected
    assert isinstance(raised.value, AirflowFailException) is final
    assert raised.value.step_output["run_id"] == run_id


# ---- the champion's own DAG ----------------------------------------------------------------------------


def test_the_champion_dag_tells_each_move_and_fails_on_a_malformed_event(parse_dags, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    dag = parse_dags().dags["tagifai_champion"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["tagifai_champion"]
    assert dag.task_ids == ["tell_champion_moved"]
    task = dag.get_task("tell_champion_moved")
    good = {**DECIDED, "action": "rollback", "by": "tagifai rollback by carol", "pipeline_run_id": None}
    good.pop("run_id"), good.pop("experiment_id")
    events = {"tagifai_champion": [SimpleNamespace(extra=good), SimpleNamespace(extra={**good, "version": "3 4"})]}
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        with pytest.raises(AirflowFailException, match="^1 malformed champion event.*version must be a version"):
            task.python_callable(triggering_asset_events=events)
    [told] = received
    assert told["text"].startswith("tagifai champion rolled back to v3 (from v2) by tagifai rollback by carol")
