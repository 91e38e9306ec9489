"""Run one `tagifai` step as a Docker container, a local subprocess or a Kubernetes pod.

`dags/tagifai_training.py` says *what* runs (six steps and their arguments); this module says
*where*, chosen by the environment variable `TAGIFAI_RUNNER`:

- `docker` (default): `DockerOperator` starts the image `TAGIFAI_IMAGE` (default `tagifai:latest`)
  on `DOCKER_HOST` in the network `TAGIFAI_DOCKER_NETWORK` (default `tagifai`, the compose
  network), talking to MLflow at `TAGIFAI_MLFLOW_TRACKING_URI` (default `http://mlflow:5000`).
- `local`: the same command as a subprocess of the worker: `TAGIFAI_BIN` (default `tagifai` on
  PATH), in a temporary folder, with the worker's environment (so MLFLOW_TRACKING_URI should be
  absolute: `sqlite:////abs/path/mlflow.db` or a server).
- `kubernetes`: `KubernetesPodOperator` runs the same image and command in a pod
  (`TAGIFAI_K8S_NAMESPACE`, `TAGIFAI_K8S_IN_CLUSTER`, secrets from the Secret `TAGIFAI_K8S_SECRET`).

Retries, their delay and backoff come from the settings' `[retry]`. A step whose container or pod the
engine killed for memory (`[limits] step_memory`) is not retried: every try would die the same way. The
docker runner asks the engine (`State.OOMKilled`), the kubernetes runner the pod (reason `OOMKilled`); the
local runner has no limit of its own, and a subprocess killed by SIGKILL (exit 137) is retried, since
that signal does not say who sent it.

Every step prints a one-line JSON object as its last stdout line; the operator pushes it to XCom
(the local runner the line, the docker and kubernetes runners the object, read from a file the step
wrote) and the next step reads it with the `fromjson` template filter.

`optimize` fans out: `tagifai_workers` renders its command once per worker (the task
`optimize_workers`, a few milliseconds on the Airflow worker) and maps one task instance over each
copy. The workers share one Optuna study through `TAGIFAI_OPTUNA_STORAGE`, handed over like a secret.

Secrets: a docker step's container gets only its own step's (`STEP_SECRETS`), privately; a local step
inherits the worker's environment, and every kubernetes pod gets the one Secret `TAGIFAI_K8S_SECRET`.

Only the standard library, Airflow and `tagifai.contract` are imported here: the DAGs never import
pandas, mlflow or the rest of tagifai. Settings are read when the DAG file calls
`RunnerSettings.from_env()`, never at import.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import BaseOperator, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from tagifai.contract import names
from tagifai.contract.errors import EXIT_BAD_INPUT
from tagifai.contract.settings import Settings
from tagifai.contract.sources import SourcePolicy, SourceRefused
from tagifai.orchestration import lineage, notify

RUNNERS = ("docker", "local", "kubernetes")

# The secrets each step's container gets, as {name in the container: name on the worker}: only those its
# step uses. Taken from the worker's environment when set there, and handed to containers only through
# `private_environment` (never rendered, never stored with the DAG). A step not listed gets none.
ARTIFACT_STORE = {name: name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
# The pipeline's MLflow login (the admin's in the stack), and an S3/MinIO artifact store's keys.
PIPELINE_LOGIN = {
    **{name: name for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")},
    **ARTIFACT_STORE,
}
# Batch scoring's own read-only login (the stack's MLFLOW_BATCH_*), as MLflow's login in its container.
BATCH_LOGIN = {
    "MLFLOW_TRACKING_USERNAME": names.BATCH_USERNAME_ENV,
    "MLFLOW_TRACKING_PASSWORD": names.BATCH_PASSWORD_ENV,
    **ARTIFACT_STORE,
}
STEP_SECRETS: dict[str, dict[str, str]] = {
    "elt": PIPELINE_LOGIN,
    "validate": PIPELINE_LOGIN,
    # The study its parallel workers share.
    "optimize": {**PIPELINE_LOGIN, names.OPTUNA_STORAGE_ENV: names.OPTUNA_STORAGE_ENV},
    "train": PIPELINE_LOGIN,
    "evaluate": PIPELINE_LOGIN,
    "register": PIPELINE_LOGIN,
    # Applies a held register run's approval decision (moves `champion`, records it).
    "decide": PIPELINE_LOGIN,
    "predict-batch": {**BATCH_LOGIN, names.PREDICTIONS_DB_ENV: names.PREDICTIONS_DB_ENV},
    # Reads a data source and prints its sha256: no MLflow, no database.
    "checksum": {},
    # Reads the inference log and batch predictions, logs its report to MLflow.
    "monitor": {**PIPELINE_LOGIN, names.PREDICTIONS_DB_ENV: names.PREDICTIONS_DB_ENV},
    # Prunes MLflow (runs, versions, and for good, with `mlflow gc`, in its own database) and the inference log.
    "maintain": {
        **PIPELINE_LOGIN,
        names.PREDICTIONS_DB_ENV: names.PREDICTIONS_DB_ENV,
        names.MLFLOW_BACKEND_STORE_ENV: names.MLFLOW_BACKEND_STORE_ENV,
    },
}
# Plain settings forwarded to containers when set on the worker: the steps obey the same source
# policy as the DAG's pre-flight (TAGIFAI_DATA_DIRS, TAGIFAI_ALLOWED_URL_HOSTS, TAGIFAI_PRIVATE_URL_HOSTS).
FORWARDED_ENV = ("MLFLOW_S3_ENDPOINT_URL", *names.POLICY_ENVS, *names.SOURCE_URL_ENVS)
# The exit codes of `tagifai` that no retry can fix: bad input or settings (for the local runner, also
# a `tagifai` that is missing or cannot run: 127, 126). The task fails at once instead of being retried.
FINAL_EXIT_CODES = (EXIT_BAD_INPUT,)
# What makes a step's work smaller, named when its container ran out of memory (`out_of_memory_error`).
OUT_OF_MEMORY_HINTS = {
    "predict-batch": "lower [predict] batch_rows",
    "optimize": "lower [optimize] max_rows",
    **dict.fromkeys(("elt", "validate", "train"), "a smaller data source or [train] max_features"),
}
# Every step container: no privilege escalation, no Linux capabilities (the steps need none).
HARDENING = {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"]}

_WHOLE_TEMPLATE = re.compile(r"^\{\{(?P<expr>.*)\}\}$", re.DOTALL)


@dataclass(frozen=True)
class RunnerSettings:
    """Where the steps run (the environment; defaults fit the compose stack), and their limits (the settings)."""

    config: Settings
    runner: str = "docker"
    image: str = "tagifai:latest"
    docker_url: str = "unix:///var/run/docker.sock"
    docker_network: str = "tagifai"
    # None: the local runner inherits the worker's MLFLOW_TRACKING_URI.
    mlflow_tracking_uri: str | None = "http://mlflow:5000"
    tagifai_bin: str = "tagifai"
    k8s_namespace: str = "default"
    k8s_in_cluster: bool = True
    k8s_secret: str | None = None

    @classmethod
    def from_env(cls, config: Settings, environ: Mapping[str, str] | None = None) -> RunnerSettings:
        """Read the runner and where it runs from `environ` (`os.environ` when None).

        Raises:
            ValueError: `TAGIFAI_RUNNER` names no known runner.
        """
        env = os.environ if environ is None else environ
        runner = env.get("TAGIFAI_RUNNER", "docker").strip().lower() or "docker"
        if runner not in RUNNERS:
            raise ValueError(f"TAGIFAI_RUNNER={runner!r}: expected one of {', '.join(RUNNERS)}")
        default_uri = None if runner == "local" else cls.mlflow_tracking_uri
        return cls(
            config=config,
            runner=runner,
            image=env.get(names.IMAGE_ENV) or cls.image,
            docker_url=env.get("DOCKER_HOST") or cls.docker_url,
            docker_network=env.get("TAGIFAI_DOCKER_NETWORK") or cls.docker_network,
            mlflow_tracking_uri=env.get("TAGIFAI_MLFLOW_TRACKING_URI") or default_uri,
            tagifai_bin=env.get("TAGIFAI_BIN") or cls.tagifai_bin,
            k8s_namespace=env.get("TAGIFAI_K8S_NAMESPACE") or cls.k8s_namespace,
            k8s_in_cluster=env.get("TAGIFAI_K8S_IN_CLUSTER", "true").lower() in ("1", "true", "yes"),
            k8s_secret=env.get("TAGIFAI_K8S_SECRET") or None,
        )

    def default_args(self) -> dict[str, Any]:
        """Every step task's defaults: retried (with exponential backoff) for errors that may pass (`[retry]`)."""
        retry = self.config.retry
        return {
            "owner": "tagifai",
            "retries": retry.retries,
            "retry_delay": timedelta(seconds=retry.delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=retry.max_delay_minutes),
            # Once a task failed with no retry left: tell people (tagifai.orchestration.notify).
            "on_failure_callback": notify.task_failed,
        }

    def timeout(self, step: str) -> timedelta | None:
        """How long `step` may run before Airflow stops it (`[limits] step_minutes`)."""
        minutes = self.config.limits.step_minutes.get(step)
        return timedelta(minutes=minutes) if minutes else None

    def cpu_request(self, step: str) -> float:
        """The CPUs `step` asks for: its weight under contention, never a cap (`[limits] step_cpu_request`, else 1)."""
        return self.config.limits.step_cpu_request.get(step, 1.0)


