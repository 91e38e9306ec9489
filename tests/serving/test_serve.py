"""tagifai serve on uvicorn and a SQLite MLflow registry: protocol, framing, bounds, alias following, stop."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import scoring_server
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from harness import free_port
from tagifai.contract import names
from tagifai.contract.config import load_settings
from tagifai.contract.settings import Serve
from tagifai.serving import batcher, follower, protocol
from tagifai.serving import server as serve

POLL = 0.2
ROWS = [
    {"title": "Transfer learning with transformers", "description": "Fine-tune BERT for text classification."},
    {"title": "YOLO", "description": "Real-time object detection."},
    {"title": "Graph attention networks", "description": None},
]
TAGS = {"test_f1": "0.9100", "data_sha256": "abc123", "pipeline_run_id": "pipe-1", "code_version": "deadbeef"}


def limits(**overrides: Any) -> Serve:
    """The `[serve]` settings, with `overrides`."""
    return load_settings().serve.model_copy(update=overrides)


# ---------------------------------------------------------------------------------------------------
# Fixtures: one store and two logged models per module; a registered model per test


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SQLite registry with two logged models, tagging "v1" and "v2"."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = tracking_utils._tracking_uri  # the process-wide URI other tests may have set
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
            models = {tag: log_model(experiment, tag) for tag in ("v1", "v2")}
            yield {"uri": uri, "root": root, "experiment": experiment, "models": models}
        finally:
            mlflow.set_tracking_uri(previous)


def log_model(experiment: str, tag: str) -> str:
    """Log a TagModel from code (`tag_model.py`), as `tagifai train` logs its model; return its model URI."""
    example = pd.DataFrame(ROWS[:2])
    output = pd.DataFrame({"tag": [tag] * len(example), "probability": [0.5] * len(example)})
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("tag_model.py")),
            model_config={"tag": tag},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=["mlflow"],  # no requirement inference (a slow subprocess)
        )
    return info.model_uri


def register(name: str, model_uri: str) -> str:
    """Register `model_uri` as the next version of `name`; return the version."""
    return str(mlflow.register_model(model_uri, name, tags=TAGS).version)


@pytest.fixture
def name(store: dict[str, Any], request: pytest.FixtureRequest) -> str:
    """A registered model name of this test's own."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)


@pytest.fixture
def launch() -> Iterator[Callable[[Any, Serve], serve.ModelServer]]:
    """Start servers of a champion on free ports, within the limits given; stop them after the test."""
    servers: list[serve.ModelServer] = []

    def _launch(champion: Any, serve_limits: Serve) -> serve.ModelServer:
        server = serve.ModelServer(champion, "127.0.0.1", 0, serve_limits)
        server.start()
        servers.append(server)
        return server

    yield _launch
    for server in servers:
        server.stop(grace_seconds=2)


@pytest.fixture
def start(store: dict[str, Any], launch) -> Callable[..., serve.ModelServer]:
    """Start servers following an alias of the test registry."""

    def _start(model_name: str, alias: str = "champion", poll_seconds: float = POLL) -> serve.ModelServer:
        return launch(follower.Champion(model_name, alias, poll_seconds), limits())

    return _start


@pytest.fixture(scope="module")
def v1_server(store: dict[str, Any]) -> Iterator[serve.ModelServer]:
    """One server for the read-only protocol tests, serving v1."""
    client = MlflowClient()
    version = register("protocol", store["models"]["v1"])
    client.set_registered_model_alias("protocol", "champion", version)
    server = serve.ModelServer(follower.Champion("protocol", "champion", 5.0), "127.0.0.1", 0, limits())
    server.start()
    wait_for(lambda: server.champion.current is not None)
    yield server
    server.stop(grace_seconds=2)


@pytest.fixture
def static(launch) -> Callable[..., serve.ModelServer]:
    """Start servers of a model that never moves (None: no model yet), with the limits given."""

    def _start(model: FrameModel | None, **overrides: Any) -> serve.ModelServer:
        return launch(StaticChampion(model and static_loaded(model)), limits(**overrides))

    return _start


