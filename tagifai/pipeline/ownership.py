"""Who may write the names the deployment owns: its experiments and its registered model.

MLflow's basic-auth app makes whoever creates an experiment or a registered model its manager, and
any login may create them. The pipeline follows runs of its experiments and loads what they logged,
so each step first checks (`check`) that no login but its own may write what it reads and writes: any
other login with EDIT or MANAGE there is refused, exit 3, by name. `tagifai claim` (`make up`) is what
makes it so. Admin logins are the deployment's own (they may do anything, whatever is granted), so
only non-admin logins are checked. A server without the auth app (a plain `mlflow server`, a local
store) has no logins to check: its auth endpoints answer 404, and the check passes.

The auth app's REST API is asked with MLflow's own `http_request`: its `AuthServiceClient` lists
neither users nor a user's role grants, and importing anything of `mlflow.server.auth` starts loading
the server app itself (and needs `mlflow[auth]`), so the paths are spelled here, as
`mlflow/server/auth/py` (MLflow 3.17) spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings

EXPERIMENT, MODEL = "experiment", "registered_model"
# Permissions that do not let a login change a resource; any other (EDIT, MANAGE, or one this code does
# not know) counts as writing.
READ_ONLY = {"READ", "USE", "NO_PERMISSIONS", "DENY"}


# The auth app's routes (mlflow.server.auth.routes's names).
GET_CURRENT_USER = "/api/2.0/mlflow/users/current"
LIST_USERS = "/api/2.0/mlflow/users/list"
LIST_USER_PERMISSIONS = "/api/3.0/mlflow/users/permissions/list"
GET_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
GRANT_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/grant"
REVOKE_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/revoke"
LIST_ROLE_PERMISSIONS = "/api/3.0/mlflow/roles/permissions/list"
REMOVE_ROLE_PERMISSION = "/api/3.0/mlflow/roles/permissions/remove"


@dataclass(frozen=True)
class Resource:
    """An experiment (by id) or a registered model (by name), and how a message names it."""

    kind: str
    key: str
    label: str


def experiment(experiment_id: str, name: str) -> Resource:
    """The experiment `name` (id `experiment_id`)."""
    return Resource(EXPERIMENT, experiment_id, f"experiment {name!r}")


def model(name: str) -> Resource:
    """The registered model `name`."""
    return Resource(MODEL, name, f"registered model {name!r}")


def writes(permission: str) -> bool:
    """Whether `permission` (READ, EDIT, MANAGE, ...) lets a login change the resource."""
    return permission not in READ_ONLY


class Auth:
    """The tracking server's auth app, asked as this process's login (`MLFLOW_TRACKING_USERNAME`)."""

    def __init__(self, uri: str) -> None:
        """Talk to the server at `uri`."""
        self.uri = uri

    @classmethod
    def of_server(cls) -> Auth | None:
        """The auth app of the tracking server, or None when there is none (a local store, or 404)."""
        uri = mlflow.get_tracking_uri()
        if not uri.startswith(("http://", "https://")):
            return None
        auth = cls(uri)
        return auth if auth.call(GET_CURRENT_USER, missing_ok=True) is not None else None

    def call(self, path: str, method: str = "GET", missing_ok: bool = False, **kwargs: Any) -> dict | None:
        """One request; its JSON (None for a 404 when `missing_ok`).

        Raises:
            BadInputError: the server refused (4xx): this login may not ask, or the request is wrong.
            TagifaiError: MLflow did not answer, or answered 5xx: it may pass.
        """
        try:
            response = http_request(get_default_host_creds(self.uri), path, method, **kwargs)
        except MlflowException as exc:
            raise TagifaiError(f"MLflow at {self.uri} did not answer {path}: {exc.message}".splitlines()[0]) from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 500:
            raise TagifaiError(f"MLflow at {self.uri} answered {path} with {response.status_code}")
        if response.status_code >= 400:
            text = " ".join(response.text.split())[:300]
            raise BadInputError(f"MLflow at {self.uri} refused {path} ({response.status_code}): {text}")
        return response.json() if response.content else {}

    def me(self) -> dict[str, Any]:
        """This login: `username`, `is_admin`."""
        return self.call(GET_CURRENT_USER)["user"]

    def users(self) -> list[dict[str, Any]]:
        """Every login: `username`, `is_admin`."""
        return self.call(LIST_USERS)["users"]

    def permission(self, username: str, resource: Resource) -> str:
        """The permission `username` has on `resource`, resolved as MLflow resolves a request's."""
        params = {"username": username, "resource_type": resource.kind, "resource_id": resource.key}
        return self.call(GET_USER_PERMISSION, params=params)["permission"]

    def revoke(self, username: str, resource: Resource) -> None:
        """Remove the permission granted to `username` itself on `resource` (none granted: nothing)."""
        body = {"username": username, "resource_type": resource.kind, "resource_id": resource.key}
        try:
            self.call(REVOKE_USER_PERMISSION, "POST", json=body)
        except BadInputError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise

    def grant(self, username: str, resource: Resource, permission: str) -> None:
        """Grant `username` itself `permission` on `resource`."""
        body = {"username": username, "resource_type": resource.kind, "resource_id": resource.key}
        self.call(GRANT_USER_PERMISSION, "POST", json={**body, "permission": permission})

    def role_grants(self, username: str, resource: Resource) -> list[dict[str, Any]]:
        """Grants of the roles `username` holds (not its own) that may cover `resource`, exact or wildcard.

        Each: `id`, `role_id`, `role_name`, `resource_type`, `resource_pattern`, `permission`.
        """
        rows = self.call(LIST_USER_PERMISSIONS, params={"username": username})["permissions"]
        roles = {row["role_id"]: row["role_name"] for row in rows if not row["role_name"].startswith("__user_")}
        grants = []
        for role_id, role_name in roles.items():
            for grant in self.call(LIST_ROLE_PERMISSIONS, params={"role_id": str(role_id)})["role_permissions"]:
                if grant["resource_type"] in (resource.kind, "workspace") and grant["resource_pattern"] in (
                    resource.key,
                    "*",
                ):
                    grants.append({**grant, "role_name": role_name})
        return grants

    def remove_role_grant(self, role_permission_id: int) -> None:
        """Delete one grant of a role (from every login that holds the role)."""
        self.call(REMOVE_ROLE_PERMISSION, "DELETE", json={"role_permission_id": role_permission_id})

    def writers(self, resources: list[Resource], allowed: set[str] = frozenset()) -> list[tuple[str, str, Resource]]:
        """(login, permission, resource) for each non-admin login, but `allowed`, that may write a resource."""
        found = []
        for user in self.users():
            if user["is_admin"] or user["username"] in allowed:
                continue
            for resource in resources:
                if writes(permission := self.permission(user["username"], resource)):
                    found.append((user["username"], permission, resource))
        return found