def fromjson(value: Any) -> dict[str, Any]:
    """Template filter: the JSON object a step printed last, as the line (local) or already parsed (docker, kubernetes).

    Raises:
        ValueError: the value is not a JSON object (the step broke its output contract).
    """
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected the step's last stdout line to be a JSON object, got {value!r}")
    return parsed


def run_id_from(task_id: str, map_index: int | None = None) -> str:
    """The template that reads `run_id` from the JSON line of `task_id` (of its instance `map_index`, if mapped)."""
    index = "" if map_index is None else f", map_indexes={map_index}"
    return f"{{{{ (ti.xcom_pull(task_ids='{task_id}'{index}) | fromjson)['run_id'] }}}}"


def shquote(value: Any) -> str:
    """Template filter: quote a rendered value for bash."""
    return shlex.quote(str(value))


USER_DEFINED_FILTERS = {"fromjson": fromjson, "shquote": shquote}
# For a number param (`Param(..., **FINITE)`): JSON Schema has no "finite", and NaN passes every bound
# (each comparison with it is false). Only NaN is both not below 0 (`minimum`) and not at or above 0
# (`exclusiveMaximum`), so this refuses NaN; the param's own `minimum`/`maximum` refuse infinities.
FINITE = {"not": {"allOf": [{"minimum": 0}, {"exclusiveMaximum": 0}]}}


