"""`GET /metrics`: what `tagifai serve` did, in Prometheus' text format (prometheus-client, a registry of its own).

Requests to /invocations by status code, refusals by MLflow error code, their latency, the rows scored;
the version served and how often it changed; the inference log's rows written, dropped (by reason) and
waiting. Each count is one prometheus-client call on a child looked up once, so the request path takes no
lock but the value's own.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from tagifai.serving.follower import Loaded

# Latency buckets (seconds): a 1-row answer takes milliseconds, a 10,000-row one seconds, 60 s is the timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Why inference-log rows were not written: no room in the queue (PostgreSQL slow or down: the rows could
# not wait), still waiting when serve stopped, a row PostgreSQL cannot hold, or a batch it refused.
DROP_REASONS = ("queue_full", "shutdown", "invalid", "rejected")


class Metrics:
    """serve's counters, gauges and histogram, in a registry of their own (not prometheus-client's global one)."""

    def __init__(self) -> None:
        """Every metric at zero."""
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "tagifai_serve_requests", "POST /invocations requests answered, by HTTP status code.", ["code"],
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "tagifai_serve_errors", "POST /invocations requests refused, by MLflow error code.", ["error_code"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "tagifai_serve_request_duration_seconds", "Time to answer POST /invocations, from its body's first byte.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.rows = Counter("tagifai_serve_rows_scored", "Rows scored and answered.", registry=registry)
        self.model_version = Gauge(
            "tagifai_serve_model_version", "The model version served (0: none loaded yet).", registry=registry
        )
        self.swaps = Counter(
            "tagifai_serve_model_swaps", "Changes of the version served (the alias moved).", registry=registry
        )
        self.log_written = Counter(
            "tagifai_inference_log_rows_written", "Inference-log rows written to PostgreSQL.", registry=registry
        )
        self.log_dropped = Counter(
            "tagifai_inference_log_rows_dropped", "Inference-log rows not written, by reason.", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.log_waiting = Gauge(
            "tagifai_inference_log_rows_waiting", "Inference-log rows waiting to be written.", registry=registry
        )
        self._codes: dict[int, Counter] = {}
        self._error_codes: dict[str, Counter] = {}
        self._dropped = {reason: self.log_dropped.labels(reason) for reason in DROP_REASONS}  # shown at 0 too

    def answered(self, status: int, seconds: float, rows: int = 0, error_code: str | None = None) -> None:
        """Count one /invocations answer: its status, how long it took, the rows scored, why it was refused."""
        if (by_code := self._codes.get(status)) is None:
            by_code = self._codes[status] = self.requests.labels(str(status))
        by_code.inc()
        self.latency.observe(seconds)
        if rows:
            self.rows.inc(rows)
        if error_code is not None:
            if (by_error := self._error_codes.get(error_code)) is None:
                by_error = self._error_codes[error_code] = self.errors.labels(error_code)
            by_error.inc()

    def loaded(self, before: Loaded | None, after: Loaded) -> None:
        """The follower swapped `after` in for `before` (None: the first version loaded)."""
        self.model_version.set(float(after.version) if after.version.isdigit() else float("nan"))
        if before is not None and before.version != after.version:
            self.swaps.inc()

    def dropped(self, reason: str, rows: int) -> None:
        """Count inference-log rows not written, for one of `DROP_REASONS`."""
        if rows:
            self._dropped[reason].inc(rows)

    def waiting(self, rows: Callable[[], float]) -> None:
        """Read the rows waiting for the inference log's writer from `rows()`, when scraped."""
        self.log_waiting.set_function(rows)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry's samples and their content type, in the format `accept` asks for (Prometheus' text)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
