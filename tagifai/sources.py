"""Read a data source given as an http(s) URL, a file:// URL or a plain path."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tagifai.errors import TagifaiError

TIMEOUT_SECONDS = 60


def fetch(source: str) -> bytes:
    """Return the bytes behind `source`.

    Args:
        source: `http://…`, `https://…`, `file:///…` or a filesystem path.

    Returns:
        The raw content.

    Raises:
        TagifaiError: the file is missing or the URL cannot be read.
    """
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
                return response.read()
        except urllib.error.HTTPError as exc:
            raise TagifaiError(f"cannot download {source}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TagifaiError(f"cannot download {source}: {getattr(exc, 'reason', exc)}") from exc
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path)) if scheme == "file" else Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise TagifaiError(f"data file not found: {source}") from exc
    except OSError as exc:
        raise TagifaiError(f"cannot read {source}: {exc.strerror}") from exc
