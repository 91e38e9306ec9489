#!/usr/bin/env python3
"""Helpers for the compose stack that make calls (standard library only, so any python3 runs them).

`python3 scripts/stack.py --help` lists its commands. Every command reads the settings file as compose
does (`read_env`): a variable exported in the shell wins.

No secret is ever put on a command line: they travel in files and environment variables.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The Airflow client is the package's (standard library only, like this script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagifai.contract import names  # noqa: E402
from tagifai.contract.sources import SourcePolicy  # noqa: E402
from tagifai.operations.airflow_api import DAG_ID, Airflow, AirflowError  # noqa: E402

SECRETS = (
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "OPTUNA_DB_PASSWORD",
    "TAGIFAI_DB_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_SECRET_KEY",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SERVE_PASSWORD",
    "MLFLOW_BATCH_PASSWORD",
    "MLFLOW_VIEWER_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "REDIS_PASSWORD",
    "FLOWER_PASSWORD",
)
# The services' own MLflow logins (`tagifai serve`, batch scoring): no person holds them. `make up` gives
# them passwords where .env has none (`logins`: an .env older than them), and MLflow's start resets them to
# .env's at every start (images/mlflow/start.py), whatever was changed through the API.
SERVICE_PASSWORDS = ("MLFLOW_SERVE_PASSWORD", "MLFLOW_BATCH_PASSWORD")
# Secrets that may be left empty: the shared viewer login is optional (empty: none).
OPTIONAL = ("MLFLOW_VIEWER_PASSWORD",)
# The subcommands and their line in `--help`.
COMMANDS = {
    "env": "write .env with fresh secrets (--set KEY=VALUE: also set KEY; empty values are ignored)",
    "logins": "give the services' own MLflow logins passwords in the settings file where it has none",
    "wait": "wait until compose services are healthy",
    "preflight": "refuse a .env with placeholders, or one the volumes were not made with",
    "get": "print a setting of the stack as compose sees it (the shell's value wins)",
    "scale": "print the compose up options that start the Celery workers",
    "summary": "print the URLs, logins and data sources",
    "settings": "check config/ and TAGIFAI_CONFIG against the settings schema",
    "mlflow-user": "add an MLflow login (reads everything, changes what it creates); its password is printed once",
    "trigger": "trigger a DAG (default tagifai_training) through the REST API and wait",
    "unpause": "unpause DAGs through the REST API, each once Airflow has parsed it",
    "reproduce": "run `tagifai reproduce` in the image a version was trained in (else say which commit to build)",
}
# Who runs the tasks: the executor and the compose profile that starts it.
EXECUTOR_PROFILES = {"LocalExecutor": "local", "CeleryExecutor": "celery"}
# The placeholder .env.example holds: a stack never starts with it.
PLACEHOLDER = "change-me"
# Written into the postgres volume when it is first made (images/postgres/initdb): a sha256 per secret.
FINGERPRINT = "tagifai-secrets.sha256"


def read_env(path: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The stack's settings as compose sees them: `path`'s KEY=VALUE lines, a variable of the shell winning.

    The one reader of `.env` (make, these scripts, the tests): compose substitutes a variable exported in
    the shell over the file's value, and so does this, so nothing reads a value the stack does not use.
    """
    shell = os.environ if environ is None else environ
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return {**values, **shell}


def docker_gid(socket: str = "/var/run/docker.sock") -> int | None:
    """The group owning the docker socket, if it is here."""
    try:
        return os.stat(socket).st_gid if stat.S_ISSOCK(os.stat(socket).st_mode) else None
    except OSError:
        return None


