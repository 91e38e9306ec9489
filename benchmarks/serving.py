"""Serving speed: `tagifai serve` (follows the alias) vs `mlflow models serve` (one version), same model.

Trains and registers a model on the real data (`tagifai pipeline`, a throwaway store), starts both
servers on this machine, checks they answer the same bytes, then loads each in turn with `wrk` (a C
load generator: 2 threads, 10 connections, POST of a 1-row and a 100-row body of real project
texts), a short warm-up then a measured run, and reads requests/s and p50/p99 latency.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import harness
from tests.harness import answers, stop, wait_for

CONNECTIONS = 10
THREADS = 2
WARMUP_SECONDS = 3
MEASURE_SECONDS = 10
BODY_ROWS = (1, 100)
START_TIMEOUT_SECONDS = 180
SERVERS = ("tagifai serve", "mlflow models serve")
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and failed responses from `wrk --latency` output."""

    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if not match:
            raise ValueError(f"no {percent}% latency in wrk output:\n{output}")
        return float(match.group(1)) * UNITS_MS[match.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not rate:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests_per_second": float(rate.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def lua_script(body: str) -> str:
    """A wrk script that POSTs `body` as JSON."""
    return f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'


def post(url: str, body: str) -> tuple[int, str]:
    """POST a JSON body; return the status and the text answered."""
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def bodies(env: dict[str, str], rows: tuple[int, ...] = BODY_ROWS) -> dict[int, str]:
    """`dataframe_split` bodies of the first `rows` real projects (title + description)."""
    import pandas as pd

    projects = env.get("TAGIFAI_PROJECTS_URL") or os.environ.get("TAGIFAI_PROJECTS_URL")
    if not projects:
        from tagifai.settings import load_settings

        projects = load_settings()["data"]["projects_url"]
    frame = pd.read_csv(projects)[["title", "description"]].fillna("")
    return {n: json.dumps({"dataframe_split": frame.head(n).to_dict(orient="split", index=False)}) for n in rows}


def run_wrk(url: str, script: Path, seconds: int, latency: bool) -> str:
    """Run wrk against `url`; return its output."""
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url]
    if latency:
        command.insert(1, "--latency")
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout


def measure(tracking_uri: str, model_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """Requests/s and p50/p99 latency of both servers for a 1-row and a 100-row request.

    Args:
        tracking_uri: the MLflow store holding the registered model.
        model_uri: `models:/<name>@<alias>`; MLflow's server gets the version the alias points at now.
        env: extra environment for the servers (e.g. MLflow credentials, TAGIFAI_PROJECTS_URL).

    Returns:
        Figures per server and body size, and whether both servers answered the same bytes.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    from mlflow.tracking import MlflowClient

    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    if not alias:
        raise ValueError(f"expected models:/<name>@<alias>, got {model_uri!r}")
    version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version
    bin_dir = str(harness.TAGIFAI_VENV / "bin")
    server_env = {
        **os.environ,
        **env,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    texts = bodies(env)
    ports = {server: harness.free_port() for server in SERVERS}
    urls = {server: f"http://127.0.0.1:{port}" for server, port in ports.items()}
    commands = {
        "tagifai serve": [str(harness.TAGIFAI), "serve", "--model-name", name, "--alias", alias]
        + ["--host", "127.0.0.1", "--port", str(ports["tagifai serve"])],
        "mlflow models serve": [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}"]
        + ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(ports["mlflow models serve"])],
    }
    scratch = Path(tempfile.mkdtemp(prefix="tagifai-bench-serving-"))
    processes: dict[str, subprocess.Popen] = {}
    exit_codes: dict[str, int | None] = {}
    try:
        logs = {server: scratch / f"{server.split()[0]}.log" for server in SERVERS}
        for server, command in commands.items():
            with logs[server].open("w") as log_file:
                processes[server] = subprocess.Popen(
                    command, env=server_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
                )
        for server, process in processes.items():
            try:
                wait_for(lambda url=urls[server]: answers(f"{url}/ping"), server, START_TIMEOUT_SECONDS, process)
            except (TimeoutError, RuntimeError) as exc:
                tail = logs[server].read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{exc}; its log ends: {' | '.join(tail)}") from exc
        replies = {
            n: {server: post(f"{urls[server]}/invocations", body) for server in SERVERS} for n, body in texts.items()
        }
        figures: dict[str, dict[str, Any]] = {server: {} for server in SERVERS}
        for n, body in texts.items():
            script = scratch / f"post-{n}.lua"
            script.write_text(lua_script(body))
            for server in SERVERS:
                url = f"{urls[server]}/invocations"
                run_wrk(url, script, WARMUP_SECONDS, latency=False)
                figures[server][str(n)] = parse_wrk(run_wrk(url, script, MEASURE_SECONDS, latency=True))
    finally:
        for server, process in processes.items():
            stop(process)  # its process group: uvicorn's workers under `mlflow models serve` too
            exit_codes[server] = process.returncode
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "model_uri": model_uri,
        "version": str(version),
        "cores": os.cpu_count(),
        "connections": CONNECTIONS,
        "seconds": MEASURE_SECONDS,
        "identical_answers": all(
            len({a[s] for s in SERVERS}) == 1 and a[SERVERS[0]][0] == 200 for a in replies.values()
        ),
        "servers": figures,
        "exit_codes": exit_codes,
    }


def table(result: dict[str, Any]) -> list[str]:
    """Printed lines for the serving section."""
    lines = [f"  {'':<40} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for n in map(str, BODY_ROWS):
        label = f"{n} row{'s' if n != '1' else ''} per request, {result['connections']} connections"
        lines.append(f"  {label}")
        for server in SERVERS:
            row = result["servers"][server][n]
            lines.append(
                f"    {server:<38} {row['requests_per_second']:>8.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
                f" {row['errors']:>7d}"
            )
        ours, theirs = (result["servers"][server][n]["requests_per_second"] for server in SERVERS)
        lines.append(f"    {'throughput, tagifai / mlflow':<38} {ours / theirs:>7.2f}x")
    same = "yes" if result["identical_answers"] else "NO"
    lines.append(f"  same answers from both servers: {same}; model {result['model_uri']} (v{result['version']})")
    return lines


def measure_trained(projects: str, tags: str) -> dict[str, Any]:
    """Train and register a model on `projects`/`tags` in a throwaway store, then `measure` both servers on it."""
    root = Path(tempfile.mkdtemp(prefix="tagifai-bench-serving-model-"))
    try:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGIFAI_", "MLFLOW_"))}
        env |= {"MLFLOW_TRACKING_URI": uri, "TAGIFAI_PROJECTS_URL": projects, "TAGIFAI_TAGS_URL": tags}
        harness.Cli(env, root)("pipeline", "--num-trials", "1")
        return measure(uri, "models:/tagifai@champion", {"TAGIFAI_PROJECTS_URL": projects})
    finally:
        shutil.rmtree(root, ignore_errors=True)
