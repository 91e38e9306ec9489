"""The services tests and benchmarks run against, and the `tagifai` CLI as a user runs it.

Standard library only: the Airflow venv (no mlflow, no pandas) imports this too. It sits outside
`tests/` because both tests and `make benchmark` (`python -m benchmarks.run`, from the repo) use it.

- `require`: skip when a service is missing, or fail under TAGIFAI_REQUIRE_SERVICES=1 (CI).
- `running_postgres`: a throwaway PostgreSQL (whatever version Debian installed) on 127.0.0.1.
- `running_mlflow_server`: `mlflow server` (the tagifai venv's) on a backend store, proxying artifacts.
- `Cli` / `run_json`: run a command whose last stdout line is one JSON object, and return it.

`Cli` runs `tagifai` as a new process each time. From the tagifai venv, that process is forked from a
server that has already imported tagifai, mlflow and their stores (`PRELOAD`), before it sees the
command's environment, folder or argv: a command then costs its work, not 5-10 s of imports.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TAGIFAI_VENV = Path(os.environ.get("TAGIFAI_VENV", REPO / ".venv"))
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".venv-airflow"))
TAGIFAI = TAGIFAI_VENV / "bin" / "tagifai"
TAGIFAI_PYTHON = TAGIFAI_VENV / "bin" / "python"
MLFLOW = TAGIFAI_VENV / "bin" / "mlflow"
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
PRELOAD = (
    "tagifai.cli",
    "tagifai.pipeline.steps",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)


def require(condition: bool, reason: str) -> None:
    """Skip the test when `condition` is false, or fail when TAGIFAI_REQUIRE_SERVICES=1."""
    if condition:
        return
    import pytest

    if os.environ.get("TAGIFAI_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (TAGIFAI_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@contextlib.contextmanager
def while_running(work: Callable[[threading.Event], Any], join_seconds: float = 60) -> Iterator[threading.Event]:
    """`work(stop)` in a daemon thread while the block runs; on leaving, `stop` is set and the thread joined."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=join_seconds)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `check()` until it returns true; fail naming `what` after `timeout` seconds or when `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def answers(url: str, status: int = 200) -> bool:
    """True when `url` answers `status` now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == status
    except urllib.error.HTTPError as exc:
        return exc.code == status


def docker_ok(*args: str) -> bool:
    """True when `docker ARGS` succeeds (e.g. `docker_ok("info")`: an engine runs)."""
    return bool(shutil.which("docker")) and subprocess.run(["docker", *args], capture_output=True).returncode == 0


def world_readable(folder: Path) -> Path:
    """Let the image's non-root user read `folder` when it is bind-mounted into a container."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries installed (`PG_BIN` to choose), or None."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class Postgres:
    """A running throwaway cluster: `postgres["mlflow"]` is the SQLAlchemy URL of its database `mlflow`."""

    def __init__(self, bindir: Path, port: int) -> None:
        """Name the binaries and the port of a cluster that is up."""
        self.bindir, self.port = bindir, port

    def create_database(self, name: str) -> str:
        """Create database `name`; return its URL."""
        createdb = [self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]
        subprocess.run(createdb, check=True, capture_output=True)
        return self[name]

    def __getitem__(self, database: str) -> str:
        """The URL of `database`."""
        # Name the driver: SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3, which mlflow lacks.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def running_postgres(*databases: str) -> Iterator[Postgres]:
    """Run a throwaway PostgreSQL on 127.0.0.1 with `databases` created; yield it.

    The Debian binaries refuse to run as root, so the cluster belongs to the `postgres` user, in a
    folder of its own under /tmp (pytest's tmp_path is root-only).
    """
    bindir = postgres_bin()
    require(bindir is not None, "PostgreSQL server binaries not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="tagifai-pg-"))
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    initdb = [*run_as, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(initdb, check=True, capture_output=True)
    port = free_port()
    # A cluster thrown away at the end: nothing waits for the disk (what PostgreSQL's docs suggest for one).
    unsynced = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    listen = [bindir / "postgres", "-D", data, "-p", str(port), "-k", folder, "-c", "listen_addresses=127.0.0.1"]
    server = subprocess.Popen(
        [*run_as, *listen, *unsynced],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)]
        wait_for(lambda: subprocess.run(ready, capture_output=True).returncode == 0, "PostgreSQL", proc=server)
        postgres = Postgres(bindir, port)
        for database in databases:
            postgres.create_database(database)
        yield postgres
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


def query(url: str, sql: str, *args: Any, autocommit: bool = False) -> list[tuple]:
    """Run `sql` with `args` on a connection of its own to the PostgreSQL database at `url` (a SQLAlchemy URL, as
    tagifai's settings name one); the rows it returns, if any."""
    import psycopg2  # here: .venv-airflow imports this package too, without tagifai's dependencies

    from tagifai.pipeline import predictions

    connection = psycopg2.connect(predictions.dsn(url))
    connection.autocommit = autocommit
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server`: its URL, the folder where it keeps the artifacts it proxies, its admin login."""

    uri: str
    artifacts: Path
    admin: tuple[str, str] | None = None

    def as_admin(self) -> dict[str, str]:
        """The environment of an MLflow client logged in to this server as its admin (an `auth` server)."""
        assert self.admin is not None, "this server has no login (started without auth)"
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": self.admin[0],
            "MLFLOW_TRACKING_PASSWORD": self.admin[1],
        }


# MLflow's basic-auth app as the stack configures it (images/mlflow/start.py): people may read everything.
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{folder}/basic_auth.db
# A checked login cached for a minute, as in the stack: each check is a scrypt hash (0.35 s of CPU).
auth_cache_ttl_seconds = 60
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@contextlib.contextmanager
def running_mlflow_server(
    backend_uri: str, folder: Path, env: Mapping[str, str] | None = None, auth: bool = False
) -> Iterator[MlflowServer]:
    """Run `mlflow server` on 127.0.0.1 with `backend_uri`, proxying artifacts kept in `folder`.

    With `auth`, MLflow's basic-auth app (as in the stack) with an admin login of its own (`.admin`).
    """
    require(MLFLOW.exists(), f"tagifai venv not found at {TAGIFAI_VENV} (make install)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        MLFLOW, "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(folder / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    admin = None
    if auth:
        admin = ("admin", secrets.token_urlsafe(18))
        (folder / "basic_auth.ini").write_text(AUTH_INI.format(folder=folder), encoding="utf-8")
        command += ["--app-name", "basic-auth"]
        env = {
            **(env or {}),
            "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
    with (folder / "mlflow-server.log").open("w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            # As in the stack: no server-side jobs (seven Huey consumers, each importing MLflow).
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
            # A process group of its own, for stop(), in the tests' session: the server's CPU weighs with its
            # tests' (a session of its own would weigh as much as all of the stack's containers together).
            process_group=0,
        )
        try:
            wait_for(lambda: answers(f"{url}/health"), "mlflow server", 120, server)
            yield MlflowServer(url, folder / "artifacts", admin)
        finally:
            stop(server)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server (its whole process group when it leads one): TERM, then KILL."""
    group = os.getpgid(process.pid) == process.pid if process.poll() is None else False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15) if group else process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9) if group else process.kill()
        process.wait()


def last_json(stdout: str) -> Any:
    """The JSON object on the last line of a command's stdout."""
    return json.loads(stdout.strip().splitlines()[-1])


class Cli:
    """Runs a JSON-printing command (`tagifai` by default) with a fixed environment and folder."""

    def __init__(self, env: Mapping[str, str], cwd: Path, program: Sequence[str | Path] = (TAGIFAI,)) -> None:
        """Remember the environment, the working folder and the program (argv before the arguments)."""
        self.env, self.cwd, self.program = dict(env), cwd, list(program)

    def __call__(self, *args: str, check: bool = True, **extra_env: str) -> tuple[int, Any, str]:
        """Run `PROGRAM ARGS`: (exit code, last-line JSON or None when it failed, stderr)."""
        if self.program != [TAGIFAI] or Path(sys.prefix).resolve() != TAGIFAI_VENV.resolve():
            return self.wait(self.start(*args, **extra_env), check=check)
        return self.finished(self.forked(list(args), {**self.env, **extra_env}), check)

    def forked(self, args: list[str], env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess:
        """Run `tagifai ARGS` in a process forked from the preloaded server (see the module's doc)."""
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            process = _preloaded().Process(target=_run_tagifai, args=(args, env, str(self.cwd), str(out), str(err)))
            process.start()
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join()
            return subprocess.CompletedProcess([TAGIFAI, *args], process.exitcode, out.read_text(), err.read_text())

    def start(self, *args: str, **extra_env: str) -> subprocess.Popen:
        """Start `PROGRAM ARGS` without waiting for it."""
        return subprocess.Popen(
            [*self.program, *args],
            env={**self.env, **extra_env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def wait(proc: subprocess.Popen, check: bool = True, timeout: float = 3600) -> tuple[int, Any, str]:
        """Wait for a started command: (exit code, last-line JSON or None, stderr)."""
        stdout, stderr = proc.communicate(timeout=timeout)
        return Cli.finished(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), check)

    @staticmethod
    def finished(done: subprocess.CompletedProcess, check: bool) -> tuple[int, Any, str]:
        """(exit code, last-line JSON or None, stderr) of a finished command; raise if `check` and it failed."""
        if check and done.returncode != 0:
            argv = " ".join(map(str, done.args))
            raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stderr[-3000:]}")
        result = last_json(done.stdout) if done.returncode == 0 and done.stdout.strip() else None
        return done.returncode, result, done.stderr


@functools.cache
def _preloaded() -> Any:
    """A multiprocessing context whose processes fork from a server that has imported `PRELOAD`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _run_tagifai(argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In the forked process: become `tagifai ARGV` run in `cwd` with `env`, writing to the two files."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [str(TAGIFAI), *argv]
    from tagifai.cli import app  # noqa: PLC0415 - already imported by the server (PRELOAD)

    app()


def tagifai_python(script: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """Run `script` with the tagifai venv's python; return the JSON it prints last (MLflow, from Airflow tests)."""
    return Cli({**os.environ, **(env or {})}, Path.cwd(), [TAGIFAI_PYTHON, "-c", script])(*args)[1]
