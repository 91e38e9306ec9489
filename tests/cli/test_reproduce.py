"""`tagifai reproduce`: three versions on three datasets; version 1 rebuilt byte for byte, and each change named."""

import json
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from harness import Cli, synthetic
from tagifai.pipeline import rebuild

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def versions(module_cli: Cli) -> dict[str, dict]:
    """Three versions of `tagifai`, each trained on its own synthetic dataset."""
    made = {}
    for seed in (1, 2, 3):
        projects, tags = synthetic.write_dataset(module_cli.cwd / f"data-{seed}", per_tag=40, seed=seed)
        sources = ("--projects-url", str(projects), "--tags-url", str(tags))
        _, out, _ = module_cli("pipeline", "--num-trials", "1", *sources)
        made[out["version"]] = out
    assert sorted(made) == ["1", "2", "3"]
    return made


def client(cli: Cli) -> MlflowClient:
    return MlflowClient(cli.env["MLFLOW_TRACKING_URI"])


def attempts(cli: Cli, version: str) -> list:
    found = client(cli).search_runs(
        [client(cli).get_experiment_by_name("tagifai-reproduce").experiment_id],
        filter_string=f"tags.reproduces = '{version}'",
        order_by=["attributes.start_time DESC"],
    )
    return found


def test_three_versions_record_what_a_rebuild_needs(versions, module_cli):
    mlflow = client(module_cli)
    data_shas = set()
    for number in versions:
        version = mlflow.get_model_version("tagifai", number)
        tags = version.tags
        for key in ("commit", "dirty", "python", "scikit-learn", "numpy", "scipy", "nltk", "predictions_sha256"):
            assert tags.get(f"rebuild.{key}"), f"v{number} lacks rebuild.{key}"
        assert tags["rebuild.commit"] == tags["rebuild.commit"].lower() and len(tags["rebuild.commit"]) == 40
        data_shas.add(tags["data_sha256"])
        trained = mlflow.get_run(version.run_id)
        assert {k: v for k, v in trained.data.tags.items() if k.startswith("rebuild.")} == {
            k: v for k, v in tags.items() if k.startswith("rebuild.")
        }
        manifest = json.loads(Path(mlflow.download_artifacts(version.run_id, rebuild.MANIFEST)).read_text())
        assert manifest["recipe"]["params"]["seed"] == manifest["recipe"]["seeds"]["train"]
        assert manifest["recipe"]["tuning"]["best_trial"] == trained.data.tags["best_trial"]
        assert set(manifest["data"]["splits"]) == {"train", "val", "test"}
        config = json.loads(Path(mlflow.download_artifacts(version.run_id, rebuild.CONFIG)).read_text())
        assert config["train"]["num_epochs"] == 8  # the small settings' override, as resolved
    assert len(data_shas) == 3


def test_version_1_is_rebuilt_identical_and_the_attempt_is_a_run(versions, module_cli):
    code, out, err = module_cli("reproduce", "--version", "1")
    assert code == 0, err
    version = client(module_cli).get_model_version("tagifai", "1")
    assert out["verdict"] == "identical"
    assert out["predictions_sha256"] == version.tags["rebuild.predictions_sha256"]
    assert out["fitted_sha256"] == version.tags["rebuild.fitted_sha256"]
    run = attempts(module_cli, "1")[0]
    assert run.info.run_id == out["run_id"]
    assert run.data.tags["reproduce.verdict"] == "identical" and run.data.metrics["differences"] == 0
    # The version's card links its attempts.
    card = module_cli.start("card", "--model-uri", "models:/tagifai/1").communicate(timeout=300)[0]
    link = f"#/experiments/{run.info.experiment_id}/runs?searchFilter=tags.model_name%20%3D%20%27tagifai%27%20and%20"
    assert f"- reproduce: [attempts to rebuild it]({link}tags.reproduces%20%3D%20%271%27)" in card


def test_a_recorded_package_version_that_differs_is_named(versions, module_cli):
    mlflow = client(module_cli)
    run_id = mlflow.get_model_version("tagifai", "2").run_id
    manifest = json.loads(Path(mlflow.download_artifacts(run_id, rebuild.MANIFEST)).read_text())
    manifest["environment"]["packages"]["scikit-learn"] = "1.0.0"
    rewritten = module_cli.cwd / "rewritten" / "manifest.json"
    rewritten.parent.mkdir(exist_ok=True)
    rewritten.write_text(json.dumps(manifest))
    mlflow.log_artifact(run_id, str(rewritten), "rebuild")
    code, _, err = module_cli("reproduce", "--version", "2", check=False)
    assert code == 1
    assert err.splitlines()[-1].endswith("not reproduced: package: scikit-learn 1.9.1 here, 1.0.0 recorded")
    assert attempts(module_cli, "2")[0].data.tags["reproduce.verdict"] == "different"


