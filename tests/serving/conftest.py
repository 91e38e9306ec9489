"""Fixtures of the inference-log and /metrics tests: `store` (test_serve's two logged models), a model name."""

from __future__ import annotations

import re

import pytest

# The module-scoped SQLite registry with two logged models ("v1", "v2") that test_serve.py uses too.
from tests.serving.test_serve import store  # noqa: F401


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered model name of this test's own."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)
