"""The one client of Airflow's REST API (v2, a JWT from /auth/token): `make`'s scripts and `tagifai rollback`.

Standard library only: `scripts/stack.py` runs it with any python3. A refusal is an `AirflowError`,
one line (its status, and the first line of Airflow's reason); an Airflow that does not answer is the
`OSError` urllib raises.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DAG_ID = "tagifai_training"


def run_path(run_id: str, dag_id: str = DAG_ID) -> str:
    """The API path of a DAG run."""
    return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


class AirflowError(RuntimeError):
    """Airflow's API refused a request: its status, and its reason in one line."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        """Keep the status; the message is the first line of Airflow's `detail` (or of the body)."""
        try:
            detail = json.loads(body).get("detail", body)
        except (ValueError, AttributeError):
            detail = body
        if isinstance(detail, list):  # validation errors: [{"loc": [...], "msg": "..."}]
            detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
        lines = [line for line in str(detail).splitlines() if line.strip()] or [""]
        super().__init__(f"{method} {path}: HTTP {status}: {lines[0].strip()[:300]}")
        self.status = status


class Airflow:
    """A minimal client of the Airflow 3 REST API (JWT from /auth/token); refusals raise `AirflowError`."""

    def __init__(self, url: str, username: str, password: str) -> None:
        """Log in: exchange the username and password for a token."""
        self.url = url.rstrip("/")
        login = {"username": username, "password": password}
        self.token = self.request("POST", "/auth/token", login, auth=False)["access_token"]

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Any:
        """Send one JSON request and decode the JSON answer."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AirflowError(method, path, exc.code, exc.read().decode(errors="replace")) from None

    def asset_event(self, asset_name: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Emit an event on the Asset named `asset_name` (as a task with it as outlet would)."""
        quoted = urllib.parse.quote(asset_name)
        found = self.request("GET", f"/api/v2/assets?name_pattern={quoted}")["assets"]
        asset = next((a for a in found if a["name"] == asset_name), None)
        if asset is None:
            raise AirflowError("GET", "/api/v2/assets", 404, f"no asset {asset_name} (is its DAG there?)")
        return self.request("POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": extra})

    def unpause(self, dag_id: str = DAG_ID) -> None:
        """Let the scheduler run the DAG (a new DAG starts paused)."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
        """Start a run of the DAG now; return its run id."""
        self.unpause(dag_id)
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait(self, run_id: str, timeout: float, dag_id: str = DAG_ID) -> dict[str, Any]:
        """Poll the run until it ends; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.request("GET", run_path(run_id, dag_id))
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(5)
        raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f}s")

    def task_instance(self, run_id: str, task_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        """One (unmapped) task instance of a run: state, try_number, hostname, ..."""
        return self.request("GET", f"{run_path(run_id, dag_id)}/taskInstances/{task_id}")

    def xcom(self, run_id: str, task_id: str, map_index: int = -1, dag_id: str = DAG_ID) -> Any:
        """The value a task instance pushed (`return_value`), e.g. a step's JSON line."""
        path = f"{run_path(run_id, dag_id)}/taskInstances/{task_id}/xcomEntries/return_value?map_index={map_index}"
        return self.request("GET", path)["value"]

    def runs(self, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """The runs of a DAG, newest first."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-start_date&limit=100")["dag_runs"]

    def task_log(self, run_id: str, task_id: str, try_number: int = 1, dag_id: str = DAG_ID) -> str:
        """The log of one try of a task, as text."""
        path = f"{run_path(run_id, dag_id)}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        lines = []
        for entry in self.request("GET", path).get("content", []):
            if not isinstance(entry, dict):
                lines.append(str(entry))
                continue
            lines.append(entry.get("event", ""))
            # An exception's type and message, as the UI shows them under its log line.
            lines += [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in entry.get("error_detail") or []]
        return "\n".join(lines)

    def task_states(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, str]:
        """State of each task instance of a run."""
        instances = self.request("GET", f"{run_path(run_id, dag_id)}/taskInstances")["task_instances"]
        # Instances of a mapped task (the optimize workers) as optimize[0], optimize[1], ...
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""): ti["state"]
            for ti in instances
        }
