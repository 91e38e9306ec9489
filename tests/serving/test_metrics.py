"""`GET /metrics` of `tagifai serve`, through the real app on uvicorn: what it counts after real requests."""

from __future__ import annotations

import json
from typing import Any

import prometheus_client
import pytest
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tagifai.serving import follower
from tagifai.serving import server as serve
from tagifai.serving.metrics import DROP_REASONS, Metrics
from tests.serving.test_serve import (
    POLL,
    ROWS,
    FrameModel,
    StaticChampion,
    call,
    get,
    invoke,
    limits,
    register,
    static_loaded,
    wait_for,
)


def scrape(server: serve.ModelServer, accept: str | None = None) -> tuple[str, dict[tuple[str, tuple], float]]:
    """GET /metrics: its content type, and each sample's value by (name, sorted labels)."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return response.getheader("Content-Type"), samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def following(store: dict[str, Any], model_name: str):
    """A server following `model_name@champion` (v1), its metrics wired to the follower as `tagifai serve` does."""
    client = MlflowClient()
    v1 = register(model_name, store["models"]["v1"])
    client.set_registered_model_alias(model_name, "champion", v1)
    metrics = Metrics()
    champion = follower.Champion(model_name, "champion", POLL, on_load=metrics.loaded)
    server = serve.ModelServer(champion, "127.0.0.1", 0, limits(), metrics)
    server.start()
    wait_for(lambda: server.champion.current is not None)
    yield server, v1
    server.stop(grace_seconds=2)


def test_metrics_count_requests_errors_latency_rows_and_swaps(store, model_name, following):
    server, v1 = following
    ok = json.dumps({"dataframe_records": ROWS})  # 3 rows
    for _ in range(12):
        assert invoke(server, ok)[0] == 200
    assert invoke(server, "{not json")[0] == 400  # BAD_REQUEST
    assert invoke(server, '{"data": []}')[0] == 400  # BAD_REQUEST
    assert invoke(server, json.dumps({"dataframe_records": [{"description": "no title"}]}))[0] == 400
    assert invoke(server, "title\nx\n", "text/plain")[0] == 415  # BAD_REQUEST too
    for path in ("/health", "/version", "/ping"):  # probes are not /invocations requests
        assert get(server, path)[0] == 200

    content_type, samples = scrape(server)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(samples, "tagifai_serve_requests_total", code="200") == 12
    assert value(samples, "tagifai_serve_requests_total", code="400") == 3
    assert value(samples, "tagifai_serve_requests_total", code="415") == 1
    assert value(samples, "tagifai_serve_errors_total", error_code="BAD_REQUEST") == 3
    assert value(samples, "tagifai_serve_errors_total", error_code="INVALID_PARAMETER_VALUE") == 1
    assert value(samples, "tagifai_serve_request_duration_seconds_count") == 16
    assert 0 < value(samples, "tagifai_serve_request_duration_seconds_sum") < 16 * 5
    assert value(samples, "tagifai_serve_request_duration_seconds_bucket", le="+Inf") == 16
    assert value(samples, "tagifai_serve_rows_scored_total") == 36
    assert value(samples, "tagifai_serve_model_version") == int(v1)
    assert value(samples, "tagifai_serve_model_swaps_total") == 0
    # No inference log here: its counters are there, at zero.
    assert value(samples, "tagifai_inference_log_rows_written_total") == 0
    assert all(value(samples, "tagifai_inference_log_rows_dropped_total", reason=r) == 0 for r in DROP_REASONS)
    assert value(samples, "tagifai_inference_log_rows_waiting") == 0

    v2 = register(model_name, store["models"]["v2"])
    MlflowClient().set_registered_model_alias(model_name, "champion", v2)
    wait_for(lambda: get(server, "/version")[1]["model_version"] == v2)
    # Counted once the follower swapped the version in (a moment after /version shows it).
    samples = wait_for(lambda: (got := scrape(server)[1]) and value(got, "tagifai_serve_model_swaps_total") and got)
    assert value(samples, "tagifai_serve_model_version") == int(v2)
    assert value(samples, "tagifai_serve_model_swaps_total") == 1
    assert value(samples, "tagifai_serve_requests_total", code="200") == 12  # scraping is not counted


def test_metrics_are_served_as_openmetrics_when_asked(following):
    server, _ = following
    invoke(server, json.dumps({"dataframe_records": ROWS[:1]}))
    content_type, samples = scrape(server, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text")
    assert value(samples, "tagifai_serve_requests_total", code="200") == 1
    assert call(server, "POST", "/metrics", "{}")[0] == 405  # read-only


def test_each_server_counts_in_its_own_registry_not_the_global_one():
    servers = [serve.ModelServer(StaticChampion(static_loaded(FrameModel())), "127.0.0.1", 0, limits()) for _ in "ab"]
    for server in servers:
        server.start()
    try:
        invoke(servers[0], json.dumps({"dataframe_records": [{"title": "x"}, {"title": "y"}]}))
        counts = [value(scrape(server)[1], "tagifai_serve_rows_scored_total") for server in servers]
    finally:
        for server in servers:
            server.stop(grace_seconds=2)
    assert counts == [2, 0]
    assert prometheus_client.REGISTRY.get_sample_value("tagifai_serve_rows_scored_total") is None


def test_a_timeout_and_a_server_error_are_counted_with_their_error_codes(monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")

    class Opaque(FrameModel):
        def predict(self, data, params=None):
            if (data["title"] == "slow").any():
                self.sleep = 2.0
                return super().predict(data, params)
            return [object()] * len(data)  # not JSON: a 500

    server = serve.ModelServer(StaticChampion(static_loaded(Opaque())), "127.0.0.1", 0, limits())
    server.start()
    try:
        assert invoke(server, json.dumps({"dataframe_records": [{"title": "x"}]}))[0] == 500
        assert invoke(server, json.dumps({"dataframe_records": [{"title": "slow"}]}))[0] == 504
        _, samples = scrape(server)
    finally:
        server.stop(grace_seconds=3)
    assert value(samples, "tagifai_serve_errors_total", error_code="INTERNAL_ERROR") == 1
    assert value(samples, "tagifai_serve_errors_total", error_code="DEADLINE_EXCEEDED") == 1
    assert value(samples, "tagifai_serve_requests_total", code="504") == 1
    assert value(samples, "tagifai_serve_rows_scored_total") == 0
    assert value(samples, "tagifai_serve_request_duration_seconds_bucket", le="0.5") == 1  # the 500 was quick
