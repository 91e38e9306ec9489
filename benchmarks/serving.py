"""Serving speed: `tagifai serve` (follows the alias) vs `mlflow models serve` (one version), same model.

Trains and registers a model on the real data (`tagifai pipeline` against a throwaway `mlflow
server` that proxies the artifacts, as the stack's does), starts both servers on this machine,
checks they answer the same bytes, then loads each in turn with `wrk` (a C load generator: 2
threads, 10 connections, POST of a 1-row and a 100-row body of real project texts), a short warm-up
then a measured run, and reads requests/s and p50/p99 latency.

With a PostgreSQL at hand (Debian's server binaries), a second `tagifai serve` writes the inference log
to a throwaway database (`[monitor]` defaults: every request) and is loaded the same way: req/s and p99
with the log on beside the figures with it off, and the rows it wrote and dropped.

Then how fast `tagifai serve` follows the alias: the model is registered once more and the alias
moved between the two versions a few times, first with nothing else going on, then while wrk sends
1-row requests. Each swap's figure is the time from the alias move to the first /invocations
answer by the version it moved to (the `Tagifai-Model-Version` header), with serve polling every
`FOLLOW_POLL_SECONDS` as in the stack test; the requests serve made to MLflow meanwhile are counted
from the server's access log (the stack's MLflow checks a password hash on each).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import harness
from harness import answers, stop, wait_for
from tagifai.contract.names import PREDICTIONS_DB_ENV, VERSION_HEADER

CONNECTIONS = 10
THREADS = 2
WARMUP_SECONDS = 3
MEASURE_SECONDS = 10
BODY_ROWS = (1, 100)
START_TIMEOUT_SECONDS = 180
SERVERS = ("tagifai serve", "mlflow models serve")
# The same `tagifai serve`, writing the inference log (measured when a database is given).
LOGGED = "tagifai serve, inference log on"
# Its /metrics samples on the log's rows (dropped: summed over the reasons).
LOG_ROWS = {
    "tagifai_inference_log_rows_written_total": "written",
    "tagifai_inference_log_rows_dropped_total": "dropped",
    "tagifai_inference_log_rows_waiting": "waiting",
}
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
# Following the alias: serve's poll interval (the stack test's), swaps per load, and how long a swap may take.
FOLLOW_POLL_SECONDS = 2
FOLLOW_SWAPS = 4
FOLLOW_TIMEOUT_SECONDS = 120
PROBE_SECONDS = 0.05
FOLLOW_CONDITIONS = {"idle": "idle", "requests": f"while wrk sends 1-row requests ({CONNECTIONS} connections)"}
# A request in uvicorn's access log (`mlflow server`'s): `127.0.0.1:5000 - "GET /api/2.0/... HTTP/1.1" 200`.
MLFLOW_REQUEST = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE) /(?:ajax-)?api/')
# serve's log line for each version it loads: `serve: champion v1 → v2 loaded in 0.4 s`.
SERVE_LOADED = re.compile(r"serve: champion .* loaded in ([\d.]+) s")


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
        from tagifai.contract.config import load_settings

        projects = load_settings().data.projects_url
    frame = pd.read_csv(projects)[["title", "description"]].fillna("")
    return {n: json.dumps({"dataframe_split": frame.head(n).to_dict(orient="split", index=False)}) for n in rows}


def run_wrk(url: str, script: Path, seconds: int, latency: bool) -> str:
    """Run wrk against `url`; return its output."""
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url]
    if latency:
        command.insert(1, "--latency")
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout


def answered_by(connection: http.client.HTTPConnection, body: str) -> str | None:
    """POST `body` to /invocations; the model version that answered, None when the request failed."""
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.getheader(VERSION_HEADER) if response.status == 200 else None


def mlflow_requests(log: Path | None) -> int | None:
    """Requests the MLflow server has logged so far (None without its log)."""
    if log is None or not log.exists():
        return None
    return len(MLFLOW_REQUEST.findall(log.read_text(errors="replace")))


def load_seconds(serve_log: Path | None) -> list[float]:
    """How long each version serve loaded took to load and warm up, as its log says."""
    if serve_log is None or not serve_log.exists():
        return []
    return [float(seconds) for seconds in SERVE_LOADED.findall(serve_log.read_text(errors="replace"))]


def follow(
    url: str,
    move: Callable[[str], None],
    versions: list[str],
    body: str,
    log: Path | None = None,
    serve_log: Path | None = None,
) -> dict[str, Any]:
    """Move the alias `FOLLOW_SWAPS` times between `versions` (serving the first): how long serve takes to follow.

    Args:
        url: the base URL of `tagifai serve`.
        move: moves the alias to a version.
        versions: the version served now, then the one(s) to move to, in turn.
        body: the /invocations body the probe sends.
        log: the MLflow server's access log, to count the requests each swap made.
        serve_log: serve's log, for the part of each swap spent loading (the rest is waiting for a poll).

    Returns:
        Seconds from each move to the first answer by the new version (and their median and max),
        of which loading (median), requests that failed meanwhile, and the requests serve made to
        MLflow per swap (its poll included).

    Raises:
        TimeoutError: serve did not answer with the new version within `FOLLOW_TIMEOUT_SECONDS`.
    """
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    jitter = random.Random(0)
    seconds: list[float] = []
    requests: list[int] = []
    failed = 0
    loaded_before = len(load_seconds(serve_log))
    try:
        for swap in range(FOLLOW_SWAPS):
            target = versions[(swap + 1) % len(versions)]
            time.sleep(jitter.uniform(0, FOLLOW_POLL_SECONDS))  # move at any point of serve's poll cycle
            start = time.monotonic()
            move(target)
            before = mlflow_requests(log)  # the move's own requests are logged by now
            while True:
                try:
                    answered = answered_by(connection, body)
                except (OSError, http.client.HTTPException):
                    answered = None
                    connection.close()  # reconnects on the next request
                if answered == target:
                    break
                failed += answered is None
                if time.monotonic() - start > FOLLOW_TIMEOUT_SECONDS:
                    raise TimeoutError(
                        f"serve still answers with v{answered} {FOLLOW_TIMEOUT_SECONDS} s after the move"
                    )
                time.sleep(PROBE_SECONDS)
            seconds.append(time.monotonic() - start)
            if before is not None:
                time.sleep(0.2)  # the last access-log lines
                requests.append(mlflow_requests(log) - before)
    finally:
        connection.close()
    loads = load_seconds(serve_log)[loaded_before:]
    return {
        "seconds": [round(each, 3) for each in seconds],
        "median_seconds": statistics.median(seconds),
        "max_seconds": max(seconds),
        "median_load_seconds": statistics.median(loads) if loads else None,
        "failed_requests": failed,
        "mlflow_requests_per_swap": statistics.median(requests) if requests else None,
    }


def measure_follow(
    url: str, tracking_uri: str, model_uri: str, script: Path, body: str, log: Path | None, serve_log: Path | None
) -> dict[str, Any]:
    """`follow` with nothing else going on, then while wrk loads `url` with `script`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    served = client.get_model_version_by_alias(name, alias)
    # Another version of the same model: what a swap loads is what the stack's loads.
    model_id = served.source.removeprefix("models:/") if served.source.startswith("models:/") else None
    other = client.create_model_version(name, served.source, served.run_id, tags=served.tags, model_id=model_id)
    versions = [str(served.version), str(other.version)]

    def move(version: str) -> None:
        client.set_registered_model_alias(name, alias, version)

    result: dict[str, Any] = {"poll_seconds": FOLLOW_POLL_SECONDS, "swaps": FOLLOW_SWAPS, "versions": versions}
    result["idle"] = follow(url, move, versions, body, log, serve_log)
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{FOLLOW_TIMEOUT_SECONDS * FOLLOW_SWAPS}s"]
    load = subprocess.Popen([*command, "-s", str(script), f"{url}/invocations"], stdout=subprocess.DEVNULL)
    try:
        result["requests"] = follow(url, move, versions, body, log, serve_log)
    finally:
        stop(load)
    return result


