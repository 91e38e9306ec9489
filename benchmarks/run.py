"""`make benchmark`: model quality, pipeline wall time, tuning throughput, images and scale, measured here.

    python -m benchmarks.run [--trials 20] [--only quality,pipeline,images,scale]   (from the repo; `make benchmark`)

Data: TAGIFAI_PROJECTS_URL / TAGIFAI_TAGS_URL (default: the pinned upstream URLs). Writes
benchmarks/results.json and prints a table with each target. Speed targets are reported, never
enforced; the exit code is 1 only when tuned test f1 falls below the required floor, or (with
TAGIFAI_REQUIRE_SERVICES=1, as in CI) when a section cannot run for want of a service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import harness
from benchmarks import quality
from benchmarks import serving as serving_section

RESULTS = Path(__file__).with_name("results.json")
# Trials of each run through the stack (the Celery section): two for each of the 4 optimize tasks.
CELERY_TRIALS = 8
SECTIONS = ("quality", "pipeline", "serving", "celery", "images", "scale")
GB = 1e9
# The targets: (name, figure, bound, at most?)
TARGETS = {
    "docker_vs_inprocess": ("docker-runner DAG / in-process pipeline", 1.5, True),
    "rebuild_seconds": ("code-only rebuild of the tagifai image (s)", 15.0, True),
    "tagifai_image_gb": ("tagifai image (GB)", 1.5, True),
    "two_worker_speedup": ("trials per minute, 2 workers / 1 worker", 1.6, False),
    "reuse_ratio_docker": ("second DAG run on the same data / first (docker)", 0.2, True),
    "serving_p99_ms": ("tagifai serve p99, 1 row, 10 connections (ms)", 50.0, True),
    "serving_vs_mlflow": ("tagifai serve / mlflow models serve, req/s (worst)", 1.0, False),
    "serving_follow_seconds": ("alias move -> first answer by the new version, under load (s, max)", 10.0, True),
    "scale_100k_minutes": ("100k projects, the six steps (min)", 10.0, True),
    "scale_100k_peak_rss_gb": ("100k projects, highest peak RSS of a step (GB)", 2.0, True),
    "scale_dag_vs_steps": ("100k through the stack's DAG / the steps", 1.3, True),
    "scale_f1_vs_all_rows": ("100k test f1, every trial on all rows - budget", 0.02, True),
    "scale_predict_rows_per_second": ("predict-batch of 1M rows into PostgreSQL (rows/s)", 5000.0, False),
    "scale_predict_peak_memory_gb": ("predict-batch of 1M rows, peak memory (PSS, GB)", 1.0, True),
    "scale_predict_second_inserted": ("predict-batch of 1M rows again: rows inserted", 0.0, True),
    # `serve` unaffected while it runs: one-row latency within a few milliseconds of idle, nothing failing.
    "scale_serve_p50_vs_idle": ("serve p50 while predict-batch runs / idle (worst)", 1.1, True),
    "scale_serve_p99_vs_idle": ("serve p99 while predict-batch runs / idle (worst)", 1.25, True),
    "scale_serve_errors": ("serve requests failed while predict-batch runs", 0.0, True),
}


def missing_services(section: str) -> str | None:
    """Why `section` cannot run here, or None."""
    if section in ("pipeline", "celery", "images", "scale") and not harness.docker_ok("info"):
        return "no Docker engine"
    if section == "scale" and harness.postgres_bin() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if section == "serving" and not shutil.which("wrk"):
        return "no wrk (apt-get install wrk)"
    if section == "pipeline":
        if harness.postgres_bin() is None:
            return "no PostgreSQL server binaries (apt-get install postgresql)"
        if not harness.AIRFLOW.exists():
            return f"no Airflow venv at {harness.AIRFLOW_VENV} (make airflow-install)"
    return None


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The targeted figures that were measured."""
    out = {}
    if wall := results.get("pipeline", {}).get("wall"):
        out["docker_vs_inprocess"] = wall["seconds"]["docker"] / wall["seconds"]["inprocess"]
    if tuning := results.get("pipeline", {}).get("throughput"):
        out["two_worker_speedup"] = tuning["speedup"]
    if reuse := results.get("pipeline", {}).get("reuse"):
        out["reuse_ratio_docker"] = reuse["ratio"]["docker"]
    if serving := results.get("serving"):
        ours, theirs = (serving["servers"][name] for name in ("tagifai serve", "mlflow models serve"))
        out["serving_p99_ms"] = ours["1"]["p99_ms"]
        out["serving_vs_mlflow"] = min(ours[n]["requests_per_second"] / theirs[n]["requests_per_second"] for n in ours)
        if follow := serving.get("follow"):
            out["serving_follow_seconds"] = follow["requests"]["max_seconds"]
    if scale := results.get("scale"):
        from benchmarks import scale as scale_section

        out.update(scale_section.figures(scale))
    if images := results.get("images"):
        out["rebuild_seconds"] = images["rebuild_seconds"]
        if images["bytes"]["tagifai"]:
            out["tagifai_image_gb"] = images["bytes"]["tagifai"] / GB
    return out


