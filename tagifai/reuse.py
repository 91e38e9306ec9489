"""Content-addressed keys: a step whose output would be the same as a finished run's reuses that run.

A step's key is the sha256 of what determines its output, and nothing else:

- its upstream: the sha256 of the raw data (`elt`), or its upstream step's run;
- the code: a hash of the tagifai sources (the package and the modules it shares with the DAG);
- the settings it reads (`SETTINGS_READ`): a setting no step reads, or that only says how to run
  (heartbeats, threads, limits), changes no key;
- its own arguments (e.g. `num_trials`, the gate's params).

Pure: settings and values in, keys out. `tagifai.steps` looks the keys up in MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import tagifai

# The settings each step reads, as `section` or `section.key`, and the keys of those sections that
# only say how a step runs, not what it makes.
SETTINGS_READ: dict[str, tuple[str, ...]] = {
    "elt": (),
    "validate": ("data", "validate"),
    "optimize": ("data.other_label", "stopwords", "train", "optimize"),
    "train": ("data.other_label", "stopwords", "train"),
    "evaluate": (),
    "register": ("register",),
}
HOW_TO_RUN = {
    "data": ("projects_url", "tags_url", "max_bytes", "fetch_deadline_seconds"),
    "optimize": ("num_trials", "num_workers", "heartbeat_seconds", "grace_seconds", "threads_per_trial"),
    "register": ("history_experiment",),
}
STEPS = tuple(SETTINGS_READ)


def settings_read(settings: dict[str, Any], step: str) -> dict[str, Any]:
    """The part of `settings` that `step` reads."""
    part: dict[str, Any] = {}
    for name in SETTINGS_READ[step]:
        section, _, key = name.partition(".")
        if key:
            part[name] = settings[section][key]
        elif isinstance(settings[section], dict):
            part[name] = {k: v for k, v in settings[section].items() if k not in HOW_TO_RUN.get(section, ())}
        else:
            part[name] = settings[section]
    return part


def key(step: str, upstream: str, code: str, settings: dict[str, Any], args: dict[str, Any]) -> str:
    """The key of `step`: upstream (data sha or key), code version, the settings it reads, its arguments."""
    payload = {
        "step": step,
        "upstream": upstream,
        "code": code,
        "settings": settings_read(settings, step),
        "args": args,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_sha(*contents: bytes) -> str:
    """One sha256 over several raw files (length-prefixed, so no two splits of the bytes collide)."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def drift_reference(reference_sha: str | None, data_sha256: str, reference_used: str | None = None) -> str | None:
    """What of the drift reference decides validation: the reference's data, when it is other data.

    No reference keys as None. When the reference is this very data (it became the champion's), the
    data cannot drift from itself, and it was validated once already, against the reference that run
    used (`reference_used`, None if it had none): keying as that run did, the next run on the same
    data reuses it instead of validating, and then training, all over again.
    """
    if reference_sha in (None, ""):
        return None
    return (reference_used or None) if reference_sha == data_sha256 else reference_sha


def source_files() -> list[Path]:
    """The files whose content is the code version: the tagifai package and the shared modules."""
    package = Path(tagifai.__file__).parent
    shared = [importlib.util.find_spec(name) for name in ("tagifai_config", "tagifai_sources")]
    return sorted(package.glob("*.py")) + [Path(spec.origin) for spec in shared if spec and spec.origin]


@functools.cache
def code_version() -> str:
    """A hash of the code's sources: the same in the image, an editable install and a wheel."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ---- the key of each step ------------------------------------------------------------------------
# Upstream runs count by id: a step made anew (say, because its earlier run's files are gone) makes
# everything after it anew too. Only `train` counts its tuning by key: the workers of one study are
# several runs with one result.


def elt_key(raw_sha: str, settings: dict[str, Any]) -> str:
    """`elt`: the raw files' content."""
    return key("elt", raw_sha, code_version(), settings, {})


def validate_key(elt_run_id: str, reference: str | None, allow_drift: bool, settings: dict[str, Any]) -> str:
    """`validate`: the extracted data, and what of the drift reference decides (`drift_reference`)."""
    return key("validate", elt_run_id, code_version(), settings, {"reference": reference, "allow_drift": allow_drift})


def optimize_key(validate_run_id: str, num_trials: int, settings: dict[str, Any]) -> str:
    """`optimize`: the split data and how many trials (however many workers share them)."""
    return key("optimize", validate_run_id, code_version(), settings, {"num_trials": num_trials})


def train_key(validate_run_id: str, optimize_key: str | None, settings: dict[str, Any]) -> str:
    """`train`: the split data and the tuning it takes its params from (None: the `[train]` defaults)."""
    return key("train", f"{validate_run_id}:{optimize_key or 'defaults'}", code_version(), settings, {})


def evaluate_key(train_run_id: str, settings: dict[str, Any]) -> str:
    """`evaluate`: the trained model."""
    return key("evaluate", train_run_id, code_version(), settings, {})


def register_key(evaluate_run_id: str, gate: tuple[float, float, str], settings: dict[str, Any]) -> str:
    """`register`: the evaluated model, the gate and the model name."""
    min_f1, max_regression, model_name = gate
    args = {"min_f1": min_f1, "max_regression": max_regression, "model_name": model_name}
    return key("register", evaluate_run_id, code_version(), settings, args)