def write_env(template: Path, target: Path, overrides: dict[str, str]) -> None:
    """Write `target` from `template`: fresh secrets, this machine's ids, then `overrides`."""
    values = {key: secrets.token_urlsafe(24) for key in SECRETS}
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    values["AIRFLOW_UID"] = str(os.getuid() or 50000)  # never root
    if (gid := docker_gid()) is not None:
        values["DOCKER_GID"] = str(gid)
    values.update({k: v for k, v in overrides.items() if v})
    lines = []
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key}={values[key]}" if "=" in line and not line.startswith("#") and key in values else line)
    write_private(target, "\n".join(lines) + "\n")
    print(
        f"wrote {target} (secrets generated; AIRFLOW_UID={values['AIRFLOW_UID']}, "
        f"DOCKER_GID={values.get('DOCKER_GID', 'unchanged')})"
    )


def update_env(path: Path, values: dict[str, str]) -> None:
    """Set KEY=VALUE lines of a settings file (appended when missing), as a person edits .env."""
    lines = path.read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in lines}
    lines = [f"{key}={values[key]}" if (key := line.split("=", 1)[0]) in values else line for line in lines]
    write_private(path, "\n".join([*lines, *(f"{k}={v}" for k, v in values.items() if k not in keys)]) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file of secrets that only its owner may ever read: made 0600 before a byte is in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as file:
        file.write(text)


def service_logins(path: Path) -> None:
    """Give the services' own MLflow logins (`SERVICE_PASSWORDS`) passwords in the settings file `path`, if none."""
    env = read_env(path, {})
    if missing := {key: secrets.token_urlsafe(24) for key in SERVICE_PASSWORDS if not env.get(key)}:
        update_env(path, missing)
        print(f"{path}: passwords for the MLflow logins of serve and batch scoring ({', '.join(missing)})")


def placeholders(env: dict[str, str]) -> list[str]:
    """The secrets of a settings file that are empty (unless `OPTIONAL`) or still `change-me`."""
    keys = [*SECRETS, "AIRFLOW_FERNET_KEY"]
    return [
        key
        for key in keys
        if key in env and (env[key].strip() == PLACEHOLDER or (not env[key].strip() and key not in OPTIONAL))
    ]


def executor_mismatch(env: dict[str, str]) -> str | None:
    """Why AIRFLOW_EXECUTOR and COMPOSE_PROFILES do not start one scheduler that can run the tasks, or None."""
    executor = env.get("AIRFLOW_EXECUTOR", "LocalExecutor")
    if executor not in EXECUTOR_PROFILES:
        return f"AIRFLOW_EXECUTOR={executor}: use LocalExecutor or CeleryExecutor"
    profiles = {p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",") if p.strip()}
    wanted = EXECUTOR_PROFILES[executor]
    if wanted not in profiles or profiles & set(EXECUTOR_PROFILES.values()) != {wanted}:
        given = env.get("COMPOSE_PROFILES", "")
        return f"AIRFLOW_EXECUTOR={executor} runs with COMPOSE_PROFILES={wanted} (not {given!r})"
    return None


def fingerprint_mismatch(recorded: str, env: dict[str, str]) -> list[str]:
    """The secrets whose sha256 in a volume's fingerprint (`NAME sha256` lines) differs from the settings file's."""
    wrong = []
    for line in recorded.splitlines():
        name, _, digest = line.partition(" ")
        if name and hashlib.sha256(env.get(name, "").encode()).hexdigest() != digest.strip():
            wrong.append(name)
    return wrong


def volume_fingerprint(project: str, image: str) -> str | None:
    """The fingerprint file of the project's postgres volume, or None (no volume yet, or made before fingerprints).

    Read by a throwaway container of the postgres image: nothing of the stack starts.
    """
    volume = f"{project}_postgres-data"
    if subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).returncode != 0:
        return None
    read = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "cat", "-v", f"{volume}:/data:ro", image, f"/data/{FINGERPRINT}"],
        capture_output=True,
        text=True,
    )
    return read.stdout if read.returncode == 0 else None


