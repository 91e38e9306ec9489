"""Serve `models:/<name>@<alias>` with MLflow's scoring protocol, following the alias as it moves.

    tagifai serve --model-name tagifai --alias champion --port 5001

`mlflow models serve -m models:/tagifai@champion` resolves the alias once. Here a background thread
asks the registry every `poll_seconds` which version holds the alias; when that changes (promotion,
rollback, someone moving it in the MLflow UI) it loads the new version off the request path, warms
it up on the model's own input example and swaps it in with one reference assignment of an
immutable `State`. Every request reads that reference once, so a request is answered by exactly one
version (named in the `Tagifai-Model-Version` header of each answer) and nothing fails during a
swap. A version that cannot be loaded is reported on /health (`degraded`, `last_error`) while the
last good one keeps serving; it is tried again at the next poll.

Endpoints: `POST /invocations` (JSON `dataframe_records`, `dataframe_split`, `inputs`, `instances`;
`text/csv`; parquet) answers `{"predictions": [...]}` byte for byte as MLflow's scoring server does,
parsing with MLflow's own helpers and the model's input schema. `GET /health`, `/ping`, `/version`.

Speed: one stdlib `ThreadingHTTPServer` thread per keep-alive connection parses requests; a single
scoring thread predicts. Requests that queue up while it is busy are scored as one frame (same model,
columns, dtypes and params), which amortizes the model's fixed per-call cost; tagifai's model scores
each row independently, so every request gets the rows it would have got alone. A batch that fails
is re-scored request by request, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO, StringIO
from queue import Empty, SimpleQueue
from typing import Any

from tagifai.contract.sources import redact

log = logging.getLogger("tagifai")

# Bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Stop adding queued requests to a batch once it holds this many rows; bigger requests are scored alone.
MAX_BATCH_ROWS = 256
# On stop, how long in-flight requests may take before the server closes their connections.
GRACE_SECONDS = 10.0
# Idle keep-alive connections are closed after this long.
IDLE_SECONDS = 75.0
# Version tags shown by /version.
VERSION_TAGS = ("test_f1", "data_sha256", "pipeline_run_id", "code_version")
# JSON keys of MLflow's scoring protocol (mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS).
JSON_FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
# The header of every /invocations answer that names the version which scored it.
VERSION_HEADER = "Tagifai-Model-Version"


class RequestError(Exception):
    """A request the server refuses: HTTP status, MLflow error code and a one-line message."""

    def __init__(self, status: int, message: str, error_code: str = "BAD_REQUEST") -> None:
        """Keep the status and error code next to the message."""
        super().__init__(message)
        self.status = status
        self.error_code = error_code


# ---------------------------------------------------------------------------------------------------
# Pure helpers


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A short, single-line reason for `exc`, without the data MLflow pastes into its messages.

    MLflow's schema errors read "Failed to enforce schema of data '<the whole frame>' ... Error: <reason>":
    keep the reason. Credentials in URLs are masked.
    """
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = redact(lines[0] if lines else type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def media_type(header: str | None) -> str:
    """The media type of a Content-Type header, checked as MLflow's scoring server checks it.

    Raises:
        RequestError: 415 for a missing header, a charset other than UTF-8 or unknown parameters.
    """
    if not header:
        raise RequestError(415, f"missing Content-Type: send {CONTENT_TYPE_JSON} or {CONTENT_TYPE_CSV}")
    mime, *pairs = [part.strip() for part in header.split(";")]
    parameters = {key.strip().lower(): value.strip().strip('"') for key, _, value in (p.partition("=") for p in pairs)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise RequestError(415, "the scoring server only supports UTF-8")
    if unknown := sorted(set(parameters) - {"charset"}):
        raise RequestError(415, f"unrecognized Content-Type parameters: {', '.join(unknown)}")
    return mime.lower()


@dataclass(frozen=True)
class Payload:
    """A parsed request: the model input, its params, and whether it may share a batch."""

    data: Any
    params: dict[str, Any] | None = None
    batchable: bool = True

    @property
    def rows(self) -> int:
        """Rows in the input (1 when it is not a frame)."""
        return len(self.data) if self.batchable else 1


def parse_json(body: bytes, schema: Any) -> Payload:
    """Parse a JSON scoring request the way MLflow's scoring server does (same helpers, same schema casts).

    `dataframe_records` / `dataframe_split` become frames that may be batched; `inputs` / `instances`
    are handed to the model exactly as MLflow hands them (a list or dict), so they are scored alone.

    Raises:
        RequestError: 400 with a one-line reason.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json, parse_tf_serving_input

    try:
        decoded = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {one_line(exc)}") from None
    if not isinstance(decoded, dict):
        raise RequestError(400, f"the body must be a JSON object with one of {', '.join(JSON_FORMATS)}")
    keys = [key for key in JSON_FORMATS if key in decoded]
    if len(keys) != 1:
        got = ", ".join(map(str, decoded)) or "none"
        raise RequestError(400, f"the body must have exactly one of {', '.join(JSON_FORMATS)} (got keys: {got})")
    key, params = keys[0], decoded.get("params")
    try:
        if key in ("inputs", "instances"):
            return Payload(parse_tf_serving_input({key: decoded[key]}, schema=schema), params, batchable=False)
        frame = dataframe_from_parsed_json(decoded[key], pandas_orient=key.removeprefix("dataframe_"), schema=schema)
    except MlflowException as exc:
        raise RequestError(400, f"{key}: {one_line(exc)}") from None
    except Exception as exc:  # pandas refusing the values
        raise RequestError(400, f"{key} is not a valid frame: {one_line(exc)}") from None
    return Payload(frame, params)


def parse_body(body: bytes, mime: str, schema: Any, csv_dtypes: dict[str, Any] | None) -> Payload:
    """Parse a request body of media type `mime` into a `Payload`.

    Raises:
        RequestError: 400 for a body that does not parse, 415 for an unsupported media type.
    """
    import pandas as pd

    if mime == CONTENT_TYPE_JSON:
        return parse_json(body, schema)
    if mime == CONTENT_TYPE_CSV:
        try:
            return Payload(pd.read_csv(StringIO(body.decode("utf-8")), dtype=csv_dtypes))
        except Exception as exc:
            raise RequestError(400, f"the body is not a valid CSV frame: {one_line(exc)}") from None
    if mime == CONTENT_TYPE_PARQUET:
        try:
            return Payload(pd.read_parquet(BytesIO(body)))
        except Exception as exc:
            raise RequestError(400, f"the body is not a valid Parquet frame: {one_line(exc)}") from None
    supported = ", ".join((CONTENT_TYPE_JSON, CONTENT_TYPE_CSV, CONTENT_TYPE_PARQUET))
    raise RequestError(415, f"unsupported Content-Type {mime!r}: send one of {supported}")


def jsonable(output: Any) -> Any:
    """Model output as MLflow's scoring server turns it into JSON (records orient for frames)."""
    import numpy as np
    import pandas as pd

    if isinstance(output, np.ndarray):
        return output.tolist()
    if isinstance(output, pd.DataFrame):
        return output.to_dict(orient="records")
    if isinstance(output, pd.Series):
        return pd.DataFrame(output).to_dict(orient="records")
    return output


def predictions_json(predictions: Any) -> bytes:
    """The body of a successful /invocations answer, encoded exactly as MLflow encodes it."""
    from mlflow.utils.proto_json_utils import NumpyEncoder

    return json.dumps({"predictions": predictions}, cls=NumpyEncoder).encode()


def error_json(message: str, error_code: str = "BAD_REQUEST") -> bytes:
    """MLflow's error body."""
    return json.dumps({"error_code": error_code, "message": message}).encode()


# ---------------------------------------------------------------------------------------------------
# The champion: what is loaded, and the thread that follows the alias


@dataclass(frozen=True, eq=False)
class Loaded:
    """One loaded model version, ready to score, and what /version says about it."""

    model: Any
    version: str
    info: dict[str, Any]
    schema: Any = None
    csv_dtypes: dict[str, Any] | None = None
    directory: str | None = None

    def predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        """Score `data` as MLflow's scoring server does (pyfunc predict, schema enforced, params passed)."""
        return self.model.predict(data, params=params)


@dataclass(frozen=True)
class State:
    """What the server serves and why it may be behind the alias; replaced whole, never mutated."""

    loaded: Loaded | None = None
    last_error: str | None = None


def version_info(model_name: str, alias: str, version: Any, loaded_at: str) -> dict[str, Any]:
    """The /version body for a registry `ModelVersion`."""
    tags = dict(version.tags or {})
    try:
        test_f1 = float(tags["test_f1"])
    except (KeyError, ValueError):
        test_f1 = None
    return {
        "model_name": model_name,
        "alias": alias,
        "model_version": str(version.version),
        "run_id": version.run_id,
        **{key: tags.get(key) for key in VERSION_TAGS},
        "test_f1": test_f1,
        "loaded_at": loaded_at,
    }


def health(state: State) -> tuple[int, dict[str, Any]]:
    """The /health status code and body for `state`."""
    loaded = state.loaded
    if loaded is None:
        return 503, {"status": "unavailable", "model_version": None, "loaded_at": None, "last_error": state.last_error}
    body = {
        "status": "degraded" if state.last_error else "ok",
        "model_version": loaded.version,
        "loaded_at": loaded.info["loaded_at"],
    }
    if state.last_error:
        body["last_error"] = state.last_error
    return 200, body


def load_version(model_name: str, alias: str, version: Any, directory: str) -> Loaded:
    """Load registered `version` of `model_name` into `directory` and score its input example once.

    A version that loads but cannot score the example it was logged with is refused like one that
    does not load; the first prediction also warms the model up before it takes traffic.

    Raises:
        Exception: whatever MLflow, unpickling or the model raise.
    """
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}", dst_path=directory)
    schema = model.metadata.get_input_schema()
    if model.input_example is not None:
        model.predict(model.input_example)
    columns = schema is not None and not schema.is_tensor_spec()
    csv_dtypes = dict(zip(schema.input_names(), schema.pandas_types(), strict=True)) if columns else None
    info = version_info(model_name, alias, version, now_iso())
    return Loaded(model, str(version.version), info, schema, csv_dtypes, directory)


class Champion:
    """Follows `models:/<model_name>@<alias>`: `current` is the loaded version the alias pointed at."""

    def __init__(self, model_name: str, alias: str, poll_seconds: float) -> None:
        """Nothing is loaded until `start()` (or `poll()`)."""
        self.model_name = model_name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.state = State()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._root: str | None = None
        self._logged_error: str | None = None

    @property
    def current(self) -> Loaded | None:
        """The version to answer with (read it once per request)."""
        return self.state.loaded

    def start(self) -> None:
        """Poll now and then every `poll_seconds` in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="tagifai-serve-champion", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling; remove the downloaded model files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # never let the follower die: the next poll tries again
                log.exception("serve: unexpected error while following %s@%s", self.model_name, self.alias)
            self._stop.wait(self.poll_seconds)

    def poll(self) -> None:
        """Ask the registry which version holds the alias; load and swap it in if it changed."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        target = f"{self.model_name}@{self.alias}"
        try:
            self._client = self._client or MlflowClient()
            version = self._client.get_model_version_by_alias(self.model_name, self.alias)
        except MlflowException as exc:
            missing = exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
            reason = "no version to serve" if missing else "cannot ask MLflow"
            self._fail(f"{reason} for {target}: {one_line(exc)}")
            return
        except Exception as exc:
            self._fail(f"cannot ask MLflow for {target}: {one_line(exc)}")
            return
        current = self.state.loaded
        if current is not None and current.version == str(version.version):
            self._recovered(current)
            return
        self._load(version, current)

    def _load(self, version: Any, current: Loaded | None) -> None:
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="tagifai-serve-")
        directory = tempfile.mkdtemp(prefix=f"v{version.version}-", dir=self._root)
        start = time.monotonic()
        try:
            loaded = load_version(self.model_name, self.alias, version, directory)
        except Exception as exc:
            shutil.rmtree(directory, ignore_errors=True)
            keeping = f" (serving v{current.version})" if current else ""
            reason = one_line(exc).replace(directory, "<download dir>")
            self._fail(f"cannot load {self.model_name} v{version.version}{keeping}: {reason}", f"v{version.version}")
            return
        self.state = State(loaded)  # the swap: one reference assignment
        self._logged_error = None
        before = f"v{current.version} → " if current else ""
        log.info("serve: champion %sv%s loaded in %.1f s", before, loaded.version, time.monotonic() - start)
        if current is not None and current.directory:
            shutil.rmtree(current.directory, ignore_errors=True)  # in-flight requests use the model in memory

    def _fail(self, error: str, key: str | None = None) -> None:
        self.state = State(self.state.loaded, error)
        if (key or error) != self._logged_error:  # one line per new failure (per version), not one per poll
            log.warning("serve: %s", error)
            self._logged_error = key or error

    def _recovered(self, current: Loaded) -> None:
        if self.state.last_error is not None:
            self.state = State(current)
            self._logged_error = None
            log.info("serve: back in sync, champion v%s", current.version)


