"""What rebuilding a version takes, and whether a rebuild came out the same.

A train run records a manifest (`tagifai.pipeline.rebuild`): the environment (Python, the packages that make
the model, the lock file, the image and commit), the code that makes the model (a sha256 per file), the
settings the step reads, the sha256 of each split it read, the params and seeds, and what came out: the
fitted parts' hash, the estimator params, and the test split's predictions and probabilities. Reproducing
compares a manifest made now with the recorded one in that order, and names the first difference.

Pure: dicts, arrays and frames in, digests and differences out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# The manifest's layout; a manifest of another format is not compared.
FORMAT = 1
# What the manifest holds, in the order differences are looked for (the first one found is named).
SECTIONS = ("environment", "code", "config", "data", "params", "outputs")
# The packages whose versions make the model (the splits' reader, the vectorizer, oversampler and classifier,
# the stemmer): one that differs is named. The lock file's sha256 and the image are recorded, not compared:
# a lock refreshed for another package changes neither the model nor its predictions.
PACKAGES = ("numpy", "scipy", "scikit-learn", "imbalanced-learn", "nltk", "pandas")


class Differences(list[str]):
    """The differences found, in `SECTIONS` order: each one line, the first the one to name."""


def sha256_json(value: Any) -> str:
    """The sha256 of `value` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def python_release(version: str) -> str:
    """`major.minor` of a Python version: patch releases do not change what the model computes."""
    return ".".join(version.split(".")[:2])


# ---- what came out ---------------------------------------------------------------------------------------


def prediction_digests(tags: Sequence[str], probabilities: np.ndarray) -> dict[str, str]:
    """The sha256 of the predicted tags (one per line) and of the probabilities (float64, little-endian, C order)."""
    probabilities = np.ascontiguousarray(probabilities, dtype="<f8")
    return {
        "predictions_sha256": hashlib.sha256("\n".join(tags).encode()).hexdigest(),
        "probabilities_sha256": hashlib.sha256(
            repr(probabilities.shape).encode() + probabilities.tobytes()
        ).hexdigest(),
    }


def prediction_frame(tags: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """The test split's predictions as the manifest's CSV holds them: the tag, then each class's probability."""
    frame = pd.DataFrame(np.asarray(probabilities, dtype="<f8"), columns=[f"p_{c}" for c in classes])
    frame.insert(0, "tag", list(tags))
    return frame


def fitted_digest(model: Any) -> str:
    """The sha256 of a fitted model's state: each vectorizer's vocabulary and idf, the classifier's arrays.

    Computed from the arrays themselves, not from a serialized file (a zip's timestamps would differ).
    """
    digest = hashlib.sha256()
    for name, vectorizer in model.vectorizer.transformer_list:
        vocabulary = sorted((str(term), int(index)) for term, index in vectorizer.vocabulary_.items())
        digest.update(name.encode() + b"\0" + json.dumps(vocabulary, ensure_ascii=False).encode())
        digest.update(np.ascontiguousarray(vectorizer.idf_, dtype="<f8").tobytes())
    for array in (model.classifier.coef_, model.classifier.intercept_):
        digest.update(repr(array.shape).encode() + np.ascontiguousarray(array, dtype="<f8").tobytes())
    digest.update(json.dumps([list(model.classes), repr(float(model.threshold)), model.other_label]).encode())
    return digest.hexdigest()


def estimator_params(model: Any) -> dict[str, dict[str, Any]]:
    """The scalar params of the fitted vectorizer and classifier (tuples as lists, as JSON gives them back)."""

    def scalars(params: Mapping[str, Any]) -> dict[str, Any]:
        plain = (str, int, float, bool, type(None))
        kept = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        return {
            k: v
            for k, v in kept.items()
            if isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
        }

    return {
        "vectorizer": scalars(model.vectorizer.get_params(deep=True)),
        "classifier": scalars(model.classifier.get_params(deep=True)),
    }


def outputs(model: Any, tags: Sequence[str], probabilities: np.ndarray) -> dict[str, Any]:
    """The manifest's `outputs`: what a fitted `model` made of the test split."""
    return {
        "fitted_sha256": fitted_digest(model),
        "classes": list(model.classes),
        "rows": len(tags),
        **prediction_digests(tags, probabilities),
    }


# ---- comparing -------------------------------------------------------------------------------------------


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], first_row: str | None = None) -> Differences:
    """Every difference between a recorded manifest and one made now, in `SECTIONS` order.

    Both are manifests (`SECTIONS` keys); `current` may lack `params` and `outputs` (before retraining).
    `first_row` (`first_differing_row`) names the first differing prediction in place of their digests.
    """
    found = Differences()
    found += environment_differences(recorded["environment"], current["environment"])
    found += file_differences("code", recorded["code"]["files"], current["code"]["files"])
    found += setting_differences(recorded["config"], current["config"])
    found += file_differences("data: split", recorded["data"]["splits"], current["data"]["splits"])
    if "params" in current:
        found += value_differences("params", recorded["params"], current["params"])
    if "outputs" in current:
        found += output_differences(recorded["outputs"], current["outputs"], first_row)
    return found


