"""The stack's lifecycle: a lost `.env` is caught before anything starts. Ordered after every other
test that uses the session's stack, and before Celery (tests/e2e/conftest.py), whose `make up` then
shows that runs, models and Airflow history survived `make down`.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness import REPO
from harness.stack import PROJECT, make, running_containers
from scripts import stack as stack_script

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]


def test_make_up_with_a_lost_env_says_what_to_do_and_starts_nothing(stack, tmp_path):
    # A fresh .env beside the old volumes (a re-clone, `git clean`): new secrets, same project.
    make("down", env_file=stack.env_file, timeout=600)
    fresh = tmp_path / "fresh.env"
    keep = {k: stack.env[k] for k in ("COMPOSE_PROJECT_NAME", "AIRFLOW_PORT", "MLFLOW_PORT", "TAGIFAI_DOCKER_NETWORK")}
    stack_script.write_env(REPO / ".env.example", fresh, {**keep, "POSTGRES_IMAGE": stack.env["POSTGRES_IMAGE"]})
    proc = subprocess.run(["make", "up", f"STACK_ENV={fresh}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    [line] = [line for line in proc.stderr.splitlines() if "made with other secrets" in line]
    assert "restore the .env they were made with, or run `make clean`" in line
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []  # nothing half-started
    # The .env.example placeholders are refused too.
    placeholder = tmp_path / "placeholder.env"
    shutil.copy(REPO / ".env.example", placeholder)
    proc = subprocess.run(["make", "up", f"STACK_ENV={placeholder}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "still empty or 'change-me'" in proc.stderr
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
