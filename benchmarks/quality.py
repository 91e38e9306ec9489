"""Model quality on the real dataset: default params vs Optuna-tuned, next to the seed lesson.

Runs the real steps (same code as `tagifai pipeline`) against a throwaway MLflow store, prints a
table and writes benchmarks/results.json. Data: TAGIFAI_PROJECTS_URL / TAGIFAI_TAGS_URL (default:
the pinned upstream URLs). Exits 1 if tuned test f1 is below the required 0.85.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

LESSON_F1 = 0.8497
REQUIRED_F1 = 0.85
RESULTS = Path(__file__).with_name("results.json")


def timed(func, *args):
    """Call `func(*args)`; return its result and the seconds it took."""
    start = time.perf_counter()
    out = func(*args)
    return out, time.perf_counter() - start


def main(num_trials: int = 20) -> int:
    """Benchmark default and tuned params; return the exit code."""
    store = Path(tempfile.mkdtemp(prefix="tagifai-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("TAGIFAI_PIPELINE_RUN_ID", "benchmark")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tagifai import steps, tracking
    from tagifai.settings import load_settings

    settings = load_settings()
    tracking.connect(settings)
    projects = os.environ.get("TAGIFAI_PROJECTS_URL") or settings["data"]["projects_url"]
    tags = os.environ.get("TAGIFAI_TAGS_URL") or settings["data"]["tags_url"]
    elt = steps.elt(settings, projects, tags, "benchmark")
    data_run = steps.validate(settings, elt["run_id"])["run_id"]

    rows = []
    default_train, default_seconds = timed(steps.train, settings, data_run)
    default_eval = steps.evaluate(settings, default_train["run_id"])
    rows.append({"variant": "default params (config/)", "train_seconds": default_seconds, **default_eval})

    tuned_opt, optimize_seconds = timed(steps.optimize, settings, data_run, num_trials)
    tuned_train, tuned_seconds = timed(steps.train, settings, data_run, tuned_opt["run_id"])
    tuned_eval = steps.evaluate(settings, tuned_train["run_id"])
    rows.append(
        {
            "variant": f"tuned ({num_trials} Optuna trials)",
            "train_seconds": tuned_seconds,
            "optimize_seconds": optimize_seconds,
            "best_params": tuned_opt["best_params"],
            **tuned_eval,
        }
    )

    print(f"\nModel quality on the real dataset ({projects})")
    print(f"{'variant':<28} {'precision':>9} {'recall':>7} {'f1':>7} {'train s':>8} {'tuning s':>9}")
    for row in rows:
        print(
            f"{row['variant']:<28} {row['test_precision']:>9.4f} {row['test_recall']:>7.4f} {row['test_f1']:>7.4f} "
            f"{row['train_seconds']:>8.1f} {row.get('optimize_seconds', 0):>9.1f}"
        )
    print(f"{'seed lesson (20 trials)':<28} {'':>9} {'':>7} {LESSON_F1:>7.4f}")

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["quality"] = {
        "lesson_test_f1": LESSON_F1,
        "num_trials": num_trials,
        "rows": [{k: v for k, v in row.items() if k != "run_id"} for row in rows],
    }
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {RESULTS}")
    if tuned_eval["test_f1"] < REQUIRED_F1:
        print(f"tuned test f1 {tuned_eval['test_f1']:.4f} is below the required {REQUIRED_F1}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
