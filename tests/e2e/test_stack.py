"""The compose stack as a user runs it: a DAG run through the REST API, both UIs in a real browser,
and faults during a run. `test_stack_lifecycle.py` then takes it down and up.

Needs Docker (CI: ../shared/ci/docker-sandbox.sh) and, for the browser part, Debian's chromium +
chromium-driver.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request

import pytest

from harness.stack import SCREENSHOTS, wait_for_text

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.stack, pytest.mark.slow]


def test_dag_run_succeeds_with_each_step_in_its_own_container(stack, first_run):
    run_id, run, seconds, starts = first_run
    assert run["state"] == "success", stack.airflow().task_states(run_id)
    states = stack.airflow().task_states(run_id)
    # The champion event only if this run moved the champion (the startup run may have promoted first).
    assert states.pop("publish_champion") in ("success", "skipped")
    assert states == dict.fromkeys(
        ["elt", "validate", "optimize_workers", "optimize[0]", "optimize[1]", "train", "evaluate", "register"],
        "success",
    )
    steps = sorted(event["Actor"]["Attributes"]["org.tagifai.step"] for event in starts)
    # A container each; optimize in two.
    assert steps == sorted(["elt", "validate", "optimize", "optimize", "train", "evaluate", "register"])
    assert len({event["id"] for event in starts}) == 7
    # The real containers, as Docker made them: no capabilities, no privilege escalation, memory limit, CPU weight.
    for event in starts:
        host = event["HostConfig"]
        assert host is not None, f"{event['id']} was gone before it could be inspected"
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"], host
        assert host["Memory"] == 4 * 1024**3  # [limits] step_memory = "4g"
        assert host["CpuShares"] == 1024 and host["NanoCpus"] == 0  # one CPU (step_cpu_request): a weight, no cap
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
    assert tag(workers[0], "optuna_storage").startswith("postgresql+psycopg2://***@postgres")
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
    assert stack.artifact(path)[:8] == b"\x89PNG\r\n\x1a\n"


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
    # MLflow asks for a login (HTTP basic auth): the viewer login, as a person who browses would use.
    login = f"{stack.env['MLFLOW_VIEWER_USERNAME']}:{stack.env['MLFLOW_VIEWER_PASSWORD']}"
    browser.get(stack.mlflow_url.replace("http://", f"http://{login}@") + "/")
    browser.get(f"{stack.mlflow_url}/#/models/tagifai")
    body = wait_for_text(browser, "tagifai", "champion", timeout=90)
    assert "challenger" in body
    time.sleep(2)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-model.png"))


def test_mlflow_ui_shows_the_model_card_on_the_version_page(stack, first_run, browser):
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    browser.get(f"{stack.mlflow_url}/#/models/tagifai/versions/{version}")
    body = wait_for_text(browser, "Intended use", "Known weaknesses", "Metrics", timeout=90)
    assert "Behavioral tests: pass rate" in body
    time.sleep(2)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-model-card.png"))


def test_the_first_champion_and_a_run_past_its_deadline_are_told_by_mail(stack, first_run):
    run_id = first_run[0]
    # The stack's deadline is RUN_DEADLINE_MINUTES after a run is queued; every training run takes longer.
    assert stack.wait_for_mail(run_id, "deadline"), "no deadline notification"
    version = stack.mlflow("registered-models/alias", name="tagifai", alias="champion")["model_version"]["version"]
    moved = stack.wait_for_mail("champion", f"v{version}", "promote")
    assert len(moved) == 1
    # Links to the version's page in MLflow (its description is the model card), as people reach MLflow.
    assert f"{stack.env['MLFLOW_PUBLIC_URL']}/#/models/tagifai/versions/{version}" in moved[0]


def test_run_survives_an_mlflow_restart_and_a_killed_task(changed_data_run):
    """MLflow restarted during `optimize`, the `train` container killed (in the run new data started):
    retries carry the run to success."""
    faults = changed_data_run["faults"]
    assert set(faults) == {"mlflow", "train"}, f"faults injected: {faults}"
    assert changed_data_run["run"]["state"] == "success", changed_data_run["states"]
    assert changed_data_run["train_tries"] >= 2  # the killed attempt failed, the retry succeeded
