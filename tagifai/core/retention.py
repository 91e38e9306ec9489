"""Retention: which old runs to delete, which versions to archive, and what nothing may take away.

Pure: plain dicts in (the training experiments' runs, the registered versions, the champion history), a
plan out (`plan`). The shell (`tagifai.pipeline.retention`, `tagifai maintain`) reads MLflow, applies the
plan, and has MLflow's own `mlflow gc` remove for good what was deleted long enough ago.

**Pipelines.** The runs of one pipeline run share the tag `pipeline_run_id` (the Airflow run id; `manual__…`
for `tagifai pipeline`). A pipeline is

- *failed* when it has no finished `register` run: a step failed or was killed, and nothing was registered;
- *reused* when its steps handed on earlier runs: a step found its result made already (the same reuse key,
  `tagifai.core.reuse`: elt's plan or the step's own lookup) and handed on a run of another pipeline, so the
  runs this pipeline made itself hang on a chain that is not its own: one of them names, as the run it
  follows (`elt_run_id` of a validate run, `data_run_id` of optimize and train, ...), a run of another
  pipeline. (A pipeline whose every step was reused made no run at all: there is nothing of it to delete.);
- *retired* when it registered versions and every one of them is archived.

**Versions.** A version that never was champion (the history records every move of `champion` and every
person's decision on a promotion: a version it names is "in the history") is archived when it is not among
the newest `keep_versions` such versions and holds no alias (`champion`, `challenger`, any other). Archived
means tagged `tagifai.archived`: it stays registered and loads as before, but holds its runs no longer. Once
they are deleted (restorable for a while) and then removed for good, the version goes too (`gone_versions`):
it could never load again.

**Runs.** A run of a training step is deleted when its pipeline's newest run is older than `run_days` (and
than `grace_minutes`, the longest a pipeline may run: nothing still going is touched) and the run failed
itself (FAILED, KILLED, or left RUNNING by a killed process) or its pipeline is failed, reused or retired.
Never one that something kept points at, directly or through the runs it follows:

- a run that is not deleted (its chain stays whole);
- a live version (not archived, or holding an alias, or in the history): its train run, the runs its tags name;
- the champion history: the register run a decision answered;
- a reuse key: the runs a step on the latest data would hand on (`reuse_targets`).

The runs a run follows are those it names in a tag ending in `_run_id` (`elt_run_id`, `data_run_id`,
`optimize_run_id`, `best_trial_run_id`, ...) and its parent run (a trial's optimize run); a kept run keeps
its child runs too. A deleted run that something kept points at (a person deleted it in the UI) is restored,
before anything is removed for good.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

# As `tagifai.pipeline.tracking` and `tagifai.pipeline.registry` tag runs (tests/core/test_retention.py checks).
STEP_TAG = "tagifai.step"
KEY_TAG = "tagifai.key"
PIPELINE_TAG = "pipeline_run_id"
PARENT_TAG = "mlflow.parentRunId"
MOVE, DECISION = "champion-move", "champion-decision"
# On an archived version: when it was archived (UTC, ISO 8601).
ARCHIVED_TAG = "tagifai.archived"
# The runs of the training steps: the only runs retention deletes (a trial is a child run of optimize).
STEPS = ("elt", "validate", "optimize", "train", "evaluate", "register", "decide", "trial")
# The run each step follows, by the tag that names it: the chain its reuse key hands on.
UPSTREAM = {
    "validate": "elt_run_id",
    "optimize": "data_run_id",
    "train": "data_run_id",
    "evaluate": "train_run_id",
    "register": "evaluate_run_id",
    "decide": "register_run_id",
}
FINISHED = "FINISHED"
# A run in one of these, in a pipeline older than a run may last, failed (RUNNING: its process was killed).
FAILED_STATUSES = ("FAILED", "KILLED", "RUNNING", "SCHEDULED")
DAY_MS, MINUTE_MS = 86_400_000, 60_000
# Why a run is deleted, in the order a run's reason is chosen.
REASONS = ("failed run", "failed pipeline", "reused pipeline", "retired pipeline")

Run = Mapping[str, Any]


def referenced(tags: Mapping[str, str]) -> set[str]:
    """The run ids `tags` names: every tag ending in `_run_id` but the pipeline's, and the parent run."""
    named = {value for key, value in tags.items() if key.endswith("_run_id") and key != PIPELINE_TAG and value}
    return named | ({tags[PARENT_TAG]} if tags.get(PARENT_TAG) else set())


