"""The image benchmark's rebuild copies the context `.dockerignore` lets in: enough for every COPY."""

from __future__ import annotations

import re

from benchmarks import images
from harness import REPO


def test_the_rebuild_context_holds_every_file_the_tagifai_dockerfile_copies():
    dockerfile = (REPO / "images" / "tagifai" / "Dockerfile").read_text(encoding="utf-8")
    sources = [
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.MULTILINE)
        for source in line.split()[:-1]  # the last word is the destination
        if "[" not in source  # build/wheelhous[e]: optional, present only with a staged wheelhouse
    ]
    allowed = images.context_paths()
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert any(path == a or path.startswith(a + "/") for a in allowed), f"{source} is not in the context"
        assert (REPO / path).exists()
