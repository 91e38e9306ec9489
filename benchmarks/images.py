"""Image sizes, and how long the `tagifai` image takes to rebuild after a one-line code change.

The rebuild runs on a copy of the build context with one source file edited (the checkout is never
touched), tagged apart from `tagifai:latest`, and built exactly as `make image` builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGES = {
    "tagifai": "tagifai:latest",
    "mlflow": "tagifai-mlflow:latest",
    "airflow": "tagifai-airflow:latest",
}
REBUILD_TAG = "tagifai:benchmark-rebuild"


def context_paths() -> list[str]:
    """What `.dockerignore` lets back into the tagifai image's context (its `!` lines)."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


def size(image: str) -> int | None:
    """The image's size in bytes, or None when it is not built here."""
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True)
    return int(proc.stdout) if proc.returncode == 0 else None


def build(context: Path, python_image: str) -> float:
    """Build the tagifai image from `context` as `make image` does; return the seconds it took."""
    start = time.monotonic()
    subprocess.run(
        [
            "docker", "build", "--network", "host", "-q",
            "-f", str(context / "images" / "tagifai" / "Dockerfile"),
            "--build-arg", f"PYTHON_IMAGE={python_image}",
            "-t", REBUILD_TAG, str(context),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return time.monotonic() - start


def rebuild_seconds(python_image: str) -> float:
    """Seconds to rebuild the tagifai image after editing one line of `tagifai/pipeline/steps.py`."""
    context = Path(tempfile.mkdtemp(prefix="tagifai-bench-image-"))
    try:
        shutil.copytree(REPO / "images" / "tagifai", context / "images" / "tagifai")
        for name in context_paths():
            source, target = REPO / name, context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.exists():  # build/wheelhouse only where WHEELHOUSE staged one
                shutil.copy2(source, target)
        build(context, python_image)  # warm: every layer from the cache `make image` filled
        with (context / "tagifai" / "pipeline" / "steps.py").open("a", encoding="utf-8") as f:
            f.write(f"# benchmark rebuild {time.time()}\n")
        return build(context, python_image)
    finally:
        subprocess.run(["docker", "rmi", REBUILD_TAG], capture_output=True)
        shutil.rmtree(context, ignore_errors=True)


def measure() -> dict[str, Any]:
    """Sizes of the stack's images (those built here) and the code-only rebuild time."""
    python_image = os.environ.get("PYTHON_IMAGE") or "python:3.11-slim-bookworm"
    return {
        "bytes": {name: size(image) for name, image in IMAGES.items()},
        "base_image": python_image,
        "base_bytes": size(python_image),
        "rebuild_seconds": rebuild_seconds(python_image),
    }