def data_url(value: str | None, fallback: str) -> str:
    """Return the data URL a param defaults to: `value` (a relative path made absolute), else `fallback`.

    Steps run in other folders (a temporary one, a container), so a relative path would not resolve.
    """
    if not value:
        return fallback
    if urllib.parse.urlparse(value).scheme == "" and not value.startswith("/"):
        return os.path.abspath(value)
    return value


def _bash_arg(arg: str) -> str:
    """Quote one argument for bash, quoting a `{{ ... }}` template when it renders."""
    if match := _WHOLE_TEMPLATE.match(arg):
        return f"{{{{ ({match['expr'].strip()}) | shquote }}}}"
    if "{{" in arg:
        raise ValueError(f"an argument is either a whole template or a literal: {arg!r}")
    return shlex.quote(arg)


def bash_command(tagifai_bin: str, command: Sequence[str]) -> str:
    """Return the bash script that runs one step and prints its JSON line last.

    Airflow merges stdout and stderr, so stdout is captured and printed after the step ends:
    the task's last output line is then the step's last stdout line, whatever it logged.
    """
    args = " ".join(_bash_arg(arg) for arg in [tagifai_bin, *command])
    return f"set -euo pipefail\nout=$({args})\nprintf '%s\\n' \"$out\"\n"


# `sh` in the pod: keep the step's stdout, and copy its last line where the xcom sidecar reads it.
K8S_WRAPPER = (
    'set -e; out=$(tagifai "$@"); printf "%s\\n" "$out"; printf "%s\\n" "$out" | tail -n 1 > /airflow/xcom/return.json'
)


def tagifai_step(
    settings: RunnerSettings,
    *command: str,
    experiment_name: str,
    data_sources: Sequence[str] = (),
    task_id: str | None = None,
    **options: Any,
) -> Any:
    """Return the operator that runs `tagifai <command>` with the runner of `settings`.

    Args:
        settings: the runner settings.
        *command: the step and its arguments (`"train", "--data-run", ...`); may hold templates.
        experiment_name: template or value for MLFLOW_EXPERIMENT_NAME.
        data_sources: templates of the data URLs the step reads: checked against the source policy, and
            their local folders mounted (docker).
        task_id: the task id; the step's name (`command[0]`) when None.
        **options: more of the operator's arguments (e.g. `trigger_rule`).
    """
    operator, kwargs, _ = _operator(settings, command, experiment_name, data_sources, task_id or command[0])
    return operator(**kwargs, **options)


