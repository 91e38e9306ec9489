"""Fixtures of the inference-log and /metrics tests: a registry with two logged models, a free model name."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest
from mlflow.tracking._tracking_service import utils as tracking_utils

from tests.serving.test_serve import log_model


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SQLite registry with two logged TagModels, tagging "v1" and "v2" (as test_serve's `store`)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = tracking_utils._tracking_uri  # the process-wide URI other tests may have set
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
            models = {tag: log_model(experiment, tag) for tag in ("v1", "v2")}
            yield {"uri": uri, "root": root, "models": models}
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered model name of this test's own."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)
