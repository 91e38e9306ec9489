"""Names the deployment owns, against a real `mlflow server --app-name basic-auth` (as in the stack).

`tagifai claim` (the admin, at `make up`) creates the experiments and the registered model and takes
EDIT/MANAGE on them from every other login; a step refuses a name another login may write, and a run
from an experiment the deployer did not list; evaluate and register use the model the train run
logged, whatever its `model_uri` tag says.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

import harness
from harness import Cli, synthetic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VIEWER = ("viewer", "viewer-password-1234")


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """A basic-auth MLflow server with an admin and a viewer login (a non-admin, as the stack's)."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    with harness.running_mlflow_server(postgres.create_database("mlflow_auth"), folder, auth=True) as running:
        call(running, "2.0/mlflow/users/create", {"username": VIEWER[0], "password": VIEWER[1]})
        yield running


def call(server, path: str, body: dict | None = None, login: tuple[str, str] | None = None, method: str = "POST"):
    """One REST call as `login` (default: the admin); (status, JSON)."""
    user, password = login or server.admin
    request = urllib.request.Request(
        f"{server.uri}/api/{path}",
        data=json.dumps(body or {}).encode() if method != "GET" else None,
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.fixture(scope="module")
def cli(server, tmp_path_factory):
    """`tagifai` as the admin (the pipeline's login) against the server, small settings and data."""
    root = tmp_path_factory.mktemp("client")
    projects, tags = synthetic.write_dataset(root / "data")
    env = {
        **os.environ,
        **server.as_admin(),
        "TAGIFAI_CONFIG": str(synthetic.write_small_config(root / "small.toml")),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
        "TAGIFAI_PIPELINE_RUN_ID": "ownership",
    }
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    return Cli(env, root)


def experiment_id(server, name: str) -> str:
    return call(server, f"2.0/mlflow/experiments/get-by-name?experiment_name={name}", method="GET")[1]["experiment"][
        "experiment_id"
    ]


def permission(server, username: str, kind: str, key: str) -> str:
    query = f"username={username}&resource_type={kind}&resource_id={key}"
    return call(server, f"3.0/mlflow/users/permissions/get?{query}", method="GET")[1]["permission"]


def test_claim_takes_the_names_and_steps_follow_only_their_own(server, cli, monkeypatch):
    # Before the deployment claims them, the viewer makes two of its names: and manages them.
    assert call(server, "2.0/mlflow/registered-models/create", {"name": "tagifai"}, VIEWER)[0] == 200
    assert call(server, "2.0/mlflow/experiments/create", {"name": "chain"}, VIEWER)[0] == 200
    assert permission(server, "viewer", "registered_model", "tagifai") == "MANAGE"

    _, claimed, stderr = cli("claim")
    assert claimed["auth"] is True and claimed["model_name"] == "tagifai" and claimed["model_created"] is False
    assert {"tagifai", "chain", "tagifai-champion-history", "tagifai-predictions"} <= set(claimed["experiments"])
    assert sorted(line.split(":")[1].strip() for line in claimed["revoked"]) == [
        "MANAGE on experiment 'chain' revoked",
        "MANAGE on registered model 'tagifai' revoked",
    ]
    assert "viewer: MANAGE on registered model 'tagifai' revoked" in stderr  # it says what it did
    assert permission(server, "viewer", "registered_model", "tagifai") == "READ"
    # The viewer can neither make the names again nor change them.
    for name in claimed["experiments"]:
        assert call(server, "2.0/mlflow/experiments/create", {"name": name}, VIEWER)[0] == 400  # exists
    assert call(server, "2.0/mlflow/registered-models/create", {"name": "tagifai"}, VIEWER)[0] == 400
    assert cli("claim")[1]["revoked"] == []  # again: nothing left to take
    # Batch scoring's login may write its experiment (only that), at every start of the stack.
    for _ in range(2):
        assert cli("claim", TAGIFAI_PREDICTIONS_WRITER="viewer")[1]["predictions_writer"] == "viewer"
        assert permission(server, "viewer", "experiment", experiment_id(server, "tagifai-predictions")) == "EDIT"
        assert permission(server, "viewer", "experiment", experiment_id(server, "tagifai")) == "READ"
    # Not named any more: it goes like any other login's.
    assert cli("claim")[1]["revoked"] == ["viewer: EDIT on experiment 'tagifai-predictions' revoked"]

    # A step refuses an experiment another login may write, by name, once: exit 3.
    chain = experiment_id(server, "chain")
    grant = {"username": "viewer", "resource_type": "experiment", "resource_id": chain, "permission": "EDIT"}
    assert call(server, "3.0/mlflow/users/permissions/grant", grant)[0] == 200
    code, _, stderr = cli("elt", "--experiment-name", "chain", check=False)
    assert code == 3
    assert stderr.strip().splitlines()[-1] == (
        "error: MLflow login 'viewer' holds EDIT on experiment 'chain', which only the pipeline may write: "
        "run `tagifai claim` as the MLflow admin (make up does), or revoke it"
    )
    assert cli("claim")[1]["revoked"] == ["viewer: EDIT on experiment 'chain' revoked"]

    # A run from an experiment the deployer did not list is not followed.
    status, made = call(server, "2.0/mlflow/experiments/create", {"name": "elsewhere"})
    status, run = call(server, "2.0/mlflow/runs/create", {"experiment_id": made["experiment_id"]})
    run_id = run["run"]["info"]["run_id"]
    call(server, "2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "tagifai.step", "value": "elt"})
    call(server, "2.0/mlflow/runs/update", {"run_id": run_id, "status": "FINISHED"})
    code, _, stderr = cli("validate", "--elt-run", run_id, check=False)
    assert code == 3 and "experiment 'elsewhere' is not one this deployment lists" in stderr.strip().splitlines()[-1]

    # Two models trained on the same data; the first train run's tag is then pointed at the second model.
    elt = cli("elt", "--experiment-name", "chain")[1]
    data = cli("validate", "--elt-run", elt["run_id"])[1]
    first = cli("train", "--data-run", data["run_id"])[1]
    second = cli("train", "--data-run", data["run_id"], "--force")[1]
    assert first["model_uri"] != second["model_uri"]
    tag = {"run_id": first["run_id"], "key": "model_uri", "value": second["model_uri"]}
    assert call(server, "2.0/mlflow/runs/set-tag", tag, VIEWER)[0] == 403  # the viewer may not, since claim
    assert call(server, "2.0/mlflow/runs/set-tag", tag)[0] == 200  # say someone did
    evaluated = cli("evaluate", "--train-run", first["run_id"])[1]
    registered = cli("register", "--evaluate-run", evaluated["run_id"])[1]

    # What was scored and registered is the first run's own model, not the one its tag names.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    client = MlflowClient(server.uri)
    first_id, second_id = (r["model_uri"].removeprefix("models:/") for r in (first, second))
    scored = {m: {x.key for x in client.get_logged_model(m).metrics or []} for m in (first_id, second_id)}
    assert "test_f1" in scored[first_id] and "test_f1" not in scored[second_id]
    version = client.get_model_version("tagifai", registered["version"])
    assert version.run_id == first["run_id"] and first_id in f"{version.model_id} {version.source}"
    assert second_id not in f"{version.model_id} {version.source}"

    # The champion moves only by the pipeline: the viewer's alias is refused.
    assert registered["promoted"] is True
    alias = {"name": "tagifai", "alias": "champion", "version": registered["version"]}
    assert call(server, "2.0/mlflow/registered-models/alias", alias, VIEWER)[0] == 403


def test_a_server_without_logins_has_nothing_to_check(mlflow_server, tmp_path):
    # A plain `mlflow server` (no auth app: its auth endpoints answer 404): claim makes the names, takes nothing.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    env["TAGIFAI_CONFIG"] = str(synthetic.write_small_config(tmp_path / "small.toml"))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    _, claimed, stderr = Cli(env, tmp_path)("claim")
    assert (claimed["auth"], claimed["revoked"]) == (False, [])
    assert "has no logins (no auth app): nothing to take away" in stderr
    names = {e.name for e in MlflowClient(mlflow_server.uri).search_experiments()}
    assert {"tagifai", "chain", "tagifai-champion-history", "tagifai-predictions"} <= names