def preflight(env_file: Path) -> int:
    """Refuse, in one line, a settings file that cannot start this stack: placeholders, or another stack's volumes."""
    env = read_env(env_file)
    if missing := placeholders(env):
        print(
            f"{env_file}: {', '.join(missing)} still empty or '{PLACEHOLDER}': delete {env_file} and run `make up` "
            "to generate fresh secrets (or fill them in)",
            file=sys.stderr,
        )
        return 1
    if problem := executor_mismatch(env):
        print(f"{env_file}: {problem}", file=sys.stderr)
        return 1
    project = env.get("COMPOSE_PROJECT_NAME", "tagifai")
    recorded = volume_fingerprint(project, env.get("POSTGRES_IMAGE") or "postgres:16")
    if recorded and (wrong := fingerprint_mismatch(recorded, env)):
        print(
            f"the volumes of compose project {project!r} were made with other secrets than {env_file} "
            f"({', '.join(wrong)} differ): restore the .env they were made with, or run `make clean` to delete "
            "them and start over (all runs, models and Airflow history are lost)",
            file=sys.stderr,
        )
        return 1
    return 0


def wait(compose: list[str], services: list[str], timeout: float) -> int:
    """Wait until every container of `services` (none given: of every running service) is healthy.

    One-shot services (airflow-init) count when they exited 0. Prints the last states on timeout.
    """
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = container_states(compose, services)
        if states and all(state in ("healthy", "exited 0") for state in states.values()):
            print("healthy: " + ", ".join(sorted(states)))
            return 0
        time.sleep(3)
    print(f"not healthy after {timeout:.0f}s: {states}", file=sys.stderr)
    return 1


def container_states(compose: list[str], services: list[str]) -> dict[str, str]:
    """Health of each container of `services` (all when empty), by name: healthy, starting, exited 0, ..."""
    ids = subprocess.run([*compose, "ps", "-q", *services], capture_output=True, text=True).stdout.split()
    if not ids:
        return {}
    template = (
        "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}"
        '{{if eq .State.Status "exited"}} {{.State.ExitCode}}{{end}}{{end}}'
    )
    out = subprocess.run(["docker", "inspect", "--format", template, *ids], capture_output=True, text=True).stdout
    return dict(line.lstrip("/").split(" ", 1) for line in out.splitlines() if " " in line)


def mlflow_user(env: dict[str, str], args: argparse.Namespace) -> int:
    """Add a login to the stack's MLflow: it may read everything and change only what it creates."""
    url = f"{published(env, 'MLFLOW_PORT', '5000')}/api/2.0/mlflow/users/create"
    password = secrets.token_urlsafe(18)
    admin = f"{env.get('MLFLOW_ADMIN_USERNAME', 'admin')}:{env['MLFLOW_ADMIN_PASSWORD']}"
    request = urllib.request.Request(
        url,
        data=json.dumps({"username": args.name, "password": password}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(admin.encode()).decode(),
        },
    )
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as exc:
        print(
            f"MLflow refused user {args.name!r}: HTTP {exc.code} {exc.read().decode(errors='replace')[:300]}",
            file=sys.stderr,
        )
        return 1
    print(f"MLflow login {args.name} / {password}  (shown once: it can read every run and model)")
    return 0


def published(env: dict[str, str], port: str, default: str) -> str:
    """The URL of a port the stack publishes on its BIND_ADDRESS (0.0.0.0 or unset: 127.0.0.1)."""
    host = env.get("BIND_ADDRESS") or "127.0.0.1"
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{env.get(port) or default}"


def airflow_client(env: dict[str, str]) -> Airflow:
    """The stack's Airflow REST API, logged in as its admin."""
    url = published(env, "AIRFLOW_PORT", "8080")
    return Airflow(url, env.get("AIRFLOW_ADMIN_USER", "admin"), env["AIRFLOW_ADMIN_PASSWORD"])


