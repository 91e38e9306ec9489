"""`tagifai serve`: MLflow's scoring endpoints for the version an alias names, on Starlette and uvicorn.

`POST /invocations` answers as MLflow's scoring server does (`protocol`), with the version the alias
names now (`follower`), batched with the requests that queued up meanwhile (`batcher`); `GET /health`,
`/ping`, `/version`, and `/metrics` (`metrics`). Each answered request's rows go to the inference log
(`inference_log`), off the request path. Framing is h11's (RFC 9112); what one server takes on is bounded
(`[serve]` settings). On SIGTERM it stops accepting, lets the requests in flight finish, writes what the
inference log holds (for a bounded time), then exits.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import uvicorn
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.pyfunc.scoring_server import CONTENT_TYPE_JSON
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from tagifai.contract import names
from tagifai.contract.settings import Monitor, Serve
from tagifai.serving.batcher import Scorer
from tagifai.serving.follower import Champion, Loaded, health, no_model
from tagifai.serving.inference_log import InferenceLog, open_log
from tagifai.serving.metrics import Metrics
from tagifai.serving.protocol import RequestError, one_line, parse_body, predictions_json

log = logging.getLogger("tagifai")

# Bodies this small are not counted against `max_bodies_bytes` (uvicorn buffers as much per
# connection anyway) and are parsed on the event loop (about a millisecond; a thread hop costs more).
SMALL_BODY_BYTES = 64 * 1024


def refusal(error: RequestError, headers: dict[str, str] | None = None) -> Response:
    """MLflow's error body for `error` (closing the connection when the error says so)."""
    headers = {**(headers or {}), **({"Connection": "close"} if error.close else {})}
    body = json.dumps({"error_code": error.error_code, "message": str(error)})
    return Response(body, error.status, headers, CONTENT_TYPE_JSON)


class Bodies:
    """Reads request bodies, at most `max_body_bytes` each and `max_bodies_bytes` held by all at once.

    Used on the event loop only, so the count needs no lock.
    """

    def __init__(self, max_body_bytes: int, max_bodies_bytes: int) -> None:
        """Nothing is held yet."""
        self.max_body_bytes = max_body_bytes
        self.left = max_bodies_bytes

    @asynccontextmanager
    async def read(self, request: Request) -> AsyncIterator[bytes]:
        """The body of `request`, counted against the bodies held until the block ends.

        Raises:
            RequestError: 413 past `max_body_bytes`, 503 past `max_bodies_bytes`; both close the connection.
        """
        too_large = RequestError(413, f"the body is too large: the limit is {self.max_body_bytes} bytes", close=True)
        if int(request.headers.get("content-length", 0)) > self.max_body_bytes:  # one number (h11 checked it)
            raise too_large  # before reading it
        chunks: list[bytes] = []
        size = held = 0
        try:
            async for chunk in request.stream():
                if (size := size + len(chunk)) > self.max_body_bytes:
                    raise too_large
                if (more := max(0, size - SMALL_BODY_BYTES) - held) > self.left:
                    raise RequestError(503, "too many large bodies arriving: retry", "TEMPORARILY_UNAVAILABLE", True)
                self.left -= more
                held += more
                chunks.append(chunk)
            yield b"".join(chunks)
        finally:
            self.left += held


