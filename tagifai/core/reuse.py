"""Content-addressed keys: a step whose output would be the same as a finished run's reuses that run.

A step's key is the sha256 of what determines its output, and nothing else:

- its upstream: the sha256 of the raw data (`elt`), or its upstream step's run;
- the code: a hash of the sources that make what the steps make (`STEP_CODE`): editing serving,
  operations, the CLI or the Airflow helpers keys nothing anew;
- the settings it reads (`SETTINGS_READ`): a setting no step reads, or that only says how to run
  (heartbeats, threads, limits), changes no key;
- its own arguments (e.g. `num_trials`, the gate's params), and for `validate` the gate's holdout:
  a changed holdout makes `validate`, and so every step after it, anew.

Pure: settings and values in, keys out. `tagifai.pipeline.steps` looks the keys up in MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Any, BinaryIO

from tagifai.contract.settings import Settings

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
    # How long a person may take to answer is the DAG's business; `approval` changes what register does.
    "register": ("history_experiment", "approval_timeout_hours"),
}
STEPS = tuple(SETTINGS_READ)
# The package's files and folders whose code makes what the steps make.
STEP_CODE = ("__init__.py", "model.py", "model_code.py", "contract", "core", "pipeline")
PACKAGE = Path(__file__).resolve().parents[1]


def settings_read(settings: Settings, step: str) -> dict[str, Any]:
    """The part of `settings` that `step` reads."""
    values, part = settings.as_dict(), {}
    for name in SETTINGS_READ[step]:
        section, _, key = name.partition(".")
        if key:
            part[name] = values[section][key]
        elif isinstance(values[section], dict):
            part[name] = {k: v for k, v in values[section].items() if k not in HOW_TO_RUN.get(section, ())}
        else:
            part[name] = values[section]
    return part


def key(step: str, upstream: str, settings: Settings, args: dict[str, Any]) -> str:
    """The key of `step`: its upstream (data sha, run id or key), the code version, the settings it reads, its args."""
    read = settings_read(settings, step)
    payload = {"step": step, "upstream": upstream, "code": code_version(), "settings": read, "args": args}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_sha(*contents: bytes | BinaryIO) -> str:
    """One sha256 over several raw files (length-prefixed, so no two splits of the bytes collide).

    A file is read a block at a time from its start, and left rewound.
    """
    digest = hashlib.sha256()
    for content in contents:
        if isinstance(content, bytes):
            digest.update(len(content).to_bytes(8, "big") + content)
            continue
        digest.update(content.seek(0, io.SEEK_END).to_bytes(8, "big"))
        content.seek(0)
        while block := content.read(1 << 20):
            digest.update(block)
        content.seek(0)
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


def source_files(package: Path = PACKAGE) -> dict[str, Path]:
    """The files whose content is the code version (`STEP_CODE`), by their path in the package."""
    files: list[Path] = []
    for name in STEP_CODE:
        path = package / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return {path.relative_to(package).as_posix(): path for path in files}


@functools.cache
def code_version() -> str:
    """The code version of this installation: the same in the image, an editable install and a wheel."""
    return code_hash(PACKAGE)


def code_hash(package: Path) -> str:
    """A hash of the sources of `package` that make what the steps make (`source_files`)."""
    digest = hashlib.sha256()
    for name, path in source_files(package).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ---- the key of each step ------------------------------------------------------------------------
# Upstream runs count by id: a step made anew (say, because its earlier run's files are gone) makes
# everything after it anew too. Only `train` counts its tuning by key: the workers of one study are
# several runs with one result.


def elt_key(raw_sha: str, settings: Settings) -> str:
    """`elt`: the raw files' content."""
    return key("elt", raw_sha, settings, {})


def validate_key(elt_run_id: str, reference: str | None, allow_drift: bool, holdout: str, settings: Settings) -> str:
    """`validate`: the extracted data, what of the drift reference decides (`drift_reference`), the holdout's sha256."""
    args = {"reference": reference, "allow_drift": allow_drift, "holdout": holdout}
    return key("validate", elt_run_id, settings, args)


def optimize_key(validate_run_id: str, num_trials: int, settings: Settings) -> str:
    """`optimize`: the split data and how many trials (however many workers share them)."""
    return key("optimize", validate_run_id, settings, {"num_trials": num_trials})


def train_key(validate_run_id: str, optimize_key: str | None, settings: Settings) -> str:
    """`train`: the split data and the tuning it takes its params from (None: the `[train]` defaults)."""
    return key("train", f"{validate_run_id}:{optimize_key or 'defaults'}", settings, {})


def evaluate_key(train_run_id: str, settings: Settings) -> str:
    """`evaluate`: the trained model."""
    return key("evaluate", train_run_id, settings, {})


def register_key(evaluate_run_id: str, gate: tuple[float, float, str], settings: Settings) -> str:
    """`register`: the evaluated model, the gate and the model name."""
    min_f1, max_regression, model_name = gate
    args = {"min_f1": min_f1, "max_regression": max_regression, "model_name": model_name}
    return key("register", evaluate_run_id, settings, args)
