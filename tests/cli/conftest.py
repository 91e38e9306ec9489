"""Helpers to run the `tagifai` CLI as a user would: a subprocess whose last stdout line is JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TAGIFAI = str(Path(sys.executable).with_name("tagifai"))


class Cli:
    """Runs `tagifai` with a fixed environment and returns (exit code, last-line JSON, stderr)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd

    def __call__(self, *args: str, check: bool = True, **extra_env: str) -> tuple[int, dict | None, str]:
        return self.wait(self.start(*args, **extra_env), check=check)

    def start(self, *args: str, **extra_env: str) -> subprocess.Popen:
        """Start `tagifai ARGS` without waiting for it."""
        return subprocess.Popen(
            [TAGIFAI, *args],
            env={**self.env, **extra_env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def wait(proc: subprocess.Popen, check: bool = True) -> tuple[int, dict | None, str]:
        """Wait for a started command: (exit code, last-line JSON, stderr)."""
        stdout, stderr = proc.communicate(timeout=600)
        lines = stdout.strip().splitlines()
        result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        if check and proc.returncode != 0:
            raise AssertionError(f"tagifai {' '.join(proc.args[1:])} exited {proc.returncode}:\n{stderr[-3000:]}")
        return proc.returncode, result, stderr


def make_cli(root: Path) -> Cli:
    """A CLI against a throwaway SQLite store in `root`, small-data settings and a synthetic dataset."""
    import synthetic

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