class RequestDeadline(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's head and body to arrive.

    uvicorn bounds the idle time between requests, not the time a request takes to arrive: a client
    sending a byte now and then would hold its connection (and a `limit_concurrency` slot) for ever.
    The deadline starts at the connection and at each request's first byte; later bytes do not move it.
    """

    request_seconds: float  # set by the server, from its settings

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the first request's deadline."""
        super().connection_made(transport)
        self.deadline = self.loop.call_later(self.request_seconds, self.expire)

    def data_received(self, data: bytes) -> None:
        """Restart the deadline at a request's first byte."""
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.deadline.cancel()
            self.deadline = self.loop.call_later(self.request_seconds, self.expire)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline."""
        self.deadline.cancel()
        super().connection_lost(exc)

    def expire(self) -> None:
        """Close the connection if the request is not in yet (the app sees the client leave)."""
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()


def one_framing(app: ASGIApp) -> ASGIApp:
    """Refuse, then close, a request framed both by Content-Length and by Transfer-Encoding.

    h11 frames it by Transfer-Encoding, as RFC 9112 §6.1 allows, and keeps the connection; a proxy in
    front may have framed it by Content-Length (request smuggling). The RFC lets a server refuse it,
    and requires closing the connection after the answer.
    """

    async def framed(scope: Scope, receive: Receive, send: Send) -> None:
        if {b"content-length", b"transfer-encoding"} <= {name for name, _ in scope.get("headers", ())}:
            error = RequestError(400, "send Content-Length or Transfer-Encoding, not both", close=True)
            return await refusal(error)(scope, receive, send)
        await app(scope, receive, send)

    return framed


def create_app(
    champion: Champion,
    limits: Serve,
    score_seconds: float,
    metrics: Metrics | None = None,
    inference_log: InferenceLog | None = None,
) -> Starlette:
    """The ASGI app: MLflow's scoring endpoints for `champion`'s current version, within `limits`.

    Each /invocations answer is counted in `metrics` (a registry of the app's own if None) and, when it
    scored rows, handed to `inference_log` (None: not logged).
    """
    scorer = Scorer()
    bodies = Bodies(limits.max_body_bytes, limits.max_bodies_bytes)
    metrics = metrics or Metrics()

    async def answer(request: Request) -> tuple[Response, str | None, tuple | None]:
        """The answer to an /invocations request; the error code it was refused with, or what scored what."""
        try:
            async with bodies.read(request) as body:
                if (loaded := champion.current) is None:  # the one read of the reference for this request
                    raise no_model(champion.state)
                parse = (body, request.headers.get("content-type"), loaded.schema, limits.max_rows)
                async with asyncio.timeout(score_seconds):
                    small = len(body) <= SMALL_BODY_BYTES
                    payload = parse_body(*parse) if small else await asyncio.to_thread(parse_body, *parse)
                    scored = await scorer.submit(loaded, payload)
                    predictions = predictions_json(scored)
            answered = Response(predictions, 200, {names.VERSION_HEADER: loaded.version}, CONTENT_TYPE_JSON)
            return answered, None, (loaded, payload, scored)
        except RequestError as error:
            return refusal(error), error.error_code, None
        except TimeoutError:
            reason = f"parsing and scoring took over {score_seconds:g} s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)"
            return refusal(RequestError(504, reason, "DEADLINE_EXCEEDED")), "DEADLINE_EXCEEDED", None
        except ClientDisconnect:
            return Response(status_code=400), "CLIENT_DISCONNECTED", None  # nobody is listening
        except Exception as exc:  # a bug or an answer that is not JSON: one line, no request data
            log.error("serve: /invocations failed: %s: %s", type(exc).__name__, one_line(exc))
            error = RequestError(500, f"the server failed to answer: {one_line(exc)}", "INTERNAL_ERROR")
            return refusal(error), error.error_code, None

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        response, error_code, scored = await answer(request)
        seconds = time.perf_counter() - started
        metrics.answered(response.status_code, seconds, scored[1].rows if scored else 0, error_code)
        if scored and inference_log is not None:
            inference_log.record(*scored, seconds)
        return response

    async def metrics_page(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def ping(request: Request) -> Response:
        return Response(b"\n", 200 if champion.current else 503, media_type=CONTENT_TYPE_JSON)

    async def health_check(request: Request) -> Response:
        status, body = health(champion.state)
        return Response(json.dumps(body), status, media_type=CONTENT_TYPE_JSON)

    async def version(request: Request) -> Response:
        if (state := champion.state).loaded is None:
            return refusal(no_model(state))
        return Response(json.dumps(state.loaded.info), media_type=CONTENT_TYPE_JSON)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return refusal(RequestError(404, f"no endpoint {request.url.path}", "ENDPOINT_NOT_FOUND"))
        return refusal(RequestError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"), exc.headers)

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping),
        Route("/health", health_check),
        Route("/version", version),
        Route("/metrics", metrics_page),
    ]
    errors = {HTTPException: http_error}
    return Starlette(routes=routes, middleware=[Middleware(one_framing)], exception_handlers=errors)


class ModelServer:
    """The alias follower and the app on uvicorn, started and stopped together."""

    def __init__(
        self,
        champion: Champion,
        host: str,
        port: int,
        limits: Serve,
        metrics: Metrics | None = None,
        inference_log: InferenceLog | None = None,
    ) -> None:
        """Serve on `host`:`port` (port 0: any free port) once started, within the `[serve]` settings' limits.

        Answers are counted in `metrics` (new ones if None) and logged to `inference_log` (None: not logged).
        """
        self.champion = champion
        self.metrics = metrics or Metrics()
        self.inference_log = inference_log
        self.url = f"http://{host}:{port}"  # the port is known once started
        timeout = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(champion, limits, timeout, self.metrics, inference_log),
                host=host,
                port=port,
                loop="asyncio",
                # h11, explicitly (its framing), with a deadline for requests to arrive
                http=type("Protocol", (RequestDeadline,), {"request_seconds": limits.request_seconds}),
                h11_max_incomplete_event_size=16 * 1024,  # a request's line and headers (h11's default)
                limit_concurrency=limits.max_connections,
                timeout_keep_alive=5,  # idle seconds between requests (uvicorn's and `mlflow models serve`'s)
                log_config=None,  # the CLI's logging, untouched
                log_level="warning",  # not uvicorn's start-up lines: ours says where it listens
                access_log=False,  # a log line would cost more than scoring a row
            )
        )
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Follow the alias, write the inference log and serve, in background threads; return once listening.

        Raises:
            RuntimeError: uvicorn did not start within `timeout` (e.g. the port is taken).
        """
        if self.inference_log is not None:
            self.inference_log.start()
        self.champion.start()
        self._thread = threading.Thread(target=self._server.run, name="tagifai-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"the HTTP server did not start on {self.url}")
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (cancelled after `grace_seconds`), then close everything.

        The inference log writes what it holds first, for up to its `CLOSE_SECONDS`.
        """
        self._server.config.timeout_graceful_shutdown = grace_seconds  # type: ignore[assignment]
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        if self.inference_log is not None:
            self.inference_log.close()
        self.champion.stop()


def freeze_heap() -> None:
    """Collect the garbage, then keep every object alive now out of the cyclic collector's walks (`gc.freeze`).

    A full collection walks every object it tracks, with every thread stopped: with MLflow, pandas and a
    model loaded, ~150 ms, a request's p99 whenever one runs. The inference log's queue keeps requests' rows
    alive for a second, long enough to reach the oldest generation: several full collections a second under
    load. Frozen, a full collection walks only what came since: ~5-10 ms (measured: README, inference log).
    """
    gc.collect()
    gc.freeze()


def run(
    model_name: str,
    alias: str,
    host: str,
    port: int,
    poll_seconds: float,
    limits: Serve,
    monitor: Monitor,
    database_url: str | None = None,
) -> None:
    """Serve `models:/<model_name>@<alias>` on `host`:`port` until SIGTERM/SIGINT, then stop gracefully.

    The registry is asked every `poll_seconds` which version the alias names; `limits` are the `[serve]` settings.
    Answered rows go to the inference log of `database_url` (TAGIFAI_PREDICTIONS_DB; None: no log), as
    `monitor` (`[monitor]`) says.

    Raises:
        BadInputError: `database_url` is not a PostgreSQL URL.
    """
    metrics = Metrics()
    inference_log = open_log(database_url, monitor, metrics)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def loaded(before: Loaded | None, after: Loaded) -> None:
        metrics.loaded(before, after)
        freeze_heap()  # the new model too

    champion = Champion(model_name, alias, poll_seconds, on_load=loaded)
    server = ModelServer(champion, host, port, limits, metrics, inference_log)
    try:
        freeze_heap()  # what the imports made
        server.start()
        log.info("serve: models:/%s@%s on %s (polling every %g s)", model_name, alias, server.url, poll_seconds)
        stop.wait()
        log.info("serve: stopping")
    finally:
        server.stop()
