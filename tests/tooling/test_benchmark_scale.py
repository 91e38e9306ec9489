import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from benchmarks import scale


def commands(pids: list[int]) -> list[str]:
    """The sorted command names of `pids` (those still running)."""
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return sorted(names)


def test_the_memory_sampler_finds_every_process_a_container_s_first_one_started_and_they_started():
    # What `docker top` listed: the step's process, its scoring forks, and anything they start in turn.
    shell = subprocess.Popen(["sh", "-c", "sh -c 'sleep 60 & sleep 60 & wait' & sleep 60 & wait"])
    try:
        # The shell, its sleep and inner shell, the inner shell's two sleeps: each once (a fork shows as `sh`
        # until it runs `sleep`, so wait for all five to be what they will be).
        expected, deadline = ["sh", "sh", "sleep", "sleep", "sleep"], time.monotonic() + 10
        while (names := commands(found := scale.descendants(shell.pid))) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert names == expected
        assert found[0] == shell.pid and len(set(found)) == len(found)
    finally:
        for pid in reversed(scale.descendants(shell.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shell.wait()


def test_the_memory_sampler_finds_no_process_of_one_that_is_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert scale.descendants(gone.pid) == []