def tagifai_workers(settings: RunnerSettings, *command: str, experiment_name: str, num_workers: str) -> tuple[Any, Any]:
    """Return the tasks that run `tagifai <command>` in `num_workers` (a template or value) parallel workers.

    Returns:
        `(<step>_workers, <step>)`: the task that renders the command once per worker, and the task
        mapped over those copies.
    """
    operator, kwargs, mapped = _operator(settings, command, experiment_name, (), command[0])
    copies = workers.override(task_id=f"{command[0]}_workers")(kwargs.pop(mapped), num_workers, settings.runner)
    return copies, operator.partial(**kwargs).expand(**{mapped: copies})


@task
def workers(rendered: Any, num_workers: int | str, runner: str) -> list[Any]:
    """One copy of a step's rendered command per worker: the list the mapped task expands over.

    Raises:
        AirflowFailException: several workers but no storage to share their study (not retried).
    """
    count = int(num_workers)
    # Kubernetes pods get their secrets from TAGIFAI_K8S_SECRET, which this worker cannot see.
    if count > 1 and runner != "kubernetes" and not os.environ.get(names.OPTUNA_STORAGE_ENV):
        raise AirflowFailException(
            f"num_workers={count} needs one Optuna study for all workers: set {names.OPTUNA_STORAGE_ENV} on the "
            "Airflow workers (e.g. postgresql+psycopg2://user:password@host/optuna), or run with num_workers=1"
        )
    return [rendered] * count


def _operator(
    settings: RunnerSettings, command: Sequence[str], experiment_name: str, data_sources: Sequence[str], task_id: str
) -> tuple[type, dict[str, Any], str]:
    """The operator class for the runner, its arguments, and the name of the one that holds the command."""
    data = settings.config.data
    common = {
        "task_id": task_id,
        "step": command[0],
        "data_sources": list(data_sources),
        "default_urls": (data.projects_url, data.tags_url),
        "lineage_namespace": settings.config.lineage.namespace,
        "execution_timeout": settings.timeout(command[0]),
        "step_memory": settings.config.limits.step_memory,
    }
    env = {
        "MLFLOW_EXPERIMENT_NAME": experiment_name,
        names.PIPELINE_RUN_ID_ENV: "{{ run_id }}",
        # The trigger's `force`: run every step, even one whose run is made already.
        names.FORCE_ENV: "{{ params.force | default(false) }}",
    }
    if settings.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if settings.runner == "local":
        kwargs = {
            **common,
            "bash_command": bash_command(settings.tagifai_bin, command),
            "env": env,
            "append_env": True,
            "skip_on_exit_code": (*FINAL_EXIT_CODES, 126, 127),
        }
        return TagifaiBashOperator, kwargs, "bash_command"
    # Recorded on the model version (a local subprocess keeps whatever the worker says).
    env[names.IMAGE_ENV] = settings.image
    if settings.runner == "kubernetes":
        return _kubernetes_operator(common, command, settings, env)
    kwargs = {
        **common,
        "image": settings.image,
        "command": list(command),
        "docker_url": settings.docker_url,
        "network_mode": settings.docker_network,
        "environment": {**env, names.OUTPUT_ENV: names.CONTAINER_OUTPUT_PATH},
        # Which pipeline run, step and worker copy a container belongs to: `docker ps --filter label=...`.
        "labels": {
            "org.tagifai.step": task_id,
            "org.tagifai.pipeline-run-id": "{{ run_id }}",
            "org.tagifai.map-index": "{{ ti.map_index }}",
        },
        "auto_remove": "success",
        "mount_tmp_dir": False,
        # Pull only what is not on the host: local builds (`make image`) are never pulled.
        "force_pull": False,
        "mem_limit": settings.config.limits.step_memory,
        # A weight under contention, not a cap: the operator's `cpus` becomes the container's CPU shares (x 1024).
        "cpus": settings.cpu_request(command[0]),
        "skip_on_exit_code": FINAL_EXIT_CODES,
        # The step's JSON line, read from a file in the finished container: in its log, stdout and
        # stderr interleave, so the last log line need not be the last stdout line.
        "retrieve_output": True,
        "retrieve_output_path": names.CONTAINER_OUTPUT_PATH,
    }
    return TagifaiDockerOperator, kwargs, "command"