def test_an_edited_setting_the_step_reads_is_named(versions, module_cli):
    edited = module_cli.cwd / "edited.toml"
    config = Path(module_cli.env["TAGIFAI_CONFIG"]).read_text()
    edited.write_text(config.replace("[train]\n", "[train]\nthreshold_quantile = 0.25\n"))
    code, _, err = module_cli("reproduce", "--version", "1", check=False, TAGIFAI_CONFIG=str(edited))
    assert code == 1
    assert "config: [train] threshold_quantile is 0.25 here, 0.0 recorded" in err


def test_a_code_change_in_the_core_is_named(versions, module_cli, tmp_path):
    shutil.copytree(ROOT / "tagifai", tmp_path / "tagifai", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", tmp_path / "config")  # a checkout's settings, beside its package
    train = tmp_path / "tagifai" / "core" / "train.py"
    source = train.read_text()
    assert 'penalty="l2"' in source
    train.write_text(source.replace('penalty="l2"', 'penalty="l1"'))
    edited = Cli({**module_cli.env, "PYTHONPATH": str(tmp_path)}, module_cli.cwd, [sys.executable, "-c", CLI])
    code, _, err = edited("reproduce", "--version", "1", check=False)
    assert code == 1, err
    assert "code tagifai/core/train.py differs" in err.splitlines()[-1]
    result = attempts(module_cli, "1")[0]
    assert result.data.tags["reproduce.first_difference"].startswith("code tagifai/core/train.py differs")
    # Retrained with the edit, the predictions changed too: the attempt lists every difference.
    found = json.loads(
        Path(client(module_cli).download_artifacts(result.info.run_id, "reproduce/result.json")).read_text()
    )
    assert any(d.startswith(("prediction: test row", "outputs:")) for d in found["differences"])


CLI = "import sys; sys.argv[0] = 'tagifai'; from tagifai.cli import app; app()"


def test_on_current_data_reports_and_leaves_the_champion_alone(versions, module_cli):
    mlflow = client(module_cli)
    champion = mlflow.get_model_version_by_alias("tagifai", "champion").version
    code, out, err = module_cli("reproduce", "--version", "1", "--on-current-data")
    assert code == 0, err
    assert out["champion_version"] == str(champion) and 0 < out["holdout_f1_recipe"] <= 1
    assert mlflow.get_model_version_by_alias("tagifai", "champion").version == champion
    assert len(mlflow.search_model_versions("name = 'tagifai'")) == 3
    run = mlflow.get_run(out["run_id"])
    assert run.data.tags["reproduce.mode"] == "current-data" and run.data.tags["reproduces"] == "1"
    report = Path(mlflow.download_artifacts(out["run_id"], "reproduce/current_data.md")).read_text()
    assert f"against the champion (version {champion})" in report and "no alias moved" in report
    # Today's sources (the deployment's: TAGIFAI_PROJECTS_URL) went through the pipeline's elt and validate, whose
    # runs a second look reuses.
    current = mlflow.get_run(out["data_run_id"])
    extracted = mlflow.get_run(current.data.tags["elt_run_id"])
    assert Path(extracted.data.params["projects_url"]) == Path(module_cli.env["TAGIFAI_PROJECTS_URL"])
    _, again, _ = module_cli("reproduce", "--version", "1", "--on-current-data")
    assert again["data_run_id"] == out["data_run_id"] and again["run_id"] != out["run_id"]


def test_unknown_versions_are_refused(versions, module_cli):
    code, _, err = module_cli("reproduce", "--version", "9", check=False)
    assert code == 3 and "no version 9 of registered model 'tagifai'" in err


def test_the_split_files_gone_cannot_be_tried(versions, module_cli):
    mlflow = client(module_cli)
    data_run = mlflow.get_run(mlflow.get_model_version("tagifai", "3").tags["data_run_id"])
    test_split = Path(urlparse(data_run.info.artifact_uri).path) / "data" / "test.csv"
    test_split.unlink()
    code, _, err = module_cli("reproduce", "--version", "3", check=False)
    assert code == 3
    assert f"version 3's recorded split is gone: validate run {data_run.info.run_id} has no data/test.csv" in err
    assert attempts(module_cli, "3")[0].data.tags["reproduce.verdict"] == "untestable"