def unpause(env: dict[str, str], args: argparse.Namespace) -> int:
    """Unpause DAGs (new DAGs start paused), each as soon as Airflow has parsed it."""
    client = airflow_client(env)
    deadline = time.monotonic() + args.timeout
    for dag_id in args.dags:
        while True:
            try:
                client.unpause(dag_id)
                break
            except AirflowError as exc:  # 404 until the dag-processor has parsed the file
                if exc.status != 404 or time.monotonic() > deadline:
                    print(f"cannot unpause {dag_id}: {exc}", file=sys.stderr)
                    return 1
            time.sleep(2)
    print(f"unpaused: {' '.join(args.dags)}")
    return 0


def trigger(env: dict[str, str], args: argparse.Namespace) -> int:
    """Trigger the DAG, wait, report; exit 1 if the run failed."""
    try:
        conf = json.loads(args.conf or "{}")
    except ValueError as exc:
        print(f"CONF is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(conf, dict):
        print(f"CONF must be a JSON object of the DAG's params, not {args.conf}", file=sys.stderr)
        return 2
    client = airflow_client(env)
    try:
        run_id = client.trigger(conf, args.dag)
    except AirflowError as exc:
        print(f"Airflow refused the run: {exc}", file=sys.stderr)
        return 1
    print(f"triggered {args.dag} run {run_id}; waiting (timeout {args.timeout:.0f}s)…", flush=True)
    run = client.wait(run_id, args.timeout, args.dag)
    print(f"run {run_id}: {run['state']}  tasks: {client.task_states(run_id, args.dag)}")
    run_url = f"/dags/{args.dag}/runs/{urllib.request.quote(run_id, safe='')}"
    print(f"Airflow: {published(env, 'AIRFLOW_PORT', '8080')}{run_url}")
    if args.dag == DAG_ID:
        print(f"MLflow model: {published(env, 'MLFLOW_PORT', '5000')}/#/models/tagifai")
    return 0 if run["state"] == "success" else 1


def scale(env: dict[str, str]) -> list[str]:
    """The `compose up` options that start the Celery workers, when the celery profile is on."""
    if "celery" not in env.get("COMPOSE_PROFILES", "").split(","):
        return []
    return ["--scale", f"airflow-worker={env.get('CELERY_WORKERS') or 2}"]


def summary(env: dict[str, str]) -> list[str]:
    """What `make up` ends with: where each UI is, its login, and the data the training runs read."""
    login = env.get("AIRFLOW_ADMIN_USER", "admin")
    lines = [
        f"  Airflow  {published(env, 'AIRFLOW_PORT', '8080')}   login: {login} / {env.get('AIRFLOW_ADMIN_PASSWORD')}",
        f"  Serving  {published(env, 'SERVE_PORT', '5001')}/invocations   (the champion; /health, /version)",
        f"  MLflow   {published(env, 'MLFLOW_PORT', '5000')}   admin: {env.get('MLFLOW_ADMIN_USERNAME') or 'admin'} / "
        f"{env.get('MLFLOW_ADMIN_PASSWORD')}",
    ]
    if env.get("MLFLOW_VIEWER_PASSWORD"):
        viewer = env.get("MLFLOW_VIEWER_USERNAME") or "viewer"
        lines.append(f"                                  {viewer} / {env['MLFLOW_VIEWER_PASSWORD']} (shared viewer)")
    lines.append("                                  a login of your own: make mlflow-user NAME=you")
    if scale(env):
        lines.append(
            f"  Flower   {published(env, 'FLOWER_PORT', '5555')}   login: {env.get('FLOWER_USER') or 'admin'} / "
            f"{env.get('FLOWER_PASSWORD')} (Celery workers)"
        )
    for name in names.SOURCE_URL_ENVS:
        lines.append(f"  Data     {name}={env.get(name) or '(the pinned upstream in config/tagifai.toml)'}")
    return lines


def check_settings(env_file: Path) -> int:
    """Check `config/` and the override `TAGIFAI_CONFIG` names against the schema, in the tagifai image.

    Both are mounted at their host paths, so the one line a refused setting gets names the host file.
    """
    env = read_env(env_file)
    image = env.get(names.IMAGE_ENV) or "tagifai:latest"
    folder = Path("config").resolve()
    mounts = ["-v", f"{folder}:{folder}:ro", "-e", f"{names.CONFIG_DIR_ENV}={folder}"]
    if override := env.get(names.CONFIG_ENV):
        path = Path(override).resolve()
        if not path.is_file():
            print(f"{env_file}: {names.CONFIG_ENV}={override}: no such file", file=sys.stderr)
            return 1
        mounts += ["-v", f"{path}:{path}:ro", "-e", f"{names.CONFIG_ENV}={path}"]
    checked = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *mounts, image, "settings"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if checked.returncode != 0:
        print(
            checked.stderr.strip().splitlines()[-1] if checked.stderr.strip() else "settings check failed",
            file=sys.stderr,
        )
    return checked.returncode


# The label `make image` gives the commit an image was built from (images/tagifai/Dockerfile).
REVISION_LABEL = "org.opencontainers.image.revision"


def tools(
    compose: list[str], *command: str, image: str | None = None, capture: bool = False, sources: dict | None = None
) -> subprocess.CompletedProcess:
    """`tagifai COMMAND` in the compose file's `tagifai` tools service (MLflow as its admin), in `image` if given.

    `sources`: the stack's settings, whose data sources and source policy the command gets (by name: the values
    travel in the environment), with each local source's data folder mounted read-only, as a step gets them.
    """
    env = {**os.environ, **({names.IMAGE_ENV: image} if image else {})}
    options = []
    if sources is not None:
        given = (names.PROJECTS_URL_ENV, names.TAGS_URL_ENV, *names.POLICY_ENVS)
        env.update({name: sources[name] for name in given if sources.get(name)})
        options += [arg for name in given if sources.get(name) for arg in ("-e", name)]
        policy = SourcePolicy.from_environ(sources, (), enforce=True)
        local = [sources[n] for n in (names.PROJECTS_URL_ENV, names.TAGS_URL_ENV) if sources.get(n)]
        folders = {policy.data_dir_of(source) for source in local}
        options += [arg for folder in sorted(folders - {None}) for arg in ("-v", f"{folder}:{folder}:ro")]
    argv = [*compose, "--profile", "tools", "run", "--rm", "--no-deps", "-T", *options, "tagifai", *command]
    return subprocess.run(argv, env=env, text=True, capture_output=capture)


def image_present(reference: str) -> bool:
    """Whether the Docker engine has the image `reference` (an id or a tag)."""
    return subprocess.run(["docker", "image", "inspect", reference], capture_output=True).returncode == 0


def rebuilt_image(commit: str) -> str | None:
    """An image here that `make image` built from `commit` (clean), by its revision label; None if there is none."""
    if not commit:
        return None
    found = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label={REVISION_LABEL}={commit}"], capture_output=True, text=True
    ).stdout.split()
    return found[0] if found else None


