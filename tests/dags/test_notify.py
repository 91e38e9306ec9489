"""Notifications: real channels (an HTTP webhook sink, an SMTP sink), the scrub, the champion event's contract."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import socketserver
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest

from harness.dags import webhook_sink

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def fresh_notify(monkeypatch):
    """Each test starts with notifications off and the 'off' not said yet."""
    from tagifai.orchestration import notify

    for name in list(os.environ):
        if name.startswith(("TAGIFAI_NOTIFY_", "AIRFLOW_CONN_")) or name == "AIRFLOW__API__BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setattr(notify, "_off_said", False)


class SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321 without extensions) to take messages: what a relay sees."""

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 sink ready")
        envelope: dict = {"rcpt": []}
        while line := self.rfile.readline().decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                envelope = {"from": line.split(":", 1)[1].strip(" <>"), "rcpt": []}
                self.reply("250 ok")
            elif verb == "RCPT":
                envelope["rcpt"].append(line.split(":", 1)[1].strip(" <>"))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                data = []
                while (chunk := self.rfile.readline().decode()) not in (".\r\n", ""):
                    data.append(chunk[1:] if chunk.startswith("..") else chunk)
                envelope["message"] = email.message_from_string("".join(data), policy=email.policy.default)
                self.server.messages.append(envelope)
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[int, list[dict]]]:
    """An SMTP server on 127.0.0.1 in a thread: yields its port and the messages it took."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SmtpSink)
    server.daemon_threads = True
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.messages
    finally:
        server.shutdown()
        server.server_close()


def body_text(message) -> str:
    """The text of a mail the SmtpNotifier sent (its html part)."""
    import html

    part = message.get_body(preferencelist=("html", "plain"))
    return html.unescape(part.get_content())


# ---- channels -----------------------------------------------------------------------------------------


def test_nothing_configured_sends_nothing_and_says_so_once(caplog):
    from tagifai.orchestration import notify

    with caplog.at_level("INFO", logger=notify.log.name):
        assert notify.send("drift", "drift seen") == 0
        assert notify.send("drift", "drift seen again") == 0
    assert [r.getMessage() for r in caplog.records].count(
        "notifications are off: set TAGIFAI_NOTIFY_WEBHOOK_URL and/or TAGIFAI_NOTIFY_SMTP_HOST "
        "(with TAGIFAI_NOTIFY_FROM, TAGIFAI_NOTIFY_TO)"
    ) == 1


def test_the_webhook_gets_one_json_object_with_text_event_and_fields(monkeypatch):
    from tagifai.orchestration import notify

    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        assert notify.send("drift", "drift in tags\nreport: http://x", psi=0.4) == 1
    assert received == [
        {
            "path": "/hooks/t0ken-in-the-url",
            "content_type": "application/json",
            "text": "drift in tags\nreport: http://x",
            "event": "drift",
            "psi": 0.4,
        }
    ]


def test_a_webhook_that_fails_is_logged_without_its_url_and_fails_nothing(monkeypatch, caplog):
    from tagifai.orchestration import notify

    with webhook_sink(status=500) as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        with caplog.at_level("WARNING", logger=notify.log.name):
            assert notify.send("drift", "x") == 0
    assert len(received) == 1  # an answer is not retried (only a connection that failed is)
    assert "HTTP 500" in caplog.text and "t0ken" not in caplog.text


def test_smtp_sends_a_plain_message_through_the_providers_notifier(monkeypatch):
    from tagifai.orchestration import notify

    with smtp_sink() as (port, messages):
        monkeypatch.setenv("TAGIFAI_NOTIFY_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("TAGIFAI_NOTIFY_SMTP_PORT", str(port))
        monkeypatch.setenv("TAGIFAI_NOTIFY_FROM", "tagifai@example.org")
        monkeypatch.setenv("TAGIFAI_NOTIFY_TO", "ml@example.org, oncall@example.org")
        # Input may hold a template: it is sent as it is, never rendered ({{ var.value.x }} would read Airflow).
        assert notify.send("task_failed", "validate failed: {{ var.value.secret }} <b>x</b>") == 1
    [sent] = messages
    assert "AIRFLOW_CONN_TAGIFAI_NOTIFY_SMTP" not in os.environ  # only while it sent
    assert sent["from"] == "tagifai@example.org"
    assert sent["rcpt"] == ["ml@example.org", "oncall@example.org"]
    assert sent["message"]["Subject"] == "tagifai: validate failed: {{ var.value.secret }} <b>x</b>"
    assert "validate failed: {{ var.value.secret }} <b>x</b>" in body_text(sent["message"])


def test_the_smtp_connection_is_built_in_process_and_never_shown(monkeypatch):
    from tagifai.orchestration import notify

    channels = notify.Channels.from_env(
        {
            "TAGIFAI_NOTIFY_SMTP_HOST": "smtp.example.org",
            "TAGIFAI_NOTIFY_SMTP_PORT": "587",
            "TAGIFAI_NOTIFY_SMTP_USER": "bot",
            "TAGIFAI_NOTIFY_SMTP_PASSWORD": "mail-s3cret",
            "TAGIFAI_NOTIFY_FROM": "bot@example.org",
            "TAGIFAI_NOTIFY_TO": "a@example.org",
        }
    )
    from airflow.sdk import Connection

    conn = Connection.from_json(channels.smtp_connection(), conn_id="x")
    assert (conn.host, conn.port, conn.login, conn.password) == ("smtp.example.org", 587, "bot", "mail-s3cret")
    # A login: STARTTLS (the hook's default), no implicit TLS; SSL=true: implicit TLS.
    assert conn.extra_dejson["disable_tls"] is False and conn.extra_dejson["disable_ssl"] is True
    assert "mail-s3cret" not in repr(channels)  # a log line showing the settings shows no secret


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"TAGIFAI_NOTIFY_SMTP_PORT": "25x"}, "TAGIFAI_NOTIFY_SMTP_PORT='25x': expected a port number"),
        ({"TAGIFAI_NOTIFY_SMTP_SSL": "yes"}, "TAGIFAI_NOTIFY_SMTP_SSL='yes': expected true or false"),
        ({"TAGIFAI_NOTIFY_WEBHOOK_URL": "file:///etc/passwd"}, "TAGIFAI_NOTIFY_WEBHOOK_URL is not an http"),
        ({"TAGIFAI_NOTIFY_SMTP_HOST": "smtp"}, "set TAGIFAI_NOTIFY_FROM and TAGIFAI_NOTIFY_TO too"),
    ],
)
def test_malformed_channel_settings_are_refused_in_one_line(env, error):
    from tagifai.orchestration import notify

    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        notify.Channels.from_env(env)


# ---- never a secret ------------------------------------------------------------------------------------

SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "admin-pa55word",
    "TAGIFAI_NOTIFY_SMTP_PASSWORD": "mail-pa55word",
    "AIRFLOW__CORE__FERNET_KEY": "fernet-abcdefgh",
    "AWS_SECRET_ACCESS_KEY": "aws-abcdefgh",
    "TAGIFAI_OPTUNA_STORAGE": "postgresql+psycopg2://optuna:optuna%2Fpw@postgres/optuna",
    "AIRFLOW_CONN_SOMETHING": "http://user:conn-pa55@host",
    "MLFLOW_BATCH_PASSWORD": "abc",  # too short to hide without garbling every text
}


def test_scrub_replaces_every_secret_value_of_the_environment(monkeypatch):
    from tagifai.orchestration import notify

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TAGIFAI_RUNNER", "local")  # not a secret: kept
    text = (
        "login admin-pa55word failed; key fernet-abcdefgh; aws-abcdefgh; postgresql+psycopg2://optuna:optuna%2Fpw"
        "@postgres/optuna; the password alone: optuna/pw; conn-pa55; runner local; abc"
    )
    assert notify.scrub(text) == (
        "login *** failed; key ***; ***; ***; the password alone: ***; ***; runner local; abc"
    )
    assert notify.scrub({"error": ["admin-pa55word"], "n": 1}) == {"error": ["***"], "n": 1}


def test_a_message_never_carries_a_secret_to_any_channel(monkeypatch):
    from tagifai.orchestration import notify

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with webhook_sink() as (url, received), smtp_sink() as (port, messages):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        monkeypatch.setenv("TAGIFAI_NOTIFY_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("TAGIFAI_NOTIFY_SMTP_PORT", str(port))
        monkeypatch.setenv("TAGIFAI_NOTIFY_FROM", "tagifai@example.org")
        monkeypatch.setenv("TAGIFAI_NOTIFY_TO", "ml@example.org")
        leak = f"error: could not log in as admin with admin-pa55word to {url}"
        assert notify.send("task_failed", leak, error=leak, url=url) == 2
    [posted], [mailed] = received, messages
    posted.pop("path")  # where it went (the webhook's own URL), not what it said
    everything = str(posted) + mailed["message"].as_string() + body_text(mailed["message"])
    secret_values = [*SECRETS.values(), url, "t0ken-in-the-url"]
    assert not [value for value in secret_values if len(value) >= 4 and value in everything]
    assert "could not log in as admin with *** to ***" in posted["text"]


# ---- the events ------------------------------------------------------------------------------------------


class FakeTI:
    """`ti` in a failure callback's context."""

    dag_id, run_id, task_id, map_index = "tagifai_training", "manual__1", "validate", -1
    log_url = "http://airflow.example/dags/tagifai_training/runs/manual__1/tasks/validate?try_number=1"

    def __init__(self, xcom=None):
        self.xcom = xcom or {}

    def xcom_pull(self, task_ids, **_):
        return self.xcom.get(task_ids)


