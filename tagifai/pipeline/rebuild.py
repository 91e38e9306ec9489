"""What rebuilding a version needs, recorded by its train run: the manifest of `tagifai.core.rebuild`.

`train` calls `record`: the manifest (`MANIFEST`), the resolved settings (`CONFIG`) and the test split's
predictions (`PREDICTIONS`) become artifacts of the train run, and the headline values `rebuild.*` tags of
the run, which `register` copies onto the version (`version_tags`). `environment` and `code` say the same of
the process running now, for `tagifai reproduce` to compare.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import tagifai
from tagifai import model as models
from tagifai.contract import names
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.core import data, rebuild, reuse
from tagifai.pipeline import tracking

MANIFEST = "rebuild/manifest.json"
CONFIG = "rebuild/config.json"
PREDICTIONS = "rebuild/test_predictions.csv"
TAG_PREFIX = "rebuild."
# The tags of a `tagifai reproduce` attempt's run that name the version it rebuilt.
REPRODUCES_TAG, MODEL_NAME_TAG = "reproduces", "model_name"
# The files whose code makes the model from a split and params, by their path in the package: what a
# logged model loads (`tagifai.model.CODE`), the file MLflow builds it from, and the training loop.
CODE_FILES = tuple(dict.fromkeys((*models.CODE, "model_code.py", "core/train.py")))
# The lock file an environment was installed from: the image's and `make install`'s venv keep a copy here.
LOCK_FILE = "requirements.lock"
# Settings whose values are URLs: recorded without a password in them.
URL_SETTINGS = {
    "data": ("projects_url", "tags_url"),
    "register": ("holdout_projects_url", "holdout_tags_url"),
    "predict": ("source",),
}
_HEX = re.compile(r"(?:^|-g)([0-9a-f]{7,40})$")


class Untestable(BadInputError):
    """A rebuild cannot be tried: what it needs (the manifest, the split files) is missing or unreadable."""


# ---- the process running now ---------------------------------------------------------------------------


def commit_of(described: str) -> tuple[str, bool]:
    """The commit a `git describe --dirty` string names ("" if none) and whether it says the tree was dirty."""
    dirty = described.endswith("-dirty")
    found = _HEX.search(described.removesuffix("-dirty"))
    return (found.group(1) if found else ""), dirty


def lock_sha256() -> str:
    """The sha256 of the lock file this environment was installed from ("" when it keeps none)."""
    path = Path(sys.prefix) / LOCK_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def environment() -> dict[str, Any]:
    """The manifest's `environment` for this process: Python, packages, lock file, image, commit."""
    commit, dirty = commit_of(tracking.described_version())
    packages = {}
    for name in rebuild.PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "packages": packages,
        "tagifai": tagifai.__version__,
        "lock_sha256": lock_sha256(),
        "image": os.environ.get(names.IMAGE_ENV, ""),
        "image_id": os.environ.get(names.IMAGE_ID_ENV, ""),
        "image_digest": os.environ.get(names.IMAGE_DIGEST_ENV, ""),
        "commit": commit,
        "dirty": dirty,
    }


def code() -> dict[str, Any]:
    """The manifest's `code` for the installed package: the sha256 of each of `CODE_FILES`."""
    package = Path(models.__file__).parent
    files = {f"tagifai/{name}": hashlib.sha256((package / name).read_bytes()).hexdigest() for name in CODE_FILES}
    return {"files": files, "sha256": rebuild.sha256_json(files)}


def config(settings: Settings) -> dict[str, Any]:
    """The manifest's `config`: the settings `train` reads (`tagifai.core.reuse.SETTINGS_READ`)."""
    return reuse.settings_read(settings, "train")


def resolved(settings: Settings) -> dict[str, Any]:
    """Every setting as this process resolved it (config/, TAGIFAI_CONFIG), URLs without their passwords."""
    values = settings.as_dict()
    for section, keys in URL_SETTINGS.items():
        for key in keys:
            if values[section][key]:
                values[section][key] = redact(values[section][key])
    return values


def splits_sha256(raw: Mapping[str, bytes]) -> dict[str, str]:
    """The sha256 of each split's file, as the validate run logged it."""
    return {split: data.sha256(content) for split, content in raw.items()}


def predictions_csv(frame: pd.DataFrame) -> bytes:
    """`rebuild.prediction_frame` as CSV, each probability written as Python's repr (read back exactly)."""
    written = frame.copy()
    for column in written.columns[1:]:
        written[column] = [repr(float(p)) for p in written[column]]
    return data.to_csv_bytes(written)


def read_predictions(content: bytes) -> pd.DataFrame:
    """What `predictions_csv` wrote, probabilities as float64 again."""
    frame = data.read_frame(content)
    for column in frame.columns[1:]:
        frame[column] = frame[column].map(float).astype("<f8")
    return frame


