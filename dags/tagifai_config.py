"""The versioned settings, `config/tagifai.toml`, with the deployer's override file `TAGIFAI_CONFIG` over it.

One source of defaults for everything that runs: the `tagifai` steps read the settings through this
module (tagifai/settings.py), and so does the DAG, whose trigger form shows them as the param
defaults; a param a person leaves alone is the value the steps would use anyway. Standard library
only: Airflow parses the DAG without tagifai installed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "tagifai.toml"
OVERRIDE_ENV = "TAGIFAI_CONFIG"
# The override file's content itself: how a step container on any Docker host gets it.
OVERRIDE_TOML_ENV = "TAGIFAI_CONFIG_TOML"
CONFIG_DIR_ENV = "TAGIFAI_CONFIG_DIR"


class ConfigError(ValueError):
    """A settings file is missing or not valid TOML; the message names the file."""


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in, section by section (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        both_tables = isinstance(value, Mapping) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both_tables else value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, naming the file in any error.

    Raises:
        ConfigError: the file is missing or not valid TOML.
    """
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load(folder: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of `folder/tagifai.toml`, with the deployer's override over them.

    The override is the file `TAGIFAI_CONFIG` names, or else the TOML in `TAGIFAI_CONFIG_TOML`.

    Raises:
        ConfigError: a file is missing, or a file or the variable is not valid TOML.
    """
    env = os.environ if environ is None else environ
    settings = read_toml(folder / CONFIG_FILE)
    if override := env.get(OVERRIDE_ENV):
        settings = merge(settings, read_toml(Path(override)))
    elif content := env.get(OVERRIDE_TOML_ENV):
        try:
            settings = merge(settings, tomllib.loads(content))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{OVERRIDE_TOML_ENV} is not valid TOML: {exc}") from exc
    return settings


def repository_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the DAG finds `config/`: `TAGIFAI_CONFIG_DIR`, else beside `dags/` (the stack mounts both)."""
    env = os.environ if environ is None else environ
    return Path(env.get(CONFIG_DIR_ENV) or Path(__file__).resolve().parents[1] / "config")
