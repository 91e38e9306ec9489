"""The retention plan: which runs go, which versions are archived, and what nothing takes away.

Runs are built as the steps tag them (`tagifai.pipeline.tracking.step_run`): each carries its upstream
runs' lineage tags forward and names the run it follows.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from tagifai.core import retention

DAY = retention.DAY_MS
NOW = 1_000 * DAY
_ids = itertools.count()
# The tag each step's run is named by, in the runs after it.
NAMED_AS = {
    "elt": "elt_run_id",
    "validate": "data_run_id",
    "optimize": "optimize_run_id",
    "train": "train_run_id",
    "evaluate": "evaluate_run_id",
    "register": "register_run_id",
}
CARRIED = set(NAMED_AS.values()) | {"data_sha256"}


def make_run(step, pipeline, upstream=None, days_ago=100, status="FINISHED", key=None, experiment="1", **tags):
    """A run of `step` in `pipeline`, following `upstream` (its lineage carried, as `step_run` does)."""
    run_id = f"{step}-{pipeline}-{next(_ids)}"
    lineage = {k: v for k, v in (upstream["tags"] if upstream else {}).items() if k in CARRIED}
    if upstream is not None:
        lineage[NAMED_AS[upstream["tags"][retention.STEP_TAG]]] = upstream["run_id"]
    start = NOW - days_ago * DAY
    return {
        "run_id": run_id,
        "experiment_id": experiment,
        "status": status,
        "start_time": start,
        "end_time": None if status == "RUNNING" else start + 60_000,
        "tags": {
            retention.STEP_TAG: step,
            retention.PIPELINE_TAG: pipeline,
            **({retention.KEY_TAG: key or f"{step}-key-{run_id}"} if status == "FINISHED" else {}),
            **lineage,
            **tags,
        },
        "deleted": False,
    }


def make_pipeline(
    pipeline, days_ago=100, handed_on=None, elt_key="data-v1", failed=None, status="FAILED", experiment="1"
):
    """The runs one pipeline made: elt, validate, optimize (with a trial), train, evaluate, register, each following
    the one before, but those it `handed_on` (another pipeline's runs: reused); up to `failed`, a run in `status`."""
    runs, own = dict(handed_on or {}), {}
    follows = {"elt": None, "validate": "elt", "optimize": "validate", "train": "validate", "evaluate": "train",
               "register": "evaluate"}  # fmt: skip
    for step, upstream in follows.items():
        if step in runs:
            continue
        extra = {}
        if step == "train":
            extra = {"optimize_run_id": runs["optimize"]["run_id"], "best_trial_run_id": runs["trial"]["run_id"]}
        run = make_run(
            step, pipeline, runs.get(upstream), days_ago=days_ago, status=status if step == failed else "FINISHED",
            key=elt_key if step == "elt" else None, experiment=experiment, **extra,
        )  # fmt: skip
        runs[step] = own[step] = run
        if step == "optimize":
            runs["trial"] = own["trial"] = make_run(
                "trial", pipeline, days_ago=days_ago, experiment=experiment, data_run_id=runs["validate"]["run_id"],
                **{retention.PARENT_TAG: run["run_id"]},
            )  # fmt: skip
        if step == failed:
            break
    return own


def version(number, runs, aliases=(), archived=False):
    """A registered version of the model `runs` (a pipeline's own runs) trained, tagged as `register` tags it."""
    tags = {
        "data_run_id": runs["train"]["tags"]["data_run_id"],
        "evaluate_run_id": runs["evaluate"]["run_id"],
        "register_run_id": runs["register"]["run_id"],
        retention.PIPELINE_TAG: runs["register"]["tags"][retention.PIPELINE_TAG],
    }
    if archived:
        tags[retention.ARCHIVED_TAG] = "2026-01-01T00:00:00+00:00"
    return {"version": str(number), "run_id": runs["train"]["run_id"], "aliases": list(aliases), "tags": tags}


def move(to_version, from_version=""):
    return {retention.STEP_TAG: retention.MOVE, "to_version": str(to_version), "from_version": str(from_version)}


def plan(pipelines, versions=(), history=(), run_days=30, keep_versions=1, extra_runs=(), **kwargs):
    runs = [run for p in pipelines for run in p.values()] + list(extra_runs)
    return retention.plan(runs, versions, history, now_ms=NOW, run_days=run_days, keep_versions=keep_versions,
                          **kwargs)  # fmt: skip


def ids(*pipelines, steps=None):
    return {run["run_id"] for p in pipelines for step, run in p.items() if steps is None or step in steps}


def test_an_old_failed_pipeline_goes_whole_even_when_its_data_is_the_newest():
    champion = make_pipeline("good", days_ago=200)
    failed = make_pipeline("bad", days_ago=100, elt_key="data-v2", failed="validate")
    gone = {failed["elt"]["run_id"]: "failed pipeline", failed["validate"]["run_id"]: "failed run"}
    out = plan([champion, failed], [version(1, champion, aliases=["champion"])], [move(1)])
    # Its data never passed validation: the latest data a next run would reuse is still the champion's.
    assert out["delete"] == gone
    assert ids(champion, steps={"elt"}) <= retention.reuse_targets([*champion.values(), *failed.values()])


def test_the_latest_data_is_kept_for_the_next_run_even_when_its_pipeline_failed_later_on():
    old = make_pipeline("old", days_ago=300, elt_key="data-v0")
    # The latest data passed validation, then tuning failed: the next run on it reuses elt and validate.
    failed = make_pipeline("failed", days_ago=100, elt_key="data-v2", failed="optimize")
    out = plan([old, failed], [version(1, old, aliases=["champion"])], [move(1)])
    assert set(out["delete"]) == ids(failed, steps={"optimize", "trial"})
    # Only its elt ran (the run was killed before validate): the latest validated data wins, but with none
    # validated at all, the newest extracted is the latest.
    killed = {"elt": make_run("elt", "killed", days_ago=100, key="data-v3")}
    out = plan([old, killed], [version(1, old, aliases=["champion"])], [move(1)])
    assert out["delete"] == {killed["elt"]["run_id"]: "failed pipeline"}
    assert plan([killed])["delete"] == {}


def test_nothing_newer_than_run_days_or_than_a_run_may_last_is_touched():
    failed = make_pipeline("bad", days_ago=10, failed="train")
    assert plan([failed], run_days=30)["delete"] == {}
    # run_days 0, but a pipeline may run 6 hours: one started 5 hours ago may still be going.
    going = make_pipeline("going", days_ago=5 / 24, failed="train", status="RUNNING")
    later = {"elt": make_run("elt", "later", days_ago=1 / 24, key="data-v2")}
    assert plan([going, later], run_days=0, grace_minutes=360)["delete"] == {}
    # Older than that, a run left RUNNING was killed: it failed.
    out = plan([going, later], run_days=0, grace_minutes=60)
    assert out["delete"][going["train"]["run_id"]] == "failed run"


def test_a_complete_pipeline_keeps_its_runs_but_not_its_failed_tries():
    good = make_pipeline("good")
    retry = make_run("train", "good", good["validate"], status="FAILED")  # the first try of a retried task
    out = plan([good], [version(1, good, aliases=["champion"])], [move(1)], extra_runs=[retry])
    assert out["delete"] == {retry["run_id"]: "failed run"}
    assert out["kept"] == len(good)


def test_never_promoted_versions_beyond_the_newest_are_archived_never_one_in_the_history_or_with_an_alias():
    pipelines = [make_pipeline(f"p{i}", elt_key=f"data-{i}") for i in range(1, 8)]
    versions = [
        version(1, pipelines[0]),  # champion once
        version(2, pipelines[1], archived=True),  # archived before
        version(3, pipelines[2], aliases=["pinned"]),  # someone's alias
        version(4, pipelines[3]),  # decided on (rejected): in the history
        version(5, pipelines[4]),
        version(6, pipelines[5], aliases=["champion"]),
        version(7, pipelines[6], aliases=["challenger"]),
    ]
    decision = {retention.STEP_TAG: retention.DECISION, "version": "4", "champion": "1",
                "register_run_id": pipelines[3]["register"]["run_id"]}  # fmt: skip
    out = plan(pipelines, versions, [move(1), move(6, 1), decision], keep_versions=1)
    # Never promoted: 2, 3, 5, 7; the newest of them (7) is kept, 3 has an alias, 2 is archived already.
    assert out["archive"] == ["5"]
    assert out["live"] == ["1", "3", "4", "6", "7"]
    # keep_versions 3: the newest three never promoted (7, 5, 3) stay.
    assert plan(pipelines, versions, [move(1), move(6, 1), decision], keep_versions=3)["archive"] == []


def test_the_pipeline_of_an_archived_version_goes_once_old_its_model_and_its_data():
    first = make_pipeline("first", days_ago=300)
    second = make_pipeline("second", days_ago=200, elt_key="data-v2")
    third = make_pipeline("third", days_ago=100, elt_key="data-v3")
    versions = [version(1, first, aliases=["champion"]), version(2, second), version(3, third, aliases=["challenger"])]
    out = plan([first, second, third], versions, [move(1)])
    assert out["archive"] == ["2"]
    assert out["delete"] == {run_id: "retired pipeline" for run_id in ids(second)}
    # The champion's chain, and the challenger's (the latest data too), stay whole.
    assert out["kept"] == len(first) + len(third)
    # Archived long ago: the same.
    versions[1] = version(2, second, archived=True)
    assert plan([first, second, third], versions, [move(1)])["delete"] == out["delete"]


def test_a_reused_pipeline_goes_but_not_the_runs_it_handed_on():
    first = make_pipeline("first", days_ago=300)
    # Same data, more trials: elt and validate handed on, tuning and all after it made anew.
    reused = make_pipeline("reused", days_ago=200, handed_on={s: first[s] for s in ("elt", "validate")})
    newer = make_pipeline("newer", days_ago=100, elt_key="data-v2")
    versions = [version(1, first, aliases=["champion"]), version(2, reused), version(3, newer, aliases=["challenger"])]
    out = plan([first, reused, newer], versions, [move(1)])
    assert out["archive"] == ["2"]
    assert set(out["delete"]) == ids(reused)
    assert set(out["delete"].values()) == {"reused pipeline"}


def test_every_run_a_kept_run_follows_is_kept_the_whole_chain():
    # An old pipeline failed at optimize; a newer one handed on its elt and validate and made the champion.
    failed = make_pipeline("failed", days_ago=200, failed="optimize")
    champion = make_pipeline("champion", days_ago=100, handed_on={s: failed[s] for s in ("elt", "validate")})
    newer = make_pipeline("newer", days_ago=50, elt_key="data-v2")
    versions = [version(1, champion, aliases=["champion"]), version(2, newer, aliases=["challenger"])]
    out = plan([failed, champion, newer], versions, [move(1)])
    # Its failed optimize run goes, with its trial; its elt and validate stay: the champion's data.
    assert out["delete"] == {failed["optimize"]["run_id"]: "failed run", failed["trial"]["run_id"]: "failed pipeline"}
    # The champion's train run names its tuning: optimize and the best trial; those stay too.
    assert {champion[s]["run_id"] for s in ("optimize", "trial")} <= set(ids(champion)) - set(out["delete"])


def test_a_kept_optimize_run_keeps_its_trials_a_deleted_one_takes_them_along():
    failed = make_pipeline("failed", days_ago=200, failed="train")
    newer = make_pipeline("newer", days_ago=100, elt_key="data-v2")
    out = plan([failed, newer], [version(1, newer, aliases=["champion"])], [move(1)])
    assert failed["trial"]["run_id"] in out["delete"] and failed["optimize"]["run_id"] in out["delete"]
    assert newer["trial"]["run_id"] not in out["delete"]


def test_what_the_next_run_on_the_latest_data_would_reuse_stays_when_its_version_is_archived():
    # Forced runs on the same data: the same elt key; only the newest chain is what a reuse would find.
    forced = [make_pipeline(f"forced{i}", days_ago=300 - 10 * i) for i in range(3)]
    champion = make_pipeline("champion", days_ago=400, elt_key="data-v0")
    versions = [version(1, champion, aliases=["champion"]),
                *(version(i + 2, p, archived=True) for i, p in enumerate(forced))]  # fmt: skip
    out = plan([champion, *forced], versions, [move(1)])
    assert set(out["delete"]) == ids(forced[0], forced[1])
    reuse = {forced[2][s]["run_id"] for s in ("elt", "validate", "optimize", "train", "evaluate", "register")}
    assert retention.reuse_targets([r for p in (champion, *forced) for r in p.values()]) == reuse
    # Per experiment: another experiment's latest data is its own.
    other = make_pipeline("other", days_ago=500, elt_key="data-v0", experiment="2")
    assert ids(other, steps={"elt"}) <= retention.reuse_targets([*other.values(), *forced[2].values()])


def test_a_decision_keeps_the_register_run_it_answered():
    held = make_pipeline("held", days_ago=200)
    newer = make_pipeline("newer", days_ago=100, elt_key="data-v2")
    decision = {retention.STEP_TAG: retention.DECISION, "version": "9", "champion": "",
                "register_run_id": held["register"]["run_id"]}  # fmt: skip
    versions = [version(2, held, archived=True), version(3, newer, aliases=["champion"])]
    out = plan([held, newer], versions, [move(3), decision])
    assert held["register"]["run_id"] not in out["delete"]
    # ... and what it follows: the held pipeline's chain up to it.
    assert not ids(held, steps={"elt", "validate", "train", "evaluate"}) & set(out["delete"])


def test_a_deleted_run_something_kept_points_at_is_restored():
    champion = make_pipeline("champion", days_ago=200)
    champion["validate"]["deleted"] = True  # someone deleted it in the UI
    champion["trial"]["deleted"] = True
    out = plan([champion], [version(1, champion, aliases=["champion"])], [move(1)])
    assert out["restore"] == sorted([champion["validate"]["run_id"], champion["trial"]["run_id"]])
    assert out["delete"] == {}
    # A deleted run nothing points at stays deleted.
    failed = make_pipeline("failed", days_ago=300, elt_key="data-v0", failed="validate")
    for run in failed.values():
        run["deleted"] = True
    assert plan([champion, failed], [version(1, champion, aliases=["champion"])], [move(1)])["restore"] == \
        out["restore"]  # fmt: skip


def test_runs_of_other_steps_or_without_a_pipeline_are_never_deleted():
    others = [
        make_run("maintain", "weekly", days_ago=500, status="FAILED"),
        make_run("predict-batch", "daily", days_ago=500, status="FAILED"),
        {**make_run("elt", "x", days_ago=500, status="FAILED"), "tags": {retention.STEP_TAG: "elt"}},
    ]
    assert plan([], extra_runs=others)["delete"] == {}


def test_the_counts_say_what_the_plan_holds():
    failed = make_pipeline("failed", days_ago=300, elt_key="data-v0", failed="validate")
    good = make_pipeline("good", days_ago=200)
    retry = make_run("train", "good", good["validate"], status="KILLED")
    out = plan([failed, good], [version(1, good, aliases=["champion"])], [move(1)], extra_runs=[retry])
    assert out["counts"] == {
        "runs_to_delete": 3,
        "runs_to_delete_failed_run": 2,
        "runs_to_delete_failed_pipeline": 1,
        "runs_to_delete_reused_pipeline": 0,
        "runs_to_delete_retired_pipeline": 0,
        "runs_to_restore": 0,
        "versions_to_archive": 0,
        "versions_live": 1,
    }
    assert out["kept"] == len(good)


def test_the_plan_changes_nothing_it_is_given_so_a_dry_run_shows_what_a_run_does():
    first = make_pipeline("first", days_ago=300)
    second = make_pipeline("second", days_ago=200, elt_key="data-v2", failed="evaluate")
    runs = [*first.values(), *second.values()]
    versions, history = [version(1, first, aliases=["champion"])], [move(1)]
    given = copy.deepcopy((runs, versions, history))
    once = retention.plan(runs, versions, history, now_ms=NOW, run_days=30, keep_versions=1)
    assert (runs, versions, history) == given
    assert retention.plan(runs, versions, history, now_ms=NOW, run_days=30, keep_versions=1) == once


def test_an_archived_version_is_removed_once_its_run_is_gone_for_good_never_a_live_one():
    first, second = make_pipeline("first"), make_pipeline("second", elt_key="data-v2")
    versions = [version(1, first, aliases=["champion"]), version(2, second, archived=True)]
    purged = {first["train"]["run_id"], second["train"]["run_id"]}
    assert retention.gone_versions(versions, {"1"}, purged) == ["2"]
    assert retention.gone_versions(versions, {"1", "2"}, purged) == []


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("STEP_TAG", "tagifai.pipeline.tracking.STEP_TAG"),
        ("KEY_TAG", "tagifai.pipeline.tracking.KEY_TAG"),
        ("PIPELINE_TAG", "tagifai.pipeline.tracking.PIPELINE_TAG"),
        ("MOVE", "tagifai.pipeline.registry.MOVE"),
        ("DECISION", "tagifai.pipeline.registry.DECISION"),
    ],
)
def test_the_tags_are_those_the_steps_write(ours, theirs):
    import importlib

    module, _, name = theirs.rpartition(".")
    assert getattr(retention, ours) == getattr(importlib.import_module(module), name)


def test_the_runs_each_step_follows_are_those_the_steps_name():
    from tagifai.pipeline import tracking

    # Each step's upstream is named by the tag of the step before it (`step_run`'s lineage).
    before = {"validate": "elt", "optimize": "validate", "train": "validate", "evaluate": "train",
              "register": "evaluate", "decide": "register"}  # fmt: skip
    assert retention.UPSTREAM == {step: tracking.UPSTREAM_TAGS[up] for step, up in before.items()}