# ---------------------------------------------------------------------------------------------------
# Helpers


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Wait until `condition()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def call(
    server: serve.ModelServer,
    method: str,
    path: str,
    body: str | bytes | None = None,
    content_type: str = "application/json",
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, str]:
    """One HTTP request; the status and the text answered."""
    url = urlparse(server.url)
    conn = connection or http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Content-Type": content_type} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    if connection is None:
        conn.close()
    return response.status, text


def invoke(server: serve.ModelServer, body: str | bytes, content_type: str = "application/json") -> tuple[int, Any]:
    """POST /invocations; the status and the decoded JSON answer."""
    status, text = call(server, "POST", "/invocations", body, content_type)
    return status, json.loads(text)


def get(server: serve.ModelServer, path: str) -> tuple[int, Any]:
    """GET `path`; the status and the decoded JSON answer."""
    status, text = call(server, "GET", path)
    return status, json.loads(text) if text.strip() else None


def exchange(server: Any, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes the connection.

    Raises:
        TimeoutError: the server kept the connection open for `timeout` seconds.
    """
    url = urlparse(server.url)
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as conn:
        conn.sendall(request)
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


FRAME = pd.DataFrame(ROWS)
BODIES = {
    "dataframe_records": ("application/json", json.dumps({"dataframe_records": ROWS})),
    "dataframe_split": ("application/json", json.dumps({"dataframe_split": FRAME.to_dict(orient="split")})),
    "dataframe_split without index": (
        "application/json",
        json.dumps({"dataframe_split": FRAME.to_dict(orient="split", index=False)}),
    ),
    "inputs as records": ("application/json", json.dumps({"inputs": ROWS})),
    "inputs as columns": ("application/json", json.dumps({"inputs": FRAME.to_dict(orient="list")})),
    "instances": ("application/json", json.dumps({"instances": ROWS})),
    "csv": ("text/csv", FRAME.to_csv(index=False)),
    "csv with charset": ("text/csv; charset=utf-8", FRAME.to_csv(index=False)),
}


# ---------------------------------------------------------------------------------------------------
# Pure pieces


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", "application/json"),  # plain
        ("Application/JSON; charset=UTF-8", "application/json"),  # case-insensitive, UTF-8 allowed
        ('text/csv; charset="utf-8"', "text/csv"),  # quoted parameter
        (None, 415),  # no header
        ("application/json; charset=utf-16", 415),  # MLflow's server takes UTF-8 only
        ("application/json; format=pandas-records", 415),  # MLflow 1.x parameter, refused like MLflow 2+
    ],
)
def test_media_type(header, expected):
    if isinstance(expected, int):
        with pytest.raises(protocol.RequestError) as error:
            protocol.media_type(header)
        assert error.value.status == expected
    else:
        assert protocol.media_type(header) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("needs a 'title' column"), "needs a 'title' column"),  # as is
        (ValueError("first line\nsecond line"), "first line"),  # one line
        (  # MLflow's schema error: the reason, not the frame it pastes in
            MlflowException("Failed to enforce schema of data '  title\n0  a' with schema '...'. Error: Missing 'x'."),
            "Missing 'x'.",
        ),
        (OSError("cannot reach https://bob:hunter2@mlflow.example/api"), "cannot reach https://***@mlflow.example/api"),
        (ValueError(""), "ValueError"),  # no message
        (ValueError("x" * 400), "x" * 299 + "…"),  # capped
    ],
)
def test_one_line(exc, expected):
    assert protocol.one_line(exc) == expected


def loaded_v(version: str) -> follower.Loaded:
    return follower.Loaded(model=None, version=version, info={"loaded_at": "2026-01-01T00:00:00+00:00"})


@pytest.mark.parametrize(
    ("state", "status", "body"),
    [
        (
            follower.State(),
            503,
            {"status": "unavailable", "model_version": None, "loaded_at": None, "last_error": None},
        ),
        (  # nothing loadable yet
            follower.State(None, "no version"),
            503,
            {"status": "unavailable", "model_version": None, "loaded_at": None, "last_error": "no version"},
        ),
        (
            follower.State(loaded_v("3")),
            200,
            {"status": "ok", "model_version": "3", "loaded_at": "2026-01-01T00:00:00+00:00"},
        ),
        (  # serving v3, v4 would not load
            follower.State(loaded_v("3"), "cannot load v4"),
            200,
            {
                "status": "degraded",
                "model_version": "3",
                "loaded_at": "2026-01-01T00:00:00+00:00",
                "last_error": "cannot load v4",
            },
        ),
    ],
)
def test_health(state, status, body):
    assert follower.health(state) == (status, body)


@pytest.mark.parametrize(
    "output",
    [
        pd.DataFrame({"tag": ["a", "b"], "probability": [0.5, 0.25]}),  # tagifai's output
        pd.DataFrame({"n": [1, 2], "ok": [True, False], "when": pd.to_datetime(["2026-01-01", "2026-01-02"])}),
        pd.DataFrame({"x": [float("nan"), 1.0], "o": [None, "y"]}),  # missing values
        pd.Series([1.5, 2.5], name="score"),  # a series
        pd.DataFrame({"a": [1, 2]}).to_numpy(),  # an array
        ["plain", "list"],  # anything else: as is
    ],
)
def test_predictions_are_encoded_like_mlflows_scoring_server(output):
    expected = StringIO()
    scoring_server.predictions_to_json(output, expected)
    model = type("Model", (), {"predict": lambda self, data, params=None: output})()
    predictions = batcher.score(follower.Loaded(model=model, version="1", info={}), protocol.Payload(None))
    assert protocol.predictions_json(predictions) == expected.getvalue()


def test_too_many_rows_are_refused_and_a_parquet_body_before_it_is_decoded(monkeypatch):
    frame = pd.DataFrame({"title": [f"title {i}" for i in range(6)]})
    parquet = BytesIO()
    frame.to_parquet(parquet)
    bodies = [
        (protocol.CONTENT_TYPE_JSON, json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()),
        (protocol.CONTENT_TYPE_JSON, json.dumps({"inputs": frame.to_dict(orient="list")}).encode()),  # columns
        (protocol.CONTENT_TYPE_CSV, frame.to_csv(index=False).encode()),
        (protocol.CONTENT_TYPE_PARQUET, parquet.getvalue()),
    ]
    for mime, body in bodies:
        assert protocol.parse_body(body, mime, None, max_rows=6).rows == 6
    monkeypatch.setattr(pd, "read_parquet", lambda *args, **kwargs: pytest.fail("decoded"))
    for mime, body in bodies:
        with pytest.raises(protocol.RequestError) as error:
            protocol.parse_body(body, mime, None, max_rows=5)
        assert error.value.status == 413
        assert "6 rows; the limit is 5 rows" in str(error.value)


# ---------------------------------------------------------------------------------------------------
# The scoring protocol


@pytest.mark.parametrize("fmt", list(BODIES))
def test_every_body_format_answers_like_mlflows_scoring_server(v1_server, fmt):
    content_type, body = BODIES[fmt]
    status, text = call(v1_server, "POST", "/invocations", body, content_type)
    model = v1_server.champion.current.model
    expected = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
    assert (status, text) == (expected.status, expected.response)  # byte for byte
    assert json.loads(text) == {
        "predictions": [{"tag": "v1", "probability": round(len(row["title"]) / 97, 6)} for row in ROWS]
    }


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error_code", "reason"),
    [
        ("{not json", "application/json", 400, "BAD_REQUEST", "JSONDecodeError"),  # broken JSON
        ("[1, 2]", "application/json", 400, "BAD_REQUEST", "must be a JSON dictionary"),  # a list, not an object
        ('{"data": []}', "application/json", 400, "BAD_REQUEST", "exactly one of"),  # no format key
        ('{"inputs": [], "dataframe_records": []}', "application/json", 400, "BAD_REQUEST", "exactly one of"),
        ('{"dataframe_records": {"title": "x"}}', "application/json", 400, "BAD_REQUEST", "list of records"),
        (  # no title: refused by the model's signature, as by MLflow's server
            json.dumps({"dataframe_records": [{"description": "only a description"}]}),
            "application/json",
            400,
            "INVALID_PARAMETER_VALUE",
            "missing inputs ['title']",
        ),
        ('title,description\n"unclosed,x\n', "text/csv", 400, "BAD_REQUEST", "invalid text/csv body"),  # broken CSV
        ("title\nx\n", "text/plain", 415, "BAD_REQUEST", "unsupported Content-Type"),  # not a scoring type
        ("{}", "application/json; charset=latin-1", 415, "BAD_REQUEST", "UTF-8"),  # MLflow takes UTF-8 only
        ("{}", "application/json; format=pandas-split", 415, "BAD_REQUEST", "parameters: format"),  # MLflow 1.x
    ],
)
def test_bad_requests_get_mlflows_error_shape_and_one_line(v1_server, body, content_type, status, error_code, reason):
    got, answer = invoke(v1_server, body, content_type)
    assert got == status
    assert answer["error_code"] == error_code
    assert reason in answer["message"]
    assert "\n" not in answer["message"]


def test_too_large_body_is_refused_before_it_is_read_and_the_connection_closes(static):
    server = static(FrameModel(), max_body_bytes=100)
    status, answer = invoke(server, json.dumps({"dataframe_records": ROWS * 10}))
    assert status == 413
    assert "limit is 100 bytes" in answer["message"]
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"80\r\n" + b" " * 128 + b"\r\n"  # no length to check
    assert exchange(server, chunked).startswith(b"HTTP/1.1 413 ")  # counted as it streams in, then closed


@pytest.mark.parametrize(
    "length",
    [
        b"-1",  # not a length
        b"1e3",
        b"\xb2",  # "2" superscript: isdigit(), not a number
        b"2\r\nContent-Length: 3",  # two lengths that disagree
    ],
)
def test_a_body_without_one_valid_content_length_is_refused_with_400_and_the_connection_closes(v1_server, length):
    request = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = exchange(v1_server, request + b"Content-Length: " + length + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed


def test_unknown_endpoints_answer_404(v1_server):
    assert call(v1_server, "GET", "/nope")[0] == 404
    assert call(v1_server, "POST", "/predict", "{}")[0] == 404


def test_version_shows_the_registry_metadata(v1_server):
    status, info = get(v1_server, "/version")
    assert status == 200
    assert info["model_name"] == "protocol"
    assert info["alias"] == "champion"
    assert info["model_version"] == "1"
    assert info["test_f1"] == 0.91
    assert {k: info[k] for k in ("data_sha256", "pipeline_run_id", "code_version")} == {
        k: TAGS[k] for k in ("data_sha256", "pipeline_run_id", "code_version")
    }
    assert info["run_id"] and info["loaded_at"]
    assert get(v1_server, "/ping")[0] == 200


def test_every_answer_names_the_version_that_scored_it(v1_server):
    url = urlparse(v1_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/invocations", BODIES["dataframe_records"][1], {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    assert response.getheader(names.VERSION_HEADER) == "1"


def test_keep_alive_connection_serves_many_requests(v1_server):
    url = urlparse(v1_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    body = BODIES["dataframe_records"][1]
    answers = [call(v1_server, "POST", "/invocations", body, connection=conn)[0] for _ in range(20)]
    conn.close()
    assert answers == [200] * 20


def test_a_chunked_body_is_answered_like_mlflows_scoring_server(v1_server):
    content_type, body = BODIES["dataframe_records"]
    url = urlparse(v1_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    answers = []
    for _ in range(2):  # the chunks are consumed exactly: the same connection serves the next request
        parts = iter([body[:10].encode(), body[10:].encode()])  # no length: http.client sends it chunked
        conn.request("POST", "/invocations", body=parts, headers={"Content-Type": content_type})
        response = conn.getresponse()
        answers.append((response.status, response.read().decode()))
    conn.close()
    model = v1_server.champion.current.model
    expected = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
    assert answers == [(expected.status, expected.response)] * 2


@pytest.mark.parametrize("loaded", [True, False], ids=["model loaded", "no model yet"])
def test_content_length_with_chunked_is_refused_with_400_and_the_connection_closes(static, loaded):
    server = static(FrameModel() if loaded else None)
    # A proxy framing by Content-Length sees an empty body, then a second request; h11 sees one chunk.
    smuggled = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    framing = b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = exchange(server, head + framing + b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"not both" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed: nothing read as a request


def test_a_malformed_chunk_is_refused_with_400_and_the_connection_closes(v1_server):
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = exchange(v1_server, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1


# ---------------------------------------------------------------------------------------------------
# Following the alias


def test_health_is_503_until_the_alias_exists_then_200(store, name, start):
    server = start(name)
    status, health = wait_for(lambda: (r := get(server, "/health")) and r[1]["last_error"] and r)
    assert status == 503
    assert health["status"] == "unavailable"
    assert f"{name}@champion" in health["last_error"]
    status, answer = invoke(server, BODIES["dataframe_records"][1])
    assert status == 503
    assert answer["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert get(server, "/ping")[0] == 503
    assert call(server, "GET", "/version")[0] == 503

    version = register(name, store["models"]["v1"])
    MlflowClient().set_registered_model_alias(name, "champion", version)
    status, health = wait_for(lambda: (r := get(server, "/health"))[0] == 200 and r)
    assert health["status"] == "ok"
    assert health["model_version"] == version
    assert "last_error" not in health
    assert invoke(server, BODIES["csv"][1], "text/csv")[1]["predictions"][0]["tag"] == "v1"


def test_moving_the_alias_swaps_versions_without_failed_or_mixed_requests(store, name, start):
    client = MlflowClient()
    v1 = register(name, store["models"]["v1"])
    v2 = register(name, store["models"]["v2"])
    client.set_registered_model_alias(name, "champion", v1)
    server = start(name)
    wait_for(lambda: get(server, "/health")[0] == 200)

    seen: dict[int, list[str]] = {0: [], 1: []}
    errors: list[Any] = []
    running = threading.Event()
    running.set()

    def send(client_id: int) -> None:
        url = urlparse(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        body = json.dumps({"dataframe_records": ROWS})
        while running.is_set():
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                status, text = response.status, response.read().decode()
                tags = {row["tag"] for row in json.loads(text)["predictions"]} if status == 200 else set()
                named = {v1: "v1", v2: "v2"}.get(response.getheader(names.VERSION_HEADER))
                if status != 200 or len(tags) != 1 or tags != {named}:  # the header names who answered
                    errors.append((status, text, named))
                else:
                    seen[client_id].append(tags.pop())
            except Exception as exc:
                errors.append(repr(exc))
        conn.close()

    clients = [threading.Thread(target=send, args=(i,)) for i in seen]

    def every_client_last_saw(tag: str) -> bool:
        return all(tags and tags[-1] == tag for tags in seen.values())

    for thread in clients:
        thread.start()
    wait_for(lambda: every_client_last_saw("v1"))
    client.set_registered_model_alias(name, "champion", v2)  # promotion
    wait_for(lambda: get(server, "/version")[1]["model_version"] == v2)
    wait_for(lambda: every_client_last_saw("v2"))
    client.set_registered_model_alias(name, "champion", v1)  # rollback
    wait_for(lambda: get(server, "/version")[1]["model_version"] == v1)
    wait_for(lambda: every_client_last_saw("v1"))
    running.clear()
    for thread in clients:
        thread.join()

    assert errors == []
    for tags in seen.values():
        assert set(tags) == {"v1", "v2"}
        changes = [tags[i] for i in range(len(tags)) if i == 0 or tags[i] != tags[i - 1]]
        assert changes == ["v1", "v2", "v1"]  # each client sees one swap each way, never a flip-flop


class Pickled(mlflow.pyfunc.PythonModel):
    """A model logged the old way (cloudpickle): never loaded, refused from its MLmodel."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return model_input


def files_gone(experiment: str) -> tuple[str, str]:
    """A logged model whose files were deleted, and the reason it cannot be loaded."""
    uri = log_model(experiment, "broken")
    shutil.rmtree(urlparse(mlflow.get_logged_model(uri.removeprefix("models:/")).artifact_location).path)
    return uri, "cannot be loaded: it has no MLmodel (its files are gone, or it is not a model)"


def pickled(experiment: str) -> tuple[str, str]:
    """A model logged as a pickle (tagifai < 0.2.0), and the reason it is refused."""
    with mlflow.start_run(experiment_id=experiment):
        uri = mlflow.pyfunc.log_model(name="model", python_model=Pickled(), pip_requirements=["mlflow"]).model_uri
    return uri, "is a pickled model (python_model.pkl); this deployment loads only models without pickle"


@pytest.mark.parametrize("unloadable", [files_gone, pickled], ids=["files gone", "pickled"])
def test_unloadable_champion_keeps_the_last_good_version_and_reports_degraded(store, name, start, caplog, unloadable):
    client = MlflowClient()
    v1 = register(name, store["models"]["v1"])
    client.set_registered_model_alias(name, "champion", v1)
    server = start(name)
    wait_for(lambda: get(server, "/health")[0] == 200)

    broken_uri, why = unloadable(store["experiment"])
    broken = register(name, broken_uri)
    client.set_registered_model_alias(name, "champion", broken)

    status, health = wait_for(lambda: (r := get(server, "/health"))[1]["status"] == "degraded" and r)
    assert status == 200
    assert health["model_version"] == v1
    assert f"cannot load {name} v{broken}" in health["last_error"]
    assert "serving v1" in health["last_error"]
    assert f"models:/{name}/{broken} {why}" in health["last_error"]
    assert "tagifai-serve-" not in health["last_error"]  # not a random temporary path
    assert invoke(server, BODIES["dataframe_records"][1])[1]["predictions"][0]["tag"] == "v1"
    assert get(server, "/version")[1]["model_version"] == v1
    time.sleep(3 * POLL)  # a few more failed polls: tried again each time, logged once
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and "cannot load" in r.getMessage()]
    assert len(failures) == 1

    client.set_registered_model_alias(name, "champion", v1)  # roll the alias back: healthy again
    wait_for(lambda: get(server, "/health")[1]["status"] == "ok")


def test_a_failed_version_is_tried_once_per_poll_and_logged_once(store, name, monkeypatch, caplog):
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", register(name, store["models"]["v1"]))
    champion = follower.Champion(name, "champion", POLL)
    champion.poll()
    assert champion.current.version == "1"

    client.set_registered_model_alias(name, "champion", register(name, store["models"]["v2"]))
    attempts = []

    def failing_load(*args: Any) -> None:
        attempts.append(str(args[2].version))
        raise OSError("artifacts are gone")

    monkeypatch.setattr(follower, "load_version", failing_load)
    with caplog.at_level(logging.WARNING, logger="tagifai"):
        for _ in range(3):
            champion.poll()
    champion.stop()
    assert attempts == ["2", "2", "2"]
    assert champion.current.version == "1"
    assert champion.state.last_error == f"cannot load {name} v2 (serving v1): artifacts are gone"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"serve: {champion.state.last_error}"]


def test_an_unreachable_registry_is_reported_without_dropping_the_model(store, name, monkeypatch):
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", register(name, store["models"]["v1"]))
    champion = follower.Champion(name, "champion", POLL)
    champion.poll()

    def down(*args: Any) -> None:
        raise MlflowException("API request to https://user:secret@mlflow.example/api failed")

    monkeypatch.setattr(champion._client, "get_model_version_by_alias", down)
    champion.poll()
    champion.stop()
    assert champion.current.version == "1"
    assert champion.state.last_error.startswith(f"cannot ask MLflow for {name}@champion")
    assert "secret" not in champion.state.last_error


# ---------------------------------------------------------------------------------------------------
# Scoring: batching, slow predictions, stopping


class StaticChampion:
    """A champion that never moves: for tests of the HTTP and scoring layers alone."""

    def __init__(self, loaded: follower.Loaded) -> None:
        self.state = follower.State(loaded)

    @property
    def current(self) -> follower.Loaded:
        return self.state.loaded

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FrameModel:
    """A pyfunc-like model: predict(frame, params) → one row out per row in."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep
        self.calls: list[int] = []

    def predict(self, data: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        self.calls.append(len(data))
        if (data["title"] == "boom").any():
            raise ValueError("boom is not a title")
        time.sleep(self.sleep)
        return pd.DataFrame({"tag": data["title"].str.upper(), "probability": 0.5})


def static_loaded(model: FrameModel) -> follower.Loaded:
    return follower.Loaded(model=model, version="7", info={"model_version": "7", "loaded_at": "now"})


def test_queued_requests_share_a_batch_and_each_gets_its_own_rows():
    model = FrameModel()
    loaded = static_loaded(model)
    frames = [pd.DataFrame({"title": ["a", "b"]}), pd.DataFrame({"title": ["c"]}), pd.DataFrame({"title": ["boom"]})]
    jobs = [batcher.Job(loaded, protocol.Payload(frame), Future()) for frame in frames]
    jobs.append(batcher.Job(loaded, protocol.Payload(pd.DataFrame({"title": ["d"], "x": [1]})), Future()))
    groups: dict[Any, list[batcher.Job]] = {}
    for job in jobs:
        groups.setdefault(batcher.batch_key(job), []).append(job)
    for group in groups.values():
        batcher.score_batch(group)

    assert [job.future.result() for job in jobs[:2]] == [
        [{"tag": "A", "probability": 0.5}, {"tag": "B", "probability": 0.5}],
        [{"tag": "C", "probability": 0.5}],
    ]
    with pytest.raises(protocol.RequestError, match="boom is not a title"):
        jobs[2].future.result()
    assert jobs[3].future.result() == [{"tag": "D", "probability": 0.5}]
    # one failed batch of 3 frames, then each alone; the frame with other columns on its own
    assert model.calls == [4, 2, 1, 1, 1]


def test_an_answer_that_is_not_json_is_a_500_not_a_dropped_connection():
    class Opaque(FrameModel):
        def predict(self, data: pd.DataFrame, params: dict | None = None) -> Any:
            return [object()] * len(data)

    server = serve.ModelServer(StaticChampion(static_loaded(Opaque())), "127.0.0.1", 0, limits())
    server.start()
    try:
        status, answer = invoke(server, json.dumps({"dataframe_records": [{"title": "x"}]}))
    finally:
        server.stop(grace_seconds=2)
    assert status == 500
    assert answer["error_code"] == "INTERNAL_ERROR"
    assert "not JSON serializable" in answer["message"]


def test_a_slow_prediction_does_not_block_health():
    model = FrameModel(sleep=1.0)
    server = serve.ModelServer(StaticChampion(static_loaded(model)), "127.0.0.1", 0, limits())
    server.start()
    try:
        slow = threading.Thread(target=invoke, args=(server, json.dumps({"dataframe_records": [{"title": "x"}]})))
        slow.start()
        wait_for(lambda: model.calls)
        started = time.monotonic()
        assert get(server, "/health")[0] == 200
        assert time.monotonic() - started < 0.5
        slow.join()
    finally:
        server.stop(grace_seconds=2)


def test_stop_lets_requests_in_flight_finish_then_refuses_connections():
    model = FrameModel(sleep=0.5)
    server = serve.ModelServer(StaticChampion(static_loaded(model)), "127.0.0.1", 0, limits())
    server.start()
    answers: list[tuple[int, Any]] = []
    body = json.dumps({"dataframe_records": [{"title": "x"}]})
    in_flight = threading.Thread(target=lambda: answers.append(invoke(server, body)))
    in_flight.start()
    wait_for(lambda: model.calls)
    server.stop(grace_seconds=5)
    in_flight.join()
    assert answers == [(200, {"predictions": [{"tag": "X", "probability": 0.5}]})]
    with pytest.raises(ConnectionRefusedError):
        call(server, "GET", "/health")


@contextmanager
def serve_process(store: dict[str, Any], name: str, **env: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """`tagifai serve` as a process, following `name`'s champion, once it answers /health with 200.

    Yields the server (its `url`) and a dict that holds, once the block ended, the process's `returncode` and
    `stderr`: it is stopped with SIGTERM (a graceful stop) and waited for.
    """
    port = free_port()
    command = [str(Path(sys.executable).with_name("tagifai")), "serve", "--model-name", name, "--port", str(port)]
    env = {**os.environ, "TAGIFAI_CONFIG_TOML": "[serve]\npoll_seconds = 1\n", **env}
    process = subprocess.Popen(command, cwd=store["root"], env=env, stderr=subprocess.PIPE, text=True)
    ended: dict[str, Any] = {}
    try:
        server = type("Remote", (), {"url": f"http://127.0.0.1:{port}"})()

        def ready() -> bool:
            try:
                return get(server, "/health")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=60)
        yield server, ended
    finally:
        process.send_signal(signal.SIGTERM)
        ended["stderr"] = process.communicate(timeout=30)[1]
        ended["returncode"] = process.returncode


def test_tagifai_serve_serves_and_stops_gracefully_on_sigterm(store, name):
    version = register(name, store["models"]["v2"])
    MlflowClient().set_registered_model_alias(name, "champion", version)
    with serve_process(store, name) as (server, ended):
        assert invoke(server, BODIES["dataframe_records"][1])[1]["predictions"][0]["tag"] == "v2"
    assert ended["returncode"] == 0
    assert f"serve: champion v{version} loaded" in ended["stderr"]
    assert "serve: stopping" in ended["stderr"]


# ---------------------------------------------------------------------------------------------------
# Bounds: slow clients, large bodies, slow predictions

MIB = 1024 * 1024
SMALL = json.dumps({"dataframe_records": [{"title": "x"}]})
SMALL_ANSWER = {"predictions": [{"tag": "X", "probability": 0.5}]}


def rss_bytes() -> int:
    """This process's resident memory (the servers under test run in it)."""
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def closed_by_server(conn: socket.socket, timeout: float) -> bytes | None:
    """What the server answered before it closed `conn` (None: still open after `timeout` seconds)."""
    conn.setblocking(True)
    conn.settimeout(timeout)
    answer = b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except ConnectionResetError:  # closed with bytes of ours unread
        pass
    except TimeoutError:
        return None
    return answer


def test_many_half_sent_large_uploads_neither_block_a_request_nor_grow_memory_and_are_cut_at_their_deadline(static):
    deadline, uploads, declared = 4.0, 200, 10 * MIB
    server = static(FrameModel(), request_seconds=deadline, max_bodies_bytes=32 * MIB)
    url = urlparse(server.url)
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % declared
    data = memoryview(b" " * MIB)
    before = rss_bytes()
    connected: list[tuple[socket.socket, float]] = []
    for _ in range(uploads):
        conn = socket.create_connection((url.hostname, url.port), timeout=10)
        conn.sendall(head)
        conn.setblocking(False)
        connected.append((conn, time.monotonic()))
    sent = [0] * uploads
    give_up = time.monotonic() + 30.0
    while any(0 <= n < declared // 2 for n in sent) and time.monotonic() < give_up:
        for i, (conn, _) in enumerate(connected):  # half of each body, as fast as the server takes it
            if 0 <= sent[i] < declared // 2:
                try:
                    sent[i] += conn.send(data[: declared // 2 - sent[i]])
                except BlockingIOError:
                    pass
                except OSError:  # refused (or past its deadline): the server closed it
                    sent[i] = -1
        time.sleep(0.01)
    time.sleep(0.5)  # what is in the sockets' buffers reaches the server
    grown = rss_bytes() - before

    started = time.monotonic()
    answered = invoke(server, SMALL)
    answered_in = time.monotonic() - started
    assert answered == (200, SMALL_ANSWER)
    assert answered_in < 5.0, answered_in  # well under a second when idle; generous on a shared machine
    # 32 MiB of bodies at most, plus 64 KiB a connection uvicorn buffers: not the 200 x 5 MiB sent
    assert grown < 150 * MIB, f"{grown / MIB:.0f} MiB"

    held = 0
    for conn, at in connected:
        answer = closed_by_server(conn, timeout=max(0.1, at + deadline + 10 - time.monotonic()))
        closed_at = time.monotonic()
        conn.close()
        assert answer is not None, "an upload outlived its deadline"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer  # cut, or refused: bodies held
        held += answer == b"" and closed_at >= at + deadline
    assert held, "no upload was held until its deadline"


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_request_trickling_in_is_cut_at_its_deadline(static, part):
    deadline = 1.0
    server = static(FrameModel(), request_seconds=deadline)
    url = urlparse(server.url)
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    first, rest = (head[:10], head[10:]) if part == "head" else (head, b" " * 500)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        started = time.monotonic()
        conn.sendall(first)
        for byte in rest:  # a byte every 0.1 s: each would reset a timeout of inactivity
            if select.select([conn], [], [], 0.1)[0]:
                break
            conn.sendall(bytes([byte]))
        answer = closed_by_server(conn, timeout=10)
        closed_after = time.monotonic() - started
    assert answer == b""
    assert deadline <= closed_after < deadline + 5.0, closed_after  # the whole trickle would take 8-50 s


def test_scoring_past_mlflows_request_timeout_is_a_504_and_the_server_goes_on(static, monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")  # seconds, as `mlflow models serve` reads it
    model = FrameModel(sleep=2.5)
    server = static(model)
    status, answer = invoke(server, SMALL)
    assert status == 504
    assert answer["error_code"] == "DEADLINE_EXCEEDED"
    assert "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT" in answer["message"]
    assert get(server, "/health")[0] == 200  # not blocked by the prediction still running
    model.sleep = 0.0
    time.sleep(2.0)  # the slow prediction ends
    assert invoke(server, SMALL) == (200, SMALL_ANSWER)
