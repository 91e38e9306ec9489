#!/opt/venv/bin/python
"""Start the stack's MLflow server: upgrade its schema, set up MLflow's login, then serve.

Everything secret comes from the environment and never reaches a command line (`ps` shows every
process's arguments to every user of the host):

    MLFLOW_BACKEND_STORE_URI        postgresql+psycopg2://user:password@host:5432/db (read by `mlflow server`)
    MLFLOW_ADMIN_USERNAME/PASSWORD  the admin login (the steps log with it)
    MLFLOW_SERVE_USERNAME/PASSWORD  `tagifai serve`'s own login (reads; reset to this password at every start)
    MLFLOW_BATCH_USERNAME/PASSWORD  batch scoring's own login (reads; reset to this password at every start)
    MLFLOW_VIEWER_USERNAME/PASSWORD an optional shared login for people who browse: reads everything,
                                    changes only what it creates (password empty: no viewer login)
    MLFLOW_FLASK_SERVER_SECRET_KEY  signs the auth app's sessions and CSRF tokens
    MLFLOW_AUTH_DATABASE_URI        where the logins live (default: SQLite in the mlflow-auth volume)
    MLFLOW_ALLOWED_HOSTS            Host headers to accept (MLflow >= 3.5 rejects unknown ones), and
    MLFLOW_EXTRA_ALLOWED_HOSTS      more of them: the addresses other machines use

The logins follow the environment: a changed password in .env is the password after a restart.
Users added in the UI or API (`scripts/stack.py mlflow-user`) are kept.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WORKER_HEALTHCHECK_SECONDS = 60

AUTH_INI = """[mlflow]
# Users may read everything; what they create is theirs to change. The admin (the steps) changes all.
default_permission = READ
database_uri = {database_uri}
# A login checked once a minute per worker, not on every request: the check is a scrypt hash, about
# 0.35 s of CPU here, and a pipeline run sends MLflow hundreds of requests. MLflow's own cache (keyed by
# an HMAC of the password); a password changed or a login deleted through the other worker holds
# there for at most this long.
auth_cache_ttl_seconds = 60
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def write_auth_config() -> None:
    """The auth app's config, in a file only this user can read; `MLFLOW_AUTH_CONFIG_PATH` names it."""
    database_uri = os.environ.get("MLFLOW_AUTH_DATABASE_URI", "sqlite:////mlflow-auth/basic_auth.db")
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    path = folder / "basic_auth.ini"
    path.touch(mode=0o600)
    path.write_text(AUTH_INI.format(database_uri=database_uri), encoding="utf-8")
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(path)
    os.environ["MLFLOW_AUTH_ADMIN_USERNAME"] = os.environ["MLFLOW_ADMIN_USERNAME"]
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = os.environ["MLFLOW_ADMIN_PASSWORD"]


# The logins this start sets up, by the prefix of their environment variables: whether each is an admin.
LOGINS = {"MLFLOW_ADMIN": True, "MLFLOW_SERVE": False, "MLFLOW_BATCH": False, "MLFLOW_VIEWER": False}


def sync_logins(store: Any, environ: Mapping[str, str]) -> None:
    """Create the `LOGINS`, or give them the environment's password and role.

    The viewer is optional: with its username but no password, a viewer login made before is deleted.
    """
    for prefix, is_admin in LOGINS.items():
        username, password = environ.get(f"{prefix}_USERNAME"), environ.get(f"{prefix}_PASSWORD")
        if not username:
            continue
        exists = store.has_user(username, use_primary=True)
        if not password:
            if prefix == "MLFLOW_VIEWER" and exists:
                store.delete_user(username)
                print(f"mlflow-start: deleted the viewer login {username!r} (no MLFLOW_VIEWER_PASSWORD)", flush=True)
            continue
        if not exists:
            store.create_user(username, password, is_admin=is_admin)
            print(f"mlflow-start: created the {'admin' if is_admin else 'read-only'} login {username!r}", flush=True)
        elif (
            not store.authenticate_user(username, password, use_primary=True)
            or store.get_user(username).is_admin != is_admin
        ):
            store.update_user(username, password=password, is_admin=is_admin)
            print(f"mlflow-start: {username!r} now has the password and role in the environment", flush=True)


def auth_store() -> Any:
    """MLflow's store of logins, at the database the auth config names (its tables made or upgraded)."""
    from mlflow.server.auth import auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_config.database_uri)
    return store


def allowed_hosts(environ: Mapping[str, str]) -> str:
    """`--allowed-hosts`: the stack's own names (MLFLOW_ALLOWED_HOSTS), then MLFLOW_EXTRA_ALLOWED_HOSTS.

    The extra ones are the deployer's: e.g. the address another machine's worker reaches MLflow by.
    """
    own = environ.get("MLFLOW_ALLOWED_HOSTS") or "mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000"
    extra = environ.get("MLFLOW_EXTRA_ALLOWED_HOSTS", "")
    hosts = [h.strip() for h in f"{own},{extra}".split(",") if h.strip()]
    return ",".join(dict.fromkeys(hosts))


def main() -> int:
    """Prepare, then become `mlflow server` (basic-auth app, proxied artifacts)."""
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD"):
        if not os.environ.get(name):
            print(f"mlflow-start: set {name}", file=sys.stderr)
            return 1
    from mlflow.db import upgrade

    upgrade.callback(os.environ["MLFLOW_BACKEND_STORE_URI"])  # `mlflow db upgrade`, the URI kept off argv
    write_auth_config()
    sync_logins(auth_store(), os.environ)
    command = [
        "mlflow", "server",
        "--app-name", "basic-auth",
        "--artifacts-destination", os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "/mlartifacts"),
        "--serve-artifacts",
        "--host", "0.0.0.0",
        "--port", "5000",
        "--workers", os.environ.get("MLFLOW_WORKERS", "2"),
        # uvicorn's supervisor kills a worker that misses its 5 s health ping, and a worker still
        # importing MLflow (or busy with a request) on a loaded 2-core machine misses it: seen as a
        # restart loop of 90 s before the first answer at `make up`.
        "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_SECONDS}",
        "--allowed-hosts", allowed_hosts(os.environ),
    ]  # fmt: skip
    os.execvp(command[0], command)  # the store URI stays in the environment (MLFLOW_BACKEND_STORE_URI)
    return 0


if __name__ == "__main__":
    sys.exit(main())
