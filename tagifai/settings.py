"""Load versioned defaults from `config/`, merged with the override file `TAGIFAI_CONFIG`.

The reading and merging is `tagifai_config`'s (shared with the DAG, so both see the same values).
Nothing here runs at import time: commands call `load_settings()` when they start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tagifai_config

from tagifai.errors import BadInputError

STOPWORDS_FILE = "stopwords.txt"


def config_dir() -> Path:
    """Return the folder holding the versioned defaults.

    `TAGIFAI_CONFIG_DIR` wins; then the copy packaged in the wheel (`tagifai/config`); then the
    repository's `config/` (editable installs).
    """
    if env := os.environ.get("TAGIFAI_CONFIG_DIR"):
        return Path(env)
    packaged = Path(__file__).parent / "config"
    if (packaged / tagifai_config.CONFIG_FILE).exists():
        return packaged
    return Path(__file__).resolve().parents[1] / "config"


def parse_stopwords(text: str) -> list[str]:
    """Return the words of a stopword file: one per line, `#` comments and blanks skipped."""
    words = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [word for word in words if word]


def load_settings() -> dict[str, Any]:
    """Return all settings: `config/tagifai.toml`, then `$TAGIFAI_CONFIG` over it, plus stopwords."""
    folder = config_dir()
    try:
        settings = tagifai_config.load(folder)
    except tagifai_config.ConfigError as exc:
        raise BadInputError(str(exc)) from exc
    stopwords_path = folder / STOPWORDS_FILE
    if not stopwords_path.exists():
        raise BadInputError(f"stopword list not found: {stopwords_path}")
    settings["stopwords"] = parse_stopwords(stopwords_path.read_text(encoding="utf-8"))
    return settings
