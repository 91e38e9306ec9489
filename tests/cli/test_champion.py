"""The champion in use: its history after two promotions and a rollback, and each version's model card."""

import pytest
from mlflow.tracking import MlflowClient

from harness import Cli, free_port, tagifai_python


@pytest.fixture(scope="module")
def moves(module_cli: Cli) -> dict:
    """Two promotions (a pipeline, then the same pipeline forced: a new version), then a rollback."""
    args = ("pipeline", "--num-trials", "1", "--experiment-name", "champion")
    _, first, _ = module_cli(*args)
    _, second, _ = module_cli(*args, "--force")
    _, back, _ = module_cli("rollback", "--reason", "v2 misbehaves in production")
    history = module_cli.start("champion-history").communicate(timeout=300)[0]
    return {"first": first, "second": second, "back": back, "history": history}


def test_rollback_moves_champion_to_the_version_before_after_re_scoring_it(moves, module_cli):
    assert (moves["first"]["version"], moves["second"]["version"]) == ("1", "2")
    assert moves["second"]["promoted"] is True
    back = moves["back"]
    assert (back["from_version"], back["version"]) == ("2", "1")
    assert 0 < back["test_f1"] <= 1 and "re-scored test f1" in back["reason"]
    assert back["announced"] is False  # no Airflow here: serving follows the alias anyway
    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == "1"


def test_champion_history_lists_every_move_with_its_reason(moves):
    lines = moves["history"].strip().splitlines()
    header, *rows = lines
    assert header.split()[:6] == ["when", "(UTC)", "from", "to", "action", "by"]
    assert len(rows) == 3  # newest first: the rollback, then the two promotions
    assert rows[0].split()[2:5] == ["v2", "v1", "rollback"] and "v2 misbehaves in production" in rows[0]
    assert rows[1].split()[2:5] == ["v1", "v2", "promote"] and moves["second"]["pipeline_run_id"] in rows[1]
    assert rows[2].split()[2:5] == ["-", "v1", "promote"] and "no champion yet" in rows[2]


def test_every_version_describes_itself_with_its_model_card(moves, module_cli):
    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    description = client.get_model_version("tagifai", "2").description
    printed = module_cli.start("card", "--model-uri", "models:/tagifai/2").communicate(timeout=300)[0]
    assert printed == description
    for section in ("## Intended use", "## Data", "## Metrics", "## Parameters", "## Known weaknesses", "## Runs"):
        assert section in description
    assert f"{moves['second']['test_f1']:.4f}" in description


def test_rollback_refuses_what_it_cannot_do(moves, module_cli):
    code, _, err = module_cli("rollback", "--to", "1", check=False)
    assert code == 3 and "v1 is the champion already" in err
    code, _, err = module_cli("rollback", "--to", "99", check=False)
    assert code == 3 and "has no version 99" in err


# Logs a model the old way (a cloudpickled PythonModel, as tagifai < 0.2.0 did) and registers it.
LOG_PICKLED = """
import json, mlflow
class Old(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input
with mlflow.start_run(experiment_id=mlflow.create_experiment("old-models")):
    info = mlflow.pyfunc.log_model(name="model", python_model=Old(), pip_requirements=["mlflow"])
print(json.dumps({"version": str(mlflow.register_model(info.model_uri, "tagifai").version)}))
"""


def test_rollback_to_a_pickled_version_says_why_it_cannot(moves, module_cli):
    version = tagifai_python(LOG_PICKLED, env=module_cli.env)["version"]
    code, _, err = module_cli("rollback", "--to", version, check=False)
    assert code == 3
    last = err.strip().splitlines()[-1]
    assert f"tagifai v{version} cannot be rolled back to" in last
    assert f"models:/tagifai/{version} is a pickled model (python_model.pkl); this deployment loads only" in last
    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == "1"


def test_a_rollback_airflow_does_not_hear_of_is_made_and_says_so(moves, module_cli):
    # Runs last: it moves champion back to v2. The move and its record stand; only the event is missing.
    code, back, err = module_cli("rollback", "--to", "2", TAGIFAI_AIRFLOW_URL=f"http://127.0.0.1:{free_port()}")
    assert code == 0 and (back["from_version"], back["version"], back["announced"]) == ("1", "2", False)
    assert "no champion event" in err and "did not answer" in err
    client = MlflowClient(module_cli.env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("tagifai", "champion").version) == "2"


@pytest.mark.parametrize(
    ("recorded", "holdout_f1"),
    [
        ("0.8125", 0.8125),  # register scored it on the holdout
        ("None", None),  # register recorded that it had no holdout score
        (None, None),  # a version registered before the gate recorded any
    ],
)
def test_a_rollbacks_champion_event_names_from_to_scores_and_who(recorded, holdout_f1):
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from tagifai.operations import champion

    tags = {"pipeline_run_id": "manual__abc", **({"holdout_f1": recorded} if recorded else {})}
    version = ModelVersion("tagifai", "3", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])
    extra = champion.event_extra("tagifai", version, 0.9, "h1", "5", "tagifai rollback by alice")
    assert extra == {
        "model_name": "tagifai", "from_version": "5", "version": "3", "test_f1": 0.9, "holdout_f1": holdout_f1,
        "action": "rollback", "by": "tagifai rollback by alice", "pipeline_run_id": "manual__abc",
        "history_run_id": "h1",
    }  # fmt: skip
