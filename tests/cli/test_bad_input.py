"""Bad input: one clear line naming the problem, exit 3 (never retried; 1 when the network may come
back), and no model registered or promoted."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from harness import synthetic
from tagifai.cli import app


def write(folder, projects=None, tags=None, projects_bytes=None, tags_bytes=None):
    """Write a dataset, optionally with altered rows or raw bytes."""
    good_projects, good_tags = synthetic.make_projects(per_tag=30)
    p, t = folder / "projects.csv", folder / "tags.csv"
    folder.mkdir(exist_ok=True)
    synthetic.write_csv(p, projects(good_projects) if projects else good_projects)
    synthetic.write_csv(t, tags(good_tags) if tags else good_tags)
    if projects_bytes is not None:
        p.write_bytes(projects_bytes)
    if tags_bytes is not None:
        t.write_bytes(tags_bytes)
    return p, t


def duplicate_ids(rows):
    rows[1]["id"] = rows[0]["id"]
    return rows


def blank_text(rows):
    rows[3]["title"] = rows[3]["description"] = " "
    return rows


def orphan_tag(rows):
    return rows + [{"id": 9999, "tag": "mlops"}]


def only_one_class(rows):
    return [{**r, "tag": "mlops"} for r in rows]


def drop_title(rows):
    return [{k: v for k, v in r.items() if k != "title"} for r in rows]


CASES = [
    # (case id, writer kwargs, expected fragment of the one-line error, exit code)
    ("missing file", {"missing": True}, "error: data file not found: ", 3),
    (
        "unreachable url",
        {"url": "http://127.0.0.1:9/projects.csv"},
        "error: cannot download http://127.0.0.1:9/projects.csv",
        1,  # the server may come back: Airflow retries
    ),
    ("missing column", {"projects": drop_title}, "is missing column(s) title", 3),
    ("empty file", {"tags_bytes": b""}, "tags.csv (", 3),
    (
        "non-utf8",
        {"projects_bytes": "id,title,description\n1,Caf\u00e9,x\n".encode("latin-1")},
        "is not valid UTF-8",
        3,
    ),
    ("orphan tags", {"tags": orphan_tag}, "1 tag(s) match no project id: 9999", 3),
    ("duplicate ids", {"projects": duplicate_ids, "tags": duplicate_ids}, "validation failed: unique_ids: ", 3),
    ("blank text", {"projects": blank_text}, "validation failed: non_blank_text: 1 project(s) with blank text", 3),
    ("too few classes", {"tags": only_one_class}, "enough_classes: only 1 class(es): mlops=120; need at least 2", 3),
]


@pytest.fixture
def run(tmp_path, mlflow_store, small_config, monkeypatch):
    # The deployment's own data is good (the gate's holdout is its test split); the run's is bad.
    projects, tags = write(tmp_path / "deployment")
    monkeypatch.setenv("TAGIFAI_PROJECTS_URL", str(projects))
    monkeypatch.setenv("TAGIFAI_TAGS_URL", str(tags))
    runner = CliRunner()

    def invoke(projects, tags, *extra):
        return runner.invoke(
            app, ["pipeline", "--num-trials", "1", "--projects-url", str(projects), "--tags-url", str(tags), *extra]
        )

    return invoke


@pytest.mark.parametrize(("case", "kwargs", "message", "exit_code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_registers_nothing(run, tmp_path, mlflow_store, case, kwargs, message, exit_code):
    kwargs = dict(kwargs)
    missing, url = kwargs.pop("missing", False), kwargs.pop("url", None)
    projects, tags = write(tmp_path / "data", **kwargs)
    if missing:
        projects.unlink()
    result = run(url or projects, tags)
    assert result.exit_code == exit_code
    error_lines = result.stderr.strip().splitlines()
    assert error_lines[-1].startswith("error: ") and message in error_lines[-1], result.stderr
    assert result.stdout.strip() == ""  # no hand-off line for a failed step
    if case == "empty file":
        assert "is empty" in error_lines[-1]
    mlflow.set_tracking_uri(mlflow_store)
    assert MlflowClient().search_registered_models() == []


def test_bad_data_leaves_the_champion_alone(run, tmp_path, mlflow_store):
    projects, tags = write(tmp_path / "good")
    assert run(projects, tags).exit_code == 0
    mlflow.set_tracking_uri(mlflow_store)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("tagifai", "champion")

    projects, tags = write(tmp_path / "bad", projects=duplicate_ids, tags=duplicate_ids)
    result = run(projects, tags)
    assert result.exit_code == 3 and "unique_ids" in result.stderr
    assert [v.version for v in client.search_model_versions("name = 'tagifai'")] == [champion.version]
    assert client.get_model_version_by_alias("tagifai", "champion").version == champion.version
    failed = client.search_runs(
        [r.info.experiment_id for r in [client.get_run(champion.run_id)]], filter_string="tags.validation = 'failed'"
    )
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "unique_ids" in failed[0].data.tags["error"]


def test_drift_fails_validate_unless_allowed(run, tmp_path):
    projects, tags = write(tmp_path / "good")
    assert run(projects, tags).exit_code == 0

    def mostly_vision(rows):
        return [{**r, "tag": "computer-vision"} if i % 4 else r for i, r in enumerate(rows)]

    projects, tags = write(tmp_path / "drifted", tags=mostly_vision)
    result = run(projects, tags)
    assert result.exit_code == 3 and "validation failed: label_drift: chi-square p=" in result.stderr
    assert run(projects, tags, "--allow-drift").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-f1", "0"], "min_f1 0.0 would loosen this deployment's gate ([register] min_f1 = 0.6)"),
        (["--max-regression", "1"], "max_regression 1.0 would loosen this deployment's gate"),
        (["--num-trials", "100000"], "num_trials 100000 is more than this deployment allows"),
        (["--min-f1", "nan"], "min_f1 must be a finite number, not nan"),  # NaN passes every comparison
        (["--max-regression", "-inf"], "max_regression must be a finite number, not -inf"),
        (["--experiment-name", "someone-elses"], "experiment 'someone-elses' is not one this deployment lists"),
    ],
)
def test_params_may_not_loosen_the_deployers_gate_or_limits(run, tmp_path, mlflow_store, args, message):
    projects, tags = write(tmp_path / "data")
    result = run(projects, tags, *args)
    assert result.exit_code == 3 and message in result.stderr.strip().splitlines()[-1]
    mlflow.set_tracking_uri(mlflow_store)
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []


def test_elt_refuses_an_experiment_the_deployer_did_not_list(tmp_path, mlflow_store, small_config, monkeypatch):
    # What a DAG task hands over (MLFLOW_EXPERIMENT_NAME), refused by the step as well as by the trigger form.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "someone-elses")
    projects, tags = write(tmp_path / "data")
    result = CliRunner().invoke(app, ["elt", "--projects-url", str(projects), "--tags-url", str(tags)])
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "error: experiment 'someone-elses' is not one this deployment lists ([mlflow] experiments: 'tagifai', "
        "'champion', 'gate', 'reuse', 'new-data', 'chain', 'workers', 'e2e')"
    ]
    mlflow.set_tracking_uri(mlflow_store)
    assert [e.name for e in MlflowClient().search_experiments()] in ([], ["Default"])


def test_the_plan_a_dag_hands_to_elt_may_not_hold_nan(tmp_path, mlflow_store, small_config):
    # JSON's NaN parses in Python; compared with the gate it would pass every check.
    projects, tags = write(tmp_path / "data")
    args = ["elt", "--projects-url", str(projects), "--tags-url", str(tags), "--plan", '{"min_f1": NaN}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3 and "min_f1 must be a finite number, not nan" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("num_trials", ["-1", "0", "2.5", "true", '"5"'])
def test_the_plan_a_dag_hands_to_elt_holds_a_whole_number_of_trials(tmp_path, mlflow_store, small_config, num_trials):
    projects, tags = write(tmp_path / "data")
    plan = f'{{"num_trials": {num_trials}}}'
    result = CliRunner().invoke(app, ["elt", "--projects-url", str(projects), "--tags-url", str(tags), "--plan", plan])
    assert result.exit_code == 3 and "num_trials must be a whole number of at least 1" in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("[register]\nmin_fi = 0.99\n", "[register] min_fi: unknown setting"),
        ('[register]\nmin_f1 = "0.9"\n', "[register] min_f1: input should be a valid number, got '0.9'"),
        ("[register]\nmin_f1 = nan\n", "[register] min_f1: input should be a finite number, got nan"),
    ],
)
@pytest.mark.parametrize("command", [["settings"], ["pipeline", "--num-trials", "1"]])
def test_a_refused_setting_stops_every_command_with_one_line(
    tmp_path, monkeypatch, mlflow_store, override, message, command
):
    path = tmp_path / "override.toml"
    path.write_text(override)
    monkeypatch.setenv("TAGIFAI_CONFIG", str(path))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [f"error: settings in {path}: {message}"]
    mlflow.set_tracking_uri(mlflow_store)
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []


def test_settings_prints_what_the_steps_will_read(small_config):
    result = CliRunner().invoke(app, ["settings"])
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["data"]["min_freq"] == 5 and shown["register"]["min_f1"] == 0.6  # the override over the defaults


class Pickled(mlflow.pyfunc.PythonModel):
    """A model logged the old way (cloudpickle, tagifai < 0.2.0)."""

    def predict(self, context, model_input, params=None):
        return model_input


def test_predict_with_a_pickled_model_fails_with_one_line(tmp_path, small_config):
    mlflow.pyfunc.save_model(tmp_path / "old", python_model=Pickled(), pip_requirements=["mlflow"])
    result = CliRunner().invoke(app, ["predict", "yolo on video", "--model-uri", str(tmp_path / "old")])
    assert result.exit_code == 3
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'old'} is a pickled model (python_model.pkl); this deployment loads")


def test_a_failed_step_writes_its_error_and_the_run_it_failed_to_the_output_file(
    run, tmp_path, mlflow_store, monkeypatch
):
    output = tmp_path / "output.json"
    monkeypatch.setenv("TAGIFAI_OUTPUT", str(output))
    projects, tags = write(tmp_path / "bad", projects=duplicate_ids, tags=duplicate_ids)
    result = run(projects, tags)
    assert result.exit_code == 3
    failure = json.loads(output.read_text())
    assert set(failure) == {"error", "exit_code", "run_id", "experiment_id"}
    assert failure["exit_code"] == 3 and "unique_ids" in failure["error"] and "\n" not in failure["error"]
    assert result.stderr.strip().splitlines()[-1] == f"error: {failure['error']}"
    mlflow.set_tracking_uri(mlflow_store)
    failed = MlflowClient().get_run(failure["run_id"])  # the validate run that failed
    assert failed.info.status == "FAILED" and failed.data.tags["tagifai.step"] == "validate"
    assert failed.info.experiment_id == failure["experiment_id"]
    # Failing before any run of its own: no run to name.
    result = CliRunner().invoke(app, ["register", "--evaluate-run", "0" * 32])
    assert result.exit_code == 1 and json.loads(output.read_text())["run_id"] is None
