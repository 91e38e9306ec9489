"""scripts/stack.py: the .env it writes, and the checks `make up` runs before anything starts."""

import hashlib
import os
import subprocess

import pytest

from harness import REPO
from scripts import stack


def test_write_env_fills_every_secret_and_no_placeholder_is_left(tmp_path):
    target = tmp_path / ".env"
    stack.write_env(REPO / ".env.example", target, {})
    env = stack.read_env(target)
    assert stack.placeholders(env) == []
    assert all(len(env[key]) >= 24 for key in stack.SECRETS)
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_settings_files_are_private_before_a_secret_is_written_into_them(tmp_path, monkeypatch):
    target = tmp_path / ".env"
    target.write_text("OLD=1\n")
    target.chmod(0o644)
    modes = []
    fdopen = os.fdopen

    def opened(fd, *args, **kwargs):
        modes.append(os.fstat(fd).st_mode & 0o777)
        return fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", opened)
    stack.write_env(REPO / ".env.example", target, {})
    stack.update_env(target, {"EXTRA": "1"})
    assert modes == [0o600, 0o600]
    assert target.stat().st_mode & 0o777 == 0o600 and stack.read_env(target)["EXTRA"] == "1"


def test_the_example_file_is_refused_naming_its_placeholders(tmp_path, capsys):
    assert stack.preflight(REPO / ".env.example") == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "MLFLOW_ADMIN_PASSWORD" in line and "still empty or 'change-me'" in line


def test_an_env_without_the_services_mlflow_logins_gets_them_and_keeps_the_rest(tmp_path):
    target = tmp_path / ".env"
    stack.write_env(REPO / ".env.example", target, {})
    stack.update_env(target, dict.fromkeys(stack.SERVICE_PASSWORDS, ""))  # an .env older than these logins
    before, lines = stack.read_env(target, {}), target.read_text().splitlines()
    stack.service_logins(target)
    after = stack.read_env(target, {})
    stack.service_logins(target)
    assert stack.read_env(target, {}) == after  # made once: the next start keeps them
    assert [line.split("=", 1)[0] for line in target.read_text().splitlines()] == [
        line.split("=", 1)[0] for line in lines
    ]  # in place: .env reads as before
    for key in ("MLFLOW_SERVE_PASSWORD", "MLFLOW_BATCH_PASSWORD"):
        assert len(after[key]) >= 24 and after[key] != before[key]
    assert {k: v for k, v in after.items() if k not in stack.SERVICE_PASSWORDS} == {
        k: v for k, v in before.items() if k not in stack.SERVICE_PASSWORDS
    }
    assert oct(target.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("viewer", "refused"),
    [
        ("", []),  # no shared viewer login: allowed
        ("change-me", ["MLFLOW_VIEWER_PASSWORD"]),  # the example's placeholder: refused
        ("x" * 24, []),  # a viewer login
    ],
)
def test_the_shared_viewer_login_is_optional(viewer, refused):
    env = {"MLFLOW_VIEWER_PASSWORD": viewer, "MLFLOW_SERVE_PASSWORD": "y" * 24}
    assert stack.placeholders(env) == refused
    assert stack.placeholders({**env, "MLFLOW_SERVE_PASSWORD": ""}) == ["MLFLOW_SERVE_PASSWORD", *refused]
    shown = "\n".join(stack.summary(env))
    assert ("shared viewer" in shown) == bool(viewer) and "make mlflow-user NAME=you" in shown


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


def test_the_settings_file_is_read_as_compose_reads_it_the_shell_winning(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# a comment\nTAGIFAI_PROJECTS_URL=\nAIRFLOW_PORT=8080\n")
    shell = {"TAGIFAI_PROJECTS_URL": "/srv/data/projects.csv", "CELERY_WORKERS": "3"}
    env = stack.read_env(path, shell)
    assert env["TAGIFAI_PROJECTS_URL"] == "/srv/data/projects.csv"  # exported: it wins over the empty value
    assert env["AIRFLOW_PORT"] == "8080" and env["CELERY_WORKERS"] == "3"
    assert stack.read_env(path, {})["TAGIFAI_PROJECTS_URL"] == ""


def test_make_reads_the_settings_file_only_through_that_reader():
    # Sourcing .env in a recipe (`. .env`) let its empty values override what the person exported.
    recipes = "".join(path.read_text() for path in [REPO / "Makefile", *(REPO / "mk").glob("*.mk")])
    assert ". $(abspath $(STACK_ENV))" not in recipes and "s/^OPTUNA" not in recipes and "s/^MLFLOW" not in recipes


@pytest.mark.parametrize(
    ("profiles", "workers", "expected"),
    [
        ("local", "", []),
        ("celery", "", ["--scale", "airflow-worker=2"]),
        ("x,celery", "4", ["--scale", "airflow-worker=4"]),
    ],
)
def test_scale_starts_the_celery_workers_only_with_their_profile(profiles, workers, expected):
    assert stack.scale({"COMPOSE_PROFILES": profiles, "CELERY_WORKERS": workers}) == expected


def test_the_summary_says_which_data_the_stack_trains_on():
    lines = stack.summary({"AIRFLOW_PORT": "18080", "TAGIFAI_PROJECTS_URL": "/srv/data/projects.csv"})
    assert "  Data     TAGIFAI_PROJECTS_URL=/srv/data/projects.csv" in lines
    assert any(line.startswith("  Data     TAGIFAI_TAGS_URL=(the pinned upstream") for line in lines)
    assert lines[0].startswith("  Airflow  http://127.0.0.1:18080")


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ('{"detail": "Invalid input for param min_f1: 0 is less than the minimum of 0.6\\n\\nFailed validating"}',
         "HTTP 400: Invalid input for param min_f1: 0 is less than the minimum of 0.6"),
        ('{"detail": [{"loc": ["body", "conf"], "msg": "Input should be a valid dictionary"}]}',
         "HTTP 400: Input should be a valid dictionary"),
        ("<html>\n<h1>Bad Gateway</h1>", "HTTP 400: <html>"),
    ],
)  # fmt: skip
def test_an_airflow_refusal_is_one_line(body, shown):
    error = stack.AirflowError("POST", "/api/v2/dags/tagifai_training/dagRuns", 400, body)
    assert str(error) == f"POST /api/v2/dags/tagifai_training/dagRuns: {shown}" and error.status == 400


def test_git_ignores_every_file_of_secrets():
    for name in (".env", "worker.env"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO).returncode == 0, name
