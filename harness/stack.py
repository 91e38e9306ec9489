"""The compose stack as a user runs it (`make up`, `make down`), its REST clients, and a headless browser.

The test stack is a project of its own (`tagifai-e2e`: its own ports, network and volumes), so it
never touches a developer's stack.
"""

from __future__ import annotations

import base64
import contextlib
import email.header
import fcntl
import json
import mailbox
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import REPO, docker_ok, free_port, require, synthetic, wait_for, while_running, world_readable
from harness.dags import STEPS
from scripts import stack as stack_script

PROJECT = "tagifai-e2e"
# How often the test stack's tagifai_watch looks at the data, and its server at the champion alias.
WATCH_SECONDS = 60
SERVE_POLL_SECONDS = 2
# Trials of a run whose trigger does not say (the deployer's setting here: 20 by default).
STACK_TRIALS = 4
SCREENSHOTS = REPO / "build" / "screenshots"
# The test stack's [notify] run_deadline_minutes: shorter than any training run.
RUN_DEADLINE_MINUTES = 1


def make(*targets: str, env_file: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run make targets of the repo with this settings file; fail with their output if they fail."""
    # --no-print-directory: under `make test-stack` this make is a sub-make, which would otherwise
    # print "Entering/Leaving directory" lines around the targets' own output.
    command = ["make", "--no-print-directory", *targets, f"STACK_ENV={env_file}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"make {' '.join(targets)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def running_containers(*, stopped_too: bool = False, **labels: str) -> list[str]:
    """Ids of running containers (and stopped ones too, if asked) with these labels (an empty value matches any)."""
    filters = [arg for k, v in labels.items() for arg in ("--filter", f"label={k}={v}" if v else f"label={k}")]
    every = ["--all"] if stopped_too else []
    out = subprocess.run(["docker", "ps", "-q", *every, *filters], capture_output=True, text=True, check=True)
    return out.stdout.split()


def pause_watcher(client: stack_script.Airflow, paused: bool = True, timeout: float = 600) -> bool:
    """Pause (or unpause) the stack's tagifai_watch between two of its runs; return whether it was paused before.

    The scheduler does not go on with a run of a paused DAG: paused mid-run, the watcher's run would stay
    "running" for good (and a test waiting for no active run would wait out its timeout). So when a run is
    under way once paused, the watcher is unpaused until that run ends, then paused again.
    """
    path = "/api/v2/dags/tagifai_watch"
    active = "/api/v2/dags/tagifai_watch/dagRuns?state=queued&state=running&limit=1"
    was = client.request("GET", path)["is_paused"]
    deadline = time.monotonic() + timeout
    while True:
        client.request("PATCH", path, {"is_paused": paused})
        if not paused or not client.request("GET", active)["dag_runs"]:
            return was
        client.request("PATCH", path, {"is_paused": False})
        wait_for(
            lambda: not client.request("GET", active)["dag_runs"],
            "tagifai_watch's run under way to end before it is paused",
            max(deadline - time.monotonic(), 1),
        )


def task_containers(**labels: str) -> list[str]:
    """Running task containers (labelled `org.tagifai.step` by the DAG), narrowed by `labels`."""
    return running_containers(**{"org.tagifai.step": "", **labels})


def step_outputs(client: stack_script.Airflow, run_id: str) -> dict[str, dict]:
    """Each step's JSON line (optimize: worker 0's), from XCom: parsed (docker runner) or a string."""
    out = {}
    for task in STEPS:
        value = client.xcom(run_id, task, map_index=0 if task == "optimize" else -1)
        out[task] = value if isinstance(value, dict) else json.loads(value)
    return out


def interface_address(name: str) -> str | None:
    """The IPv4 address of this host's network interface `name`, or None (no such interface, no IPv4)."""
    siocgifaddr = 0x8915  # <linux/sockios.h>
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def host_address(network: str = "bridge") -> str:
    """This host's address on a Docker bridge network: what its containers reach the host by.

    The network's IPAM config names it as the gateway only when someone chose it (a daemon started
    with --bip, or a network made with --subnet alone, lists just the subnet); otherwise it is the
    address of the network's bridge interface here (`com.docker.network.bridge.name`, else
    `br-<id[:12]>`, as Docker names it).
    """
    proc = subprocess.run(
        ["docker", "network", "inspect", network, "--format", "{{json .}}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"docker network inspect {network} failed: {proc.stderr.strip()}"
    info = json.loads(proc.stdout)
    configs = (info.get("IPAM") or {}).get("Config") or []
    for config in configs:
        if config.get("Gateway"):
            return config["Gateway"].split("/")[0]
    interface = (info.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"
    address = interface_address(interface)
    assert address, (
        f"cannot find this host's address on Docker network {network!r}: its IPAM config lists no gateway "
        f"({json.dumps(configs)}) and its bridge interface {interface} has no IPv4 address here"
    )
    return address


class Stack:
    """A running stack: its settings, URLs and clients."""

    def __init__(self, env_file: Path) -> None:
        """Read the stack's settings file."""
        self.env_file = env_file
        self.reread()

    def reread(self) -> None:
        """Read the settings file again (a test changed it); URLs on its BIND_ADDRESS."""
        self.env = stack_script.read_env(self.env_file)
        host = self.env.get("BIND_ADDRESS") or "127.0.0.1"
        self.airflow_url = f"http://{host}:{self.env['AIRFLOW_PORT']}"
        self.mlflow_url = f"http://{host}:{self.env['MLFLOW_PORT']}"
        self.serve_url = f"http://{host}:{self.env['SERVE_PORT']}"

    def airflow(self) -> stack_script.Airflow:
        """A logged-in Airflow REST client."""
        return stack_script.Airflow(
            self.airflow_url, self.env["AIRFLOW_ADMIN_USER"], self.env["AIRFLOW_ADMIN_PASSWORD"]
        )

    def mlflow_request(
        self, path: str, body: dict | None = None, login: str | None = "ADMIN"
    ) -> urllib.request.Request:
        """A request to the stack's MLflow (`/api/2.0/...` or `/ajax-api/...`) as `login` (ADMIN, VIEWER or None)."""
        headers = {"Content-Type": "application/json"}
        if login:
            user = f"{self.env[f'MLFLOW_{login}_USERNAME']}:{self.env[f'MLFLOW_{login}_PASSWORD']}"
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        data = json.dumps(body).encode() if body is not None else None
        return urllib.request.Request(f"{self.mlflow_url}{path}", data=data, headers=headers)

    def mlflow(self, path: str, **params: str) -> dict:
        """GET an MLflow REST endpoint (`api/2.0/mlflow/<path>`) as the admin."""
        request = self.mlflow_request(f"/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def mlflow_post(self, path: str, body: dict) -> dict:
        """POST to an MLflow REST endpoint as the admin."""
        with urllib.request.urlopen(self.mlflow_request(f"/api/2.0/mlflow/{path}", body), timeout=30) as response:
            return json.loads(response.read())

    def artifact(self, path: str) -> bytes:
        """Download a proxied artifact (`<experiment>/<run>/artifacts/<file>`) as the admin."""
        request = self.mlflow_request(f"/api/2.0/mlflow-artifacts/artifacts/{path}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def serve(self, path: str, body: dict | None = None) -> dict:
        """A request to the stack's `tagifai serve` (POST with a body)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.serve_url}{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def psql(self, query: str) -> str:
        """A query to the stack's `tagifai` database, as a user would run it (README), unaligned output."""
        proc = self.compose("exec", "-T", "postgres", "psql", "-U", "tagifai", "-d", "tagifai", "-At", "-c", query)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def secrets(self) -> dict[str, str]:
        """The stack's secrets, as its settings file holds them."""
        return {key: self.env[key] for key in (*stack_script.SECRETS, "AIRFLOW_FERNET_KEY") if self.env.get(key)}

    def leaked(self, snapshots: list[str]) -> set[str]:
        """The names of the stack's secrets that show in any of `snapshots` (of command lines)."""
        return {name for name, secret in self.secrets().items() for snapshot in snapshots if secret in snapshot}

    def mail(self) -> list[str]:
        """Every message the stack's notifications sent to the mail sink (compose profile `test`), oldest
        first, as text: its headers, then its text parts decoded."""
        box = mailbox.Maildir(self.env["SMTP_SINK_DIR"], create=False)
        messages = sorted((box.get_message(key) for key in box.keys()), key=lambda m: m.get_date())
        return [mail_text(message) for message in messages]

    def wait_for_mail(self, *texts: str, timeout: float = 300) -> list[str]:
        """The messages that show every one of `texts`, once there is one; none may hold a secret of `.env`."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.mail()
            leaked = self.leaked(messages)
            assert not leaked, f"a notification holds the value of {sorted(leaked)}"
            if found := [m for m in messages if all(text in m for text in texts)]:
                return found
            subjects = [m.split("\n\n", 1)[0] for m in messages]
            assert time.monotonic() < deadline, f"no message shows {texts}; the sink holds:\n" + "\n".join(subjects)
            time.sleep(3)

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        """Run a compose command on this stack (v2 plugin, else docker-compose 1.29)."""
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
        command = ["docker", "compose"] if v2 else ["docker-compose"]
        return subprocess.run(
            [*command, "--env-file", str(self.env_file), *args], cwd=REPO, capture_output=True, text=True, timeout=600
        )


def mail_text(message: mailbox.MaildirMessage) -> str:
    """A message as text: its headers, a blank line, its text parts decoded."""
    parts = [part for part in message.walk() if part.get_content_maintype() == "text"]
    body = [p.get_payload(decode=True).decode(p.get_content_charset() or "utf-8", "replace") for p in parts]
    shown = [(k, str(email.header.make_header(email.header.decode_header(v)))) for k, v in message.items()]
    headers = "\n".join(f"{k}: {v}" for k, v in shown if k.lower() in ("subject", "from", "to"))
    return headers + "\n\n" + "\n".join(body)


@contextlib.contextmanager
def command_lines(interval: float = 0.5) -> Iterator[list[str]]:
    """Snapshots of every process's command line on this host (`ps -eo args`) while the block runs."""
    seen: list[str] = []

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
            stop.wait(interval)

    with while_running(watch, join_seconds=10):
        yield seen


@contextlib.contextmanager
def step_starts() -> Iterator[list[dict]]:
    """Each step container started while the block runs: its `docker events` start, with its HostConfig inspected
    while it runs (`None` if it was gone first). Watched live: the daemon keeps only its last few hundred events."""
    watcher = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start",
         "--filter", "label=org.tagifai.step"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    events: list[dict] = []

    def read(_: threading.Event) -> None:  # ends with the watcher's output
        for line in watcher.stdout:
            if line.strip():
                event = json.loads(line)
                inspected = subprocess.run(
                    ["docker", "inspect", "--format", "{{json .HostConfig}}", event["id"]],
                    capture_output=True,
                    text=True,
                )
                event["HostConfig"] = json.loads(inspected.stdout) if inspected.returncode == 0 else None
                events.append(event)

    with while_running(read):
        try:
            yield events
        finally:
            watcher.terminate()


@contextlib.contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    """`make up` a test stack on the real data beside the repo (else synthetic); `make clean` it afterwards.

    The data is copied into a folder of its own under /tmp (pytest's tmp_path is root-only), which the
    stack names as its data folder: tests add files there.
    """
    require(docker_ok("info"), "no Docker engine (run ../shared/ci/docker-sandbox.sh)")
    data = Path(tempfile.mkdtemp(prefix="tagifai-e2e-data-", dir="/tmp"))
    real = synthetic.REAL_DATA
    if (real / "projects.csv").exists():
        projects, tags = (Path(shutil.copy(real / name, data / name)) for name in ("projects.csv", "tags.csv"))
    else:  # enough rows per tag for the default min_freq of 75
        projects, tags = synthetic.write_dataset(data, per_tag=90)
    # The deployer's settings over the defaults: the watcher looks every minute, not every 15, a run that
    # no trigger sized (the watcher's, the daily one) tunes STACK_TRIALS trials, not 20, and retries come sooner.
    override = data / "stack.toml"
    override.write_text(
        f"[watch]\ninterval_seconds = {WATCH_SECONDS}\n[serve]\npoll_seconds = {SERVE_POLL_SECONDS}\n"
        f"[optimize]\nnum_trials = {STACK_TRIALS}\n"
        # A task retried after 10-20 s, not 60-120: the fault tests wait out each retry.
        "[retry]\ndelay_seconds = 10\n"
        # Every training run outlives its deadline (each takes minutes): each one is a deadline notification.
        f"[notify]\nrun_deadline_minutes = {RUN_DEADLINE_MINUTES}\n",
        encoding="utf-8",
    )
    # The mail sink's Maildir (compose profile `test`): every notification the stack sends, as a file.
    mail = data / "mail"
    mail.mkdir()
    world_readable(data)
    env_file = root / "e2e.env"
    overrides = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "AIRFLOW_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "SERVE_PORT": str(free_port()),
        "TAGIFAI_DOCKER_NETWORK": PROJECT,
        "TAGIFAI_CONFIG": str(override),
        "COMPOSE_PROFILES": "local,test",
        "TAGIFAI_NOTIFY_SMTP_HOST": "smtp-sink",
        "TAGIFAI_NOTIFY_SMTP_PORT": "1025",
        "TAGIFAI_NOTIFY_FROM": "tagifai@stack.invalid",
        "TAGIFAI_NOTIFY_TO": "team@stack.invalid,oncall@stack.invalid",
        **{name: os.environ.get(name, "") for name in ("PYTHON_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE")},
    }
    host = "127.0.0.1"  # the UIs' links, as this machine's people reach them
    overrides["AIRFLOW_PUBLIC_URL"] = f"http://{host}:{overrides['AIRFLOW_PORT']}"
    overrides["MLFLOW_PUBLIC_URL"] = f"http://{host}:{overrides['MLFLOW_PORT']}"
    stack_script.write_env(REPO / ".env.example", env_file, overrides)
    # Not a user's setting (.env.example has no line for it): the test profile's mail sink's folder.
    stack_script.update_env(env_file, {"SMTP_SINK_DIR": str(mail)})
    # The data is chosen as the README's Quickstart does: exported in the shell, over the generated
    # .env's empty values. Every make and compose command of the session sees the export; a stack
    # that ignored it would fetch the upstream data, which is not reachable here.
    exported = {"TAGIFAI_PROJECTS_URL": str(projects), "TAGIFAI_TAGS_URL": str(tags)}
    assert stack_script.read_env(env_file, {}).get("TAGIFAI_PROJECTS_URL") == ""
    before = {name: os.environ.get(name) for name in exported}
    os.environ.update(exported)
    started = time.time()
    try:
        make("up", env_file=env_file)
        yield Stack(env_file)
    finally:
        make("clean", env_file=env_file, timeout=600)
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        shutil.rmtree(data, ignore_errors=True)
        print(f"stack lifetime {time.time() - started:.0f}s")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium (Debian's chromium + chromium-driver)."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(binary and driver), "chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for failure messages
    session = webdriver.Chrome(service=Service(driver), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield session
    finally:
        session.quit()


def wait_for_text(browser: Any, *texts: str, timeout: float = 60) -> str:
    """Wait until the page shows every one of `texts`; return the page's text.

    Chromium aborts its loads with ERR_NETWORK_CHANGED when an interface comes or goes (a container starting
    on this host). Where that shows, on the page or in its console (a single-page app whose code chunk failed
    to load shows only its own "Something went wrong"), the page is reloaded: what a person would do.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    logged: list[dict[str, Any]] = []  # reading the console empties it: kept for the failure message
    while time.monotonic() < deadline:
        try:
            body = browser.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:  # the page re-rendered between finding and reading
            continue
        if all(text in body for text in texts):
            return body
        entries = console_entries(browser)
        logged += entries
        if "ERR_NETWORK_CHANGED" in body or any("ERR_NETWORK_CHANGED" in e.get("message", "") for e in entries):
            browser.refresh()
        time.sleep(1)
    raise AssertionError(
        f"page {browser.current_url} never showed {texts}; it shows:\n{body[:2000]}\n"
        f"console:\n{console(logged + console_entries(browser))}"
    )


def console_entries(browser: Any) -> list[dict[str, Any]]:
    """The page's console messages since they were last read; none from a driver that keeps no log."""
    try:
        return list(browser.get_log("browser"))
    except Exception:  # noqa: BLE001 - a driver without logs: the page's text is still the test's evidence
        return []


def console(entries: list[dict[str, Any]], limit: int = 20) -> str:
    """The last warnings and errors among console `entries` (what a blank page says about itself)."""
    lines = [f"{e['level']} {e['message']}" for e in entries if e.get("level") in ("WARNING", "SEVERE")]
    return "\n".join(lines[-limit:]) or "(nothing)"