def test_a_failed_task_is_told_with_its_error_log_and_mlflow_run(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from tagifai.orchestration import notify

    error = AirflowFailException("validate: validation failed: unique_ids: 3 duplicated id(s)\nmore detail")
    error.step_output = {"error": "validation failed", "run_id": "r123", "experiment_id": "7"}
    monkeypatch.setenv("TAGIFAI_MLFLOW_PUBLIC_URL", "http://mlflow.example/")
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        notify.task_failed({"ti": FakeTI(), "exception": error, "run_id": "manual__1"})
        # No output file (the step died before writing one): the upstream step's run.
        upstream = {"elt": '{"run_id": "elt-run"}'}
        task = SimpleNamespace(upstream_task_ids={"elt"})
        notify.task_failed({"ti": FakeTI(upstream), "task": task, "exception": RuntimeError("boom"), "run_id": "m"})
    first, second = received
    assert first["text"] == (
        "tagifai_training run manual__1: task validate failed: validate: validation failed: unique_ids: "
        "3 duplicated id(s)\n"
        f"log: {FakeTI.log_url}\n"
        "MLflow run: http://mlflow.example/#/experiments/7/runs/r123"
    )
    assert (first["event"], first["task_id"], first["mlflow_run_id"]) == ("task_failed", "validate", "r123")
    assert second["text"].endswith("MLflow run: http://mlflow.example/#/runs/elt-run")


GOOD_EXTRA = {
    "model_name": "tagifai",
    "from_version": "2",
    "version": "3",
    "test_f1": 0.85,
    "holdout_f1": 0.8,
    "action": "promote",
    "by": "approved by alice",
    "pipeline_run_id": "manual__1",
    "history_run_id": "h1",
}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": "3; rm"}, "version must be a version number"),  # not digits
        ({"version": None}, "version must be a version number"),  # missing
        ({"from_version": "v2"}, "from_version must be a version number"),
        ({"version": "\u00b3"}, "version must be a version number"),  # a digit to str.isdigit, not a version
        ({"test_f1": 1.5}, r"test_f1 must be a number in \[0, 1\]"),  # out of range
        ({"test_f1": None}, r"test_f1 must be a number in \[0, 1\]"),  # required
        ({"test_f1": "0.9"}, r"test_f1 must be a number"),  # a string
        ({"holdout_f1": float("nan")}, r"holdout_f1 must be a number in \[0, 1\] or null"),  # NaN
        ({"holdout_f1": True}, "holdout_f1 must be a number"),  # a bool is no f1
        ({"by": "x" * 201}, "by must be a string of at most 200 printable characters"),
        ({"by": "alice\nFAKE: champion rolled back"}, "by must be a string"),  # a forged second line
        ({"by": "alice\u2028FAKE"}, "by must be a string"),  # a Unicode line separator
        ({"model_name": 3}, "model_name must be a string"),
        ({"action": "delete"}, "action must be promote or rollback"),
    ],
)
def test_a_malformed_champion_event_is_refused_in_one_line(change, error):
    from tagifai.orchestration import notify

    with pytest.raises(notify.BadChampionEvent, match=f"^champion event: {error}") as raised:
        notify.champion_extra({**GOOD_EXTRA, **change})
    assert "\n" not in str(raised.value)


