"""OpenLineage: what each step reads and writes, and where Airflow's OpenLineage provider sends the events.

The provider (apache-airflow-providers-openlineage) emits a START and a COMPLETE or FAIL event for every task
instance, its parent (ParentRunFacet) the DAG run's own run. A step's operator adds what only it knows once the
step ran (`StepMixin.get_openlineage_facets_on_*` in tagifai/orchestration/runners.py, from `operator_lineage`):

| step | inputs | outputs |
| --- | --- | --- |
| elt | the data sources (projects, tags; the holdout's, for its plan) | `tagifai-labeled@sha256:<hex>` |
| validate | the labeled data; the holdout's sources | `tagifai-{train,val,test,holdout}@sha256:<hex>` |
| optimize | the train split | (trials of an Optuna study) |
| train | the train and val splits | the logged model `models:/<model id>` |
| evaluate | the logged model, the test split | (test metrics) |
| register | the logged model, the holdout | the version `models:/<name>/<N>` |
| decide | that version | |
| predict-batch | its source, the version holding the alias | the table `<database>.public.predictions` |
| checksum | its source | |
| monitor | the tables `inference_log` and `predictions` | |

Data is named by its content (the sha256 `elt` and `validate` print), models by their MLflow URI, both in the
namespace `[lineage] namespace`; a source by where it is (namespace `file` and its path, or `https://host` and
its path: what the DAG's data Assets name, `assets.source_asset`); a table as OpenLineage names PostgreSQL's
(namespace `postgres://host:port`, from the worker's `TAGIFAI_PREDICTIONS_DB`). Each run also names the step's
MLflow run (run facet `mlflow`: runId, experimentId, reused), and the step's MLflow runs name the task's
OpenLineage run (tags `openlineage.run_id`, `openlineage.job`: `run_env` hands the run over, and
`tagifai.pipeline.tracking` tags the runs).

Where events go (`transport`, `provider_env`): appended to the file `[lineage] file_path`; with
`TAGIFAI_LINEAGE_URL` set, to that HTTP collector instead (OpenLineage's own `OPENLINEAGE_URL`, with
`TAGIFAI_LINEAGE_API_KEY` as `OPENLINEAGE_API_KEY`), the file getting only what the collector refused (a 4xx
answer; one it cannot reach, or a 5xx, is retried for about 9 s, within the provider's 10 s per event).
`python -m tagifai.orchestration.lineage` prints the transport of the settings (what docker-compose.yml sets).

Standard library, Airflow and `tagifai.contract` only; the provider is imported only where a task uses it,
so that parsing the DAGs stays as light as it was.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tagifai.contract import names
from tagifai.contract.config import config_dir, load
from tagifai.contract.settings import Settings
from tagifai.contract.sources import SourceRefused, is_local, parse_url, path_of

# An OpenLineage dataset: (namespace, name).
Name = tuple[str, str]
# The outputs of earlier tasks a step's datasets are read from (the training DAG names its tasks for its steps).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "validate": ("elt",),
    "optimize": ("validate",),
    "train": ("validate",),
    "evaluate": ("validate", "train"),
    "register": ("validate", "train"),
}
# The name of the run facet that names the step's MLflow run.
MLFLOW_FACET = "mlflow"


def source(url: str) -> Name | None:
    """A data source as the dataset its Asset names: `file` and its path, or `scheme://host[:port]` and its path.

    The URL's user info and query are left out (they may hold credentials); a source the policy cannot read is None.
    """
    try:
        if is_local(url):
            return "file", os.path.abspath(path_of(url))
        parsed = parse_url(url)
    except SourceRefused:
        return None
    default_port = {"http": 80, "https": 443}[parsed.scheme]
    host = parsed.host_port if parsed.port != default_port else parsed.host_port.rsplit(":", 1)[0]
    return f"{parsed.scheme}://{host}", urllib.parse.unquote(parsed.target.partition("?")[0])


def content(namespace: str, dataset: str, sha256: str) -> Name:
    """Data named by its content: `tagifai-<dataset>@sha256:<hex>` (the MLflow dataset `tagifai-<dataset>`)."""
    return namespace, f"tagifai-{dataset}@sha256:{sha256}"


def table(database_url: str | None, name: str) -> Name | None:
    """A table of the PostgreSQL database `database_url` names, as OpenLineage names it; None without a URL."""
    if not database_url:
        return None
    try:
        parts = urllib.parse.urlsplit(database_url)
        host, port, database = parts.hostname, parts.port or 5432, parts.path.lstrip("/")
    except ValueError:
        return None
    if not host or not database:
        return None
    return f"postgres://{host}:{port}", f"{database}.public.{name}"


def step_datasets(
    step: str,
    namespace: str,
    output: Mapping[str, Any] | None = None,
    upstream: Mapping[str, Mapping[str, Any]] | None = None,
    sources: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> tuple[list[Name], list[Name]]:
    """The datasets `step` read and wrote: `(inputs, outputs)`, each once, in order.

    Args:
        step: the step (`elt`, `validate`, ...).
        namespace: the namespace of tagifai's data and models (`[lineage] namespace`).
        output: the JSON object the step printed (None before it ran: only what is known then).
        upstream: the outputs of the tasks `UPSTREAM` names for the step, by task id.
        sources: the data sources the step reads (its rendered `data_sources`).
        environ: where the tagifai database is (`TAGIFAI_PREDICTIONS_DB`); `os.environ` when None.
    """
    out, up = output or {}, upstream or {}
    env = os.environ if environ is None else environ
    splits = up.get("validate", {}).get("split_sha256") or {}
    model_uri = up.get("train", {}).get("model_uri")
    inputs: list[Name | None] = [source(url) for url in sources]
    outputs: list[Name | None] = []

    def data(*dataset_shas: tuple[str, str | None]) -> list[Name]:
        return [content(namespace, dataset, sha) for dataset, sha in dataset_shas if sha]

    def model(*uris: str | None) -> list[Name]:
        return [(namespace, uri) for uri in uris if uri]

    def version(model_name: str | None, number: Any) -> list[Name]:
        return model(f"models:/{model_name}/{number}" if model_name and number is not None else None)

    match step:
        case "elt":
            outputs += data(("labeled", out.get("data_sha256")))
        case "validate":
            inputs += data(("labeled", out.get("data_sha256") or up.get("elt", {}).get("data_sha256")))
            outputs += data(*(out.get("split_sha256") or {}).items())
        case "optimize":
            inputs += data(("train", splits.get("train")))
        case "train":
            inputs += data(("train", splits.get("train")), ("val", splits.get("val")))
            outputs += model(out.get("model_uri"))
        case "evaluate":
            inputs += model(model_uri) + data(("test", splits.get("test")))
        case "register":
            inputs += model(model_uri) + data(("holdout", splits.get("holdout")))
            outputs += version(out.get("model_name"), out.get("version"))
        case "decide":
            inputs += version(out.get("model_name"), out.get("version"))
        case "predict-batch":
            inputs += version(out.get("model_name"), out.get("model_version"))
            outputs.append(table(env.get(names.PREDICTIONS_DB_ENV), names.PREDICTIONS_TABLE))
        case "monitor":
            database = env.get(names.PREDICTIONS_DB_ENV)
            inputs += [table(database, names.INFERENCE_LOG_TABLE), table(database, names.PREDICTIONS_TABLE)]
    return _once(inputs), _once(outputs)


def _once(datasets: Iterable[Name | None]) -> list[Name]:
    """`datasets` without the Nones and the repeats, in order."""
    return list(dict.fromkeys(d for d in datasets if d is not None))


def mlflow_run(output: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The step's MLflow run as the `mlflow` run facet's properties (runId, experimentId, reused); None without one."""
    if not output or not output.get("run_id"):
        return None
    return {
        "runId": str(output["run_id"]),
        "experimentId": str(output["experiment_id"]) if output.get("experiment_id") is not None else None,
        # Handed on from an earlier pipeline run (same data, code, settings and arguments): nothing ran.
        "reused": bool(output.get("reused")),
    }