def report(results: dict[str, Any]) -> list[str]:
    """The printed table."""
    meta = results["machine"]
    lines = [f"tagifai benchmark, {meta['date']}, {meta['cores']} cores, {meta['python']}", f"data: {meta['data']}"]
    if q := results.get("quality"):
        lines += ["", "1. Model quality on the real data (test split, weighted)", *quality.table(q)]
    if wall := results.get("pipeline", {}).get("wall"):
        base = wall["seconds"]["inprocess"]
        lines += [
            "",
            f"2. Wall time of one pipeline ({wall['num_trials']} trials, 1 optimize worker)    seconds   vs in-process",
        ]
        names = {
            "inprocess": "tagifai pipeline (in-process)",
            "local": "airflow dags test, local runner",
            "docker": "airflow dags test, docker runner",
        }
        for key, name in names.items():
            lines.append(f"  {name:<58} {wall['seconds'][key]:>7.1f}   {wall['seconds'][key] / base:>5.2f}x")
        overhead = wall["mean_container_overhead_seconds"]
        per_task = ", ".join(f"{k} {v:+.1f}" for k, v in wall["container_overhead_seconds"].items())
        lines.append(f"  {'container overhead per task (docker - local, mean)':<58} {overhead:>7.1f}")
        lines.append(f"    ({per_task})")
    if reuse := results.get("pipeline", {}).get("reuse"):
        lines += ["", "   The same run again, on the same data (every step reused)     seconds   vs its first run"]
        for key, name in (
            ("inprocess", "tagifai pipeline (in-process)"),
            ("docker", "airflow dags test, docker runner"),
        ):
            lines.append(f"  {name:<58} {reuse['seconds'][key]:>7.1f}   {reuse['ratio'][key]:>5.2f}x")
        if "reproduce_seconds" in reuse:
            name = "tagifai reproduce --version 1 (retrain, score, compare)"
            lines.append(f"  {name:<58} {reuse['reproduce_seconds']:>7.1f}   {reuse['reproduce_ratio']:>5.2f}x")
    if tuning := results.get("pipeline", {}).get("throughput"):
        lines += ["", f"3. Tuning throughput ({tuning['num_trials']} trials, no pruning)       trials/min   wall s"]
        for workers, row in tuning["workers"].items():
            label = f"{workers} worker{'s' if workers != '1' else ''}"
            lines.append(f"  {label:<50} {row['trials_per_minute']:>10.1f} {row['wall_seconds']:>8.1f}")
        lines.append(f"  {'speedup':<50} {tuning['speedup']:>9.2f}x")
    if serving := results.get("serving"):
        lines += ["", "4. Serving the champion (wrk, 2 threads)", *serving_section.table(serving)]
    if celery_result := results.get("celery"):
        from benchmarks import celery

        head = f"5. Tuning through Airflow ({celery_result['num_trials']} trials, 4 optimize tasks)"
        lines += ["", head, *celery.table(celery_result)]
    if images := results.get("images"):
        lines += ["", "6. Images                                                   size"]
        for name, size in images["bytes"].items():
            shown = f"{size / GB:.2f} GB" if size else "not built"
            lines.append(f"  {name:<58} {shown:>9}")
        if images["base_bytes"]:
            base = f"{images['base_bytes'] / GB:.2f} GB"
            lines.append(f"    (base image {images['base_image']}: {base}, included above)")
        lines.append(f"  {'rebuild of tagifai after a one-line code change':<58} {images['rebuild_seconds']:>7.1f} s")
    if scale := results.get("scale"):
        from benchmarks import scale as scale_section

        head = f"7. Scale: the steps on this machine ({scale['num_trials']} trials, default settings), side by side"
        lines += ["", head, *scale_section.table(scale)]
    measured = figures(results)
    if measured:
        lines += ["", "Targets"]
        for key, (name, bound, at_most) in TARGETS.items():
            if key in measured:
                met = measured[key] <= bound if at_most else measured[key] >= bound
                sign = "<=" if at_most else ">="
                verdict = "met" if met else "MISSED"
                lines.append(f"  {name:<52} {measured[key]:>6.2f}  target {sign} {bound}: {verdict}")
    for section, reason in results.get("skipped", {}).items():
        lines.append(f"  {section}: skipped, {reason}")
    return lines


