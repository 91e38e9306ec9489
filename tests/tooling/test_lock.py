"""The image's lock (images/tagifai/requirements.lock): current, reproducible, and what the image holds.

`make lock` resolves it with uv from pyproject.toml alone (PyPI as of [tool.uv] exclude-newer), so running
it again must give the committed file byte for byte: that proves both that it is deterministic and that
nobody changed the dependencies without re-locking. It needs PyPI (uv's cache makes it a few seconds).
torch stays out of the lock; its CPU wheel's requirements, copied into [tool.uv], must be those of the
torch the image and the wheelhouse really hold. The image tests need Docker and a built `tagifai:latest`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness import REPO, TAGIFAI_VENV, docker_ok, require

LOCK = REPO / "images" / "tagifai" / "requirements.lock"
DOCKERFILE = REPO / "images" / "tagifai" / "Dockerfile"
IMAGE = "tagifai:latest"
LABEL = "org.tagifai.lock-sha256"
# The environment the image runs: the lock's markers are evaluated for it.
IMAGE_ENVIRONMENT = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
}
# A package line (name==version, perhaps a marker) and the hash lines that follow it.
ENTRY = re.compile(
    r"^(?P<requirement>[A-Za-z0-9][^\s\\]*(?: ; [^\\\n]+)?) \\\n"
    r"(?P<hashes>(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
    flags=re.M,
)


def locked() -> dict[str, str]:
    """The lock's pins that apply in the image: canonical name -> version."""
    pins = {}
    for match in ENTRY.finditer(LOCK.read_text(encoding="utf-8")):
        requirement = Requirement(match["requirement"])
        if requirement.marker is None or requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            (specifier,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def torch_metadata() -> dict:
    """[[tool.uv.dependency-metadata]]'s torch: the CPU wheel's requirements, which the lock is resolved with."""
    (entry,) = [e for e in pyproject()["tool"]["uv"]["dependency-metadata"] if e["name"] == "torch"]
    return entry


def torch_pin() -> str:
    """The version pyproject.toml's [project].dependencies pin torch to."""
    (pin,) = [d.split("==")[1] for d in pyproject()["project"]["dependencies"] if Requirement(d).name == "torch"]
    return pin


def removed_in_image() -> set[str]:
    """What the Dockerfile uninstalls after installing the lock (declared, never loaded)."""
    (line,) = re.findall(r"pip uninstall --yes --quiet ([^\\&\n]+)", DOCKERFILE.read_text(encoding="utf-8"))
    return {canonicalize_name(name) for name in line.split()}


def test_make_lock_reproduces_the_committed_lock_byte_for_byte(tmp_path):
    uv = TAGIFAI_VENV / "bin" / "uv"
    if not uv.exists():
        pytest.fail(f"{uv} is missing: `make install` (pyproject.toml's dev extra pins uv)")
    out = tmp_path / "requirements.lock"
    done = subprocess.run(
        ["make", "--no-print-directory", "lock", f"LOCK={out}", f"BIN={TAGIFAI_VENV / 'bin'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes() == LOCK.read_bytes(), "the lock is not current: run `make lock` and commit it"


def test_the_lock_pins_every_package_with_hashes_and_leaves_cuda_and_torch_out():
    text = LOCK.read_text(encoding="utf-8")
    packages = [line for line in text.splitlines() if re.match(r"[A-Za-z0-9]", line)]
    entries = list(ENTRY.finditer(text))
    assert len(entries) == len(packages) > 100  # each package line opens an entry with its hashes
    assert "nvidia" not in text
    assert not re.search(r"^torch==", text, flags=re.M)
    # torch's own requirements (from its CPU wheel) are in, at versions they accept.
    pins = locked()
    for spec in torch_metadata()["requires-dist"]:
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"torch needs {spec}, which the lock lacks"
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{spec} vs {pins[name]}"


def test_the_torch_the_lock_assumes_is_the_one_the_image_and_venv_install():
    metadata = torch_metadata()
    assert metadata["version"] == torch_pin()
    (image_torch,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), flags=re.M)
    assert image_torch == f"{torch_pin()}+cpu"


def test_the_cpu_wheels_requirements_are_the_ones_the_lock_was_resolved_with():
    wheelhouse = os.environ.get("WHEELHOUSE", "")
    wheels = sorted(Path(wheelhouse).glob(f"torch-{torch_pin()}+cpu-*.whl")) if wheelhouse else []
    if not wheels:  # users get torch from PyTorch's index: the image test compares the image's torch instead
        pytest.skip("no CPU torch wheel in $WHEELHOUSE")
    with zipfile.ZipFile(wheels[0]) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        requires = Parser().parsestr(wheel.read(name).decode()).get_all("Requires-Dist")
    assert requires == torch_metadata()["requires-dist"]


@pytest.mark.e2e
@pytest.mark.docker
def test_the_image_is_labelled_with_the_lock_it_installed():
    require(docker_ok("image", "inspect", IMAGE), f"no {IMAGE} (make image)")
    label = subprocess.run(
        ["docker", "image", "inspect", IMAGE, "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    script = (
        "sha256sum /opt/venv/requirements.lock; echo ---; pip check; echo ---; pip freeze; echo ---; "
        'python -c \'import importlib.metadata as m; print(*m.requires("torch"), sep="\\n")\''
    )
    ran = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", IMAGE, "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    digest, check, freeze, torch_requires = ran.stdout.split("---\n")
    committed = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert label == committed, f"{IMAGE} was built from another lock: make image"
    assert digest.split() == [committed, "/opt/venv/requirements.lock"]
    # pip check finds nothing missing but what the Dockerfile removes on purpose, and no version conflict.
    removed = removed_in_image()
    for line in check.splitlines():
        missing = re.fullmatch(r"\S+ \S+ requires (\S+), which is not installed\.", line)
        assert missing and canonicalize_name(missing[1]) in removed, line
    installed = {
        canonicalize_name(name): version
        for name, version in (line.split("==") for line in freeze.splitlines() if "==" in line)
    }
    expected = {name: version for name, version in locked().items() if name not in removed | {"setuptools"}}
    assert {name: installed.get(name) for name in expected} == expected
    assert installed["torch"] == f"{torch_pin()}+cpu"
    assert not [name for name in installed if name.startswith("nvidia")]
    assert torch_requires.splitlines() == torch_metadata()["requires-dist"]
