"""A human in the loop, in the running stack: with `[register] approval = "human"` a run waits at the
`approve` task (no worker slot held) with the challenger-vs-champion report as its body; approving it
through Airflow's REST API moves `champion`, rejecting a second run leaves it where it was, the history
records both decisions and who made them, a user without the permission gets 403, and every step of it
is told by mail. The report opens in MLflow's artifact view, in a reviewer's fresh browser (a screenshot
for docs/).

The deployer's setting is changed in the stack's settings file and Airflow re-parses the DAG; it is put
back (and the DAG re-parsed) before the module ends.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from harness.stack import SCREENSHOTS, chromium, make, pause_watcher, wait_for_text
from scripts.stack import Airflow
from tagifai.operations.airflow_api import AirflowError

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]

DAG = "tagifai_training"
APPROVE = "approve"
# Cheap runs: one trial on one worker (the default params: as good as the champion on this data).
QUICK = {"num_trials": 1, "num_workers": 1}
# How long after the request the test answers (`held_run`): past the moment the scheduler hears the paused try end.
ANSWER_AFTER_SECONDS = 10


def dag_tasks(client: Airflow) -> set[str]:
    """The task ids of tagifai_training as Airflow parsed it last."""
    return {t["task_id"] for t in client.request("GET", f"/api/v2/dags/{DAG}/tasks")["tasks"]}


def set_approval(stack, client: Airflow, mode: str, timeout: float = 240) -> None:
    """Write `[register] approval = mode` into the stack's settings file (in place: it is bind-mounted), ask
    Airflow to re-parse the DAG's file now (as the UI's "Reparse" button does; else it waits out its parsing
    interval), and wait until it has (the `approve` task is there with "human", gone with "auto")."""
    override = Path(stack.env["TAGIFAI_CONFIG"])
    text = re.sub(r'\n\[register\]\napproval = "\w+"\n', "\n", override.read_text(encoding="utf-8"))
    with override.open("r+", encoding="utf-8") as f:  # the same inode: the containers see the change
        f.write(text + f'\n[register]\napproval = "{mode}"\n')
        f.truncate()
    client.request("PUT", f"/api/v2/parseDagFile/{client.request('GET', f'/api/v2/dags/{DAG}')['file_token']}")
    deadline = time.monotonic() + timeout
    while (APPROVE in dag_tasks(client)) != (mode == "human"):
        assert time.monotonic() < deadline, f"Airflow did not re-parse {DAG} with approval = {mode!r}"
        time.sleep(5)


# Every DAG whose tasks take executor slots: nothing of them may run while the slots are compared (the
# champion's event starts batch scoring, its messages and the drift monitor).
DAGS = (
    "tagifai_training", "tagifai_batch_predictions", "tagifai_champion", "tagifai_watch", "tagifai_monitor",
    "tagifai_maintenance",
)  # fmt: skip


def wait_until_no_run(client: Airflow, timeout: float = 900) -> None:
    """Wait until no run of the stack's DAGs is queued or running: a training run an earlier test's new data
    started would, once past `register` after the switch, wait for an answer and hold back the next; and
    batch scoring after a promotion takes a slot."""
    deadline = time.monotonic() + timeout
    while going := [r["dag_run_id"] for d in DAGS for r in client.runs(d) if r["state"] in ("queued", "running")]:
        assert time.monotonic() < deadline, f"runs still going: {going}"
        time.sleep(5)


def wait_for_state(client: Airflow, run_id: str, task_id: str, state: str, timeout: float = 900) -> dict:
    """Poll a task instance until it is in `state` (the run must not end first)."""
    deadline = time.monotonic() + timeout
    while True:
        ti = client.task_instance(run_id, task_id)
        if ti["state"] == state:
            return ti
        run = client.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
        assert run["state"] not in ("success", "failed"), f"run ended {run['state']}: {client.task_states(run_id)}"
        assert time.monotonic() < deadline, f"{task_id} never reached {state}: {client.task_states(run_id)}"
        time.sleep(5)


def default_pool(client: Airflow) -> dict[str, Any]:
    """The default pool's slots: open, running, queued, deferred, ..."""
    return client.request("GET", "/api/v2/pools/default_pool")


