"""Tell people: a short plain-text message with links, by mail and/or to a chat webhook.

Channels come from the environment (`TAGIFAI_NOTIFY_*`, `tagifai.contract.names`); none set: notifications
are off, said once in the log per process. Each event goes to every configured channel through Airflow's own
notifiers: the SMTP provider's `SmtpNotifier` (its connection built in-process from `TAGIFAI_NOTIFY_SMTP_*`,
never rendered nor logged) and `WebhookNotifier`, which POSTs `{"text": ..., "event": ..., <fields>}`.

Events: a task failed for good (`task_failed`, every tagifai DAG's `on_failure_callback`), the champion moved
(`champion_moved`), a challenger was not promoted (`not_promoted`), an approval is waiting
(`ApprovalRequested`), a run missed its deadline (`DeadlineNotifier`, run by the triggerer), the drift monitor
found drift (`drift_detected`), and any other (`send`). Every text and field is scrubbed of secret values
(`scrub`) before it leaves. A channel that fails is logged, never fails the task it reports on. Standard
library, Airflow and tagifai.contract only.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import urllib3
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import AsyncCallback, BaseNotifier, DeadlineAlert, DeadlineReference

from tagifai.contract import names

log = logging.getLogger(__name__)

SMTP_CONN_ID = "tagifai_notify_smtp"
# Environment variables whose values never leave in a message: by a word in their name, or by name.
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY", "FERNET", "WEBHOOK", "CREDENTIAL")
SECRET_NAMES = (
    names.OPTUNA_STORAGE_ENV,
    names.PREDICTIONS_DB_ENV,
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)
# Shorter values are not hidden: replacing every "on" or "42" in a text would garble it, not protect anything.
MIN_SECRET_CHARS = 4
MAX_TEXT_CHARS = 4000
MAX_LINE_CHARS = 500
_off_said = False


@dataclass(frozen=True)
class Channels:
    """Where messages go, read from the environment (`from_env`); links' bases too."""

    webhook_url: str = field(default="", repr=False)  # a chat webhook's URL embeds its token
    smtp_host: str = ""
    smtp_port: int | None = None
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_ssl: bool = False
    sender: str = ""
    to: tuple[str, ...] = ()
    mlflow_url: str = ""
    airflow_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Channels:
        """Read `TAGIFAI_NOTIFY_*`, `TAGIFAI_MLFLOW_PUBLIC_URL` and `AIRFLOW__API__BASE_URL`.

        Raises:
            ValueError: a value is malformed (one line naming the variable; never its value if secret).
        """
        env = os.environ if environ is None else environ
        get = lambda name: env.get(name, "").strip()  # noqa: E731
        port, ssl = get(names.NOTIFY_SMTP_PORT_ENV), get(names.NOTIFY_SMTP_SSL_ENV).lower() or "false"
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{names.NOTIFY_SMTP_PORT_ENV}={port!r}: expected a port number (1-65535)")
        if ssl not in ("true", "false"):
            raise ValueError(f"{names.NOTIFY_SMTP_SSL_ENV}={ssl!r}: expected true or false")
        webhook = get(names.NOTIFY_WEBHOOK_URL_ENV)
        if webhook and urllib.parse.urlsplit(webhook).scheme not in ("http", "https"):
            raise ValueError(f"{names.NOTIFY_WEBHOOK_URL_ENV} is not an http(s) URL")
        to = tuple(a.strip() for a in get(names.NOTIFY_TO_ENV).split(",") if a.strip())
        channels = cls(
            webhook_url=webhook,
            smtp_host=get(names.NOTIFY_SMTP_HOST_ENV),
            smtp_port=int(port) if port else None,
            smtp_user=get(names.NOTIFY_SMTP_USER_ENV),
            smtp_password=env.get(names.NOTIFY_SMTP_PASSWORD_ENV, ""),
            smtp_ssl=ssl == "true",
            sender=get(names.NOTIFY_FROM_ENV),
            to=to,
            mlflow_url=get(names.MLFLOW_PUBLIC_URL_ENV).rstrip("/"),
            airflow_url=get(names.AIRFLOW_BASE_URL_ENV).rstrip("/"),
        )
        if channels.smtp_host and not (channels.sender and channels.to):
            raise ValueError(
                f"{names.NOTIFY_SMTP_HOST_ENV} is set: set {names.NOTIFY_FROM_ENV} and {names.NOTIFY_TO_ENV} too"
            )
        return channels

    @property
    def configured(self) -> bool:
        """Whether any channel is set."""
        return bool(self.webhook_url or self.smtp_host)

    def smtp_connection(self) -> str:
        """The SMTP connection, as the JSON of an `AIRFLOW_CONN_*` variable (holds the password).

        SSL "true": implicit TLS (e.g. port 465). Else STARTTLS, which the hook insists on, except for a
        server without a login (nothing to protect but the message; a local relay or a test sink).
        """
        extra = {"disable_ssl": not self.smtp_ssl, "disable_tls": self.smtp_ssl or not self.smtp_user}
        extra |= {"from_email": self.sender, "timeout": 30, "retry_limit": 1}
        conn = {"conn_type": "smtp", "host": self.smtp_host, "extra": extra}
        if self.smtp_port:
            conn["port"] = self.smtp_port
        if self.smtp_user:
            conn |= {"login": self.smtp_user, "password": self.smtp_password}
        return json.dumps(conn)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment that are secrets, and the passwords inside secret URLs; longest first."""
    env = os.environ if environ is None else environ
    found = set()
    for name, value in env.items():
        upper = name.upper()
        if not value or not (
            any(word in upper for word in SECRET_WORDS) or upper in SECRET_NAMES or upper.startswith("AIRFLOW_CONN_")
        ):
            continue
        found.add(value)
        try:
            if password := urllib.parse.urlsplit(value).password:
                found.add(urllib.parse.unquote(password))
                found.add(password)
        except ValueError:
            pass
    return sorted((v for v in found if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def scrub(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`value` (a text, or JSON-like data) with every secret value of the environment replaced by `***`."""
    secrets = secret_values(environ)

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            for secret in secrets:
                item = item.replace(secret, "***")
            return item
        if isinstance(item, Mapping):
            return {clean(str(k)): clean(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [clean(v) for v in item]
        return item

    return clean(value)


def one_line(text: Any, limit: int = MAX_LINE_CHARS) -> str:
    """The first non-empty line of `text`, at most `limit` characters."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class WebhookNotifier(BaseNotifier):
    """POST one JSON object (`payload`) to a chat tool's incoming webhook. Nothing in it is templated."""

    template_fields = ()

    def __init__(self, url: str, payload: Mapping[str, Any], timeout: float = 10.0) -> None:
        """A notifier of `payload` to `url`."""
        super().__init__()
        self.url, self.payload, self.timeout = url, dict(payload), timeout

    def notify(self, context: Any) -> None:
        """Send it.

        Raises:
            RuntimeError: the webhook answered other than 2xx, or did not answer (its URL never named).
        """
        http = urllib3.PoolManager(timeout=urllib3.Timeout(total=self.timeout), retries=urllib3.Retry(2))
        try:
            response = http.request("POST", self.url, json=self.payload, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise RuntimeError(f"the webhook did not answer ({type(exc).__name__})") from None
        if not 200 <= response.status < 300:
            raise RuntimeError(f"the webhook answered HTTP {response.status}")

    async def async_notify(self, context: Any) -> None:
        """Send it from the triggerer (in a thread: urllib3 blocks)."""
        await asyncio.to_thread(self.notify, context)


class PlainSmtpNotifier(SmtpNotifier):
    """The SMTP provider's notifier with nothing templated: a message may quote input (`{{ ... }}` included).

    Its connection (`connection`: the JSON of an Airflow connection, with the password) exists only while it
    sends, as `AIRFLOW_CONN_TAGIFAI_NOTIFY_SMTP` in this process: never stored, rendered, logged, nor left
    for a step's subprocess to inherit.
    """

    template_fields = ()

    def __init__(self, *, connection: str, **kwargs: Any) -> None:
        """The provider's notifier on the connection `connection`."""
        super().__init__(smtp_conn_id=SMTP_CONN_ID, **kwargs)
        self._connection = connection

    def notify(self, context: Any) -> None:
        """Send the mail with the connection set for just that long."""
        variable = f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}"
        os.environ[variable] = self._connection
        try:
            super().notify(context)
        finally:
            os.environ.pop(variable, None)


def notifiers(channels: Channels, event: str, text: str, fields: Mapping[str, Any]) -> list[BaseNotifier]:
    """One notifier per configured channel for this (already scrubbed) message."""
    built: list[BaseNotifier] = []
    if channels.webhook_url:
        built.append(WebhookNotifier(channels.webhook_url, {**fields, "text": text, "event": event}))
    if channels.smtp_host:
        subject = f"tagifai: {one_line(text, 150)}"
        body = "<pre>" + html.escape(text) + "</pre>"
        built.append(
            PlainSmtpNotifier(
                to=list(channels.to),
                from_email=channels.sender,
                subject=subject,
                html_content=body,
                connection=channels.smtp_connection(),
            )
        )
    return built


def channels_or_none() -> Channels | None:
    """The configured channels, or None (off: said once per process; or misconfigured: said every time)."""
    global _off_said
    try:
        channels = Channels.from_env()
    except ValueError as exc:
        log.error("notifications: not sent, the settings are wrong: %s", exc)
        return None
    if not channels.configured:
        if not _off_said:
            log.info(
                "notifications are off: set %s and/or %s (with %s, %s)",
                names.NOTIFY_WEBHOOK_URL_ENV,
                names.NOTIFY_SMTP_HOST_ENV,
                names.NOTIFY_FROM_ENV,
                names.NOTIFY_TO_ENV,
            )
            _off_said = True
        return None
    return channels


def send(event: str, text: str, **fields: Any) -> int:
    """Send one event to every configured channel; return how many took it.

    Args:
        event: what happened (`task_failed`, `champion_moved`, `not_promoted`, `approval_requested`,
            `deadline_missed`, `drift`, ...).
        text: the message: short plain text, links on their own lines.
        **fields: JSON values the webhook gets besides `text` and `event`.
    """
    channels = channels_or_none()
    if channels is None:
        return 0
    text = scrub(text)[:MAX_TEXT_CHARS]  # scrubbed first: a cut must not leave part of a secret
    fields = scrub(fields)
    sent = 0
    for notifier in notifiers(channels, event, text, fields):
        try:
            notifier.notify({})
            sent += 1
        except Exception as exc:  # a message that did not go never fails what it reports on
            log.warning("notifications: %s not sent by %s: %s", event, type(notifier).__name__, scrub(one_line(exc)))
    return sent


async def asend(event: str, text: str, **fields: Any) -> int:
    """`send` from an event loop (the triggerer)."""
    return await asyncio.to_thread(send, event, text, **fields)


def mlflow_run_url(base: str, run_id: str | None, experiment_id: str | None = None) -> str:
    """The MLflow UI page of a run ("" without a base or a run)."""
    if not (base and run_id):
        return ""
    if experiment_id:
        return f"{base}/#/experiments/{urllib.parse.quote(str(experiment_id))}/runs/{urllib.parse.quote(run_id)}"
    return f"{base}/#/runs/{urllib.parse.quote(run_id)}"


def model_version_url(base: str, model_name: str, version: str) -> str:
    """The MLflow UI page of a model version (its description is the model card)."""
    return f"{base}/#/models/{urllib.parse.quote(model_name)}/versions/{urllib.parse.quote(version)}" if base else ""


def lines(*items: str) -> str:
    """The message: its non-empty lines."""
    return "\n".join(item for item in items if item)


# ---- (a) a task failed for good -------------------------------------------------------------------


def task_failed(context: Mapping[str, Any]) -> None:
    """`on_failure_callback` of every tagifai task: runs once the task failed with no retry left.

    The error is the exception's first line (a step's: `<step>: <its error: line>`). The MLflow run is the one
    the failed step wrote (`step_output` on the exception, from its `TAGIFAI_OUTPUT`), else its upstream's.
    """
    ti, error = context["ti"], context.get("exception")
    channels = channels_or_none()
    if channels is None:
        return
    output = getattr(error, "step_output", None) or {}
    run_id, experiment_id = output.get("run_id"), output.get("experiment_id")
    if not run_id:
        run_id = upstream_run(context)
    dag_id, run = ti.dag_id, context.get("run_id") or ti.run_id
    text = lines(
        f"{dag_id} run {run}: task {ti.task_id} failed: {one_line(error) or 'no error message'}",
        f"log: {ti.log_url}",
        (url := mlflow_run_url(channels.mlflow_url, run_id, experiment_id)) and f"MLflow run: {url}",
    )
    fields = {"dag_id": dag_id, "run_id": run, "task_id": ti.task_id, "error": one_line(error), "log_url": ti.log_url}
    send("task_failed", text, **fields, mlflow_run_id=run_id, mlflow_url=url)


def upstream_run(context: Mapping[str, Any]) -> str | None:
    """The MLflow run id an upstream step of the failed task printed, if any."""
    task, ti = context.get("task"), context["ti"]
    for upstream in sorted(getattr(task, "upstream_task_ids", ()) or ()):
        try:
            out = ti.xcom_pull(task_ids=upstream)
            if isinstance(out, list):  # a mapped upstream: its first instance's
                out = out[0] if out else None
            parsed = out if isinstance(out, dict) else json.loads(out) if out else None
        except Exception:  # no or no JSON output: try the next
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("run_id"), str):
            return parsed["run_id"]
    return None


# ---- (b) the champion moved; (c) a challenger was not promoted --------------------------------------

_VERSION = re.compile(r"^[0-9]{1,10}$")


class BadChampionEvent(ValueError):
    """A champion Asset event's `extra` breaks its contract (one line naming the field)."""


def champion_extra(extra: Any) -> dict[str, Any]:
    """The champion event's `extra`, checked field by field.

    Fields: model_name, from_version (null: no champion before), version, test_f1, holdout_f1 (or null),
    action (promote, rollback), by, pipeline_run_id and history_run_id (strings or null).

    Raises:
        BadChampionEvent: a field is missing or malformed.
    """
    if not isinstance(extra, Mapping):
        raise BadChampionEvent(f"champion event: extra is not an object ({type(extra).__name__})")

    def text(name: str, optional: bool = False) -> str | None:
        value = extra.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
            raise BadChampionEvent(f"champion event: {name} must be a string of at most 200 printable characters")
        return value

    def version(name: str, optional: bool = False) -> str | None:
        value = extra.get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int) or not _VERSION.match(str(value)):
            raise BadChampionEvent(f"champion event: {name} must be a version number (digits)")
        return str(value)

    def f1(name: str, optional: bool = False) -> float | None:
        value = extra.get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise BadChampionEvent(f"champion event: {name} must be a number in [0, 1]" + (" or null" * optional))
        return float(value)

    checked = {
        "model_name": text("model_name"),
        "from_version": version("from_version", optional=True),
        "version": version("version"),
        "test_f1": f1("test_f1"),
        "holdout_f1": f1("holdout_f1", optional=True),
        "action": text("action"),
        "by": text("by"),
        "pipeline_run_id": text("pipeline_run_id", optional=True),
        "history_run_id": text("history_run_id", optional=True),
    }
    if checked["action"] not in ("promote", "rollback"):
        raise BadChampionEvent("champion event: action must be promote or rollback")
    return checked