def log_rows(url: str) -> dict[str, int]:
    """The rows the inference log of the `tagifai serve` at `url` wrote, dropped and holds now (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    rows = dict.fromkeys(LOG_ROWS.values(), 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if kind := LOG_ROWS.get(sample.name):
                rows[kind] += int(sample.value)
    return rows


def measure(
    tracking_uri: str,
    model_uri: str,
    env: dict[str, str],
    mlflow_log: Path | None = None,
    log_database: str | None = None,
) -> dict[str, Any]:
    """Requests/s and p50/p99 latency of both servers for a 1-row and a 100-row request; how fast serve follows.

    Args:
        tracking_uri: the MLflow store holding the registered model.
        model_uri: `models:/<name>@<alias>`; MLflow's server gets the version the alias points at now.
        env: extra environment for the servers (e.g. MLflow credentials, TAGIFAI_PROJECTS_URL).
        mlflow_log: the access log of the MLflow server at `tracking_uri`, if it is one, to count requests.
        log_database: a PostgreSQL URL: `tagifai serve` is also measured writing its inference log there.

    Returns:
        Figures per server and body size, whether both servers answered the same bytes, `follow`, and with
        `log_database` the figures of `LOGGED` and the rows its log wrote and dropped (`inference_log`).
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
    server_env.pop(PREDICTIONS_DB_ENV, None)  # no inference log but where asked for
    texts = bodies(env)
    measured = (*SERVERS, LOGGED) if log_database else SERVERS
    ports = {server: harness.free_port() for server in measured}
    urls = {server: f"http://127.0.0.1:{port}" for server, port in ports.items()}
    commands = {
        server: [str(harness.TAGIFAI), "serve", "--model-name", name, "--alias", alias]
        + ["--host", "127.0.0.1", "--port", str(ports[server])]
        for server in measured
        if server != "mlflow models serve"
    }
    commands["mlflow models serve"] = [
        *(str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}"),
        *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(ports["mlflow models serve"])),
    ]
    scratch = Path(tempfile.mkdtemp(prefix="tagifai-bench-serving-"))
    config = scratch / "serve.toml"
    config.write_text(f"[serve]\npoll_seconds = {FOLLOW_POLL_SECONDS}\n", encoding="utf-8")
    envs = {"tagifai serve": {**server_env, "TAGIFAI_CONFIG": str(config)}, "mlflow models serve": server_env}
    if log_database:
        envs[LOGGED] = {**envs["tagifai serve"], PREDICTIONS_DB_ENV: log_database}
    processes: dict[str, subprocess.Popen] = {}
    exit_codes: dict[str, int | None] = {}
    try:
        logs = {server: scratch / f"{i}-{server.split()[0]}.log" for i, server in enumerate(measured)}
        for server, command in commands.items():
            with logs[server].open("w") as log_file:
                processes[server] = subprocess.Popen(
                    command, env=envs[server], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
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
        figures: dict[str, dict[str, Any]] = {server: {} for server in measured}
        for n, body in texts.items():
            script = scratch / f"post-{n}.lua"
            script.write_text(lua_script(body))
            for server in measured:
                url = f"{urls[server]}/invocations"
                run_wrk(url, script, WARMUP_SECONDS, latency=False)
                figures[server][str(n)] = parse_wrk(run_wrk(url, script, MEASURE_SECONDS, latency=True))
        logged = None
        if log_database:
            time.sleep(2)  # the writer's last batch (it writes at least every second)
            logged = log_rows(urls[LOGGED])
            stop(processes[LOGGED])  # it would follow the swaps below too: MLflow requests, loads
        one_row = min(texts)
        script = scratch / f"post-{one_row}.lua"
        serve_log = logs["tagifai serve"]
        follows = measure_follow(
            urls["tagifai serve"], tracking_uri, model_uri, script, texts[one_row], mlflow_log, serve_log
        )
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
        "follow": follows,
        "exit_codes": exit_codes,
        **({"inference_log": logged} if logged is not None else {}),
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
        if logged := result["servers"].get(LOGGED, {}).get(n):
            lines.append(
                f"    {LOGGED:<38} {logged['requests_per_second']:>8.1f} {logged['p50_ms']:>8.1f}"
                f" {logged['p99_ms']:>8.1f} {logged['errors']:>7d}"
            )
            ratio = logged["requests_per_second"] / ours
            lines.append(f"    {'throughput, inference log on / off':<38} {ratio:>7.2f}x")
    if rows := result.get("inference_log"):
        written, dropped, waiting = rows["written"], rows["dropped"], rows["waiting"]
        lines.append(f"  inference log (on): {written} rows written, {dropped} dropped, {waiting} waiting at the end")
    same = "yes" if result["identical_answers"] else "NO"
    lines.append(f"  same answers from both servers: {same}; model {result['model_uri']} (v{result['version']})")
    if follows := result.get("follow"):
        head = (
            f"alias move → first answer by the new version ({follows['swaps']} swaps, poll {follows['poll_seconds']} s)"
        )
        lines.append(f"  {head:<70} {'median s':>8} {'max s':>6} {'load s':>7} {'failed':>6} {'MLflow req':>10}")
        for condition, label in FOLLOW_CONDITIONS.items():
            row = follows[condition]
            asked, loading = row["mlflow_requests_per_swap"], row["median_load_seconds"]
            lines.append(
                f"    {'tagifai serve, ' + label:<68} {row['median_seconds']:>8.2f} {row['max_seconds']:>6.2f}"
                f" {'' if loading is None else f'{loading:.1f}':>7} {row['failed_requests']:>6d}"
                f" {'' if asked is None else f'{asked:g}':>10}"
            )
    return lines


def measure_trained(projects: str, tags: str) -> dict[str, Any]:
    """Train and register a model on `projects`/`tags` through a throwaway `mlflow server`; `measure` on it.

    With PostgreSQL's server binaries installed, serve is also measured writing its inference log to a throwaway
    PostgreSQL; without them, not.
    """
    root = Path(tempfile.mkdtemp(prefix="tagifai-bench-serving-model-"))
    try:
        folder = root / "mlflow"
        with contextlib.ExitStack() as running:
            server = running.enter_context(harness.running_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", folder))
            database = running.enter_context(harness.running_postgres("tagifai")) if harness.postgres_bin() else None
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGIFAI_", "MLFLOW_"))}
            env |= {"MLFLOW_TRACKING_URI": server.uri, "TAGIFAI_PROJECTS_URL": projects, "TAGIFAI_TAGS_URL": tags}
            harness.Cli(env, root)("pipeline", "--num-trials", "1")
            log = folder / "mlflow-server.log"  # where harness.running_mlflow_server sends its output
            extra = {"TAGIFAI_PROJECTS_URL": projects}
            return measure(server.uri, "models:/tagifai@champion", extra, log, database and database["tagifai"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
