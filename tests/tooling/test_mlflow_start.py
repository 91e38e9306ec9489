"""The stack's MLflow start script (images/mlflow/start.py): which Host headers it lets through."""

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
