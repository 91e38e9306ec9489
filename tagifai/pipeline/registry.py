"""Register model versions, and move the `champion` alias only through the promotion gate.

The gate is the deployer's (`[register]` in config/): a run may make it stricter, never looser. It
judges on the deployer's holdout (`tagifai.pipeline.holdout`), which no trigger can change, besides
the run's own test split. It remembers: every move of `champion` is recorded (`record_move`) as a
run of the experiment `[register] history_experiment`, a promotion with its holdout f1, and a
challenger is held against the best holdout f1 any champion ever had as well as the current
champion's, so that small regressions cannot add up. A move made outside tagifai (the MLflow UI, the
API) is recorded when tagifai first sees it (`sync_history`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.core import evaluate as evaluation
from tagifai.pipeline import holdout as holdouts
from tagifai.pipeline import rebuild, tracking

log = logging.getLogger("tagifai")

CHALLENGER = "challenger"
DESCRIPTION = "Tags ML project descriptions (tagifai)."
# The `tagifai.step` of a history record: a move of `champion`, and a person's decision on a promotion.
MOVE = "champion-move"
DECISION = "champion-decision"
# A version's, and a history record's, f1 on the holdout (with the holdout's sha256 beside it).
HOLDOUT_F1 = "holdout_f1"
HOLDOUT_SCORES = ("holdout_f1", "champion_holdout_f1", "best_holdout_f1")
# Who moved the alias when tagifai did not: a person in the MLflow UI, or a script.
OUTSIDE = "outside tagifai (MLflow UI or API)"
# A version's tag saying who decides its promotion: "auto" (the gate), PENDING (a person, not yet),
# or the person's decision ("approved", "rejected", "timed out").
APPROVAL, PENDING = "approval", "pending"


def gate(
    f1: float,
    champion_f1: float | None,
    min_f1: float,
    max_regression: float,
    holdout_f1: float | None = None,
    champion_holdout_f1: float | None = None,
    best_holdout_f1: float | None = None,
) -> dict[str, Any]:
    """Decide whether a challenger with test `f1` (and `holdout_f1` on the holdout) replaces the champion.

    Args:
        f1: the challenger's weighted f1 on its own test split.
        champion_f1: the champion's f1 on that test split, or None (no champion, or it cannot be loaded).
        min_f1: the lowest f1 a champion may have, on its test split and on the holdout.
        max_regression: how much worse than the champion, and than the best champion ever on the holdout, it may be.
        holdout_f1: the challenger's f1 on the deployer's holdout.
        champion_holdout_f1: the champion's f1 on the holdout (re-scored, or recorded when it cannot be loaded).
        best_holdout_f1: the best f1 on this holdout any champion ever had (the history), if any.

    Returns:
        `promote` (bool) and a human-readable `reason`.
    """
    margin, drop = f"by more than {max_regression:.4f}", max_regression
    champion, on_holdout, best = (f"{v or 0:.4f}" for v in (champion_f1, champion_holdout_f1, best_holdout_f1))
    # Each score, the bar it is held to, how far below it may be, and what falling short means.
    refusals = (
        ("test_f1", f1, min_f1, 0.0, f"is below the minimum {min_f1:.4f}"),
        ("holdout_f1", holdout_f1, min_f1, 0.0, f"is below the minimum {min_f1:.4f}"),
        ("test_f1", f1, champion_f1, drop, f"is worse than the champion's {champion} on the same test data {margin}"),
        ("holdout_f1", holdout_f1, champion_holdout_f1, drop, f"is worse than the champion's {on_holdout} {margin}"),
        ("holdout_f1", holdout_f1, best_holdout_f1, drop,
         f"is worse than the best champion's ever, {best}, {margin}: regressions do not add up"),
    )  # fmt: skip
    for name, score, bar, allowed, why in refusals:
        if score is not None and bar is not None and score < bar - allowed:
            return {"promote": False, "reason": f"{name} {score:.4f} {why}"}
    scored = f"test_f1 {f1:.4f}" + ("" if holdout_f1 is None else f", holdout_f1 {holdout_f1:.4f}")
    known = [
        f"the {name}'s {value:.4f}"
        for name, value in (("champion", champion_f1), ("champion on the holdout", champion_holdout_f1),
                            ("best champion ever on the holdout", best_holdout_f1))
        if value is not None
    ]  # fmt: skip
    compared = "there is no champion yet to compare with"
    if known:
        compared = f"within {max_regression:.4f} of {', '.join(known)}"
    return {"promote": True, "reason": f"{scored} >= {min_f1:.4f} and {compared}"}


def moves_back(version: str, champion: ModelVersion | None) -> str | None:
    """Why promoting `version` would not move the champion forward (an older or the same version), else None."""
    if champion is None or int(version) > int(champion.version):
        return None
    if int(version) == int(champion.version):
        return f"version {version} is the champion already"
    return (
        f"version {version} is older than the champion v{champion.version}: "
        "a retried or cleared register never moves champion back"
    )


def model_name(settings: Settings) -> str:
    """The registered model: `TAGIFAI_MODEL_NAME`, else `[register] model_name`."""
    return os.environ.get(names.MODEL_NAME_ENV) or settings.register.model_name


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """Return the version of `name` that holds `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_exists(client: MlflowClient, name: str, version: str) -> bool:
    """Whether version `version` of `name` is (still) registered."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        return False
    return True


def register(client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name` with `tags`, or retag the one a retried step registered."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=DESCRIPTION)
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        versions = []
    version = max(versions, key=lambda v: int(v.version), default=None)
    if version is None:
        version = mlflow.register_model(model_uri, name, tags=tags)
    else:
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    return version