def scored(model: Any, test_df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The tags and class probabilities a fitted `TagifaiModel` gives the test split."""
    probabilities = model.predict_proba(test_df)
    return model.labels(probabilities), probabilities


# ---- recording -----------------------------------------------------------------------------------------


def manifest(
    settings: Settings,
    recipe: Mapping[str, Any],
    data_run_id: str,
    raw: Mapping[str, bytes],
    model: Any,
    tags: list[str],
    probabilities: np.ndarray,
) -> dict[str, Any]:
    """The manifest of a model trained here from the splits `raw` (of `data_run_id`) and the `recipe`.

    `recipe`: `params` (what `tagifai.core.train.train` took), `seeds`, `tuning` (the best trial and its runs).
    """
    return {
        "format": rebuild.FORMAT,
        "environment": environment(),
        "code": code(),
        "config": config(settings),
        "data": {"data_run_id": data_run_id, "splits": splits_sha256(raw)},
        "params": rebuild.estimator_params(model),
        "outputs": rebuild.outputs(model, tags, probabilities),
        "recipe": dict(recipe),
    }


def headline(record: Mapping[str, Any]) -> dict[str, str]:
    """The manifest's values worth a glance in the MLflow UI, as `rebuild.*` tags (empty ones left out)."""
    env, outputs = record["environment"], record["outputs"]
    values = {
        "commit": env["commit"],
        "dirty": str(env["dirty"]).lower(),
        "image": env["image"],
        "image_id": env["image_id"],
        "image_digest": env["image_digest"],
        "lock_sha256": env["lock_sha256"],
        "python": env["python"],
        **env["packages"],
        "code_sha256": record["code"]["sha256"],
        "config_sha256": rebuild.sha256_json(record["config"]),
        "fitted_sha256": outputs["fitted_sha256"],
        "predictions_sha256": outputs["predictions_sha256"],
        "probabilities_sha256": outputs["probabilities_sha256"],
    }
    return {f"{TAG_PREFIX}{key}": str(value) for key, value in values.items() if value not in (None, "")}


def record(
    settings: Settings, recipe: Mapping[str, Any], data_run_id: str, raw: Mapping[str, bytes], model: Any
) -> dict[str, Any]:
    """Log what rebuilding the active train run's `model` needs; return its manifest."""
    test_df = data.read_frame(raw["test"])
    tags, probabilities = scored(model, test_df)
    made = manifest(settings, recipe, data_run_id, raw, model, tags, probabilities)
    tracking.log_json(made, MANIFEST)
    tracking.log_json(resolved(settings), CONFIG)
    tracking.log_bytes(predictions_csv(rebuild.prediction_frame(tags, probabilities, model.classes)), PREDICTIONS)
    mlflow.set_tags(headline(made))
    return made


def attempts_link(experiment_id: str, model_name: str, version: str) -> str:
    """The MLflow UI's list of the attempts to rebuild `model_name` v`version` (relative to the UI: the card's)."""
    search = f"tags.{MODEL_NAME_TAG} = '{model_name}' and tags.{REPRODUCES_TAG} = '{version}'"
    return f"#/experiments/{urllib.parse.quote(str(experiment_id))}/runs?searchFilter={urllib.parse.quote(search)}"


def version_tags(trained_tags: Mapping[str, str]) -> dict[str, str]:
    """The `rebuild.*` tags of a train run, for the version it registers."""
    return {key: value for key, value in trained_tags.items() if key.startswith(TAG_PREFIX)}


# ---- reading a record back -------------------------------------------------------------------------------


def recorded_manifest(run_id: str, version: str) -> dict[str, Any]:
    """The manifest the train run `run_id` of `version` logged.

    Raises:
        Untestable: it logged none (trained before tagifai 0.3.0, or its artifacts are gone), or not one of
            this format.
    """
    try:
        found = tracking.read_json_artifact(run_id, MANIFEST)
    except (TagifaiError, ValueError) as exc:
        raise Untestable(
            f"version {version} has no readable rebuild record ({MANIFEST} of train run {run_id}): "
            f"trained before tagifai 0.3.0, or its artifacts are gone ({exc})"
        ) from None
    if problems := rebuild.missing_sections(found, (*rebuild.SECTIONS, "recipe")):
        raise Untestable(f"version {version}'s rebuild record ({MANIFEST}) is not usable: {'; '.join(problems)}")
    return found


def recorded_splits(made: Mapping[str, Any], version: str) -> dict[str, bytes]:
    """The split files the manifest `made` names, as they are in MLflow now.

    Raises:
        Untestable: the validate run or one of its split files is gone.
    """
    data_run_id = str(made["data"].get("data_run_id", ""))
    raw = {}
    for split in data.SPLITS:
        try:
            raw[split] = tracking.read_artifact(data_run_id, tracking.split_path(split))
        except TagifaiError:
            raise Untestable(
                f"version {version}'s recorded split is gone: validate run {data_run_id or '(none)'} "
                f"has no {tracking.split_path(split)} (deleted, or removed by `mlflow gc`)"
            ) from None
    return raw


def recorded_image(model_name: str, version: str) -> dict[str, str]:
    """The image and commit `version` was trained with, as its `rebuild.*` tags say (`make reproduce` reads it).

    Raises:
        BadInputError: no such version.
    """
    tags = registered_version(model_name, version).tags
    keys = ("image", "image_id", "image_digest", "commit", "dirty")
    return {"model_name": model_name, "version": version, **{k: tags.get(f"{TAG_PREFIX}{k}", "") for k in keys}}


def registered_version(model_name: str, version: str) -> Any:
    """Version `version` of `model_name`.

    Raises:
        BadInputError: there is no such version (exit 3).
        TagifaiError: MLflow could not answer now (exit 1).
    """
    try:
        return MlflowClient().get_model_version(model_name, version)
    except MlflowException as exc:
        if exc.error_code in models.MISSING:
            raise BadInputError(f"no version {version} of registered model {model_name!r}") from None
        raise TagifaiError(f"cannot read version {version} of {model_name} now: {exc.message}".splitlines()[0]) from exc
