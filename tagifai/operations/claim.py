"""`tagifai claim`: the deployment takes its names before anyone else can (`make up` runs it as the MLflow admin).

It creates the experiments a run may use (`[mlflow]`), the champion history's, batch scoring's, the drift
monitor's (`[monitor] experiment_name`), `tagifai reproduce`'s (`[reproduce] experiment_name`), and the
registered model, when missing, and takes away EDIT and MANAGE on them from every other non-admin login: a
permission granted to the login itself is revoked, a role's grant that covers one of them is deleted from
the role. The one exception is batch scoring's own login (`TAGIFAI_PREDICTIONS_WRITER`), which gets EDIT on
batch scoring's experiment. What it does, it says.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.pipeline import ownership, registry, tracking

log = logging.getLogger("tagifai")


def claim(settings: Settings) -> dict[str, Any]:
    """Create the deployment's experiments and registered model; leave writing them to its own logins.

    Raises:
        BadInputError: this login is not an MLflow admin, or a login still may write a name after
            its grants are gone (e.g. `default_permission` is EDIT).
    """
    experiments = [*settings.mlflow.choices(), settings.register.history_experiment, settings.predict.experiment_name]
    experiments = list(
        dict.fromkeys([*experiments, settings.monitor.experiment_name, settings.reproduce.experiment_name])
    )
    resources = [ownership.experiment(tracking.experiment_id(name), name) for name in experiments]
    predictions = resources[experiments.index(settings.predict.experiment_name)]
    model = registry.model_name(settings)
    out = {"experiments": experiments, "model_name": model, "model_created": create_model(model)}
    resources.append(ownership.model(model))
    auth = ownership.Auth.of_server()
    if auth is None:
        log.info(
            "claim: MLflow at %s has no logins (no auth app): nothing to take away", redact(mlflow.get_tracking_uri())
        )
        return {**out, "auth": False, "revoked": []}
    user = auth.me()
    if not (me := user["username"]) or not user["is_admin"]:
        raise BadInputError(f"MLflow login {me!r} is not an admin: run `tagifai claim` as the admin")
    writer = os.environ.get(names.PREDICTIONS_WRITER_ENV) or None

    def others() -> list[tuple[str, str, ownership.Resource]]:  # who may write, but this login and batch scoring's
        return [w for w in auth.writers(resources, {me}) if (w[0], w[2]) != (writer, predictions)]

    revoked = [take_away(auth, *found) for found in others()]
    if writer:  # its grant made anew: a grant that exists already (an earlier start's) cannot be granted again
        auth.revoke(writer, predictions)
        auth.grant(writer, predictions, "EDIT")
        log.info("claim: %s may write %s (batch scoring's login)", writer, predictions.label)
    if left := others():
        username, permission, resource = left[0]
        raise BadInputError(
            f"MLflow login {username!r} still holds {permission} on {resource.label} with no grant left to revoke "
            "(is the auth app's default_permission EDIT or MANAGE?)"
        )
    log.info("claim: %d names, owned by %s; %d grant(s) taken away", len(resources), me, len(revoked))
    return {**out, "auth": True, "revoked": revoked, "predictions_writer": writer}


def create_model(name: str) -> bool:
    """Create the registered model `name` unless it exists; whether it was created."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
        return False
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TagifaiError(f"MLflow could not say whether {name!r} exists: {exc.message}") from exc
    client.create_registered_model(name, description=registry.DESCRIPTION)
    log.info("claim: created registered model %r", name)
    return True


def take_away(auth: ownership.Auth, username: str, permission: str, resource: ownership.Resource) -> str:
    """Revoke `username`'s own grant on `resource`, then any role grant that still lets it write; say what went."""
    auth.revoke(username, resource)
    done = f"{username}: {permission} on {resource.label} revoked"
    if ownership.writes(auth.permission(username, resource)):
        for row in auth.role_grants(username, resource):
            if ownership.writes(row["permission"]):
                auth.remove_role_grant(row["id"])
                done += f"; role {row['role_name']!r} lost {row['permission']} on {row['resource_type']} "
                done += repr(row["resource_pattern"])
    log.info("claim: %s", done)
    return done