def reproduce(env: dict[str, str], args: argparse.Namespace) -> int:
    """`tagifai reproduce --version N` in the image version N was trained in: its id, else one built from its commit.

    Exit 3, saying what to build, when neither is here. A version that recorded no image (trained outside
    an image) is tried in the stack's image. The image runs under a tag of its own (compose names images
    by tag): `tagifai:reproduce-<id>`.
    """
    compose = args.compose.split()
    looked = tools(compose, "reproduce", "--version", args.version, "--recorded-image", capture=True)
    if looked.returncode != 0:
        sys.stderr.write(looked.stderr)
        return looked.returncode
    recorded = json.loads(looked.stdout.strip().splitlines()[-1])
    image_id, commit = recorded.get("image_id", ""), recorded.get("commit", "")
    built = f"commit {commit}" + (" with local changes" if recorded.get("dirty") == "true" else "")
    if image_id and image_present(image_id):
        image, why = image_id, f"the image it was trained in ({image_id[:19]})"
    elif (rebuilt := rebuilt_image(commit)) and recorded.get("dirty") != "true":
        image, why = rebuilt, f"an image built from its {built} ({rebuilt[:12]}; it was trained in {image_id[:19]})"
    elif image_id or commit:
        todo = (
            f"build it from {built}: git checkout {commit} && make image, then make reproduce VERSION={args.version}"
            if commit
            else "and the commit it was built from is unknown"
        )
        print(
            f"version {args.version} cannot be reproduced here: the image it was trained in "
            f"({image_id[:19] or recorded.get('image') or 'unknown'}) is not on this machine; {todo}",
            file=sys.stderr,
        )
        return 3
    else:
        image = env.get(names.IMAGE_ENV) or "tagifai:latest"
        why = f"the stack's image {image}: version {args.version} recorded none (trained outside an image)"
    tag = f"tagifai:reproduce-{image.removeprefix('sha256:')[:12]}"
    if image != tag:
        subprocess.run(["docker", "tag", image, tag], check=True, capture_output=True)
    print(f"reproducing version {args.version} of {recorded['model_name']} in {why}", file=sys.stderr, flush=True)
    if args.on_current_data:  # today's sources, as the stack's steps read them
        command = ["reproduce", "--version", args.version, "--on-current-data"]
        return tools(compose, *command, image=tag, sources=env).returncode
    return tools(compose, "reproduce", "--version", args.version, image=tag).returncode


