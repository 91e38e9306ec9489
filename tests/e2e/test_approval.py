"""A person approves each promotion (`[register] approval = "human"`), on a real `mlflow server`.

`register` holds: it sets `challenger` and logs the challenger-vs-champion report, but `champion`
moves only when `tagifai decide` applies a person's Approve. Reject, or no answer (`--by ""`), leaves
it where it was; every decision is in the history with who made it; a decision is made once.
"""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import Cli, synthetic
from tagifai.contract.config import load_settings
from tagifai.pipeline import registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME, HISTORY, REPORT = "tagifai-approval", "approval-history", "report/challenger_vs_champion.md"
HUMAN = f'\n[register]\napproval = "human"\napproval_timeout_hours = 1.5\nhistory_experiment = "{HISTORY}"\n'


@pytest.fixture(scope="module")
def held(mlflow_server, tmp_path_factory) -> dict:
    """v1 held then approved by alice; v2 held (the report of v2 against v1), then rejected by bob."""
    folder = tmp_path_factory.mktemp("approval")
    projects, tags = synthetic.write_dataset(folder / "data")
    config = synthetic.write_small_config(folder / "small.toml")
    config.write_text(config.read_text() + HUMAN)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "TAGIFAI_CONFIG": str(config),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
        "TAGIFAI_MODEL_NAME": NAME,
    }
    for name in ("TAGIFAI_PIPELINE_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "TAGIFAI_OUTPUT"):
        env.pop(name, None)
    cli = Cli(env, folder)
    client = MlflowClient(mlflow_server.uri)
    pipeline = ("pipeline", "--num-trials", "1", "--experiment-name", "e2e")
    _, first, _ = cli(*pipeline)
    first_held = {"aliases": aliases(client)}
    _, approved, _ = cli("decide", "--register-run", first["register_run_id"], "--choice", "Approve", "--by", "alice")
    _, second, _ = cli(*pipeline, "--force")
    second_held = {"aliases": aliases(client)}
    # What register printed (the pipeline prints its summary): the same run, reused.
    _, register, _ = cli("register", "--evaluate-run", second["evaluate_run_id"])
    _, rejected, _ = cli("decide", "--register-run", second["register_run_id"], "--choice", "Reject", "--by", "bob")
    # v2 held again (a forced register of the same model), then nobody answers in time.
    _, again, _ = cli("register", "--evaluate-run", second["evaluate_run_id"], "--force")
    _, timed_out, _ = cli("decide", "--register-run", again["run_id"], "--choice", "Reject", "--by", "")
    # And held by a gate made stricter, which refuses it; then approved.
    _, strict, _ = cli("register", "--evaluate-run", second["evaluate_run_id"], "--min-f1", "1.0", "--force")
    _, overruled, _ = cli("decide", "--register-run", strict["run_id"], "--choice", "Approve", "--by", "carol")
    unmoved = aliases(client)
    # Two held registers of v2; the first approved (v2 becomes champion), then the second: stale by then.
    _, pending, _ = cli("register", "--evaluate-run", second["evaluate_run_id"], "--force")
    _, late, _ = cli("register", "--evaluate-run", second["evaluate_run_id"], "--force")
    # dave's approval as its retry sees it when the first decide died right after moving champion and recording it.
    crashed_after_the_move(mlflow_server.uri)
    _, promoted, _ = cli("decide", "--register-run", pending["run_id"], "--choice", "Approve", "--by", "dave")
    _, stale, _ = cli("decide", "--register-run", late["run_id"], "--choice", "Approve", "--by", "erin")
    return {"cli": cli, "client": client, "first": first, "first_held": first_held, "approved": approved,
            "second": second, "second_held": second_held, "register": register, "rejected": rejected,
            "timed_out": timed_out, "strict": strict, "overruled": overruled, "unmoved": unmoved,
            "promoted": promoted, "stale": stale}  # fmt: skip


def crashed_after_the_move(uri: str) -> None:
    """What a decide approving v2 by dave had done when it died: champion moved to v2, the move recorded."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        settings = synthetic.with_setting(load_settings(), "register", history_experiment=HISTORY)
        MlflowClient().set_registered_model_alias(NAME, "champion", "2")
        registry.record_move(settings, NAME, "1", "2", "promote", "approved by dave", "approved by dave; the gate: …")
    finally:
        mlflow.set_tracking_uri(previous)


def aliases(client: MlflowClient) -> dict[str, str]:
    """Which version holds `champion` and `challenger` (None: no version)."""
    found = {}
    for alias in ("champion", "challenger"):
        try:
            found[alias] = str(client.get_model_version_by_alias(NAME, alias).version)
        except MlflowException:  # no such alias yet
            found[alias] = None
    return found


def test_a_held_register_moves_no_champion_and_sets_challenger(held):
    first, second = held["first"], held["second"]
    assert (first["version"], first["promoted"], second["version"], second["promoted"]) == ("1", False, "2", False)
    assert held["first_held"]["aliases"] == {"champion": None, "challenger": "1"}
    assert held["second_held"]["aliases"] == {"champion": "1", "challenger": "2"}
    register = held["register"]  # v2's register run, reused
    assert register["reused"] is True and register["run_id"] == second["register_run_id"]
    assert (register["held"], register["from_version"], register["report_artifact"]) == (
        True, "1", "report/challenger_vs_champion.md"
    )  # fmt: skip
    assert isinstance(register["gate_promote"], bool) and register["experiment_id"]
    # No held register recorded a move: only approvals moved champion.
    moves = held["client"].search_runs(
        [held["client"].get_experiment_by_name(HISTORY).experiment_id], "tags.`tagifai.step` = 'champion-move'"
    )
    moved = sorted((m.data.tags["to_version"], m.data.tags["by"]) for m in moves)
    assert moved == [("1", "approved by alice"), ("2", "approved by dave")]


def test_the_report_is_the_register_runs_artifact_with_both_models_figures(held, tmp_path):
    client, register = held["client"], held["register"]
    path = client.download_artifacts(register["run_id"], REPORT, str(tmp_path))
    report = open(path, encoding="utf-8").read()
    assert report == register["report"] and len(report) <= 60_000
    assert report.startswith(f"# {NAME}: challenger v2 vs champion v1\n")
    champion_f1 = client.get_run(register["run_id"]).data.metrics["champion_test_f1"]
    assert f"| test f1 | {held['second']['test_f1']:.4f} | {champion_f1:.4f} |" in report
    for section in ("## The gate's verdict", "## Per-class f1", "## Slices", "## Behavioral tests",
                    "## Where they disagree", "## Data", "## Training parameters"):  # fmt: skip
        assert section in report
    assert "Approval is human" in report
    # The first report had no champion to compare with, and says so.
    (tmp_path / "first").mkdir()
    first = client.download_artifacts(held["first"]["register_run_id"], REPORT, str(tmp_path / "first"))
    assert "The champion column: no champion yet." in open(first, encoding="utf-8").read()


def test_approve_moves_champion_and_the_card_links_the_report(held):
    approved, client = held["approved"], held["client"]
    assert (approved["decision"], approved["by"], approved["promoted"]) == ("approved", "alice", True)
    assert (approved["version"], approved["from_version"]) == ("1", None)
    assert approved["reason"].startswith("approved by alice; the gate: ")
    decided = client.get_run(approved["run_id"])
    assert decided.data.tags["tagifai.step"] == "decide"
    assert decided.data.tags["register_run_id"] == held["first"]["register_run_id"]
    version = client.get_model_version(NAME, "1")
    assert (version.tags["approval"], version.tags["promoted"]) == ("approved by alice", "true")
    experiment = client.get_run(held["first"]["register_run_id"]).info.experiment_id
    link = f"(#/experiments/{experiment}/runs/{held['first']['register_run_id']}/artifacts/{REPORT})"
    assert link in version.description and "Approval by a person: approved by alice." in version.description


def test_reject_leaves_champion_and_the_version_stays_challenger(held):
    rejected = held["rejected"]
    assert (rejected["decision"], rejected["by"], rejected["promoted"]) == ("rejected", "bob", False)
    assert (rejected["version"], rejected["from_version"]) == ("2", "1")
    assert held["unmoved"] == {"champion": "1", "challenger": "2"}  # after it, a time-out and a gate's refusal


def test_a_decision_is_made_once_per_register_run(held):
    before = aliases(held["client"])
    again = held["cli"]("decide", "--register-run", held["second"]["register_run_id"], "--choice", "Approve",
                        "--by", "mallory")[1]  # fmt: skip
    assert again["reused"] is True and {k: again[k] for k in held["rejected"]} == held["rejected"]
    assert aliases(held["client"]) == before


def test_no_answer_in_time_and_an_approval_the_gate_refused_move_nothing(held):
    timed_out, strict, overruled = held["timed_out"], held["strict"], held["overruled"]
    assert (timed_out["decision"], timed_out["by"], timed_out["promoted"]) == ("timed out", "", False)
    assert "nobody answered within 1.5 hours" in timed_out["reason"]
    assert strict["held"] is True and strict["gate_promote"] is False  # the gate applied: nothing moves
    assert overruled["promoted"] is False and "approved by carol, but the gate did not promote" in overruled["reason"]
    assert held["unmoved"] == {"champion": "1", "challenger": "2"}


def test_a_retried_approval_whose_move_was_made_counts_it_and_records_it_once(held):
    promoted = held["promoted"]
    assert (promoted["promoted"], promoted["from_version"], promoted["version"]) == (True, "1", "2")
    experiment = held["client"].get_experiment_by_name(HISTORY).experiment_id
    moves = held["client"].search_runs([experiment], "tags.`tagifai.step` = 'champion-move' and tags.to_version = '2'")
    assert [m.data.tags["by"] for m in moves] == ["approved by dave"]


def test_an_approval_of_a_version_no_longer_newer_than_the_champion_moves_nothing(held):
    stale = held["stale"]
    assert (stale["promoted"], stale["from_version"], stale["decision"]) == (False, "2", "approved")
    assert "approved by erin, but version 2 is the champion already: nothing moves" in stale["reason"]
    assert aliases(held["client"]) == {"champion": "2", "challenger": "2"}
    tags = held["client"].get_model_version(NAME, "2").tags  # the champion's tags say who made it champion
    assert (tags["approval"], tags["promoted"]) == ("approved by dave", "true")


def test_the_history_shows_every_decision_and_who_made_it(held):
    history = held["cli"].start("champion-history").communicate(timeout=300)[0]
    rows = [line.split() for line in history.strip().splitlines()[1:]]
    decided = [(row[2], row[3], row[4], row[5]) for row in rows if row[4] in ("approved", "rejected", "timed")]
    assert decided == [
        ("v2", "v2", "approved", "erin"),  # stale: recorded as such
        ("v1", "v2", "approved", "dave"),
        ("v1", "v2", "approved", "carol"),
        ("v1", "v2", "timed", "out"),  # by nobody
        ("v1", "v2", "rejected", "bob"),
        ("-", "v1", "approved", "alice"),
    ]
    assert "nobody" in history
    promotions = [" ".join(row[2:8]) for row in rows if row[4] == "promote"]
    assert promotions == ["v1 v2 promote approved by dave", "- v1 promote approved by alice"]


@pytest.mark.parametrize(
    ("register_run", "choice", "message"),
    [
        ("0" * 32, "Approve", "no MLflow run"),  # no such run
        # another step's run
        ("evaluate", "Approve", "is a run of step 'evaluate' (FINISHED), not a held register run"),
        ("register", "Maybe", "--choice must be one of Approve, Reject, not 'Maybe'"),  # not an answer
    ],
)
def test_deciding_what_is_not_a_held_register_run_exits_3(held, register_run, choice, message):
    run = held["second"].get(f"{register_run}_run_id", register_run)
    code, _, stderr = held["cli"]("decide", "--register-run", run, "--choice", choice, "--by", "eve", check=False)
    assert code == 3 and message in stderr.strip().splitlines()[-1]