def check(*resources: Resource) -> None:
    """Refuse, exit 3, when a login but this one may write one of `resources`; pass on a server without logins.

    Raises:
        BadInputError: another (non-admin) login holds EDIT or MANAGE on one, or this login is not an
            admin and so cannot see who does.
        TagifaiError: MLflow did not answer: the check may pass later, so it is not skipped.
    """
    auth = Auth.of_server()
    if auth is None:
        return
    me = auth.me()
    if not me["is_admin"]:
        raise BadInputError(
            f"MLflow login {me['username']!r} is not an admin, so it cannot check who else may write "
            f"{resources[0].label}: run the steps as the MLflow admin"
        )
    if found := auth.writers(list(resources), {me["username"]}):
        username, permission, resource = found[0]
        raise BadInputError(
            f"MLflow login {username!r} holds {permission} on {resource.label}, which only the pipeline may write: "
            "run `tagifai claim` as the MLflow admin (make up does), or revoke it"
        )


def listed_experiment(settings: Settings, experiment_id: str) -> Resource:
    """The experiment `experiment_id`, if the deployer lists it (`[mlflow]`).

    Raises:
        BadInputError: it is not a listed experiment (a run id from elsewhere).
    """
    name = MlflowClient().get_experiment(experiment_id).name
    settings.mlflow.experiment(name)
    return experiment(experiment_id, name)
