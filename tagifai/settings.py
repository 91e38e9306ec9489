"""Load versioned defaults from `config/`, merged with an optional override file.

Nothing here runs at import time: commands call `load_settings()` when they start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from tagifai.errors import TagifaiError

CONFIG_FILE = "tagifai.toml"
STOPWORDS_FILE = "stopwords.txt"


def config_dir() -> Path:
    """Return the folder holding the versioned defaults.

    `TAGIFAI_CONFIG_DIR` wins; then the copy packaged in the wheel (`tagifai/config`); then the
    repository's `config/` (editable installs).
    """
    if env := os.environ.get("TAGIFAI_CONFIG_DIR"):
        return Path(env)
    packaged = Path(__file__).parent / "config"
    if (packaged / CONFIG_FILE).exists():
        return packaged
    return Path(__file__).resolve().parents[1] / "config"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in, section by section (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, naming the file in any error."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TagifaiError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TagifaiError(f"config file {path} is not valid TOML: {exc}") from exc


def parse_stopwords(text: str) -> list[str]:
    """Return the words of a stopword file: one per line, `#` comments and blanks skipped."""
    words = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [word for word in words if word]


def load_settings() -> dict[str, Any]:
    """Return all settings: `config/tagifai.toml`, then `$TAGIFAI_CONFIG` over it, plus stopwords."""
    folder = config_dir()
    settings = read_toml(folder / CONFIG_FILE)
    if override := os.environ.get("TAGIFAI_CONFIG"):
        settings = merge(settings, read_toml(Path(override)))
    stopwords_path = folder / STOPWORDS_FILE
    if not stopwords_path.exists():
        raise TagifaiError(f"stopword list not found: {stopwords_path}")
    settings["stopwords"] = parse_stopwords(stopwords_path.read_text(encoding="utf-8"))
    return settings