def operator_lineage(inputs: Sequence[Name], outputs: Sequence[Name], output: Mapping[str, Any] | None) -> Any:
    """The provider's `OperatorLineage`: the datasets, and the `mlflow` run facet when the step names its run."""
    from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
    from airflow.providers.openlineage.extractors import OperatorLineage

    facets = {}
    if run := mlflow_run(output):
        # A custom facet, built the way OpenLineage's client adds properties to a facet of the spec.
        facets[MLFLOW_FACET] = RunFacet().with_additional_properties(**run)
    return OperatorLineage(
        inputs=[Dataset(namespace=ns, name=name) for ns, name in inputs],
        outputs=[Dataset(namespace=ns, name=name) for ns, name in outputs],
        run_facets=facets,
    )


def run_env(ti: Any) -> dict[str, str]:
    """The task's OpenLineage run, for its step's environment: `TAGIFAI_OPENLINEAGE_RUN_ID` and `..._JOB`.

    `..._JOB` is `namespace/job/run id`, the provider's parent id. Empty when OpenLineage is off (no transport).
    """
    from airflow.providers.openlineage import conf

    if conf.is_disabled():
        return {}
    from airflow.providers.openlineage.plugins.macros import lineage_parent_id, lineage_run_id

    return {names.OPENLINEAGE_RUN_ID_ENV: lineage_run_id(ti), names.OPENLINEAGE_JOB_ENV: lineage_parent_id(ti)}


def transport(settings: Settings) -> dict[str, Any]:
    """The provider's `[openlineage] transport`: append each event to `[lineage] file_path`, or send it to a collector.

    A composite transport that stops at the first transport that takes an event, tried in order of priority:
    the HTTP collector that `OPENLINEAGE_URL` adds when it is set (OpenLineage names it `default_http`), then the
    file (priority -1). The file's folder must exist (the stack's: the volume `lineage`).
    """
    return {
        "type": "composite",
        "continue_on_success": False,
        "continue_on_failure": True,
        "sort_transports": True,
        "transports": {
            "file": {"type": "file", "log_file_path": settings.lineage.file_path, "append": True, "priority": -1}
        },
    }


def provider_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that configures the provider for Airflow's processes, as docker-compose.yml sets it.

    `[openlineage] namespace` and `transport` from the settings; `OPENLINEAGE_URL` and `OPENLINEAGE_API_KEY` (a
    secret: it stays in the environment) from `TAGIFAI_LINEAGE_URL` and `TAGIFAI_LINEAGE_API_KEY`, when set.
    """
    env = os.environ if environ is None else environ
    provider = {
        "AIRFLOW__OPENLINEAGE__NAMESPACE": settings.lineage.namespace,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport(settings)),
    }
    if url := env.get(names.LINEAGE_URL_ENV):
        provider["OPENLINEAGE_URL"] = url
    if key := env.get(names.LINEAGE_API_KEY_ENV):
        provider["OPENLINEAGE_API_KEY"] = key
    return provider


def main() -> None:  # pragma: no cover — a one-line wrapper, run by the tests as a command
    """Print the settings' transport as `AIRFLOW__OPENLINEAGE__TRANSPORT` takes it (no secret is in it)."""
    print(json.dumps(transport(load(config_dir()))))


if __name__ == "__main__":  # pragma: no cover
    main()