def environment_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Python's release and the versions of `PACKAGES`."""
    found = []
    if python_release(recorded["python"]) != python_release(current["python"]):
        found.append(f"package: Python {current['python']} here, {recorded['python']} recorded")
    for name in PACKAGES:
        was, now = recorded["packages"].get(name), current["packages"].get(name)
        if was != now:
            found.append(f"package: {name} {now or '(not installed)'} here, {was or '(none)'} recorded")
    return found


def file_differences(what: str, recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Files (or splits) by sha256: changed, gone, new."""
    found = []
    for name in sorted({*recorded, *current}):
        was, now = recorded.get(name), current.get(name)
        if was == now:
            continue
        if was is None:
            found.append(f"{what} {name} is new (not in the recorded version)")
        elif now is None:
            found.append(f"{what} {name} is missing here (recorded sha256 {was[:12]}…)")
        else:
            found.append(f"{what} {name} differs (sha256 {now[:12]}… here, {was[:12]}… recorded)")
    return found


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Sections of settings as `section.key` -> value (a section that is a plain value keeps its name)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def setting_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings the step reads, key by key, named as config/ spells them (`[train] alpha`)."""
    was, now = flatten(recorded), flatten(current)
    found = []
    for name in sorted({*was, *now}):
        if was.get(name, "(unset)") != now.get(name, "(unset)"):
            section, _, key = name.rpartition(".")
            shown = f"[{section}] {key}" if section else f"{key} (config/{key}.txt)"
            found.append(
                f"config: {shown} is {short(now.get(name, '(unset)'))} here, {short(was.get(name, '(unset)'))} recorded"
            )
    return found


def value_differences(what: str, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Nested values compared key by key (`params: classifier.alpha is 0.001 here, 0.0001 recorded`)."""
    was, now = flatten(recorded), flatten(current)
    return [
        f"{what}: {name} is {short(now.get(name, '(unset)'))} here, {short(was.get(name, '(unset)'))} recorded"
        for name in sorted({*was, *now})
        if was.get(name, "(unset)") != now.get(name, "(unset)")
    ]


def output_differences(
    recorded: Mapping[str, Any], current: Mapping[str, Any], first_row: str | None = None
) -> list[str]:
    """The predictions and probabilities (`first_row`, if known, names the first that differs), the fitted parts."""
    found = [first_row] if first_row else []
    for key, what in (
        ("predictions_sha256", "the test split's predicted tags"),
        ("probabilities_sha256", "the test split's probabilities"),
        ("fitted_sha256", "the fitted parts (vocabulary, idf, weights)"),
    ):
        if recorded.get(key) != current.get(key) and not (first_row and key != "fitted_sha256"):
            now, was = str(current.get(key))[:12], str(recorded.get(key))[:12]
            found.append(f"outputs: {what} differ (sha256 {now}… here, {was}… recorded)")
    return found


def first_differing_row(recorded: pd.DataFrame, current: pd.DataFrame, titles: Sequence[str]) -> str | None:
    """The first test row whose tag or any probability differs, in one line (None: every row is the same).

    Both frames are `prediction_frame`s; `titles` name the rows.
    """
    if list(recorded.columns) != list(current.columns) or len(recorded) != len(current):
        return (
            f"prediction: {len(current)} rows of {', '.join(current.columns)} here, "
            f"{len(recorded)} rows of {', '.join(recorded.columns)} recorded"
        )
    columns = [c for c in recorded.columns if c != "tag"]
    was_p, now_p = recorded[columns].to_numpy(dtype="<f8"), current[columns].to_numpy(dtype="<f8")
    differs = (recorded["tag"].to_numpy() != current["tag"].to_numpy()) | (was_p != now_p).any(axis=1)
    if not differs.any():
        return None
    row = int(np.argmax(differs))
    title = short(titles[row] if row < len(titles) else "", 60)
    was_top, now_top = float(was_p[row].max()), float(now_p[row].max())
    return (
        f"prediction: test row {row} ({title}) is {current['tag'].iloc[row]} p={now_top!r} here, "
        f"{recorded['tag'].iloc[row]} p={was_top!r} recorded"
    )


def short(value: Any, width: int = 80) -> str:
    """A value in one line of at most `width` characters."""
    text = " ".join(json.dumps(value, default=str).split()) if not isinstance(value, str) else " ".join(value.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def missing_sections(manifest: Any, sections: Iterable[str] = SECTIONS) -> list[str]:
    """What a manifest read from an artifact lacks for a comparison (or why it is no manifest of this format)."""
    if not isinstance(manifest, Mapping):
        return ["it is not a JSON object"]
    if manifest.get("format") != FORMAT:
        return [f"its format is {manifest.get('format')!r}, not {FORMAT}"]
    if missing := [name for name in sections if not isinstance(manifest.get(name), Mapping)]:
        return missing
    # What the comparison reads inside the sections, of the kind it reads.
    shapes = {
        "environment.python": (manifest["environment"].get("python"), str),
        "environment.packages": (manifest["environment"].get("packages"), Mapping),
        "code.files": (manifest["code"].get("files"), Mapping),
        "data.splits": (manifest["data"].get("splits"), Mapping),
    }
    return [f"{name} is not a {kind.__name__}" for name, (value, kind) in shapes.items() if not isinstance(value, kind)]