def history_names(history: Iterable[Mapping[str, str]]) -> tuple[set[str], set[str]]:
    """What the champion history names: versions, and runs.

    Versions: a move's from and to, a decision's version and the champion then. Runs: a decision's register run.
    """
    versions: set[str] = set()
    runs: set[str] = set()
    for record in history:
        if record.get(STEP_TAG) == MOVE:
            versions |= {record.get("from_version", ""), record.get("to_version", "")}
        elif record.get(STEP_TAG) == DECISION:
            versions |= {record.get("version", ""), record.get("champion", "")}
            runs |= {record["register_run_id"]} if record.get("register_run_id") else set()
    return versions - {""}, runs


def versions_plan(
    versions: Iterable[Mapping[str, Any]], in_history: set[str], keep_versions: int
) -> tuple[list[str], set[str]]:
    """The versions to archive now, and the live ones (those that hold their runs).

    Archived now: never in the history, beyond the newest `keep_versions` of those, holding no alias, not
    archived already. Live: holding an alias, or in the history, or neither archived before nor now.
    """
    versions = list(versions)
    never = sorted((v for v in versions if str(v["version"]) not in in_history), key=lambda v: -int(v["version"]))
    archive = {
        str(v["version"]) for v in never[keep_versions:] if not v.get("aliases") and ARCHIVED_TAG not in v["tags"]
    }
    live = {
        str(v["version"])
        for v in versions
        if str(v["version"]) in in_history
        or v.get("aliases")
        or (ARCHIVED_TAG not in v["tags"] and str(v["version"]) not in archive)
    }
    return sorted(archive, key=int), live


def reuse_targets(runs: Iterable[Run]) -> set[str]:
    """The runs a step on the latest data would hand on: what the reuse keys point at.

    The latest data is each experiment's newest finished elt run that passed validation (a finished validate
    run follows it; else its newest finished elt run): a one-off trigger on data that failed does not count.
    Then, step by step, a step's newest finished run with its key counts when the run it follows counts. Any
    other key names a run no step can reach again: an elt run that a newer one of the same key superseded,
    data that is not the latest.
    """
    runs = [r for r in runs if r["status"] == FINISHED and not r.get("deleted") and r["tags"].get(KEY_TAG)]
    validated = {r["tags"].get(UPSTREAM["validate"]) for r in runs if r["tags"].get(STEP_TAG) == "validate"}
    newest: dict[tuple[str, str, str], Run] = {}
    latest: dict[tuple[str, bool], Run] = {}
    for run in sorted(runs, key=lambda r: r["start_time"]):
        tags = run["tags"]
        newest[(run["experiment_id"], tags.get(STEP_TAG, ""), tags[KEY_TAG])] = run
        if tags.get(STEP_TAG) == "elt":
            latest[(run["experiment_id"], run["run_id"] in validated)] = run
    experiments = {experiment for experiment, _ in latest}
    reached = {(latest.get((e, True)) or latest[(e, False)])["run_id"] for e in experiments}
    for step, tag in UPSTREAM.items():  # in pipeline order: each step's upstream is settled before it
        reached |= {r["run_id"] for (_, s, _), r in newest.items() if s == step and r["tags"].get(tag) in reached}
    return reached


def closure(roots: set[str], runs: Mapping[str, Run]) -> set[str]:
    """`roots`, every run they follow (directly or not), and the child runs of all of these."""
    children: dict[str, set[str]] = defaultdict(set)
    for run_id, run in runs.items():
        if parent := run["tags"].get(PARENT_TAG):
            children[parent].add(run_id)
    kept, todo = set(roots), list(roots)
    while todo:
        run = runs.get(todo.pop())
        if run is None:
            continue
        for other in (referenced(run["tags"]) | children[run["run_id"]]) - kept:
            kept.add(other)
            todo.append(other)
    return kept


def pipeline_state(members: list[Run], runs: Mapping[str, Run], versions: set[str], live: set[str]) -> str | None:
    """Why the pipeline of `members` is done with (failed, reused, retired pipeline), or None."""
    pipeline = members[0]["tags"][PIPELINE_TAG]
    if not any(r["tags"].get(STEP_TAG) == "register" and r["status"] == FINISHED for r in members):
        return "failed pipeline"
    followed = (runs.get(r["tags"].get(UPSTREAM.get(r["tags"].get(STEP_TAG), ""), "")) for r in members)
    if any(other is not None and other["tags"].get(PIPELINE_TAG) != pipeline for other in followed):
        return "reused pipeline"
    if versions and not versions & live:
        return "retired pipeline"
    return None