def hitl_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{APPROVE}/-1/hitlDetails"


def answer(client: Airflow, run_id: str, choice: str) -> dict:
    """Answer the approval request of `run_id` as `client`'s user."""
    return client.request("PATCH", hitl_path(run_id), {"chosen_options": [choice], "params_input": {}})


def answered(client: Airflow, held: dict[str, Any], choice: str, timeout: float = 300) -> dict:
    """Answer a held run's request as the admin; once its try ends with the answer, wait for the run.

    Fails at once, not after the run's timeout, if Airflow asks again (a new try awaits input: the answer was lost).
    """
    answer(client, held["run_id"], choice)
    deadline = time.monotonic() + timeout
    asked = held["ti"]["try_number"]
    while (ti := client.task_instance(held["run_id"], APPROVE))["state"] not in ("success", "skipped", "failed"):
        lost = ti["try_number"] != asked or ti["state"] == "up_for_retry"
        assert not lost, f"{choice} was lost: {APPROVE} is {ti['state']} in try {ti['try_number']}, asked in {asked}"
        assert time.monotonic() < deadline, f"{APPROVE} still {ti['state']} {timeout:.0f} s after {choice}"
        time.sleep(2)
    return client.wait(held["run_id"], timeout=900)


def champion(stack) -> str:
    return stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]


def viewer(stack, client: Airflow) -> Airflow:
    """A second Airflow user, with the Viewer role: may read the DAGs, not act on them."""
    name, password = f"viewer-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    body = {"username": name, "email": f"{name}@stack.invalid", "first_name": "read", "last_name": "only",
            "roles": [{"name": "Viewer"}], "password": password}  # fmt: skip
    client.request("POST", "/auth/fab/v1/users", body)
    return Airflow(stack.airflow_url, name, password)


def held_run(stack, client: Airflow, conf: dict) -> dict[str, Any]:
    """Trigger a run; once it waits at `approve`: its id, register's output, the request, the pool then."""
    run_id = client.trigger(conf)
    ti = wait_for_state(client, run_id, APPROVE, "awaiting_input")
    # A person's answer comes seconds after the request at the soonest. One given at once can be lost in Airflow
    # 3.3: it queues the paused try again before the executor has reported that try's process as ended, and the
    # scheduler, seeing "success" for a task it holds as queued, fails the try; the retry asks anew, unanswered.
    time.sleep(ANSWER_AFTER_SECONDS)
    register = client.xcom(run_id, "register")
    return {"run_id": run_id, "ti": ti, "register": register, "request": client.request("GET", hitl_path(run_id)),
            "pool": default_pool(client)}  # fmt: skip


@pytest.fixture(scope="module")
def approvals(stack, first_run) -> dict[str, Any]:
    """Two runs under approval = "human": the first approved by the admin (a Viewer's answer refused), the
    second rejected."""
    client = stack.airflow()
    # Nothing else runs meanwhile (the watcher looks every minute), so the pool's slots are the approval's; it
    # is left as it was found (in the session, paused once the new data's run ended: tests/e2e/conftest.py).
    was_paused = pause_watcher(client)
    wait_until_no_run(client)
    set_approval(stack, client, "human")
    try:
        idle = default_pool(client)
        before = champion(stack)
        # One trial: a tuning no earlier run made (elt and validate are reused), so a new version.
        approved = held_run(stack, client, QUICK)
        refused = None
        try:
            answer(viewer(stack, client), approved["run_id"], "Approve")
        except AirflowError as exc:
            refused = exc
        approved["run"] = answered(client, approved, "Approve")
        approved["champion"] = champion(stack)
        # A second challenger (two trials: its own optimize, train, evaluate), rejected; once what the promotion
        # started (batch scoring, messages, the drift monitor) has ended.
        wait_until_no_run(client)
        rejected = held_run(stack, client, {"num_trials": 2, "num_workers": 1})
        rejected["run"] = answered(client, rejected, "Reject")
        rejected["champion"] = champion(stack)
    finally:
        set_approval(stack, client, "auto")
        pause_watcher(client, was_paused)
    history = make("champion-history", env_file=stack.env_file, timeout=600).stdout
    return {"idle": idle, "before": before, "approved": approved, "rejected": rejected, "refused": refused,
            "history": history}  # fmt: skip