# ---------------------------------------------------------------------------------------------------
# Scoring: one thread, batching what queues up


@dataclass(frozen=True, eq=False)
class Job:
    """One request waiting to be scored by `loaded`."""

    loaded: Loaded
    payload: Payload
    future: Future


def batch_key(job: Job) -> Any:
    """Jobs with equal keys may be scored as one frame: same model, columns, dtypes and params."""
    payload = job.payload
    if not payload.batchable:
        return job
    frame = payload.data
    params = json.dumps(payload.params, sort_keys=True, default=str) if payload.params else None
    return job.loaded, tuple(frame.columns), tuple(frame.dtypes), params


def score(loaded: Loaded, payload: Payload) -> Any:
    """The JSON-able predictions for one request.

    Raises:
        RequestError: 400 when the model refuses the input, as MLflow's scoring server answers.
    """
    from mlflow.exceptions import MlflowException

    try:
        return jsonable(loaded.predict(payload.data, payload.params))
    except MlflowException as exc:
        raise RequestError(400, one_line(exc), exc.error_code) from None
    except Exception as exc:
        raise RequestError(400, f"the model cannot score this input: {one_line(exc)}") from None


def score_batch(jobs: list[Job]) -> None:
    """Score jobs that share a `batch_key` as one frame and resolve each job's future with its rows."""
    import pandas as pd

    if len(jobs) > 1:
        frame = pd.concat([job.payload.data for job in jobs], ignore_index=True)
        try:
            rows = score(jobs[0].loaded, Payload(frame, jobs[0].payload.params))
        except RequestError:
            rows = None  # someone's input is bad: score each alone so only they get the error
        if isinstance(rows, list) and len(rows) == len(frame):
            start = 0
            for job in jobs:
                job.future.set_result(rows[start : start + job.payload.rows])
                start += job.payload.rows
            return
    for job in jobs:
        try:
            job.future.set_result(score(job.loaded, job.payload))
        except Exception as exc:
            job.future.set_exception(exc)


