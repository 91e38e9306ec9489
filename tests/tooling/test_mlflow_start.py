"""The stack's MLflow start script (images/mlflow/start.py): the Host headers it lets through, its logins."""

from __future__ import annotations

import importlib.util

from harness import REPO


def start_script():
    spec = importlib.util.spec_from_file_location("mlflow_start", REPO / "images" / "mlflow" / "start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_allowed_hosts_are_added_to_the_stacks_own():
    start = start_script()
    own = "mlflow,mlflow:5000,localhost:5001"
    assert start.allowed_hosts({"MLFLOW_ALLOWED_HOSTS": own}) == own
    extra = {"MLFLOW_ALLOWED_HOSTS": own, "MLFLOW_EXTRA_ALLOWED_HOSTS": " 10.0.0.5:5001, ,mlflow "}
    assert start.allowed_hosts(extra) == "mlflow,mlflow:5000,localhost:5001,10.0.0.5:5001"


def test_without_settings_only_the_containers_names_and_loopback_are_allowed():
    hosts = start_script().allowed_hosts({}).split(",")
    assert set(hosts) == {"mlflow", "mlflow:5000", "localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000"}


def login_store(tmp_path):
    """MLflow's own store of logins, in a SQLite file (the stack's is in the mlflow-auth volume)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path / 'basic_auth.db'}")
    return store


LOGINS = {
    "MLFLOW_ADMIN_USERNAME": "admin",
    "MLFLOW_ADMIN_PASSWORD": "admin-password-1",
    "MLFLOW_SERVE_USERNAME": "tagifai-serve",
    "MLFLOW_SERVE_PASSWORD": "serve-password-1",
    "MLFLOW_BATCH_USERNAME": "tagifai-batch",
    "MLFLOW_BATCH_PASSWORD": "batch-password-1",
    "MLFLOW_VIEWER_USERNAME": "viewer",
    "MLFLOW_VIEWER_PASSWORD": "viewer-password-1",
}


def test_serve_and_batch_scoring_get_read_only_logins_of_their_own_reset_at_every_start(tmp_path):
    start, store = start_script(), login_store(tmp_path)
    start.sync_logins(store, LOGINS)
    assert {u.username: u.is_admin for u in store.list_users()} == {
        "admin": True,
        "tagifai-serve": False,
        "tagifai-batch": False,
        "viewer": False,
    }
    # Whoever holds the viewer login changes its password (MLflow lets a user do that): the services' logins hold.
    store.update_user("viewer", password="the-viewers-own-1")
    assert store.authenticate_user("tagifai-serve", "serve-password-1")
    assert store.authenticate_user("tagifai-batch", "batch-password-1")
    # The next `make up`: fresh service passwords; a service login made admin meanwhile is read-only again.
    store.update_user("tagifai-serve", is_admin=True)
    again = {**LOGINS, "MLFLOW_SERVE_PASSWORD": "serve-password-2", "MLFLOW_BATCH_PASSWORD": "batch-password-2"}
    start.sync_logins(store, again)
    assert store.authenticate_user("tagifai-serve", "serve-password-2")
    assert not store.authenticate_user("tagifai-serve", "serve-password-1")
    assert store.authenticate_user("tagifai-batch", "batch-password-2")
    assert store.get_user("tagifai-serve").is_admin is False
    assert store.authenticate_user("viewer", "viewer-password-1")  # .env's password again


def test_without_a_viewer_password_there_is_no_viewer_login(tmp_path):
    start, store = start_script(), login_store(tmp_path)
    start.sync_logins(store, LOGINS)
    start.sync_logins(store, {**LOGINS, "MLFLOW_VIEWER_PASSWORD": ""})
    assert sorted(u.username for u in store.list_users()) == ["admin", "tagifai-batch", "tagifai-serve"]
