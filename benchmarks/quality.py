"""Model quality on the real dataset: default params vs Optuna-tuned, next to the seed lesson.

Runs the real steps (same code as `tagifai pipeline`) in this process against a throwaway MLflow
store: the default params, then `num_trials` Optuna trials and the tuned params.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

LESSON_F1 = 0.8497
REQUIRED_F1 = 0.85


def timed(func, *args):
    """Call `func(*args)`; return its result and the seconds it took."""
    start = time.perf_counter()
    out = func(*args)
    return out, time.perf_counter() - start


def measure(projects: str, tags: str, num_trials: int) -> dict[str, Any]:
    """Test scores of the default and the tuned params on the real data."""
    store = Path(tempfile.mkdtemp(prefix="tagifai-bench-quality-"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "TAGIFAI_PIPELINE_RUN_ID": "benchmark-quality"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return _measure(projects, tags, num_trials)
    finally:
        shutil.rmtree(store, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _measure(projects: str, tags: str, num_trials: int) -> dict[str, Any]:
    import logging

    from tagifai.pipeline import steps, tracking

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # as quiet as the CLI
    from tagifai.contract.config import load_settings

    settings = load_settings()
    tracking.connect(settings)
    elt = steps.elt(settings, projects, tags, settings.mlflow.experiment_name)  # in a throwaway store
    data_run = steps.validate(settings, elt["run_id"])["run_id"]

    default_train, default_seconds = timed(steps.train, settings, data_run)
    default_eval = steps.evaluate(settings, default_train["run_id"])
    tuned_opt, optimize_seconds = timed(steps.optimize, settings, data_run, num_trials)
    tuned_train, tuned_seconds = timed(steps.train, settings, data_run, tuned_opt["run_id"])
    tuned_eval = steps.evaluate(settings, tuned_train["run_id"])
    scores = ("test_precision", "test_recall", "test_f1")
    return {
        "lesson_test_f1": LESSON_F1,
        "required_test_f1": REQUIRED_F1,
        "num_trials": num_trials,
        "rows": [
            {"variant": "default params (config/)", "train_seconds": default_seconds}
            | {k: default_eval[k] for k in scores},
            {
                "variant": f"tuned ({num_trials} Optuna trials)",
                "train_seconds": tuned_seconds,
                "optimize_seconds": optimize_seconds,
                "best_params": tuned_opt["best_params"],
            }
            | {k: tuned_eval[k] for k in scores},
        ],
    }


def table(result: dict[str, Any]) -> list[str]:
    """Printed lines for the quality section."""
    lines = [f"  {'':<34} {'precision':>9} {'recall':>7} {'f1':>7} {'train s':>8} {'tuning s':>9}"]
    for row in result["rows"]:
        lines.append(
            f"  {row['variant']:<34} {row['test_precision']:>9.4f} {row['test_recall']:>7.4f} {row['test_f1']:>7.4f}"
            f" {row['train_seconds']:>8.1f} {row.get('optimize_seconds', 0):>9.1f}"
        )
    lines.append(f"  {'seed lesson (20 trials)':<34} {'':>9} {'':>7} {result['lesson_test_f1']:>7.4f}")
    return lines


def passed(result: dict[str, Any]) -> bool:
    """Tuned test f1 reaches the required floor."""
    return result["rows"][-1]["test_f1"] >= result["required_test_f1"]