class Scorer:
    """Scores requests on one thread; requests that queue up meanwhile share the next model call."""

    def __init__(self, max_batch_rows: int = MAX_BATCH_ROWS) -> None:
        """Call `start()` before `submit()`."""
        self.max_batch_rows = max_batch_rows
        self._queue: SimpleQueue[Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the scoring thread."""
        self._thread = threading.Thread(target=self._work, name="tagifai-serve-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = GRACE_SECONDS) -> None:
        """Score what is queued, then stop."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, loaded: Loaded, payload: Payload) -> Any:
        """Score `payload` with `loaded`; return the JSON-able predictions.

        Raises:
            RequestError: 400 for input the model refuses, 503 once stopped.
        """
        if payload.batchable and payload.rows >= self.max_batch_rows:
            return score(loaded, payload)  # big requests run in their own thread, not ahead of small ones
        job = Job(loaded, payload, Future())
        with self._lock:
            if self._stopped:
                raise RequestError(503, "the server is stopping", "TEMPORARILY_UNAVAILABLE")
            self._queue.put(job)
        return job.future.result()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows, stop = [job], job.payload.rows, False
            while rows < self.max_batch_rows:
                try:
                    more = self._queue.get_nowait()
                except Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                rows += more.payload.rows
            groups: dict[Any, list[Job]] = {}
            for each in jobs:
                groups.setdefault(batch_key(each), []).append(each)
            for group in groups.values():
                try:
                    score_batch(group)
                except Exception as exc:  # keep the thread alive; answer whoever is still waiting
                    for each in group:
                        if not each.future.done():
                            each.future.set_exception(exc)
            if stop:
                return


# ---------------------------------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    """MLflow's scoring endpoints plus /health and /version (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "tagifai-serve"
    disable_nagle_algorithm = True
    timeout = IDLE_SECONDS
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: it would cost more than scoring a row."""

    def reply(
        self, status: int, body: bytes, content_type: str = CONTENT_TYPE_JSON, version: str | None = None
    ) -> None:
        """Send a complete response in one write (naming the model `version` that answered, if any)."""
        if self.server.stopping:
            self.close_connection = True
        headers = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Server: {self.server_version}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        if version is not None:
            headers.append(f"{VERSION_HEADER}: {version}")
        if self.close_connection:
            headers.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            headers.append("Connection: keep-alive")  # a 1.0 client asked to keep it open
        try:
            self.wfile.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body)
        except OSError:
            self.close_connection = True  # the client went away

    def reply_json(self, status: int, obj: Any) -> None:
        """Send `obj` as JSON."""
        self.reply(status, json.dumps(obj).encode())

    def refuse(self, error: RequestError) -> None:
        """Send MLflow's error body for `error`."""
        self.reply(error.status, error_json(str(error), error.error_code))

    def do_GET(self) -> None:
        """/health, /ping and /version."""
        with self.server.request():
            path = self.path.split("?", 1)[0]
            state = self.server.champion.state
            if path == "/health":
                self.reply_json(*health(state))
            elif path == "/ping":
                self.reply(200 if state.loaded else 503, b"\n")
            elif path == "/version":
                if state.loaded is None:
                    self.refuse(no_model(state))
                else:
                    self.reply_json(200, state.loaded.info)
            else:
                self.refuse(RequestError(404, f"no endpoint {path}", "ENDPOINT_NOT_FOUND"))

    def do_POST(self) -> None:
        """/invocations."""
        with self.server.request():
            try:
                version, body = self.invocations()
                self.reply(200, body, version=version)
            except RequestError as error:
                self.refuse(error)
            except Exception as exc:  # a bug or an answer that is not JSON: one line, no request data
                log.error("serve: /invocations failed: %s: %s", type(exc).__name__, one_line(exc))
                self.refuse(RequestError(500, f"the server failed to answer: {one_line(exc)}", "INTERNAL_ERROR"))

    def invocations(self) -> tuple[str, bytes]:
        """Read, parse and score one request: the version that scored it, and the answer.

        Raises:
            RequestError: for anything the client should change.
        """
        path = self.path.split("?", 1)[0]
        if path != "/invocations":
            self.close_connection = True  # the body was not read
            raise RequestError(404, f"no endpoint {path}: POST to /invocations", "ENDPOINT_NOT_FOUND")
        body = self.read_body()
        loaded = self.server.champion.current  # the one read of the reference for this request
        if loaded is None:
            raise no_model(self.server.champion.state)
        payload = parse_body(body, media_type(self.headers.get("Content-Type")), loaded.schema, loaded.csv_dtypes)
        return loaded.version, predictions_json(self.server.scorer.submit(loaded, payload))

    def read_body(self) -> bytes:
        """The request body, refused if it is too large or has no length.

        Raises:
            RequestError: 411 or 413.
        """
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length header (chunked bodies are not accepted)")
        size = int(length)
        if size > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(413, f"the body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes")
        return self.rfile.read(size)


def no_model(state: State) -> RequestError:
    """The 503 answered while no version could be loaded yet."""
    reason = f": {state.last_error}" if state.last_error else " yet"
    return RequestError(503, f"no model loaded{reason}", "TEMPORARILY_UNAVAILABLE")


class HTTPServer(ThreadingHTTPServer):
    """A thread per connection; counts requests in flight and knows its connections, for a graceful stop."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], champion: Champion, scorer: Scorer) -> None:
        """Bind to `address` (port 0: any free port)."""
        super().__init__(address, Handler)
        self.champion = champion
        self.scorer = scorer
        self.stopping = False
        self._idle = threading.Condition()
        self._in_flight = 0
        self._connections: set[socket.socket] = set()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count one request in flight."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Remember the connection, then serve it in its own thread."""
        with self._idle:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection."""
        with self._idle:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection in one line: clients that hang up are not errors."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            log.error("serve: error on a connection from %s: %s", client_address[0], one_line(error))

    def close_connections(self) -> None:
        """End idle keep-alive connections (their threads see EOF and finish)."""
        with self._idle:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ModelServer:
    """The champion follower, the scorer and the HTTP server, started and stopped together."""

    def __init__(self, champion: Champion, host: str, port: int) -> None:
        """Bind now (port 0: any free port); serve after `start()`."""
        self.champion = champion
        self.scorer = Scorer()
        self.httpd = HTTPServer((host, port), champion, self.scorer)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL the server listens on."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Follow the alias and serve, in background threads."""
        self.champion.start()
        self.scorer.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tagifai-serve-http", daemon=True)
        self._thread.start()

    def stop(self, grace_seconds: float = GRACE_SECONDS) -> None:
        """Stop accepting, let requests in flight finish (up to `grace_seconds`), then close everything."""
        self.httpd.stopping = True
        self.httpd.shutdown()
        self.httpd.server_close()
        if not self.httpd.wait_idle(grace_seconds):
            log.warning("serve: requests still in flight after %.0f s; closing their connections", grace_seconds)
        self.httpd.close_connections()
        self.scorer.stop()
        self.champion.stop()
        if self._thread is not None:
            self._thread.join()


def run(model_name: str, alias: str, host: str, port: int, poll_seconds: float) -> None:
    """Serve until SIGTERM/SIGINT (graceful stop).

    Args:
        model_name: registered model name.
        alias: the alias to follow (e.g. `champion`).
        host: interface to listen on.
        port: port to listen on (0: any free port).
        poll_seconds: how often to ask the registry which version holds the alias.
    """
    stop = threading.Event()
    server = ModelServer(Champion(model_name, alias, poll_seconds), host, port)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        log.info("serve: models:/%s@%s on %s (polling every %g s)", model_name, alias, server.url, poll_seconds)
        while not stop.wait(1.0):
            pass
        log.info("serve: stopping")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
