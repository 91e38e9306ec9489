"""The compose stack as a user runs it: `make up`, a DAG run through the REST API, both UIs in a
real browser, a fault during a run, `make down && make up`, `make down`.

Runs a stack of its own (project `tagifai-e2e`, its own ports, network and volumes) so it never
touches a developer's stack. Needs Docker (CI: ../shared/ci/docker-sandbox.sh) and, for the browser
part, Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import synthetic

from .dag_helpers import free_port, require

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROJECT = "tagifai-e2e"
SCREENSHOTS = REPO / "build" / "screenshots"


def load_stack_module():
    spec = importlib.util.spec_from_file_location("stack", REPO / "scripts" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stack_module = load_stack_module()


def make(*targets: str, env_file: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run make targets of the repo with this test's settings file."""
    proc = subprocess.run(
        ["make", *targets, f"STACK_ENV={env_file}"], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"make {' '.join(targets)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def running_containers(**labels: str) -> list[str]:
    """Ids of running containers with these labels (an empty value matches any value)."""
    filters = [arg for k, v in labels.items() for arg in ("--filter", f"label={k}={v}" if v else f"label={k}")]
    out = subprocess.run(["docker", "ps", "-q", *filters], capture_output=True, text=True, check=True)
    return out.stdout.split()


class Stack:
    """The test's stack: its settings, URLs and clients."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.env = stack_module.read_env(env_file)
        self.airflow_url = f"http://127.0.0.1:{self.env['AIRFLOW_PORT']}"
        self.mlflow_url = f"http://127.0.0.1:{self.env['MLFLOW_PORT']}"

    def airflow(self):
        return stack_module.Airflow(
            self.airflow_url, self.env["AIRFLOW_ADMIN_USER"], self.env["AIRFLOW_ADMIN_PASSWORD"]
        )

    def mlflow(self, path: str, **params: str) -> dict:
        url = f"{self.mlflow_url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def mlflow_post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.mlflow_url}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        command = (
            "docker compose"
            if shutil.which("docker")
            and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
            else "docker-compose"
        )
        return subprocess.run(
            [*command.split(), "--env-file", str(self.env_file), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    docker_up = (
        shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )
    require(docker_up, "no Docker engine (run ../shared/ci/docker-sandbox.sh)")
    root = tmp_path_factory.mktemp("stack")
    real = synthetic.REAL_DATA
    if (real / "projects.csv").exists():
        projects, tags = real / "projects.csv", real / "tags.csv"
    else:  # enough rows per tag for the default min_freq of 75
        projects, tags = synthetic.write_dataset(root / "data", per_tag=90)
    env_file = root / "e2e.env"
    overrides = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "AIRFLOW_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "TAGIFAI_DOCKER_NETWORK": PROJECT,
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
        "PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", ""),
        "POSTGRES_IMAGE": os.environ.get("POSTGRES_IMAGE", ""),
    }
    stack_module.write_env(REPO / ".env.example", env_file, overrides)
    started = time.time()
    make("up", env_file=env_file)
    yield Stack(env_file)
    make("clean", env_file=env_file, timeout=600)
    print(f"stack lifetime {time.time() - started:.0f}s")


@pytest.fixture(scope="module")
def first_run(stack):
    """One DAG run triggered through the REST API; returns (run id, run, seconds, container starts)."""
    client = stack.airflow()
    # Watch container starts live: the daemon keeps only its last few hundred events for --since.
    watcher = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start",
         "--filter", "label=org.tagifai.step"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    start = time.monotonic()
    run_id = client.trigger({"num_trials": 3, "num_workers": 2})
    run = client.wait(run_id, timeout=1800)
    seconds = time.monotonic() - start
    watcher.terminate()
    events = [json.loads(line) for line in watcher.communicate(timeout=30)[0].splitlines() if line.strip()]
    # The tasks label their containers with the DAG run id (dags/tagifai_runners.py).
    starts = [e for e in events if e["Actor"]["Attributes"].get("org.tagifai.pipeline-run-id") == run_id]
    return run_id, run, seconds, starts


def test_dag_run_succeeds_with_each_step_in_its_own_container(stack, first_run):
    run_id, run, seconds, starts = first_run
    assert run["state"] == "success", stack.airflow().task_states(run_id)
    states = stack.airflow().task_states(run_id)
    assert states == dict.fromkeys(
        ["elt", "validate", "optimize_workers", "optimize[0]", "optimize[1]", "train", "evaluate", "register"],
        "success",
    )
    steps = sorted(event["Actor"]["Attributes"]["org.tagifai.step"] for event in starts)
    # A container each; optimize in two.
    assert steps == sorted(["elt", "validate", "optimize", "optimize", "train", "evaluate", "register"])
    assert len({event["id"] for event in starts}) == 7
    print(f"DAG run {run_id}: {seconds:.0f}s")


def test_two_optimize_workers_ran_side_by_side_on_one_study(stack, first_run):
    run_id = first_run[0]
    experiment = stack.mlflow("experiments/get-by-name", experiment_name="tagifai")["experiment"]["experiment_id"]
    found = stack.mlflow_post(
        "runs/search",
        {"experiment_ids": [experiment], "filter": f"tags.pipeline_run_id = '{run_id}'", "max_results": 100},
    )["runs"]
    workers = [r for r in found if tag(r, "tagifai.step") == "optimize"]
    assert len(workers) == 2
    metrics = [{m["key"]: m["value"] for m in w["data"]["metrics"]} for w in workers]
    assert sum(m["trials_run"] for m in metrics) == 3 and {m["trials"] for m in metrics} == {3}
    assert len({tag(w, "optuna_study") for w in workers}) == 1
    assert tag(workers[0], "optuna_storage").startswith("postgresql+psycopg2://optuna:***@postgres")
    # The two tasks overlapped in time: the scheduler ran them in parallel.
    starts, ends = [int(w["info"]["start_time"]) for w in workers], [int(w["info"]["end_time"]) for w in workers]
    assert max(starts) < min(ends)


def tag(run: dict, key: str) -> str | None:
    """A tag of a run as the MLflow REST API returns it."""
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def test_mlflow_shows_the_champion_with_metrics_lineage_and_artifacts(stack, first_run):
    run_id = first_run[0]
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags["pipeline_run_id"] == run_id
    assert tags["image"] == stack.env.get("TAGIFAI_IMAGE", "tagifai:latest")
    assert float(tags["test_f1"]) > 0.6 and {"test_precision", "test_recall", "data_sha256", "code_version"} <= set(
        tags
    )
    evaluate_id = tags["evaluate_run_id"]
    evaluate = stack.mlflow("runs/get", run_id=evaluate_id)["run"]
    metrics = {m["key"]: m["value"] for m in evaluate["data"]["metrics"]}
    assert metrics["test_f1"] == pytest.approx(float(tags["test_f1"]), abs=1e-4)
    path = f"{evaluate['info']['experiment_id']}/{evaluate_id}/artifacts/evaluation/confusion_matrix.png"
    with urllib.request.urlopen(f"{stack.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=30) as r:
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require(
        bool(chromium and driver), "chromium / chromedriver not installed (apt-get install chromium chromium-driver)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
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
    session = webdriver.Chrome(service=Service(driver), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield session
    session.quit()


def wait_for_text(browser, *texts: str, timeout: float = 60) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = browser.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:  # the page re-rendered between finding and reading
            continue
        if all(text in body for text in texts):
            return body
        time.sleep(1)
    raise AssertionError(f"page {browser.current_url} never showed {texts}; it shows:\n{body[:2000]}")


def test_airflow_ui_shows_the_run(stack, first_run, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{stack.airflow_url}/auth/login/")
    browser.find_element(By.NAME, "username").send_keys(stack.env["AIRFLOW_ADMIN_USER"])
    browser.find_element(By.NAME, "password").send_keys(stack.env["AIRFLOW_ADMIN_PASSWORD"])
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait_for_text(browser, "Welcome", "Running Dags", timeout=90)  # logged in
    browser.get(f"{stack.airflow_url}/dags")
    wait_for_text(browser, "tagifai_training", timeout=90)
    time.sleep(2)
    browser.save_screenshot(str(SCREENSHOTS / "airflow-dags.png"))
    run_id = urllib.parse.quote(first_run[0], safe="")
    browser.get(f"{stack.airflow_url}/dags/tagifai_training/runs/{run_id}")
    wait_for_text(browser, "elt", "validate", "optimize", "train", "evaluate", "register", timeout=90)
    time.sleep(3)  # let the grid finish drawing
    browser.save_screenshot(str(SCREENSHOTS / "airflow-run.png"))
    browser.get(f"{stack.airflow_url}/dags/tagifai_training/runs/{run_id}/tasks/register")
    wait_for_text(browser, "register", timeout=90)
    browser.save_screenshot(str(SCREENSHOTS / "airflow-register-task.png"))


def test_mlflow_ui_shows_the_model(stack, first_run, browser):
    browser.get(f"{stack.mlflow_url}/#/models/tagifai")
    body = wait_for_text(browser, "tagifai", "champion", timeout=90)
    assert "challenger" in body
    time.sleep(2)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-model.png"))


def test_run_survives_an_mlflow_restart_and_a_killed_task(stack, first_run):
    """Restart MLflow during `optimize`, kill the `train` container: retries carry the run to success."""
    client = stack.airflow()
    run_id = client.trigger({"num_trials": 5})
    faults: dict[str, str] = {}

    def inject() -> None:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and len(faults) < 2:
            states = client.task_states(run_id)
            if "mlflow" not in faults and "running" in (states.get("optimize[0]"), states.get("optimize[1]")):
                faults["mlflow"] = stack.compose("restart", "mlflow").stderr
            if "train" not in faults and states.get("train") == "running":
                labels = {"org.tagifai.step": "train", "org.tagifai.pipeline-run-id": run_id}
                for container in task_containers(**labels):
                    subprocess.run(["docker", "kill", container], capture_output=True)
                    faults["train"] = container
            time.sleep(1)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    run = client.wait(run_id, timeout=2400)
    injector.join(timeout=5)
    assert set(faults) == {"mlflow", "train"}, f"faults injected: {faults}"
    tries = client.request(
        "GET", f"/api/v2/dags/tagifai_training/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/train"
    )["try_number"]
    assert run["state"] == "success", client.task_states(run_id)
    assert tries >= 2  # the killed attempt failed, the retry succeeded


def task_containers(**labels: str) -> list[str]:
    """Running task containers (labelled `org.tagifai.step` by the DAG), narrowed by `labels`."""
    return running_containers(**labels) if labels else running_containers(**{"org.tagifai.step": ""})


def test_data_survive_down_and_up(stack, first_run):
    make("down", env_file=stack.env_file, timeout=600)
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
    make("up", env_file=stack.env_file)
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]
    assert version["version"]
    runs = stack.airflow().request("GET", "/api/v2/dags/tagifai_training/dagRuns")["dag_runs"]
    assert first_run[0] in {r["dag_run_id"] for r in runs}


def test_make_down_leaves_no_containers_running(stack):
    make("down", env_file=stack.env_file, timeout=600)
    assert running_containers(**{"com.docker.compose.project": PROJECT}) == []
    assert task_containers() == []
