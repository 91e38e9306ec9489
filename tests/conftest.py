"""Fixtures shared by every test folder (standard library only: both venvs load this file).

Each venv collects only the folders it can import: `.venv` (tagifai) all but `dags/`, `.venv-airflow`
only `dags/` and the Airflow end-to-end tests. Select further by marker (`make help`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from harness import synthetic

# As in every container that loads a model (images/tagifai/Dockerfile): MLflow unpickles nothing, here
# and in the processes tests start (they inherit this environment).
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"

if importlib.util.find_spec("airflow") is None:
    collect_ignore = ["dags"]
# (Not `tagifai` itself: the repo root is on sys.path, so its folder is found from either venv.)
if importlib.util.find_spec("mlflow") is None:
    collect_ignore = [
        *("contract", "core", "pipeline", "serving", "tooling", "data", "model", "cli", "test_layers.py"),
        *("e2e/test_predictions_postgres.py", "e2e/test_gate_fails_closed.py", "e2e/test_gate_history.py"),
        *("e2e/test_ownership.py", "e2e/test_approval.py", "e2e/test_retention.py"),
    ]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A synthetic projects.csv and tags.csv, 40 projects per tag."""
    return synthetic.write_dataset(tmp_path / "data")


@pytest.fixture
def small_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TAGIFAI_CONFIG at settings sized for synthetic data."""
    path = synthetic.write_small_config(tmp_path / "small.toml")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(path))
    return path


@pytest.fixture
def settings(small_config: Path) -> dict:
    """All settings, with the small-data override."""
    from tagifai.contract.config import load_settings

    return load_settings()


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway SQLite MLflow store (artifacts beside it); returns the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("TAGIFAI_PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri
