"""Parse `dags/` as Airflow does, with a chosen runner and environment (Airflow venv only)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "tagifai_training"


@pytest.fixture(autouse=True)
def airflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep Airflow's config, DB and logs out of ~/airflow, and start from a clean environment."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path_factory.getbasetemp() / "airflow-home"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
    for name in list(os.environ):
        if name.startswith(("TAGIFAI_", "MLFLOW_")) or name == "DOCKER_HOST":
            monkeypatch.delenv(name)


@pytest.fixture
def parse_dags(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Return `parse(**env)`: the DagBag of dags/ parsed with those environment variables set."""
    from airflow.dag_processing.dagbag import BundleDagBag

    def parse(**env: str) -> Any:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")

    return parse


@pytest.fixture
def load_dag(parse_dags: Callable[..., Any]) -> Callable[..., Any]:
    """Return `load(**env)`: the tagifai_training DAG parsed with those environment variables."""

    def load(**env: str) -> Any:
        bag = parse_dags(**env)
        assert bag.import_errors == {}
        return bag.dags[DAG_ID]

    return load


class FakeTaskInstance:
    """Stands in for `ti` in templates: each task's XCom is the JSON line its step printed."""

    map_index = -1

    def xcom_pull(self, task_ids: str, map_indexes: int | None = None, **_: Any) -> str:
        name = task_ids if map_indexes is None else f"{task_ids}-{map_indexes}"
        return json.dumps({"run_id": f"{name}-run-id", "extra": "ignored"})


@pytest.fixture
def render() -> Callable[..., Any]:
    """Return `render(task, **params)`: the task with its templates rendered for a fake run."""

    def _render(task: Any, **params: Any) -> Any:
        dag = task.dag
        context = {
            "params": {**{name: dag.params[name] for name in dag.params}, **params},
            "ti": FakeTaskInstance(),
            "run_id": "manual__2026-01-01T00:00:00+00:00",
            "dag": dag,
            "task": task,
        }
        task.render_template_fields(context, jinja_env=dag.get_template_env())
        return task

    return _render


class FakeDocker:
    """Stands in for the Docker API client of the docker runner: its containers, what was stopped and removed.

    A step's container "runs" as the engine would answer the operator: it logs `logs`, exits `exit_code`,
    and holds `files` (path → bytes) for `get_archive`.
    """

    def __init__(self) -> None:
        self.existing: list[dict] = []
        self.stopped: list[str] = []
        self.removed: list[str] = []
        self.filters: list[dict] = []
        self.logs: list[bytes] = []
        self.exit_code = 0
        self.files: dict[str, bytes] = {}

    def images(self, name: str) -> list[dict]:
        return [{"Id": name}]  # on the host: nothing is pulled

    def create_host_config(self, **kwargs):
        return kwargs

    def create_container(self, **kwargs) -> dict:
        return {"Id": "c0ffee"}

    def attach(self, container: str, **_):
        return iter(self.logs)

    def start(self, container: str) -> None:
        pass

    def wait(self, container: str) -> dict:
        return {"StatusCode": self.exit_code}

    def get_archive(self, container: str, path: str):
        import io
        import tarfile

        from docker.errors import NotFound

        if container in self.removed or path not in self.files:
            raise NotFound(f"no {path} in {container}")
        data, buffer = self.files[path], io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[-1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return [buffer.getvalue()], {"size": len(data), "name": info.name}

    def containers(self, all: bool, filters: dict) -> list[dict]:  # noqa: A002 — docker's name
        assert all, "containers of earlier tries that stopped are wanted too"
        self.filters.append(filters)
        return self.existing

    def stop(self, container: str, timeout: int) -> None:
        self.stopped.append(container)

    def remove_container(self, container: str) -> None:
        self.removed.append(container)


@pytest.fixture(autouse=True)
def docker_client(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    """The Docker engine behind the docker runner's hook, faked: DAG tests never touch a real one."""
    from types import SimpleNamespace

    from tagifai.orchestration.runners import TagifaiDockerOperator

    fake = FakeDocker()
    monkeypatch.setattr(TagifaiDockerOperator, "hook", property(lambda self: SimpleNamespace(api_client=fake)))
    return fake
