"""The stack's lifecycle: runs, models and Airflow history survive `make down && make up`, and
`make down` leaves nothing running. Ordered after every other test that uses the session's stack
(tests/e2e/conftest.py).
"""

from __future__ import annotations

import pytest

from tests.e2e.compose import PROJECT, make, running_containers, task_containers

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]


def test_data_survive_down_and_up(stack, first_run):
    make("down", env_file=stack.env_file, timeout=600)
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
    make("up", env_file=stack.env_file)
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]
    assert version["version"]
    runs = stack.airflow().request("GET", "/api/v2/dags/tagifai_training/dagRuns")["dag_runs"]
    assert first_run[0] in {r["dag_run_id"] for r in runs}


def test_make_down_leaves_no_containers_running(stack):
    make("down", env_file=stack.env_file, timeout=600)
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
    assert task_containers() == []
