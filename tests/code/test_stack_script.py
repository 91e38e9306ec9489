"""scripts/stack.py: the .env it writes, and the checks `make up` runs before anything starts."""

import hashlib

import pytest

from scripts import stack
from tests.harness import REPO


def test_write_env_fills_every_secret_and_no_placeholder_is_left(tmp_path):
    target = tmp_path / ".env"
    stack.write_env(REPO / ".env.example", target, {})
    env = stack.read_env(target)
    assert stack.placeholders(env) == []
    assert all(len(env[key]) >= 24 for key in stack.SECRETS)
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_the_example_file_is_refused_naming_its_placeholders(tmp_path, capsys):
    assert stack.preflight(REPO / ".env.example") == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "MLFLOW_ADMIN_PASSWORD" in line and "still empty or 'change-me'" in line


@pytest.mark.parametrize(
    ("env", "wrong"),
    [
        ({"AIRFLOW_DB_PASSWORD": "a", "MLFLOW_DB_PASSWORD": "b"}, []),  # the .env the volume was made with
        ({"AIRFLOW_DB_PASSWORD": "x", "MLFLOW_DB_PASSWORD": "b"}, ["AIRFLOW_DB_PASSWORD"]),  # one secret changed
        ({}, ["AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD"]),  # a .env without them
    ],
)
def test_fingerprint_mismatch_names_the_secrets_that_differ(env, wrong):
    recorded = "".join(
        f"{name} {hashlib.sha256(value.encode()).hexdigest()}\n"
        for name, value in {"AIRFLOW_DB_PASSWORD": "a", "MLFLOW_DB_PASSWORD": "b"}.items()
    )
    assert stack.fingerprint_mismatch(recorded, env) == wrong


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"AIRFLOW_EXECUTOR": "LocalExecutor", "COMPOSE_PROFILES": "local"}, None),
        ({"AIRFLOW_EXECUTOR": "CeleryExecutor", "COMPOSE_PROFILES": "celery"}, None),
        ({"AIRFLOW_EXECUTOR": "CeleryExecutor", "COMPOSE_PROFILES": "celery,tools"}, None),  # other profiles too
        ({"AIRFLOW_EXECUTOR": "CeleryExecutor", "COMPOSE_PROFILES": "local"}, "runs with COMPOSE_PROFILES=celery"),
        ({"AIRFLOW_EXECUTOR": "LocalExecutor"}, "runs with COMPOSE_PROFILES=local"),  # an old .env: no scheduler
        ({"AIRFLOW_EXECUTOR": "LocalExecutor", "COMPOSE_PROFILES": "local,celery"}, "runs with"),  # two schedulers
        ({"AIRFLOW_EXECUTOR": "KubernetesExecutor", "COMPOSE_PROFILES": "local"}, "use LocalExecutor or Celery"),
    ],
)
def test_the_executor_and_the_compose_profile_must_agree(env, problem):
    found = stack.executor_mismatch(env)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),  # every address: this machine's loopback is one
        ("172.17.0.1", "http://172.17.0.1:8080"),  # only there: 127.0.0.1 would find nothing
    ],
)
def test_make_train_and_unpause_reach_airflow_where_the_stack_publishes_it(bind, url):
    assert stack.published({"BIND_ADDRESS": bind, "AIRFLOW_PORT": "8080"}, "AIRFLOW_PORT", "5000") == url