def test_a_run_waits_for_approval_without_holding_a_worker_slot(approvals):
    approved = approvals["approved"]
    assert approved["register"]["held"] is True
    # Parked in `awaiting_input`: the executor's slots are what they were before the run started.
    assert approved["pool"]["open_slots"] == approvals["idle"]["open_slots"], (approvals["idle"], approved["pool"])
    assert approved["pool"]["running_slots"] == approvals["idle"]["running_slots"]
    # The request shows the challenger-vs-champion report.
    body = approved["request"]["body"]
    assert f"v{approved['register']['version']}" in body and "champion" in body.lower()
    assert set(approved["request"]["options"]) == {"Approve", "Reject"}


def test_approving_through_the_rest_api_moves_champion(approvals):
    approved = approvals["approved"]
    assert approved["run"]["state"] == "success"
    assert approved["register"]["gate_promote"] is True, approved["register"]["reason"]
    assert approved["champion"] == approved["register"]["version"] != approvals["before"]


def test_a_rejected_run_leaves_champion_where_it_was(stack, approvals):
    rejected = approvals["rejected"]
    assert rejected["run"]["state"] == "success"
    assert rejected["champion"] == approvals["approved"]["champion"]
    version = rejected["register"]["version"]
    challenger = stack.mlflow("registered-models/alias", name="tagifai", alias="challenger")["model_version"]
    assert challenger["version"] == version


def test_the_history_records_both_decisions_and_who_made_them(stack, approvals):
    admin = stack.env["AIRFLOW_ADMIN_USER"]
    history = approvals["history"]
    approved, rejected = (approvals[k]["register"]["version"] for k in ("approved", "rejected"))
    assert re.search(rf"v{approved}\b.*approved by {admin}", history), history
    assert re.search(rf"v{rejected}\b.*rejected by {admin}", history), history


def test_a_user_without_the_permission_gets_403(approvals):
    assert approvals["refused"] is not None and approvals["refused"].status == 403, approvals["refused"]


def test_the_approval_request_and_the_approved_move_are_told_by_mail(stack, approvals):
    approved = approvals["approved"]
    version = approved["register"]["version"]
    # The request links to its page in the Airflow UI.
    asked = stack.wait_for_mail(approved["run_id"], "required_actions")
    assert len(asked) == 1
    stack.wait_for_mail("champion", f"v{version}", f"approved by {stack.env['AIRFLOW_ADMIN_USER']}")


def test_the_report_opens_in_mlflows_artifact_view(stack, approvals):
    register = approvals["approved"]["register"]
    login = f"{stack.env['MLFLOW_VIEWER_USERNAME']}:{stack.env['MLFLOW_VIEWER_PASSWORD']}"
    run = f"#/experiments/{register['experiment_id']}/runs/{register['run_id']}"
    shows = ("challenger_vs_champion.md", f"v{register['version']}", "holdout")
    # A reviewer following the link, in a browser of their own. (In the session's browser, after both UIs and
    # half an hour, this page stayed blank twice; an MLflow restart and the viewer's password changed and put
    # back do not blank it in a browser used before and after them.)
    with chromium() as browser:
        browser.get(stack.mlflow_url.replace("http://", f"http://{login}@") + "/")
        browser.get(f"{stack.mlflow_url}/{run}/artifacts/{register['report_artifact']}")
        body = wait_for_text(browser, *shows, timeout=90)
        assert f"champion v{register['from_version']}" in body, body[:3000]  # the champion's column
        time.sleep(2)
        browser.save_screenshot(str(SCREENSHOTS / "mlflow-approval-report.png"))
