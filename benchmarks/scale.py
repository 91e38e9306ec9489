"""Scale: what the pipeline costs as a team's data grows, on realistic synthetic projects (`harness.scale_data`).

1. Step by step on this machine, as the DAG runs them but without Airflow or Docker: each step a
   `tagifai` command, `optimize` as `[optimize] num_workers` processes sharing one study (PostgreSQL),
   with the default settings and `--trials` trials. On the real data (955 projects) and on 10k and 100k
   synthetic ones: each step's wall time and peak RSS (the process's, from `os.wait4`), the test f1,
   and what tuning sampled. With TAGIFAI_BENCH_ALL_ROWS=1 the 100k once more with every trial on all
   rows (`[optimize] max_rows = 0`): the f1 the tuning budget is judged against (hours on two cores).
2. Through a throwaway compose stack (`benchmarks.celery.bench_stack`): `tagifai_training` on the 100k
   (its scheduler runs the optimize workers side by side), its wall time against part 1's; then
   1M unlabelled projects through `tagifai_batch_predictions` into the stack's PostgreSQL, twice: rows
   per second (the task's duration: container, model load, read, score, write), the step's peak memory
   (`peak_memory`: its processes' PSS), rows inserted, and the latency of single-row requests to the
   stack's `tagifai serve` before and while the batch runs.

TAGIFAI_BENCH_SCALE_PARTS (`steps`, `stack`, or both comma-separated: the default) runs only some of them.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness
from benchmarks import celery
from benchmarks import pipeline as pipeline_section
from harness import scale_data
from harness.stack import Stack, running_containers

SIZES = {"10k": 10_000, "100k": 100_000}
SCORED_ROWS = 1_000_000
STEPS = ("elt", "validate", "optimize", "train", "evaluate", "register")
ALL_ROWS = "[optimize]\nmax_rows = 0\ncv_max_rows = 1000000000\n"
GB = 1e9


def run_steps(projects: str, tags: str, num_trials: int, env: dict[str, str]) -> dict[str, Any]:
    """The six steps as `tagifai` commands, optimize as `[optimize] num_workers` processes: seconds and peak RSS."""
    from tagifai.contract.config import load_settings

    workers = load_settings().optimize.num_workers
    out: dict[str, Any] = {"seconds": {}, "peak_rss_bytes": {}, "optimize_workers": workers}

    def timed(step: str, *commands: list[str]) -> list[dict[str, Any]]:
        start = time.monotonic()
        results = run_together([[str(harness.TAGIFAI), *command] for command in commands], env)
        out["seconds"][step] = time.monotonic() - start
        out["peak_rss_bytes"][step] = max(rss for _, rss in results)
        return [printed for printed, _ in results]

    elt = timed("elt", ["elt", *pipeline_section.data_args(projects, tags)])[0]
    data = timed("validate", ["validate", "--elt-run", elt["run_id"]])[0]
    tune = ["optimize", "--data-run", data["run_id"], "--num-trials", str(num_trials)]
    best = timed("optimize", *[tune] * workers)[0]
    trained = timed("train", ["train", "--data-run", data["run_id"], "--optimize-run", best["run_id"]])[0]
    evaluated = timed("evaluate", ["evaluate", "--train-run", trained["run_id"]])[0]
    timed("register", ["register", "--evaluate-run", evaluated["run_id"]])
    out["total_seconds"] = sum(out["seconds"].values())
    out["test_f1"] = evaluated["test_f1"]
    out["tuning_rows"] = best.get("tuning_rows")
    out["tuning_sample"] = run_tags(env, best["run_id"]).get("tuning_sample", "")
    return out


def run_together(commands: list[list[str]], env: dict[str, str]) -> list[tuple[dict[str, Any], int]]:
    """Run `commands` at once; each one's last stdout line (JSON) and peak RSS in bytes. Any failure raises."""
    with tempfile.TemporaryDirectory() as folder:
        started = []
        for index, command in enumerate(commands):
            stdout, stderr = (open(Path(folder) / f"{index}.{name}", "w+") for name in ("out", "err"))  # noqa: SIM115
            started.append((subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr), stdout, stderr))
        results = []
        for proc, stdout, stderr in started:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak (ru_maxrss: KiB)
            proc.returncode = os.waitstatus_to_exitcode(status)
            stdout.seek(0), stderr.seek(0)
            lines, errors = stdout.read().splitlines(), stderr.read()
            stdout.close(), stderr.close()
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{' '.join(proc.args[1:3])} exited {proc.returncode}: {errors[-2000:]}")
            results.append((json.loads(lines[-1]), usage.ru_maxrss * 1024))
    return results