def f1_of(model: Any, frame: Any) -> float:
    """The weighted f1 of a loaded model on a labelled frame."""
    return evaluation.overall_metrics(frame["tag"].to_numpy(), models.predict_tags(model, frame))["f1"]


def one_line(exc: BaseException) -> str:
    """An exception as one short line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def rescore_or_reason(model_name: str, version: str, data_run_id: str) -> tuple[float | None, str | None]:
    """Weighted test f1 of `version` on the test split of `data_run_id` (a comparison on the same data).

    Or None and one line saying why the version can never be loaded (`models.UnloadableModelError`:
    its files are gone, it is not a model this code loads). Anything else (the network, MLflow
    answering 5xx, a timeout) is raised: it may pass, and is no answer.
    """
    test_df = tracking.load_split(data_run_id, "test")
    try:
        return f1_of(models.load(f"models:/{model_name}/{version}"), test_df), None
    except models.UnloadableModelError as exc:
        log.warning("version %s of %s cannot be loaded: %s", version, model_name, one_line(exc))
        return None, one_line(exc)
    except TagifaiError:
        raise
    except Exception as exc:  # a timeout, MLflow's 5xx, the network: no answer yet
        raise TagifaiError(f"cannot score version {version} of {model_name} now: {one_line(exc)}") from exc


def version_tags(metrics: dict[str, float], trained: Run, registering: Run, evaluate_run_id: str) -> dict[str, str]:
    """What a model version records: its test scores and where it came from (its report: the register run's)."""
    return {
        **{k: f"{metrics[k]:.4f}" for k in ("test_f1", "test_precision", "test_recall")},
        **{k: trained.data.tags.get(k, "") for k in ("data_sha256", "code_version", "image", "data_run_id")},
        "pipeline_run_id": registering.data.tags[tracking.PIPELINE_TAG],
        "evaluate_run_id": evaluate_run_id,
        "register_run_id": registering.info.run_id,
        **rebuild.version_tags(trained.data.tags),  # what rebuilding it needs (`tagifai reproduce`)
    }


def apply(client: MlflowClient, name: str, version: str, decision: dict[str, Any], held: bool = False) -> None:
    """Make `version` the challenger, and the champion if the gate said so; record the gate's reason on it.

    A stale decision (a version not newer than the champion: a retried or cleared register) moves nothing.
    `held`: a person decides (`[register] approval = "human"`): the champion does not move here, the
    version's `approval` tag says it waits (`tagifai decide` applies the answer).
    """
    if decision["stale"]:
        return
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision["promote"] and not held:
        client.set_registered_model_alias(name, names.CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "promotion", decision["reason"])
    client.set_model_version_tag(name, version, "promoted", str(decision["promote"] and not held).lower())
    client.set_model_version_tag(name, version, APPROVAL, PENDING if held else "auto")
    # What stands in for a re-score on this holdout once the version can no longer be loaded.
    client.set_model_version_tag(name, version, HOLDOUT_F1, repr(decision["holdout_f1"]))
    client.set_model_version_tag(name, version, holdouts.SHA_TAG, decision["holdout_sha256"])


def log_decision(
    decision: dict[str, Any], version: str, previous: str | None, gate_settings: tuple[float, float]
) -> None:
    """What the gate decided and compared against, on the active (register) run."""
    mlflow.log_params({"min_f1": gate_settings[0], "max_regression": gate_settings[1]})
    scores = {"champion_test_f1": decision["champion_f1"], **{k: decision[k] for k in HOLDOUT_SCORES}}
    mlflow.log_metrics({k: v for k, v in scores.items() if v is not None})
    mlflow.set_tags(
        {
            "promoted": str(decision["promote"]).lower(),
            "promotion": decision["reason"],
            "model_version": version,
            "previous_champion": str(previous or ""),
            "champion_unloadable": decision["champion_unloadable"] or "",
            "champion_holdout_f1_recorded": str(decision["champion_holdout_recorded"]).lower(),
            holdouts.SHA_TAG: decision["holdout_sha256"] or "",
        }
    )


# ---- the gate's memory: every move of `champion` ------------------------------------------------


def record_move(
    settings: Settings,
    name: str,
    from_version: str | None,
    to_version: str,
    action: str,
    by: str,
    reason: str,
    holdout: tuple[float, str] | None = None,
) -> str:
    """Record one move of `champion` (promote, rollback, manual) as a finished run; return its id.

    `holdout`: the new champion's f1 on the holdout and the holdout's sha256 (a promotion's), kept
    for `best_holdout_f1`.
    """
    client = MlflowClient()
    tags = {
        tracking.STEP_TAG: MOVE,
        "model_name": name,
        "from_version": str(from_version or ""),
        "to_version": str(to_version),
        "action": action,
        "by": by,
        "reason": reason[:5000],
        **({holdouts.SHA_TAG: holdout[1]} if holdout else {}),
    }
    run_name = f"{name} champion v{from_version or '-'} → v{to_version}"
    run = client.create_run(tracking.experiment_id(settings.register.history_experiment), run_name=run_name, tags=tags)
    if holdout:
        client.log_metric(run.info.run_id, HOLDOUT_F1, holdout[0])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def recorded(settings: Settings, name: str, step: str, limit: int) -> list[Run]:
    """The history experiment's records of kind `step` (`MOVE`, `DECISION`) for `name`, newest first."""
    return MlflowClient().search_runs(
        [tracking.experiment_id(settings.register.history_experiment)],
        filter_string=f"tags.`{tracking.STEP_TAG}` = '{step}' and tags.model_name = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )


def history(settings: Settings, name: str, limit: int = 1000) -> list[dict[str, str]]:
    """The recorded moves of `name`'s champion, newest first: from, to, when (ms), action, by, reason."""
    runs = recorded(settings, name, MOVE, limit)
    keys = ("from_version", "to_version", "action", "by", "reason")
    return [
        {"when": run.info.start_time, "run_id": run.info.run_id, **{k: run.data.tags.get(k, "") for k in keys}}
        for run in runs
    ]


def sync_history(settings: Settings, name: str) -> list[dict[str, str]]:
    """Record a move made outside tagifai, if the champion is not where the last record left it; return the history."""
    moves = history(settings, name)
    champion = version_by_alias(MlflowClient(), name, names.CHAMPION_ALIAS)
    last = moves[0]["to_version"] if moves else None
    if champion is not None and str(champion.version) != last:
        reason = f"champion found at v{champion.version}; the last recorded move was to v{last or '-'}"
        record_move(settings, name, last, str(champion.version), "manual", OUTSIDE, reason)
        moves = history(settings, name)
    return moves


def record_decision(
    settings: Settings,
    name: str,
    version: str,
    champion: str | None,
    decision: dict[str, Any],
    register_run_id: str,
) -> str:
    """Record a person's decision on the promotion a held register run asked for; return its run id.

    Kept apart from the moves (`history`, `best_holdout_f1` never see it). Once per register run: a
    retried `decide` finds the record it made and records nothing twice.

    Args:
        settings: the settings (the history experiment).
        name: the registered model.
        version: the version decided on.
        champion: the champion at the time, if any.
        decision: `decision` ("approved", "rejected", "timed out"), `by` (who; "" nobody), `reason`, `promoted`.
        register_run_id: the held register run.
    """
    client = MlflowClient()
    experiment = tracking.experiment_id(settings.register.history_experiment)
    found = client.search_runs(
        [experiment],
        filter_string=f"tags.`{tracking.STEP_TAG}` = '{DECISION}' and tags.register_run_id = '{register_run_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {
        tracking.STEP_TAG: DECISION,
        "model_name": name,
        "version": str(version),
        "champion": str(champion or ""),
        "decision": decision["decision"],
        "by": decision["by"],
        "reason": decision["reason"][:5000],
        "promoted": str(decision["promoted"]).lower(),
        "register_run_id": register_run_id,
    }
    run = client.create_run(experiment, run_name=f"{name} v{version} {decision['decision']}", tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def decisions(settings: Settings, name: str, limit: int = 1000) -> list[dict[str, str]]:
    """People's decisions on `name`'s promotions, newest first, as `history` rows (from: the champion then)."""
    runs = recorded(settings, name, DECISION, limit)
    return [
        {
            "when": run.info.start_time,
            "run_id": run.info.run_id,
            "from_version": run.data.tags.get("champion", ""),
            "to_version": run.data.tags.get("version", ""),
            "action": run.data.tags.get("decision", ""),
            "by": run.data.tags.get("by") or "nobody",
            "reason": run.data.tags.get("reason", ""),
        }
        for run in runs
    ]


def best_holdout_f1(settings: Settings, name: str, holdout_sha256: str) -> float | None:
    """The best f1 any champion of `name` ever had on the holdout `holdout_sha256`: all the history, no window."""
    runs = MlflowClient().search_runs(
        [tracking.experiment_id(settings.register.history_experiment)],
        filter_string=f"tags.`{tracking.STEP_TAG}` = '{MOVE}' and tags.model_name = '{name}' "
        f"and tags.{holdouts.SHA_TAG} = '{holdout_sha256}'",
        order_by=[f"metrics.{HOLDOUT_F1} DESC"],
        max_results=1,
    )
    return runs[0].data.metrics.get(HOLDOUT_F1) if runs else None


def recorded_holdout_f1(version: ModelVersion, holdout_sha256: str) -> float | None:
    """The holdout f1 `register` recorded on `version` for the holdout `holdout_sha256`, if any."""
    if version.tags.get(holdouts.SHA_TAG) != holdout_sha256 or not version.tags.get(HOLDOUT_F1):
        return None
    return float(version.tags[HOLDOUT_F1])


def judge(
    settings: Settings,
    name: str,
    version: str,
    champion: ModelVersion | None,
    data_run: tuple[str, str],
    f1: float,
    gate_settings: tuple[float, float],
) -> dict[str, Any]:
    """The gate's decision on `version` (test `f1`), with what it compared against.

    The challenger and the champion are scored on the holdout of `data_run` (the validate run's id,
    and the pipeline's experiment it must be in), the champion also on its test split, and the best
    holdout f1 of all champions is read from the history. It fails closed: only a champion that can
    never be loaded (`models.UnloadableModelError`) is not re-scored, and then its recorded holdout
    f1 stands in (none recorded for this holdout: it is not compared, and the reason says so). Any
    other error while scoring is raised as a `TagifaiError` (exit 1: try again), before any alias moves.

    Returns:
        `promote`, `reason`, `champion_f1`, `holdout_f1`, `champion_holdout_f1`, `best_holdout_f1`,
        `holdout_sha256`, `champion_unloadable` (why, or None), `champion_holdout_recorded`, `stale`:
        the version is not newer than the champion, so neither alias may move to it, and `models`: the
        models it loaded (`challenger`, `champion`), for the report (none when stale).
    """
    min_f1, max_regression = gate_settings
    out: dict[str, Any] = dict.fromkeys(("champion_f1", "holdout_f1", "champion_holdout_f1", "best_holdout_f1"))
    out.update(holdout_sha256=None, champion_unloadable=None, champion_holdout_recorded=False, stale=False)
    if back := moves_back(version, champion):
        return {**out, "promote": False, "reason": back, "stale": True}
    data_run_id, experiment = data_run
    out["holdout_sha256"] = tracking.get_run(data_run_id, "validate", experiment).data.tags.get(holdouts.SHA_TAG)
    if not out["holdout_sha256"]:
        raise BadInputError(f"validate run {data_run_id} has no holdout (it is older than the gate's): run it anew")
    holdout = tracking.load_split(data_run_id, holdouts.SPLIT)
    loaded = out["models"] = {}
    try:
        loaded["challenger"] = models.load(f"models:/{name}/{version}")
        out["holdout_f1"] = f1_of(loaded["challenger"], holdout)
        if champion is not None:
            try:
                model = models.load(f"models:/{name}/{champion.version}")
            except models.UnloadableModelError as exc:
                out["champion_unloadable"] = one_line(exc)
                out["champion_holdout_f1"] = recorded_holdout_f1(champion, out["holdout_sha256"])
                out["champion_holdout_recorded"] = out["champion_holdout_f1"] is not None
                log.warning("register: the champion v%s cannot be loaded, not re-scored: %s", champion.version, exc)
            else:
                loaded["champion"] = model
                out["champion_f1"] = f1_of(model, tracking.load_split(data_run_id, "test"))
                out["champion_holdout_f1"] = f1_of(model, holdout)
        out["best_holdout_f1"] = best_holdout_f1(settings, name, out["holdout_sha256"])
    except TagifaiError:
        raise
    except Exception as exc:  # a timeout, MLflow's 5xx, the network: no answer, so no decision
        raise TagifaiError(f"register: cannot score the models now (no decision): {one_line(exc)}") from exc
    decision = gate(f1, out["champion_f1"], min_f1, max_regression, *(out[k] for k in HOLDOUT_SCORES))
    if why := out["champion_unloadable"]:
        stands_in = (
            f"its recorded holdout f1 {out['champion_holdout_f1']:.4f} stands in"
            if out["champion_holdout_recorded"]
            else "it has no recorded f1 on this holdout, so it is not compared"
        )
        decision["reason"] += f" (the champion v{champion.version} cannot be loaded: {stands_in}; {why})"
    return {**out, **decision}