def test_champion_extra_accepts_no_previous_champion_and_no_holdout():
    from tagifai.orchestration import notify

    extra = {**GOOD_EXTRA, "from_version": None, "holdout_f1": None, "history_run_id": None, "test_f1": 1}
    assert notify.champion_extra(extra) == {**extra, "test_f1": 1.0}


def test_a_champion_move_is_told_with_the_model_card_link(monkeypatch):
    from tagifai.orchestration import notify

    monkeypatch.setenv("TAGIFAI_MLFLOW_PUBLIC_URL", "http://mlflow.example")
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        notify.champion_moved({**GOOD_EXTRA, "action": "rollback", "by": "tagifai rollback by bob"})
        with pytest.raises(notify.BadChampionEvent):
            notify.champion_moved({**GOOD_EXTRA, "version": "x"})
    [sent] = received  # nothing for the bad one
    assert sent["text"] == (
        "tagifai champion rolled back to v3 (from v2) by tagifai rollback by bob\n"
        "test f1 0.8500, holdout f1 0.8000\n"
        "model card: http://mlflow.example/#/models/tagifai/versions/3"
    )
    assert sent["event"] == "champion_moved" and sent["action"] == "rollback"


def test_a_challenger_not_promoted_is_told_why(monkeypatch):
    from tagifai.orchestration import notify

    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        notify.not_promoted({"model_name": "tagifai", "version": "4", "reason": "test f1 0.41 < min_f1 0.6"}, "m__1")
    assert received[0]["text"] == "tagifai v4 not promoted (run m__1): test f1 0.41 < min_f1 0.6"
    assert (received[0]["event"], received[0]["version"]) == ("not_promoted", "4")