def measure(section: str, projects: str, tags: str, trials: int, image: str) -> dict[str, Any]:
    """Run one section."""
    if section == "quality":
        return quality.measure(projects, tags, trials)
    if section == "pipeline":
        from benchmarks import pipeline

        return pipeline.measure(projects, tags, trials, image)
    if section == "serving":
        return serving_section.measure_trained(projects, tags)
    if section == "celery":
        from benchmarks import celery

        return celery.measure(projects, tags, CELERY_TRIALS)
    if section == "images":
        from benchmarks import images

        return images.measure()
    if section == "scale":
        from benchmarks import scale

        return scale.measure(projects, tags, trials)
    raise ValueError(f"unknown section {section!r}: expected one of {SECTIONS}")


def main() -> int:
    """Run the chosen sections; write results.json; print the table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials, in every section")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    args = parser.parse_args()
    sections = [s for s in args.only.split(",") if s]
    # The quality section runs the steps in this process: keep their logs as quiet as the CLI's.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.filterwarnings("ignore")
    from tagifai.contract.config import load_settings

    settings = load_settings()
    projects = os.environ.get("TAGIFAI_PROJECTS_URL") or settings.data.projects_url
    tags = os.environ.get("TAGIFAI_TAGS_URL") or settings.data.tags_url
    image = os.environ.get("TAGIFAI_IMAGE") or "tagifai:latest"
    results: dict[str, Any] = {}
    results["machine"] = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "data": projects,
    }
    results["skipped"], results["failed"] = {}, {}
    for section in sections:
        if reason := missing_services(section):
            results["skipped"][section] = reason
            print(f"{section}: skipped, {reason}", file=sys.stderr)
            continue
        print(f"benchmark: {section}…", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            results[section] = measure(section, projects, tags, args.trials, image)
        except Exception as exc:  # noqa: BLE001 — keep the other sections' figures, fail at the end
            results["failed"][section] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"benchmark: {section} took {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    results["targets"] = figures(results)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print("\n" + "\n".join(report(results)) + f"\n\nwrote {RESULTS}")
    code = 1 if results["failed"] else 0
    for section, error in results["failed"].items():
        print(f"{section}: failed, {error}", file=sys.stderr)
    if "quality" in results and "quality" in sections and not quality.passed(results["quality"]):
        print(f"tuned test f1 is below the required {quality.REQUIRED_F1}", file=sys.stderr)
        code = 1
    if results.get("serving", {}).get("identical_answers") is False:
        print("tagifai serve and mlflow models serve answered the same requests differently", file=sys.stderr)
        code = 1
    if results["skipped"] and os.environ.get("TAGIFAI_REQUIRE_SERVICES") == "1":
        print(f"sections skipped under TAGIFAI_REQUIRE_SERVICES=1: {results['skipped']}", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
