"""`tagifai checksum`: what the watcher compares, read as `elt` reads a source (under the same policy)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def test_checksum_is_the_sha256_of_the_sources_content(cli):
    projects = cli.env["TAGIFAI_PROJECTS_URL"]
    _, out, _ = cli("checksum", projects)
    content = Path(projects).read_bytes()
    assert out == {"source": projects, "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    # The same file as a file:// URL: the same content, the same sha256.
    assert cli("checksum", Path(projects).as_uri())[1]["sha256"] == out["sha256"]


def test_checksum_refuses_a_source_outside_the_data_folders(cli, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = cli("checksum", "/etc/passwd", check=False, TAGIFAI_DATA_DIRS=str(elsewhere))
    assert code == 3 and out is None
    assert (
        err.strip().splitlines()[-1].startswith("error: /etc/passwd is outside the data folders this deployment allows")
    )
