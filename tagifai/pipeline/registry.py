"""Register model versions, and move the `champion` alias only through the promotion gate.

The gate is the deployer's (`[register]` in config/): a run may make it stricter, never looser. It
remembers: every move of `champion` is recorded (`record_move`) as a run of the experiment
`[register] history_experiment`, and a challenger is held against the best of the recent champions
as well as the current one, each re-scored on the challenger's test data, so that small regressions
cannot add up. A move made outside tagifai (the MLflow UI, the API) is recorded when tagifai first
sees it (`sync_history`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.contract import names
from tagifai.contract.settings import Settings
from tagifai.core import evaluate as evaluation
from tagifai.pipeline import tracking

log = logging.getLogger("tagifai")

CHALLENGER = "challenger"
DESCRIPTION = "Tags ML project descriptions (tagifai)."
# The `tagifai.step` of a history record.
MOVE = "champion-move"
# Who moved the alias when tagifai did not: a person in the MLflow UI, or a script.
OUTSIDE = "outside tagifai (MLflow UI or API)"


def gate(
    f1: float,
    champion_f1: float | None,
    min_f1: float,
    max_regression: float,
    recent_best_f1: float | None = None,
) -> dict[str, Any]:
    """Decide whether a challenger with test `f1` replaces the champion.

    Args:
        f1: the challenger's weighted test f1.
        champion_f1: the current champion's f1 on the same test data, or None without a (loadable) champion.
        min_f1: the lowest f1 a champion may have.
        max_regression: how much worse than the champion, and than the best recent champion, it may be.
        recent_best_f1: the best f1 of the recent champions on the same test data, if any.

    Returns:
        `promote` (bool) and a human-readable `reason`.
    """
    scored, margin = f"test_f1 {f1:.4f}", f"on the same test data by more than {max_regression:.4f}"
    promote = False
    if f1 < min_f1:
        reason = f"{scored} is below the minimum {min_f1:.4f}"
    elif champion_f1 is not None and f1 < champion_f1 - max_regression:
        reason = f"{scored} is worse than the champion's {champion_f1:.4f} {margin}"
    elif recent_best_f1 is not None and f1 < recent_best_f1 - max_regression:
        reason = f"{scored} is worse than the best recent champion's {recent_best_f1:.4f} {margin}"
        reason += ": regressions do not add up"
    elif champion_f1 is None:
        promote, reason = True, f"{scored} >= {min_f1:.4f} and there is no champion yet to compare with"
    else:
        best = max(champion_f1, recent_best_f1 or 0.0)
        within = f"within {max_regression:.4f} of the champion's {champion_f1:.4f} and of the best recent {best:.4f}"
        promote, reason = True, f"{scored} >= {min_f1:.4f} and {within}"
    return {"promote": promote, "reason": reason}


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


def rescore_or_reason(model_name: str, version: str, data_run_id: str) -> tuple[float | None, str | None]:
    """Weighted test f1 of `version` on the test split of `data_run_id` (a comparison on the same data).

    Or None and one line saying why the version could not be loaded and scored: missing artifacts, a
    model that no longer unpickles.
    """
    try:
        test_df = tracking.load_split(data_run_id, "test")
        predicted = models.predict_tags(models.load(f"models:/{model_name}/{version}"), test_df)
        return evaluation.overall_metrics(test_df["tag"].to_numpy(), predicted)["f1"], None
    except Exception as exc:  # noqa: BLE001 — any failure to load or score means: judge without it
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("register: version %s of %s cannot be scored, ignored: %s", version, model_name, reason)
        return None, reason


def version_tags(metrics: dict[str, float], trained: Run, registering: Run, evaluate_run_id: str) -> dict[str, str]:
    """What a model version records: its test scores and where it came from."""
    return {
        **{k: f"{metrics[k]:.4f}" for k in ("test_f1", "test_precision", "test_recall")},
        **{k: trained.data.tags.get(k, "") for k in ("data_sha256", "code_version", "image", "data_run_id")},
        "pipeline_run_id": registering.data.tags[tracking.PIPELINE_TAG],
        "evaluate_run_id": evaluate_run_id,
    }


def apply(client: MlflowClient, name: str, version: str, decision: dict[str, Any]) -> None:
    """Make `version` the challenger, and the champion if the gate said so; record the gate's reason on it.

    A stale decision (a version not newer than the champion: a retried or cleared register) moves nothing.
    """
    if decision["stale"]:
        return
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision["promote"]:
        client.set_registered_model_alias(name, names.CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "promotion", decision["reason"])
    client.set_model_version_tag(name, version, "promoted", str(decision["promote"]).lower())


def log_decision(
    decision: dict[str, Any], version: str, previous: str | None, gate_settings: tuple[float, float]
) -> None:
    """What the gate decided and compared against, on the active (register) run."""
    mlflow.log_params({"min_f1": gate_settings[0], "max_regression": gate_settings[1]})
    scores = {
        f"{k}_test_f1": decision[f"{k}_f1"] for k in ("champion", "recent_best") if decision[f"{k}_f1"] is not None
    }
    mlflow.log_metrics(scores)
    mlflow.set_tags(
        {
            "promoted": str(decision["promote"]).lower(),
            "promotion": decision["reason"],
            "model_version": version,
            "previous_champion": str(previous or ""),
            "champion_unloadable": decision["champion_unloadable"] or "",
        }
    )


# ---- the gate's memory: every move of `champion` ------------------------------------------------


def record_move(
    settings: Settings, name: str, from_version: str | None, to_version: str, action: str, by: str, reason: str
) -> str:
    """Record one move of `champion` (promote, rollback, manual) as a finished run; return its id."""
    client = MlflowClient()
    tags = {
        tracking.STEP_TAG: MOVE,
        "model_name": name,
        "from_version": str(from_version or ""),
        "to_version": str(to_version),
        "action": action,
        "by": by,
        "reason": reason[:5000],
    }
    run_name = f"{name} champion v{from_version or '-'} → v{to_version}"
    run = client.create_run(tracking.experiment_id(settings.register.history_experiment), run_name=run_name, tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def history(settings: Settings, name: str, limit: int = 1000) -> list[dict[str, str]]:
    """The recorded moves of `name`'s champion, newest first: from, to, when (ms), action, by, reason."""
    runs = MlflowClient().search_runs(
        [tracking.experiment_id(settings.register.history_experiment)],
        filter_string=f"tags.`{tracking.STEP_TAG}` = '{MOVE}' and tags.model_name = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
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


def recent_champions(moves: Sequence[dict[str, str]], window: int, exclude: str | None = None) -> list[str]:
    """The distinct versions the last `window` moves made champion, newest first (but `exclude`)."""
    seen: list[str] = []
    for move in moves[:window]:
        if move["to_version"] not in seen and move["to_version"] != exclude:
            seen.append(move["to_version"])
    return seen


def judge(
    settings: Settings,
    name: str,
    version: str,
    champion: ModelVersion | None,
    moves: Sequence[dict[str, str]],
    data_run_id: str,
    f1: float,
    gate_settings: tuple[float, float],
) -> dict[str, Any]:
    """The gate's decision on `version` (test `f1`), with what it compared against.

    The champion and the recent champions are re-scored on `data_run_id`'s test split. A champion
    that cannot be loaded is reported, and the challenger is then judged by `min_f1` alone.

    Returns:
        `promote`, `reason`, `champion_f1`, `recent_best_f1`, `champion_unloadable` (why, or None), and
        `stale`: the version is not newer than the champion, so neither alias may move to it.
    """
    min_f1, max_regression = gate_settings
    out: dict[str, Any] = {"champion_f1": None, "recent_best_f1": None, "champion_unloadable": None, "stale": False}
    if back := moves_back(version, champion):
        return {**out, "promote": False, "reason": back, "stale": True}
    if champion is not None:
        out["champion_f1"], out["champion_unloadable"] = rescore_or_reason(name, champion.version, data_run_id)
    if not out["champion_unloadable"]:
        exclude = str(champion.version) if champion else None
        recent = recent_champions(moves, settings.register.history_window, exclude)
        scores = [rescore_or_reason(name, v, data_run_id)[0] for v in recent]
        out["recent_best_f1"] = max((s for s in scores if s is not None), default=None)
    decision = gate(f1, out["champion_f1"], min_f1, max_regression, out["recent_best_f1"])
    if out["champion_unloadable"]:
        why = out["champion_unloadable"]
        decision["reason"] += f" (the champion v{champion.version} cannot be loaded, so only min_f1 applies: {why})"
    return {**out, **decision}