def champion_moved(extra: Any) -> int:
    """Tell people the champion moved (a promotion or a rollback); return the channels that took it.

    Raises:
        BadChampionEvent: the event's extra is malformed (nothing is sent).
    """
    move = champion_extra(extra)
    channels = channels_or_none()
    if channels is None:
        return 0
    name, frm, to = move["model_name"], move["from_version"], move["version"]
    holdout = "n/a" if move["holdout_f1"] is None else f"{move['holdout_f1']:.4f}"
    verb = "promoted to" if move["action"] == "promote" else "rolled back to"
    text = lines(
        f"{name} champion {verb} v{to} (from {'v' + frm if frm else 'none'}) by {move['by']}",
        f"test f1 {move['test_f1']:.4f}, holdout f1 {holdout}",
        (url := model_version_url(channels.mlflow_url, name, to)) and f"model card: {url}",
    )
    return send("champion_moved", text, **move, model_card_url=url)


def not_promoted(out: Mapping[str, Any], dag_run_id: str) -> int:
    """Tell people a challenger stayed a challenger (register's or decide's output: version, reason)."""
    channels = channels_or_none()
    if channels is None:
        return 0
    name, version = str(out.get("model_name", "")), str(out.get("version", ""))
    why = one_line(out.get("reason") or out.get("decision") or "not promoted")
    text = lines(
        f"{name} v{version} not promoted (run {dag_run_id}): {why}",
        (url := model_version_url(channels.mlflow_url, name, version)) and f"model card: {url}",
    )
    return send("not_promoted", text, model_name=name, version=version, reason=why, pipeline_run_id=dag_run_id)