def test_an_approval_request_links_to_its_page(monkeypatch):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from tagifai.orchestration import notify

    task = ApprovalOperator(task_id="approve", subject="tagifai: promote v3?", notifiers=[notify.ApprovalRequested()])
    ti = SimpleNamespace(dag_id="tagifai_training", run_id="manual__1", task_id="approve", map_index=-1)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example")
    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        for notifier in task.notifiers:  # as HITLOperator.execute calls them
            notifier({"ti": ti, "task_instance": ti, "task": task})
    assert received[0]["text"] == (
        "tagifai_training run manual__1 waits for approval: tagifai: promote v3?\n"
        "answer: https://airflow.example/dags/tagifai_training/runs/manual__1/tasks/approve/required_actions"
        "?map_index=-1"
    )


def test_a_missed_deadline_is_told_from_the_triggerer(monkeypatch):
    # The triggerer's own path: CallbackTrigger imports the callback by its path and awaits it with the
    # context the scheduler built (the dag run as the REST API shows it, and the deadline).
    from airflow.triggers.callback import CallbackTrigger

    from tagifai.orchestration import notify

    alert = notify.deadline(timedelta(minutes=240), "not finished 240 minutes after it was queued")
    context = {
        "dag_run": {"dag_id": "tagifai_training", "dag_run_id": "scheduled__2026-11-30", "state": "running"},
        "deadline": {"id": "d1", "deadline_time": "2026-11-30T04:00:00+00:00"},
    }
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example/")

    async def run(trigger):
        return [event async for event in trigger.run()]

    with webhook_sink() as (url, received):
        monkeypatch.setenv("TAGIFAI_NOTIFY_WEBHOOK_URL", url)
        trigger = CallbackTrigger(alert.callback.path, {**alert.callback.kwargs, "context": context})
        events = asyncio.run(run(trigger))
    assert events[-1].payload["state"] == "success", events[-1].payload
    assert received[0]["text"] == (
        "tagifai_training run scheduled__2026-11-30 missed its deadline (2026-11-30T04:00:00+00:00): "
        "not finished 240 minutes after it was queued\n"
        "run: https://airflow.example/dags/tagifai_training/runs/scheduled__2026-11-30"
    )
    assert received[0]["event"] == "deadline_missed"
