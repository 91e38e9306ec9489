"""The gate's memory on a real `mlflow server`: the best holdout f1 of every champion ever, no window."""

from __future__ import annotations

import mlflow
import pytest

from harness import synthetic
from tagifai.pipeline import registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sixty_forced_promotions_at_the_margin_cannot_take_the_holdout_below_the_best(
    mlflow_server, settings, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # its thread unset a variable mid-request
    mlflow.set_tracking_uri(mlflow_server.uri)
    settings = synthetic.with_setting(settings, "register", history_experiment="gate-history-sixty")
    name, holdout, (min_f1, max_regression) = "tagifai-sixty", "a" * 64, (0.6, 0.02)
    champion, score, promotions = None, 0.85, 0
    for attempt in range(61):
        # Each challenger (a forced run: nothing reused) scores max_regression below the current champion.
        challenger = score if champion is None else score - max_regression
        best = registry.best_holdout_f1(settings, name, holdout)
        decision = registry.gate(
            0.9, 0.9, min_f1, max_regression, challenger, None if champion is None else score, best
        )
        if decision["promote"]:
            registry.record_move(settings, name, champion, str(attempt + 1), "promote", "test", decision["reason"],
                                 (challenger, holdout))  # fmt: skip
            champion, score, promotions = str(attempt + 1), challenger, promotions + 1
        else:
            assert "regressions do not add up" in decision["reason"]
    assert registry.best_holdout_f1(settings, name, holdout) == 0.85  # the first champion's, 60 moves back
    assert score >= 0.85 - max_regression - 1e-9 and promotions == 2
    # Another holdout (the deployment's data changed) has a memory of its own.
    assert registry.best_holdout_f1(settings, name, "b" * 64) is None
