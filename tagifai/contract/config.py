"""The versioned settings, `config/tagifai.toml`, with the deployer's override file `TAGIFAI_CONFIG` over it.

One source of defaults for everything that runs: the `tagifai` commands read the settings through
`load_settings`, and the DAGs through `load`, whose trigger forms show them as the param defaults; a
param a person leaves alone is the value the steps would use anyway. Both are checked against one
schema (`tagifai.contract.settings`). Standard library and pydantic only (Airflow requires it):
Airflow imports this without tagifai's dependencies. Nothing runs at import time.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tagifai.contract import names
from tagifai.contract.errors import BadInputError
from tagifai.contract.settings import Settings

CONFIG_FILE = "tagifai.toml"
STOPWORDS_FILE = "stopwords.txt"


class ConfigError(BadInputError):
    """A settings file is missing, not valid TOML, or breaks the schema; the message names the file and key."""


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


def load(folder: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `folder/tagifai.toml`, with the deployer's override over them, checked by the schema.

    The override is the file `TAGIFAI_CONFIG` names, or else the TOML in `TAGIFAI_CONFIG_TOML`.

    Raises:
        ConfigError: a file is missing, a file or the variable is not valid TOML, or a key is unknown,
            of the wrong type, out of range or not a finite number.
    """
    env = os.environ if environ is None else environ
    base = folder / CONFIG_FILE
    override, override_name = {}, ""
    if path := env.get(names.CONFIG_ENV):
        override, override_name = read_toml(Path(path)), path
    elif content := env.get(names.CONFIG_TOML_ENV):
        try:
            override, override_name = tomllib.loads(content), names.CONFIG_TOML_ENV
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{names.CONFIG_TOML_ENV} is not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(merge(read_toml(base), override))
    except ValidationError as exc:
        raise refusal(exc, override, override_name or str(base), str(base)) from None


def refusal(error: ValidationError, override: Mapping[str, Any], override_name: str, base_name: str) -> ConfigError:
    """One line for the first thing the schema refused: the file it came from, the key, what is wrong."""
    first, more = error.errors()[0], error.error_count() - 1
    # The key's path in the TOML (without pydantic's own steps, such as `[key]` for a table's keys).
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and "[" in part))
    where = [str(part) for part in loc]
    key = f"[{where[0]}] {'.'.join(where[1:])}" if len(where) > 1 else where[0]
    came_from = override_name if _holds(override, loc) else base_name
    problem = {"extra_forbidden": "unknown setting", "missing": "missing"}.get(first["type"])
    if problem is None:
        problem = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {first['input']!r}"
    also = f" (and {more} more)" if more else ""
    return ConfigError(f"settings in {came_from}: {key}: {problem}{also}")


def _holds(table: Mapping[str, Any], loc: tuple) -> bool:
    """Whether the TOML table `table` sets the key at `loc` (or a table on its way)."""
    for part in loc:
        if not isinstance(table, Mapping) or part not in table:
            return False
        table = table[part]
    return True


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding the versioned defaults.

    `TAGIFAI_CONFIG_DIR` wins; then the copy packaged in the wheel (`tagifai/config`); then the
    repository's `config/` (editable installs, and the DAGs: the stack mounts it beside them).
    """
    env = os.environ if environ is None else environ
    if folder := env.get(names.CONFIG_DIR_ENV):
        return Path(folder)
    package = Path(__file__).resolve().parents[1]
    packaged = package / "config"
    return packaged if (packaged / CONFIG_FILE).exists() else package.parent / "config"


def parse_stopwords(text: str) -> list[str]:
    """The words of a stopword file: one per line, `#` comments and blanks skipped."""
    words = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [word for word in words if word]


def load_settings() -> Settings:
    """All settings: `config/tagifai.toml`, then `$TAGIFAI_CONFIG` over it, checked, plus the stopwords.

    Raises:
        ConfigError: a settings file is missing or breaks the schema, or the stopword list is missing.
    """
    folder = config_dir()
    settings = load(folder)
    stopwords = folder / STOPWORDS_FILE
    if not stopwords.exists():
        raise ConfigError(f"stopword list not found: {stopwords}")
    return settings.model_copy(update={"stopwords": tuple(parse_stopwords(stopwords.read_text(encoding="utf-8")))})


def holdout_sources(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[str, str, bool]:
    """Where the gate's holdout comes from: its projects and tags, and whether it is a golden set used whole.

    `[register] holdout_projects_url`/`holdout_tags_url` (used whole), else the deployment's own data
    (`TAGIFAI_PROJECTS_URL`/`TAGIFAI_TAGS_URL`, else `[data]`), whose test split it is. Never a trigger's.
    """
    env = os.environ if environ is None else environ
    register, data = settings.register, settings.data
    if register.holdout_projects_url:
        return register.holdout_projects_url, register.holdout_tags_url, True
    return env.get(names.PROJECTS_URL_ENV) or data.projects_url, env.get(names.TAGS_URL_ENV) or data.tags_url, False
