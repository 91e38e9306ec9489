"""Read a data source (an http(s) URL, a file:// URL or a path) under the deployment's source policy.

The policy itself is `tagifai_sources` (standard library, shared with the DAG, which checks the
same rules before any step starts): local data only from `TAGIFAI_DATA_DIRS`, URLs only from
`TAGIFAI_ALLOWED_URL_HOSTS` and never from private addresses, redirects under the same rules. It is
enforced where those settings are present (the stack); on a person's own machine the CLI reads what
that person can. Every fetch stops at `[data] max_bytes` and `[data] fetch_deadline_seconds`.
"""

from __future__ import annotations

import os
from typing import Any

import tagifai_sources

from tagifai.errors import BadInputError, TagifaiError


def policy(settings: dict[str, Any]) -> tagifai_sources.SourcePolicy:
    """The source policy of this process's environment; the pinned upstream hosts are allowed by default."""
    defaults = [settings["data"]["projects_url"], settings["data"]["tags_url"]]
    try:
        return tagifai_sources.SourcePolicy.from_environ(os.environ, defaults)
    except ValueError as exc:  # a malformed TAGIFAI_DATA_DIRS / TAGIFAI_ALLOWED_URL_HOSTS
        raise BadInputError(str(exc)) from exc


def fetch(source: str, settings: dict[str, Any]) -> bytes:
    """Return the bytes behind `source`.

    Raises:
        BadInputError: the policy refuses the source, it is too large, missing or not a file.
        TagifaiError: it could not be read for now (network, HTTP 5xx, the deadline): worth a retry.
    """
    data = settings["data"]
    try:
        return tagifai_sources.fetch(
            source, policy(settings), max_bytes=data["max_bytes"], deadline_seconds=data["fetch_deadline_seconds"]
        )
    except tagifai_sources.SourceRefused as exc:
        raise BadInputError(str(exc)) from exc
    except tagifai_sources.SourceUnavailable as exc:
        raise (TagifaiError if exc.transient else BadInputError)(str(exc)) from exc


redact = tagifai_sources.redact
