"""The six steps run one by one, handing run ids over through the last stdout line, as Airflow does."""

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from tagifai import model as models

PIPELINE = "scheduled__2026-11-22T00:00:00+00:00"


@pytest.fixture(scope="module")
def store(module_cli):
    return module_cli.env["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def chain(module_cli):
    """Run elt → validate → optimize → train → evaluate → register; return each step's JSON."""
    cli = module_cli
    env = {"TAGIFAI_PIPELINE_RUN_ID": PIPELINE, "TAGIFAI_IMAGE": "tagifai:test"}
    out = {}
    _, out["elt"], _ = cli("elt", "--experiment-name", "chain", **env)
    _, out["validate"], _ = cli("validate", "--elt-run", out["elt"]["run_id"], **env)
    storage = f"sqlite:///{cli.cwd / 'optuna.db'}"
    _, out["optimize"], _ = cli(
        "optimize", "--data-run", out["validate"]["run_id"], "--num-trials", "3", "--storage", storage, **env
    )
    _, out["train"], _ = cli(
        "train",
        "--data-run", out["validate"]["run_id"],
        "--optimize-run", out["optimize"]["run_id"],
        **env,
    )  # fmt: skip
    _, out["evaluate"], _ = cli("evaluate", "--train-run", out["train"]["run_id"], **env)
    _, out["register"], _ = cli("register", "--evaluate-run", out["evaluate"]["run_id"], **env)
    return out


def test_every_step_prints_its_run_id_last(chain):
    assert all(len(step["run_id"]) == 32 for step in chain.values())
    assert len(chain["elt"]["data_sha256"]) == 64
    assert set(chain["optimize"]["best_params"]) <= {
        "analyzer",
        "ngram_max_range",
        "sublinear_tf",
        "word_features",
        "alpha",
        "learning_rate",
        "num_epochs",
        "threshold_quantile",
    }
    assert chain["train"]["model_uri"].startswith("models:/")
    assert chain["register"] == {**chain["register"], "model_name": "tagifai", "version": "1", "promoted": True}


def test_all_runs_carry_the_pipeline_id_and_lineage(chain, store):
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("chain")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_step = {}
    for run in runs:
        assert run.data.tags["pipeline_run_id"] == PIPELINE
        by_step.setdefault(run.data.tags["tagifai.step"], []).append(run)
    assert {k: len(v) for k, v in by_step.items()} == {
        "elt": 1,
        "validate": 1,
        "optimize": 1,
        "train": 1,
        "evaluate": 1,
        "register": 1,
        "trial": 3,
    }
    optimize_id = chain["optimize"]["run_id"]
    assert all(t.data.tags["mlflow.parentRunId"] == optimize_id for t in by_step["trial"])
    assert all("val_f1" in t.data.metrics or t.data.tags.get("state") == "PRUNED" for t in by_step["trial"])
    train = by_step["train"][0]
    assert train.data.tags["data_run_id"] == chain["validate"]["run_id"]
    assert train.data.tags["optimize_run_id"] == optimize_id
    assert train.data.tags["image"] == "tagifai:test"
    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(int(train.data.params["num_epochs"])))
    assert "threshold" in train.data.metrics


def test_elt_logs_raw_copies_and_a_dataset_input(chain, store, module_cli):
    mlflow.set_tracking_uri(store)
    run = MlflowClient().get_run(chain["elt"]["run_id"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "raw")}
    assert artifacts == {"raw/projects.csv", "raw/tags.csv"}
    raw = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="raw/tags.csv")
    assert open(raw, "rb").read() == (module_cli.cwd / "data" / "tags.csv").read_bytes()
    [dataset_input] = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["sha256"] == chain["elt"]["data_sha256"]
    assert dataset_input.dataset.digest == chain["elt"]["data_sha256"][:32]


