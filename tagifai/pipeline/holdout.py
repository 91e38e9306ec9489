"""The gate's holdout: the deployer's golden set, on which every challenger and the champion are scored.

Its sources are the deployment's (`tagifai.contract.config.holdout_sources`), never a trigger's: by
default the test split of the deployment's own data, so a run on that data has the holdout as its
test split and loses nothing to it. `validate` logs it beside each run's splits, whose train and val
lose its rows (same id or same cleaned text); `register` scores on that copy. Its sha256 names it in
the reuse keys and in the champion's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from tagifai.contract.config import holdout_sources
from tagifai.contract.settings import Settings
from tagifai.contract.sources import redact
from tagifai.core import data
from tagifai.pipeline import sources

# The validate run's artifact (`tracking.split_path`) and tag.
SPLIT = "holdout"
SHA_TAG = "holdout_sha256"


def fetch(settings: Settings, fetched: Mapping[str, Path] | None = None) -> tuple[pd.DataFrame, str]:
    """The holdout and its sha256; `fetched` holds sources read already (URL -> the file holding it).

    Raises:
        BadInputError: a holdout source is refused by the source policy, missing or malformed.
        TagifaiError: it could not be read for now.
    """
    projects_url, tags_url, whole = holdout_sources(settings)
    fetched = fetched or {}
    urls = (projects_url, tags_url)
    raw = [fetched[url].read_bytes() if url in fetched else sources.fetch(url, settings) for url in urls]
    projects = data.parse_csv(raw[0], f"holdout projects ({redact(projects_url)})", data.PROJECT_COLUMNS)
    tags = data.parse_csv(raw[1], f"holdout tags ({redact(tags_url)})", data.TAG_COLUMNS)
    frame = data.holdout(data.transform(projects, tags), settings.data, whole)
    return frame, data.sha256(data.to_csv_bytes(frame))