def plan(
    runs: Iterable[Run],
    versions: Iterable[Mapping[str, Any]],
    history: Iterable[Mapping[str, str]],
    *,
    now_ms: int,
    run_days: float,
    keep_versions: int,
    grace_minutes: float = 0.0,
) -> dict[str, Any]:
    """What retention does now: the versions to archive, the runs to delete, the deleted runs to restore.

    Args:
        runs: every run of the training experiments, deleted ones too: `run_id`, `experiment_id`, `status`
            (FINISHED, FAILED, KILLED, RUNNING, SCHEDULED), `start_time` and `end_time` (ms, end None while
            running), `tags`, and `deleted` (true: in MLflow's deleted lifecycle stage).
        versions: every version of the registered model: `version`, `run_id` (the run that logged its
            model), `aliases` (list) and `tags`.
        history: the tags of each champion history record (moves and decisions) of the model.
        now_ms: the time now (ms since the epoch).
        run_days: a pipeline newer than this many days is not touched.
        keep_versions: how many of the newest never-promoted versions stay live.
        grace_minutes: the longest a pipeline may run (`[limits] run_minutes`): none newer is touched.

    Returns:
        `archive` (versions), `delete` (run id -> why: one of `REASONS`), `restore` (run ids), `live`
        (versions), `kept` (how many active runs stay) and `counts` (each list's length, by reason too).
    """
    index = {run["run_id"]: run for run in runs}
    versions = list(versions)
    in_history, history_runs = history_names(history)
    archive, live = versions_plan(versions, in_history, keep_versions)
    # Which pipeline each version came from: its train run's, else what the version says.
    of_pipeline: dict[str, set[str]] = defaultdict(set)
    for version in versions:
        source = index.get(version["run_id"], {}).get("tags", {})
        pipeline = source.get(PIPELINE_TAG) or version["tags"].get(PIPELINE_TAG)
        if pipeline:
            of_pipeline[pipeline].add(str(version["version"]))
    members: dict[str, list[Run]] = defaultdict(list)
    for run in index.values():
        if not run.get("deleted") and run["tags"].get(STEP_TAG) in STEPS and run["tags"].get(PIPELINE_TAG):
            members[run["tags"][PIPELINE_TAG]].append(run)
    cutoff = now_ms - max(run_days * DAY_MS, grace_minutes * MINUTE_MS)
    candidates: dict[str, str] = {}
    for pipeline, pipeline_runs in members.items():
        if max(max(r["start_time"], r.get("end_time") or 0) for r in pipeline_runs) >= cutoff:
            continue
        state = pipeline_state(pipeline_runs, index, of_pipeline.get(pipeline, set()), live)
        for run in pipeline_runs:
            if reason := ("failed run" if run["status"] in FAILED_STATUSES else state):
                candidates[run["run_id"]] = reason
    live_versions = [v for v in versions if str(v["version"]) in live]
    roots = {run_id for run_id, run in index.items() if not run.get("deleted") and run_id not in candidates}
    roots |= {v["run_id"] for v in live_versions if v.get("run_id")}
    roots |= set().union(*(referenced(v["tags"]) for v in live_versions)) | history_runs | reuse_targets(index.values())
    kept = closure(roots, index)
    delete = {run_id: reason for run_id, reason in sorted(candidates.items()) if run_id not in kept}
    restore = sorted(run_id for run_id in kept if index.get(run_id, {}).get("deleted"))
    counts = {
        "runs_to_delete": len(delete),
        **{f"runs_to_delete_{reason.replace(' ', '_')}": list(delete.values()).count(reason) for reason in REASONS},
        "runs_to_restore": len(restore),
        "versions_to_archive": len(archive),
        "versions_live": len(live),
    }
    active = sum(1 for run in index.values() if not run.get("deleted"))
    return {"archive": archive, "delete": delete, "restore": restore, "live": sorted(live, key=int),
            "kept": active - len(delete), "counts": counts}  # fmt: skip


def gone_versions(versions: Iterable[Mapping[str, Any]], live: set[str], purged_runs: set[str]) -> list[str]:
    """The archived versions whose model's run is removed for good: they can never load again.

    Never a live one (`plan`'s `live`): a live version's run is restored before anything is removed.
    """
    return sorted(
        (str(v["version"]) for v in versions if str(v["version"]) not in live and v.get("run_id") in purged_runs),
        key=int,
    )