# ---- (d) an approval is waiting; (e) a deadline was missed --------------------------------------------


class ApprovalRequested(BaseNotifier):
    """An `ApprovalOperator`'s notifier: the approval page's link, and what is asked."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        """Send (d) from the approval task, once it waits."""
        from airflow.providers.standard.operators.hitl import HITLOperator

        channels = channels_or_none()
        if channels is None:
            return
        ti, task = context["ti"], context["task"]
        base = channels.airflow_url or None
        try:
            url = HITLOperator.generate_link_to_ui_from_context(context=context, base_url=base)
        except ValueError:  # no base URL configured anywhere
            url = ""
        asked = f"{ti.dag_id} run {ti.run_id} waits for approval: {one_line(task.subject)}"
        text = lines(asked, url and f"answer: {url}")
        send("approval_requested", text, dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, url=url)


class DeadlineNotifier(BaseNotifier):
    """A `DeadlineAlert`'s callback (`AsyncCallback`, in the triggerer): the run is late."""

    template_fields = ()

    def __init__(self, rule: str = "", context: Any = None) -> None:
        """`rule` says which deadline (e.g. "not finished 240 minutes after it was queued")."""
        super().__init__(context=context)
        self.rule = rule

    def message(self, context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The text and fields of (e), from the context the scheduler hands the callback."""
        run = context.get("dag_run") or {}
        dag_id, run_id = str(run.get("dag_id", "")), str(run.get("dag_run_id") or run.get("run_id") or "")
        deadline = str((context.get("deadline") or {}).get("deadline_time", ""))
        base = os.environ.get(names.AIRFLOW_BASE_URL_ENV, "").strip().rstrip("/")
        url = f"{base}/dags/{urllib.parse.quote(dag_id)}/runs/{urllib.parse.quote(run_id)}" if base else ""
        text = lines(f"{dag_id} run {run_id} missed its deadline ({deadline}): {self.rule}", url and f"run: {url}")
        return text, {"dag_id": dag_id, "run_id": run_id, "deadline": deadline, "rule": self.rule, "url": url}

    def notify(self, context: Any) -> None:
        """Send (e)."""
        text, fields = self.message(context)
        send("deadline_missed", text, **fields)

    async def async_notify(self, context: Any) -> None:
        """Send (e) from the triggerer."""
        text, fields = self.message(context)
        await asend("deadline_missed", text, **fields)


def deadline(interval: timedelta, rule: str) -> DeadlineAlert | None:
    """A run not finished `interval` after it was queued: `DeadlineNotifier` tells people (in the triggerer).

    None under `airflow dags test`, which has no scheduler to watch a deadline, and whose successful runs
    Airflow 3.3.2 fails on a DAG with one (apache/airflow#73428: `'dict' object has no attribute 'hex'`).
    """
    if sys.argv[1:3] == ["dags", "test"]:
        return None
    callback = AsyncCallback(DeadlineNotifier, kwargs={"rule": rule})
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=interval, callback=callback)


# ---- (f) drift detected ------------------------------------------------------------------------------------

# How many of the monitor's reasons an event and a message carry.
MAX_REASONS = 10


def drift_extra(out: Mapping[str, Any], dag_run_id: str) -> dict[str, Any]:
    """The drift event's `extra`, from `tagifai monitor`'s output: what was judged, the verdict, where the report is.

    Fields: model_name, model_version, status, reasons (at most `MAX_REASONS` lines), rows, run_id and
    experiment_id (the monitor's MLflow run), report (its artifact path) and dag_run_id.
    """
    reasons = [one_line(reason) for reason in (out.get("reasons") or [])[:MAX_REASONS]]
    fields = ("model_name", "model_version", "status", "run_id", "experiment_id", "report")
    extra = {name: None if out.get(name) is None else one_line(out[name], 200) for name in fields}
    rows = out.get("rows") if isinstance(out.get("rows"), Mapping) else {}
    return {**extra, "drifted": True, "reasons": reasons, "rows": dict(rows), "dag_run_id": dag_run_id}


def drift_detected(extra: Mapping[str, Any]) -> int:
    """Tell people the monitor found drift (`drift_extra`): its reasons, the rows it judged, its run and report."""
    channels = channels_or_none()
    if channels is None:
        return 0
    name, version, rows = extra.get("model_name"), extra.get("model_version"), extra.get("rows") or {}
    # Served first, then batch, whatever order the rows came in (XCom may sort the keys).
    sources = sorted((s for s, n in rows.items() if isinstance(n, Mapping)), key=lambda s: (s != "served", s))
    judged = ", ".join(f"{source} {rows[source].get('judged')}" for source in sources)
    reference = f" (reference {rows['reference']})" if "reference" in rows else ""
    url = mlflow_run_url(channels.mlflow_url, extra.get("run_id"), extra.get("experiment_id"))
    report = f"{url}/artifacts/{extra['report']}" if url and extra.get("report") else ""
    text = lines(
        f"{name} v{version}: drift detected in what the champion served or scored (run {extra.get('dag_run_id')})",
        *(f"- {reason}" for reason in extra.get("reasons") or []),
        judged and f"rows judged: {judged}{reference}",
        url and f"MLflow run: {url}",
        report and f"report: {report}",
    )
    return send("drift", text, **extra, mlflow_url=url, report_url=report)