def run_tags(env: dict[str, str], run_id: str) -> dict[str, str]:
    """The tags of an MLflow run of the benchmark's server."""
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/get?run_id={run_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        tags = json.loads(response.read())["run"]["data"].get("tags", [])
    return {tag["key"]: tag["value"] for tag in tags}


def steps_at(projects: str, tags: str, num_trials: int, root: Path, name: str, config: str = "") -> dict[str, Any]:
    """`run_steps` against fresh services of its own (no champion of another size to re-score)."""
    with harness.running_postgres("mlflow", "optuna") as databases:
        with harness.running_mlflow_server(databases["mlflow"], root / f"mlflow-{name}") as server:
            extra = {"TAGIFAI_PROJECTS_URL": projects, "TAGIFAI_TAGS_URL": tags}  # the holdout: this data's test split
            if config:
                (root / f"{name}.toml").write_text(config, encoding="utf-8")
                extra["TAGIFAI_CONFIG"] = str(root / f"{name}.toml")
            env = pipeline_section.client_env(server.uri, databases["optuna"], f"scale-{name}", **extra)
            return run_steps(projects, tags, num_trials, env)


# How often `peak_memory` looks for a new container of the step (`docker ps`), reads its processes' own peaks
# (VmHWM), and sums their PSS.
FIND_SECONDS, PEAK_SECONDS, PSS_SECONDS = 1.0, 0.2, 1.0
# The sampler's nice value (of its thread, and so of the `docker` commands it starts): the lowest priority.
SAMPLER_NICE = 19


@contextmanager
def peak_memory(step: str) -> Iterator[dict[str, int]]:
    """While the block runs, the most memory the processes of any container of `step` held at once (bytes).

    Each second, the sum of their PSS (proportional set size, from /proc/<pid>/smaps_rollup), each page
    counted once however many processes share it (forked scoring processes share the model's): what the
    container's memory limit is charged, less its page cache. Every 0.2 s, each process's own peak RSS
    (VmHWM): a floor, so a spike of one process between two sums is not missed.

    The sampler must not be what slows `serve` down. Reading a scorer's PSS walks its page tables (~17 ms of
    CPU for one of the 100k model, in the kernel, where this machine's kernel does not preempt it), and a
    `docker top` and a `docker ps` per sample, as this first did, cost ~40 ms more. Measured with the real
    scorers beside a server of the 100k model (2026-12-03; p99 of one-row requests, 14–19 ms unsampled), the
    first sampler (every 0.2 s) made it 37 ms, the PSS every 0.2 s without the `docker` commands 25 ms, this
    one 18 ms (the same peak: 0.77–0.78 GB). So the container's processes are found from its first process's
    children (/proc), `docker ps` runs only while no container of the step is known, PSS is summed once a
    second, and the thread runs at nice `SAMPLER_NICE`: its work waits for a core rather than taking one
    from `serve`.
    """
    seen: dict[str, int] = {"bytes": 0}

    def sample(pids: list[int], pss: bool) -> None:
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if pss else []
            except OSError:  # ended meanwhile
                continue
            total += sum(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
            # A process that has exited but is not yet reaped (a fork at the end) has no VmHWM line.
            peak = [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")]
            seen["bytes"] = max([seen["bytes"], total, *peak])

    def watch(done: threading.Event) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SAMPLER_NICE)  # this thread's, on Linux
        known: dict[str, int] = {}  # container id: its first process (ended ones stay, not looked up again)
        found = summed = 0.0
        while not done.is_set():
            trees = [tree for pid in known.values() if (tree := descendants(pid))]  # the containers still running
            if not trees and time.monotonic() - found >= FIND_SECONDS:
                found = time.monotonic()
                for container in running_containers(**{"org.tagifai.step": step}):
                    if container not in known and (pid := first_process(container)):
                        known[container] = pid
                        trees.append(descendants(pid))
            pss = time.monotonic() - summed >= PSS_SECONDS
            for tree in trees:
                sample(tree, pss)
            summed = time.monotonic() if pss and trees else summed
            done.wait(PEAK_SECONDS)

    with harness.while_running(watch):
        yield seen


def first_process(container: str) -> int:
    """The host's id of the first process of a running `container` (0: it is gone)."""
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def descendants(pid: int) -> list[int]:
    """`pid` and every process it started, and they started (from each thread's /proc `children`); none gone."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        threads = list(Path(f"/proc/{parent}/task").glob("*/children"))
        if not threads:  # ended
            continue
        out.append(parent)
        for children in threads:
            try:
                todo += [int(child) for child in children.read_text().split()]
            except OSError:  # ended meanwhile
                continue
    return out


def serving(stack: Stack, timeout: float = 300) -> None:
    """Wait until the stack's serve answers with a version (it loads the champion after training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stack.serve("/version").get("model_version"):
                return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"the stack's serve answered with no champion within {timeout:.0f}s")


def latencies(stack: Stack, seconds: float, stop: threading.Event | None = None) -> dict[str, float]:
    """Single-row requests to the stack's serve, one after another, for `seconds` (or until `stop`): ms."""
    body = {"dataframe_split": {"columns": ["title", "description"], "data": [["Fast image segmentation", "cnn"]]}}
    times, errors, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        start = time.monotonic()
        try:
            stack.serve("/invocations", body)
            times.append(1000 * (time.monotonic() - start))
        except OSError:
            errors += 1
        time.sleep(0.05)
    times.sort()
    if not times:  # every request failed: the figures say so instead of the section failing on no data
        return {"requests": 0, "errors": errors, "p50_ms": float("nan"), "p99_ms": float("nan")}
    return {
        "requests": len(times),
        "errors": errors,
        "p50_ms": statistics.median(times),
        "p99_ms": times[int(0.99 * (len(times) - 1))],
    }


def probe(stack: Stack, stop: threading.Event, into: dict[str, Any]) -> None:
    """`latencies` until `stop`, into `into` (a thread's target)."""
    into.update(latencies(stack, 3600, stop))


def through_stack(projects: str, tags: str, scored: str, num_trials: int) -> dict[str, Any]:
    """Part 2: the 100k through the stack's training DAG, then the 1M through its batch DAG twice."""
    out: dict[str, Any] = {}
    with celery.bench_stack(projects, tags, dags="tagifai_training tagifai_batch_predictions") as stack:
        source = Path(stack.env["TAGIFAI_PROJECTS_URL"]).with_name("score.csv")  # in the stack's data folder
        subprocess.run(["cp", scored, str(source)], check=True)
        harness.world_readable(source.parent)
        client = stack.airflow()
        run_id = client.trigger({"num_trials": num_trials, "force": True})
        run = client.wait(run_id, timeout=7200)
        if run["state"] != "success":
            raise RuntimeError(f"tagifai_training on 100k ended {run['state']}: {client.task_states(run_id)}")
        out["training_seconds"] = seconds_between(run["start_date"], run["end_date"])
        serving(stack)
        out["idle_serve"] = latencies(stack, 30)
        for attempt in ("first", "second"):
            during: dict[str, float] = {}
            prober = functools.partial(probe, stack, into=during)
            with peak_memory("predict-batch") as peak, harness.while_running(prober):
                batch = client.trigger({"source": str(source)}, dag_id="tagifai_batch_predictions")
                ended = client.wait(batch, timeout=3600, dag_id="tagifai_batch_predictions")
            if ended["state"] != "success":
                raise RuntimeError(f"tagifai_batch_predictions ended {ended['state']}")
            task = client.task_instance(batch, "predict-batch", dag_id="tagifai_batch_predictions")
            printed = client.xcom(batch, "predict-batch", dag_id="tagifai_batch_predictions")
            printed = printed if isinstance(printed, dict) else json.loads(printed)
            seconds = seconds_between(task["start_date"], task["end_date"])
            out[f"predict_{attempt}"] = {
                "rows": printed["rows"],
                "inserted": printed["inserted"],
                "updated": printed["updated"],
                "task_seconds": seconds,
                "rows_per_second": printed["rows"] / seconds,
                "peak_memory_bytes": peak["bytes"],
                "serve_during": during,
            }
        out["table_rows"] = int(stack.psql("SELECT count(*) FROM predictions"))
    return out


def seconds_between(start: str, end: str) -> float:
    """Seconds from one ISO time of Airflow's REST API to another."""
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def measure(projects: str, tags: str, num_trials: int) -> dict[str, Any]:
    """Both parts, on data generated here (and the real data beside the repo, for the 955-row row)."""
    parts = os.environ.get("TAGIFAI_BENCH_SCALE_PARTS", "steps,stack").split(",")
    root = Path(tempfile.mkdtemp(prefix="tagifai-bench-scale-", dir="/tmp"))
    out: dict[str, Any] = {"num_trials": num_trials, "generated": {}, "steps": {}}
    data = {"955": (projects, tags)}
    for name, rows in SIZES.items():
        written = scale_data.write(root / name, rows)
        out["generated"][name] = {k: written[k] for k in ("rows", "bytes", "flipped", "seconds")}
        data[name] = (str(written["projects"]), str(written["tags"]))
    if "steps" in parts:
        for name, (p, t) in data.items():
            out["steps"][name] = steps_at(p, t, num_trials, root, name)
    if "steps" in parts and os.environ.get("TAGIFAI_BENCH_ALL_ROWS") == "1":
        out["steps"]["100k, every trial on all rows"] = steps_at(*data["100k"], num_trials, root, "all-rows", ALL_ROWS)
    if "stack" in parts:
        scored = scale_data.write(root / "1m", SCORED_ROWS, seed=7, labelled=False)
        out["generated"]["1m"] = {k: scored[k] for k in ("rows", "bytes", "seconds")}
        # The deployment's data (part 1's 955 rows) must not reach the stack: compose takes a variable of the
        # shell over its .env, and the stack would train on it instead of the 100k.
        shell = {name: os.environ.pop(name) for name in pipeline_section.DATA_ENVS if name in os.environ}
        try:
            out["stack"] = through_stack(*data["100k"], str(scored["projects"]), num_trials)
        finally:
            os.environ.update(shell)
    return out


def table(result: dict[str, Any]) -> list[str]:
    """The section's printed figures: per step, per size, side by side."""
    runs = result["steps"]
    lines: list[str] = []
    if not runs:
        return [*stack_lines(result, None)]
    head = f"  {'step (s / peak RSS GB)':<22}" + "".join(f"{name[:22]:>24}" for name in runs)
    lines.append(head)
    for step in STEPS:
        cells = [f"{run['seconds'][step]:>9.1f} s {run['peak_rss_bytes'][step] / GB:>5.2f} GB" for run in runs.values()]
        lines.append(f"  {step:<22}" + "".join(f"{cell:>24}" for cell in cells))
    lines.append(f"  {'total':<22}" + "".join(f"{run['total_seconds']:>22.1f} s" for run in runs.values()))
    lines.append(f"  {'test f1':<22}" + "".join(f"{run['test_f1']:>24.4f}" for run in runs.values()))
    lines.append(f"  {'rows each trial saw':<22}" + "".join(f"{run['tuning_rows']!s:>24}" for run in runs.values()))
    return [*lines, *stack_lines(result, runs.get("100k", {}).get("total_seconds"))]


def stack_lines(result: dict[str, Any], base: float | None) -> list[str]:
    """Part 2's printed figures (`base`: the 100k steps' total seconds, when measured)."""
    lines: list[str] = []
    if stack := result.get("stack"):
        ratio = f", {stack['training_seconds'] / base:.2f}x the steps above" if base else ""
        lines += [
            "",
            f"  100k through the stack's tagifai_training: {stack['training_seconds']:.1f} s{ratio}",
            f"  serve, idle: p50 {stack['idle_serve']['p50_ms']:.1f} ms, p99 {stack['idle_serve']['p99_ms']:.1f} ms",
        ]
        for attempt in ("first", "second"):
            run = stack[f"predict_{attempt}"]
            during = run["serve_during"]
            lines.append(
                f"  predict-batch of {run['rows']:,} rows ({attempt}): {run['task_seconds']:.1f} s, "
                f"{run['rows_per_second']:,.0f} rows/s, peak memory {run['peak_memory_bytes'] / GB:.2f} GB, "
                f"inserted {run['inserted']:,}; serve meanwhile p50 {during['p50_ms']:.1f} ms, "
                f"p99 {during['p99_ms']:.1f} ms, {during['errors']} errors"
            )
    return lines


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The targeted figures of the section that were measured."""
    out: dict[str, float] = {}
    if big := result.get("steps", {}).get("100k"):
        out["scale_100k_minutes"] = big["total_seconds"] / 60
        out["scale_100k_peak_rss_gb"] = max(big["peak_rss_bytes"].values()) / GB
        if every := result["steps"].get("100k, every trial on all rows"):
            out["scale_f1_vs_all_rows"] = every["test_f1"] - big["test_f1"]
        if stack := result.get("stack"):
            out["scale_dag_vs_steps"] = stack["training_seconds"] / big["total_seconds"]
    if stack := result.get("stack"):
        first, second = stack["predict_first"], stack["predict_second"]
        out["scale_predict_rows_per_second"] = min(first["rows_per_second"], second["rows_per_second"])
        out["scale_predict_peak_memory_gb"] = max(first["peak_memory_bytes"], second["peak_memory_bytes"]) / GB
        out["scale_predict_second_inserted"] = second["inserted"]
        idle, during = stack["idle_serve"], [first["serve_during"], second["serve_during"]]
        out["scale_serve_p50_vs_idle"] = max(run["p50_ms"] for run in during) / idle["p50_ms"]
        out["scale_serve_p99_vs_idle"] = max(run["p99_ms"] for run in during) / idle["p99_ms"]
        out["scale_serve_errors"] = sum(run["errors"] for run in during)
    return out