def _kubernetes_operator(
    common: dict[str, Any], command: Sequence[str], settings: RunnerSettings, env: dict[str, str]
) -> tuple[type, dict[str, Any], str]:
    try:
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_env_vars
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    except ImportError as exc:  # pragma: no cover — depends on the installed providers
        raise ImportError(
            "TAGIFAI_RUNNER=kubernetes needs apache-airflow-providers-cncf-kubernetes (images/airflow/requirements.txt)"
        ) from exc
    from kubernetes.client import models as k8s

    class TagifaiPodOperator(StepMixin, KubernetesPodOperator):
        """`KubernetesPodOperator` whose data sources pass the policy before the pod starts."""

        template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "data_sources")

        def prepare(self, policy: SourcePolicy) -> None:
            """Forward the worker's plain settings, as the docker runner does (the env the DAG set wins)."""
            plain = {**forwarded_env(os.environ), **self.openlineage_env}
            forwarded = [k8s.V1EnvVar(name=name, value=value) for name, value in plain.items()]
            self.env_vars = [*forwarded, *(convert_env_vars(self.env_vars) if self.env_vars else [])]

        def out_of_memory(self) -> bool:
            """Whether the step's container was terminated for memory, as the finished pod (`remote_pod`) says."""
            return pod_out_of_memory(self.remote_pod, self.base_container_name)

    secret = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.k8s_secret))]
    memory = {"memory": k8s_quantity(settings.config.limits.step_memory)}
    # Requested, never limited: idle cores are the step's.
    cpu = {"cpu": f"{round(settings.cpu_request(command[0]) * 1000)}m"}
    kwargs = {
        **common,
        "name": f"tagifai-{common['task_id']}",
        "namespace": settings.k8s_namespace,
        "in_cluster": settings.k8s_in_cluster,
        "image": settings.image,
        "cmds": ["/bin/sh", "-c", K8S_WRAPPER, "tagifai"],
        "arguments": list(command),
        "env_vars": env,
        # Secrets come from a Kubernetes Secret (TAGIFAI_K8S_SECRET), never from the DAG.
        "env_from": secret if settings.k8s_secret else None,
        "container_resources": k8s.V1ResourceRequirements(requests={**memory, **cpu}, limits=memory),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]), run_as_non_root=True
        ),
        "do_xcom_push": True,
        "get_logs": True,
        "skip_on_exit_code": FINAL_EXIT_CODES,
        "on_finish_action": "delete_succeeded_pod",
    }
    return TagifaiPodOperator, kwargs, "arguments"


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's plain settings a step gets: `FORWARDED_ENV`, and the deployer's override as its content.

    The override (`TAGIFAI_CONFIG`, a file on the worker) travels as TOML text, so the step needs no
    path of the worker's.
    """
    env = {name: environ[name] for name in FORWARDED_ENV if name in environ}
    if config := environ.get(names.CONFIG_ENV):
        with open(config, encoding="utf-8") as override:
            env[names.CONFIG_TOML_ENV] = override.read()
    return env


def step_secrets(step: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The secrets of the worker's `environ` that `step`'s container gets (`STEP_SECRETS`), by their name there."""
    secrets = STEP_SECRETS.get(step, {})
    return {name: environ[source] for name, source in secrets.items() if source in environ}


def out_of_memory_error(step: str, memory: str | None) -> str:
    """The one-line error of `step` killed for memory under the limit `memory` (`[limits] step_memory`)."""
    hint = OUT_OF_MEMORY_HINTS.get(step)
    return (
        f"out of memory in {step}: raise [limits] step_memory (now {memory or 'not set'}) "
        f"or make the step's work smaller{f' ({hint})' if hint else ''}"
    )


def pod_out_of_memory(pod: Any, container: str) -> bool:
    """Whether the container `container` of `pod` (a `V1Pod`, or None) was terminated for memory (`OOMKilled`)."""
    statuses = getattr(getattr(pod, "status", None), "container_statuses", None) or []
    for status in statuses:
        terminated = getattr(getattr(status, "state", None), "terminated", None)
        if status.name == container and terminated is not None and terminated.reason == "OOMKilled":
            return True
    return False


def k8s_quantity(memory: str) -> str:
    """A Docker-style memory size (`4g`, `512m`: `[limits] step_memory`) as a Kubernetes quantity (`4Gi`, `512Mi`)."""
    units = {"k": "Ki", "m": "Mi", "g": "Gi"}
    return memory[:-1] + units[memory[-1]] if memory[-1] in units else memory