def test_validate_and_evaluate_log_reports_and_plots(chain, store):
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    validate_files = {a.path for a in client.list_artifacts(chain["validate"]["run_id"], "validation")}
    assert {"validation/report.json", "validation/report.md", "validation/profile.json"} <= validate_files
    evaluate_files = {a.path for a in client.list_artifacts(chain["evaluate"]["run_id"], "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/per_class_f1.png",
        "evaluation/report.json",
        "evaluation/behavioral.json",
    } <= evaluate_files
    metrics = client.get_run(chain["evaluate"]["run_id"]).data.metrics
    assert {
        "test_precision",
        "test_recall",
        "test_f1",
        "test_f1_mlops",
        "slice_short_text_num_samples",
        "behavioral_pass_rate",
    } <= set(metrics)
    assert metrics["test_f1"] == pytest.approx(chain["evaluate"]["test_f1"])


def test_registered_version_carries_metrics_and_lineage(chain, store):
    mlflow.set_tracking_uri(store)
    version = MlflowClient().get_model_version_by_alias("tagifai", "champion")
    assert str(version.version) == "1" and set(version.aliases) == {"champion", "challenger"}
    assert float(version.tags["test_f1"]) == pytest.approx(chain["evaluate"]["test_f1"], abs=1e-4)
    assert version.tags["data_sha256"] == chain["elt"]["data_sha256"]
    assert version.tags["pipeline_run_id"] == PIPELINE
    assert version.tags["image"] == "tagifai:test"
    assert version.tags["code_version"]
    assert {"test_precision", "test_recall"} <= set(version.tags)


def test_the_registered_model_loads_without_pickle_in_a_fresh_process(chain, store):
    # Pickle deserialization off (as in the image): the model loads from its code and skops file, and
    # predicts what this process's load of it does.
    rows = pd.DataFrame({"title": ["Object detection in photos", "Sentiment of text", "Graphs"], "description": ""})
    script = (
        "import sys, pandas as pd\n"
        "from tagifai import model as models\n"
        "out = models.load('models:/tagifai@champion').predict(pd.read_json(sys.stdin, orient='split'))\n"
        "print(out.to_json(orient='split'))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script], input=rows.to_json(orient="split"), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mlflow.set_tracking_uri(store)
    expected = models.load("models:/tagifai@champion").predict(rows)
    got = pd.read_json(io.StringIO(done.stdout.splitlines()[-1]), orient="split")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    pyfunc = Model.load("models:/tagifai@champion").flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert pyfunc["artifacts"][models.FITTED]["path"].endswith(".skops")


def test_pyfunc_model_takes_raw_text(chain, store):
    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model("models:/tagifai@champion")
    out = model.predict(
        pd.DataFrame(
            {
                "title": ["Object detection in photos and images", "Sentiment of text"],
                "description": ["with yolo and a cnn", "language with bert"],
            }
        )
    )
    assert out["tag"].tolist() == ["computer-vision", "natural-language-processing"]
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["title", "description"]


def test_register_again_reuses_the_version(module_cli, chain):
    cli = module_cli
    _, again, _ = cli("register", "--evaluate-run", chain["evaluate"]["run_id"])
    assert again["version"] == chain["register"]["version"]


def test_gate_keeps_the_champion_when_the_challenger_is_too_weak(module_cli, chain, store):
    cli = module_cli
    _, train, _ = cli("train", "--data-run", chain["validate"]["run_id"])
    _, evaluate, _ = cli("evaluate", "--train-run", train["run_id"])
    _, register, _ = cli("register", "--evaluate-run", evaluate["run_id"], "--min-f1", "1.01")
    assert register["promoted"] is False and register["version"] == "2"
    assert "below the minimum 1.0100" in register["reason"]
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tagifai", "challenger").version) == "2"


def test_steps_refuse_runs_of_the_wrong_step(module_cli, chain):
    cli = module_cli
    code, _, err = cli("train", "--data-run", chain["elt"]["run_id"], check=False)
    assert code == 1 and f"error: run {chain['elt']['run_id']} is a elt run, not a validate run" in err
    code, _, err = cli("evaluate", "--train-run", "0" * 32, check=False)
    assert code == 1 and "no MLflow run '00000000000000000000000000000000'" in err


def test_retried_optimize_does_not_repeat_finished_trials(module_cli, chain):
    import optuna

    cli = module_cli
    storage = f"sqlite:///{cli.cwd / 'optuna.db'}"
    _, again, _ = cli(
        "optimize",
        "--data-run",
        chain["validate"]["run_id"],
        "--num-trials",
        "3",
        "--storage",
        storage,
        TAGIFAI_PIPELINE_RUN_ID=PIPELINE,
    )
    # The same pipeline run and data: the same study, already complete.
    study = f"tagifai-{PIPELINE}-{chain['validate']['run_id'][:8]}"
    assert again["study_name"] == chain["optimize"]["study_name"] == study
    assert (again["trials"], again["trials_run"]) == (3, 0)
    assert len(optuna.load_study(study_name=again["study_name"], storage=storage).trials) == 3
    assert again["best_value"] == chain["optimize"]["best_value"]


def test_the_json_line_also_goes_to_the_file_tagifai_output_names(module_cli, tmp_path):
    # The docker runner reads it there: a container's log interleaves stdout and stderr.
    output = tmp_path / "output.json"
    proc = module_cli.start("elt", "--experiment-name", "chain", TAGIFAI_OUTPUT=str(output))
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert output.read_text().strip() == stdout.strip().splitlines()[-1]


def test_a_tuning_budget_tunes_on_a_sample_and_the_model_learns_from_every_row(module_cli, chain, store, tmp_path):
    cli = module_cli
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    # The chain's optimize tuned on every row, with every fold.
    everything = client.get_run(chain["optimize"]["run_id"]).data.tags
    train_rows = int(client.get_run(chain["validate"]["run_id"]).data.metrics["train_rows"])
    assert everything["tuning_sample"] == f"all {train_rows} train rows, 3 folds per trial"
    budget = Path(cli.env["TAGIFAI_CONFIG"]).read_text(encoding="utf-8")
    budget = budget.replace("[optimize]\n", "[optimize]\nmax_rows = 40\ncv_max_rows = 30\n")
    (tmp_path / "budget.toml").write_text(budget, encoding="utf-8")
    env = {"TAGIFAI_CONFIG": str(tmp_path / "budget.toml"), "TAGIFAI_PIPELINE_RUN_ID": "budget"}
    data_run = chain["validate"]["run_id"]
    _, tuned, _ = cli("optimize", "--data-run", data_run, "--num-trials", "2", **env)
    assert tuned["tuning_rows"] == 40 < train_rows
    tags = client.get_run(tuned["run_id"]).data.tags
    assert tags["tuning_folds"] == "1"
    assert tags["tuning_sample"] == (
        f"a stratified sample of 40 of {train_rows} train rows ([optimize] max_rows), one of 3 folds per trial "
        "(above [optimize] cv_max_rows)"
    )
    _, trained, _ = cli("train", "--data-run", data_run, "--optimize-run", tuned["run_id"], **env)
    trained_tags = client.get_run(trained["run_id"]).data.tags
    assert trained_tags["trained_rows"] == str(train_rows)  # the model learns from every train row
    assert trained_tags["tuning_sample"] == tags["tuning_sample"]  # and says what tuning saw
