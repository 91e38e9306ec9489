"""The `tagifai` CLI as a user runs it, against a throwaway SQLite store and a synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import Cli, synthetic


def make_cli(root: Path) -> Cli:
    """A CLI against a throwaway SQLite store in `root`, small-data settings and a synthetic dataset."""
    projects, tags = synthetic.write_dataset(root / "data")
    (root / "mlflow").mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "TAGIFAI_CONFIG": str(synthetic.write_small_config(root / "small.toml")),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": tags.as_uri(),
    }
    for name in ("TAGIFAI_PIPELINE_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "TAGIFAI_IMAGE"):
        env.pop(name, None)
    return Cli(env, root)


@pytest.fixture
def cli(tmp_path) -> Cli:
    """A fresh CLI environment for one test."""
    return make_cli(tmp_path)


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory) -> Cli:
    """One CLI environment shared by a module's tests (for expensive setups)."""
    return make_cli(tmp_path_factory.mktemp("cli"))