class StepMixin(BaseOperator):
    """What every step's operator does around its runner's own `execute` (listed first in the operator's bases).

    A step `elt`'s plan found made already is handed on; nothing starts. Else each data source must
    pass the deployment's source policy first (a refused one fails the task at once, naming the rule).
    After, the exit codes that mean bad input or setup (the operator's `skip_on_exit_code`) fail the task
    without a retry, instead of skipping it, and so does a container or pod the engine killed for memory
    (`out_of_memory`). A `BaseOperator` itself, so that Airflow knows its arguments.

    OpenLineage (`tagifai.orchestration.lineage`): the step gets its task's OpenLineage run in its environment
    (`openlineage_env`), and the provider's events name the datasets it read and wrote, and its MLflow run
    (`get_openlineage_facets_on_start`/`_complete`/`_failure`).
    """

    # The JSON object the step printed (or wrote when it failed), and the outputs of the tasks its datasets come from.
    _step_output: dict[str, Any] | None = None
    _upstream_outputs: Mapping[str, dict[str, Any]] = {}
    openlineage_env: Mapping[str, str] = {}

    def __init__(
        self,
        *,
        step: str | None = None,
        data_sources: Sequence[str] = (),
        default_urls: Sequence[str] = (),
        lineage_namespace: str = "tagifai",
        step_memory: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the operator of `step` (the task id when None); `data_sources` are templates of the URLs it reads.

        `step_memory` is the setting its container's memory limit comes from, as the settings spell it: named
        when the step runs out of memory.
        """
        super().__init__(**kwargs)
        self.step = step or self.task_id
        self.data_sources, self.default_urls = list(data_sources), tuple(default_urls)
        self.lineage_namespace, self.step_memory = lineage_namespace, step_memory

    def execute(self, context: Any) -> Any:
        """Hand on the run made already, or check the sources, prepare and run the step."""
        ti = context.get("ti")
        self.openlineage_env = lineage.run_env(ti) if ti is not None else {}
        self._upstream_outputs = upstream_outputs(context, self.step)
        if (made := made_already(context, self.task_id)) is not None:
            self.log.info(
                "%s: reusing run %s, made already (same data, code, settings and arguments: elt's plan); "
                "nothing started",
                self.task_id,
                made["run_id"],
            )
            self._step_output = made
            return json.dumps(made)
        policy = SourcePolicy.from_environ(os.environ, self.default_urls, enforce=True)
        for source in self.data_sources:
            try:
                policy.check(source)
            except SourceRefused as exc:  # the same params would be refused again: no retry
                raise AirflowFailException(f"refused data source: {exc}") from None
        self.prepare(policy)
        try:
            result = super().execute(context)
        except AirflowSkipException as exc:  # bad input or setup: no retry
            raise self.failed(exc, final=True) from None
        except AirflowException as exc:  # may pass: retried
            raise self.failed(exc, final=False) from exc
        try:
            self._step_output = fromjson(result)
        except ValueError:  # no JSON object: its lineage names no run (the next step's template fails on it)
            self._step_output = None
        return result

    def prepare(self, policy: SourcePolicy) -> None:
        """Set up what the runner needs once the params are rendered (nothing by default)."""

    def failure_output(self) -> dict[str, Any] | None:
        """The JSON object the failed step wrote to `TAGIFAI_OUTPUT` (`error`, `run_id`, ...), if the runner has it."""
        return None

    def failure_lines(self, error: Exception) -> Sequence[str]:
        """The failed step's output lines the runner kept (its `error:` line among them)."""
        return ()

    def out_of_memory(self) -> bool:
        """Whether the engine killed the failed step's container or pod for memory (never, by default)."""
        return False

    def failed(self, error: Exception, final: bool) -> AirflowException:
        """The task's exception for a failed step: `<step>: <its one-line error>`, with `step_output` for notify.

        The error is the step's `TAGIFAI_OUTPUT` JSON `error`, else its last `error:` line; for a step killed
        for memory, `out_of_memory_error`'s. `final`: no retry (AirflowFailException), as for bad input
        (exit 3) and memory (a retry gets the same limit).
        """
        output = self._step_output = self.failure_output() or {}
        line = output.get("error") if isinstance(output.get("error"), str) else None
        line = line or last_error_line(self.failure_lines(error))
        if self.out_of_memory():
            line, final = out_of_memory_error(self.step, self.step_memory), True
        if line:
            message = f"{self.task_id}: {notify.one_line(line)}"
        elif final:
            message = f"{self.task_id}: the step cannot run with this input or setup ({error}); see its log"
        else:
            message = f"{self.task_id}: {notify.one_line(error)}"
        exc = (AirflowFailException if final else AirflowException)(message)
        exc.step_output = {"error": line, "run_id": output.get("run_id"), "experiment_id": output.get("experiment_id")}
        return exc

    def get_openlineage_facets_on_start(self) -> Any:
        """The datasets known before the step runs: its data sources (and predict-batch's table)."""
        inputs, outputs = lineage.step_datasets(self.step, self.lineage_namespace, sources=self.data_sources)
        return lineage.operator_lineage(inputs, outputs, None)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The datasets the step read and wrote, named from its output and its upstream tasks', and its MLflow run."""
        output, upstream = self._step_output, self._upstream_outputs
        inputs, outputs = lineage.step_datasets(self.step, self.lineage_namespace, output, upstream, self.data_sources)
        return lineage.operator_lineage(inputs, outputs, output)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """What the failed step read, and the MLflow run it failed in when it wrote one; nothing it wrote counts."""
        output, upstream = self._step_output, self._upstream_outputs
        inputs, _ = lineage.step_datasets(self.step, self.lineage_namespace, output, upstream, self.data_sources)
        return lineage.operator_lineage(inputs, [], output)


def last_error_line(lines: Sequence[str | bytes]) -> str | None:
    """The text after `error: ` of the last such line (a `tagifai` command's one-line error), if any."""
    for raw in reversed(list(lines)):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        for line in reversed(text.splitlines()):
            if line.strip().startswith("error: ") and line.strip()[7:].strip():
                return line.strip()[7:].strip()
    return None


def upstream_outputs(context: Any, step: str) -> dict[str, dict[str, Any]]:
    """The outputs of this DAG run's tasks whose datasets `step` reads (`lineage.UPSTREAM`), those that have one."""
    ti, dag = context.get("ti"), context.get("dag")
    found = {}
    for task_id in lineage.UPSTREAM.get(step, ()):
        if ti is None or dag is None or not dag.has_task(task_id):
            continue
        try:
            found[task_id] = fromjson(ti.xcom_pull(task_ids=task_id))
        except ValueError:  # none (a task that did not run): its datasets are not named
            continue
    return found


def made_already(context: Any, step: str) -> dict[str, Any] | None:
    """The output of the run `elt`'s plan says `step` can reuse (`tagifai elt --plan`), if any."""
    ti = context.get("ti")
    if step == "elt" or ti is None:
        return None
    line = ti.xcom_pull(task_ids="elt")
    return fromjson(line).get("plan", {}).get(step) if line else None


class TagifaiBashOperator(StepMixin, BashOperator):
    """`BashOperator` running one step as a local subprocess (the local runner)."""

    template_fields: Sequence[str] = (*BashOperator.template_fields, "data_sources")
    _output_file: str | None = None
    _result: Any = None

    def prepare(self, policy: SourcePolicy) -> None:
        """Have the step write its JSON object (or its error's, when it fails) to a file of this try's."""
        fd, self._output_file = tempfile.mkstemp(prefix="tagifai-output-", suffix=".json")
        os.close(fd)
        self.env = {**(self.env or {}), names.OUTPUT_ENV: self._output_file, **self.openlineage_env}

    def execute(self, context: Any) -> Any:
        """Run the step; remove its output file after."""
        try:
            return super().execute(context)
        finally:
            if self._output_file:
                os.unlink(self._output_file)
                self._output_file = None

    def _run_inline_command(self, *args: Any, **kwargs: Any) -> Any:
        """Keep the subprocess's result: its last output line is the failed step's `error:` line."""
        self._result = super()._run_inline_command(*args, **kwargs)
        return self._result

    def failure_output(self) -> dict[str, Any] | None:
        """The step's `TAGIFAI_OUTPUT` file, if it wrote one."""
        try:
            with open(self._output_file or "", encoding="utf-8") as written:
                parsed = json.load(written)
        except (OSError, ValueError):
            return None
        return parsed if isinstance(parsed, dict) else None

    def failure_lines(self, error: Exception) -> Sequence[str]:
        """The subprocess's last output line (stdout is held back by the script, so: its stderr's last)."""
        return [self._result.output] if self._result is not None and self._result.output else []


class TagifaiDockerOperator(StepMixin, DockerOperator):
    """`DockerOperator` that shows the step its data read-only, hardens its container and keeps secrets private.

    Mount sources are paths on the Docker host: the named data folder (`TAGIFAI_DATA_DIRS`) that holds
    each local data source is bind-mounted read-only at the same path. Which folders those are is
    known only once the params render, hence the work happens in `prepare`.
    """

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "labels", "data_sources")
    # How `retrieve_output` reads the output file: the step's JSON line.
    pickling_library = json

    def prepare(self, policy: SourcePolicy) -> None:
        """Add the mounts and the forwarded environment (secrets only privately)."""
        environ = os.environ
        self.environment = {**forwarded_env(environ), **self.environment, **self.openlineage_env}
        mounted = {mount["Target"] for mount in self.mounts if isinstance(mount, Mapping) and "Target" in mount}
        # The data folder of each local source, read-only at the same path.
        folders = sorted({policy.data_dir_of(source) for source in self.data_sources} - mounted - {None})
        self.mounts = [*self.mounts, *({"Target": f, "Source": f, "Type": "bind", "ReadOnly": True} for f in folders)]
        self._private_environment = {**step_secrets(self.command[0], environ), **self._private_environment}
        self.environment = {**self.environment, **self.image_identity()}
        # Nothing kept from an earlier try's container.
        self._failed_output, self._oom_killed = None, False
        self.remove_earlier_tries()

    def image_identity(self) -> dict[str, str]:
        """The id (and registry digest, if it has one) of the image the step runs in, recorded on its runs.

        Looked up as the container is made: `tagifai reproduce` (`make reproduce`) runs that very image again.
        An image not here yet (the operator pulls it) is named by its tag only.
        """
        try:
            image = self.cli.inspect_image(self.image)
        except Exception as exc:  # not pulled yet, or the engine refused: the tag is still recorded
            self.log.info("image %s not inspected (%s): its id is not recorded", self.image, type(exc).__name__)
            return {}
        digests = image.get("RepoDigests") or [""]
        return {names.IMAGE_ID_ENV: image["Id"], names.IMAGE_DIGEST_ENV: digests[0]}

    def remove_earlier_tries(self) -> None:
        """Remove this task's containers from earlier tries; stop first one still running (its worker died).

        Never two at once, and nothing left behind by a dead worker (each try's log is in its task log). The
        operator itself removes a try's container when it ends, failed or not (docker provider 4.6.1).
        """
        labels = [f"{key}={value}" for key, value in self.labels.items()]
        for earlier in self.cli.containers(all=True, filters={"label": labels}):
            if earlier.get("State") == "running":
                self.log.warning("stopping %s, left running by an earlier try of this task", earlier["Id"][:12])
                self.cli.stop(earlier["Id"], timeout=10)
            self.cli.remove_container(earlier["Id"])

    _failed_output: Any = None
    _oom_killed = False

    def keep_failed_container(self, container_id: str) -> None:
        """What the operator removes with a failed container: its step's output, and whether it ran out of memory."""
        self.keep_failed_output(container_id)
        try:
            state = self.cli.inspect_container(container_id)["State"]
        except Exception as exc:  # not known to be memory: retried, as any failure that may pass
            self.log.warning("container %s not inspected (%s): no memory kill seen", container_id[:12], exc)
            state = {}
        self._oom_killed = bool(state.get("OOMKilled"))

    def out_of_memory(self) -> bool:
        """Whether the engine killed the container for memory (`OOMKilled`; an exit 137 from `docker kill` is not)."""
        return self._oom_killed

    def keep_failed_output(self, container_id: str) -> None:
        """Read the step's `TAGIFAI_OUTPUT` file from its failed container, before the operator removes it."""
        try:
            self._failed_output = self._copy_from_docker(container_id, self.retrieve_output_path)
        except Exception:  # none written, or unreadable: it names no error; the log's `error:` line does
            self._failed_output = None

    def failure_output(self) -> dict[str, Any] | None:
        """The JSON object the failed step wrote (`keep_failed_output`), if any."""
        return self._failed_output if isinstance(self._failed_output, dict) else None

    def failure_lines(self, error: Exception) -> Sequence[str]:
        """The container's log lines, as the operator kept them."""
        return getattr(error, "logs", None) or []

    @property
    def cli(self) -> Any:
        """The Docker API client, creating every container with `HARDENING`, keeping what a failed one tells."""
        return HardenedClient(self.hook.api_client, on_failure=self.keep_failed_container)


class HardenedClient:
    """A Docker `APIClient` whose host configs add `HARDENING` (DockerOperator has no such options).

    `on_failure(container_id)` runs when a container exited non-zero, before the operator removes it (the
    provider removes it whatever its exit code, `auto_remove="success"` included).
    """

    def __init__(self, client: Any, on_failure: Callable[[str], None] | None = None) -> None:
        """Wrap `client`."""
        self._client, self._on_failure = client, on_failure

    def create_host_config(self, **kwargs: Any) -> Any:
        """The host config the operator asks for, hardened."""
        return self._client.create_host_config(**kwargs, **HARDENING)

    def wait(self, container: Any, *args: Any, **kwargs: Any) -> Any:
        """Wait for the container to exit; a failed one's `on_failure` first."""
        result = self._client.wait(container, *args, **kwargs)
        if self._on_failure is not None and result.get("StatusCode"):
            self._on_failure(container["Id"] if isinstance(container, Mapping) else container)
        return result

    def __getattr__(self, name: str) -> Any:
        """Everything else is the client's."""
        return getattr(self._client, name)