def main() -> int:
    """Dispatch the subcommands."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name, help=text) for name, text in COMMANDS.items()}
    for name in COMMANDS.keys() - {"env", "wait"}:
        commands[name].add_argument("--env-file", type=Path, default=Path(".env"))
    commands["env"].add_argument("--from", dest="template", type=Path, default=Path(".env.example"))
    commands["env"].add_argument("--to", dest="target", type=Path, default=Path(".env"))
    commands["env"].add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="also set KEY")
    commands["wait"].add_argument("services", nargs="*", help="compose services (default: every one started)")
    commands["wait"].add_argument("--timeout", type=float, default=600)
    commands["wait"].add_argument("--compose", default="docker compose", help="the compose command, with its options")
    commands["get"].add_argument("key")
    commands["get"].add_argument("--default", default="")
    commands["mlflow-user"].add_argument("name")
    commands["trigger"].add_argument("--conf", default="{}", help="DAG params as JSON, e.g. '{\"num_trials\": 5}'")
    commands["trigger"].add_argument("--timeout", type=float, default=3600)
    commands["trigger"].add_argument("--dag", default=DAG_ID, help=f"the DAG to run (default {DAG_ID})")
    commands["unpause"].add_argument("dags", nargs="+")
    commands["reproduce"].add_argument("version")
    commands["reproduce"].add_argument("--on-current-data", action="store_true")
    commands["reproduce"].add_argument(
        "--compose", default="docker compose", help="the compose command, with its options"
    )
    commands["unpause"].add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.command == "env":
        write_env(args.template, args.target, dict(kv.split("=", 1) for kv in args.set))
        return 0
    if args.command == "wait":
        return wait(args.compose.split(), args.services, args.timeout)
    if args.command == "logins":
        service_logins(args.env_file)
        return 0
    if args.command == "preflight":
        return preflight(args.env_file)
    if args.command == "settings":
        return check_settings(args.env_file)
    if args.command == "get":  # no settings file yet: the shell's value, else the default
        print((read_env(args.env_file) if args.env_file.exists() else os.environ).get(args.key) or args.default)
        return 0
    settings = read_env(args.env_file)
    if args.command == "scale":
        print(" ".join(scale(settings)))
    elif args.command == "summary":
        print("\n".join(summary(settings)))
    else:
        run = {"mlflow-user": mlflow_user, "trigger": trigger, "unpause": unpause, "reproduce": reproduce}
        return run[args.command](settings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
