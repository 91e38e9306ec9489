"""The gate fails closed: MLflow failing while `register` re-scores the champion is "try again", never "allowed".

A real `mlflow server` (PostgreSQL behind it), reached through a proxy that answers 503 to every
request for the champion's model files while `failing` is set, as an overloaded or restarting server
would: `register` exits 1 (Airflow retries it) and moves nothing; once MLflow answers, the retry decides.
"""

from __future__ import annotations

import http.client
import http.server
import os
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from harness import Cli, synthetic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Proxy(http.server.ThreadingHTTPServer):
    """Forwards every request to `upstream`; answers 503 instead to those whose path holds `failing`."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        """Listen on a free local port."""
        super().__init__(("127.0.0.1", 0), Forward)
        self.upstream, self.failing = urllib.parse.urlparse(upstream).netloc, ""
        self.refused = 0

    @property
    def uri(self) -> str:
        """The proxy's URL, a tracking URI."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class Forward(http.server.BaseHTTPRequestHandler):
    """One request, forwarded (or refused with 503)."""

    server: Proxy

    def forward(self) -> None:
        """Send the request upstream and its answer back, unless it asks for what is failing."""
        if self.server.failing and self.server.failing in urllib.parse.unquote(self.path):
            self.server.refused += 1
            self.send_error(503, "Service Unavailable")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def proxy(mlflow_server) -> Iterator[Proxy]:
    """The proxy in front of the session's MLflow server."""
    server = Proxy(mlflow_server.uri)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_mlflow_failing_while_the_champion_is_rescored_exits_1_and_moves_nothing(proxy, tmp_path):
    projects, tags = synthetic.write_dataset(tmp_path / "data")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": proxy.uri,
        "TAGIFAI_CONFIG": str(synthetic.write_small_config(tmp_path / "small.toml")),
        "TAGIFAI_PROJECTS_URL": str(projects),
        "TAGIFAI_TAGS_URL": str(tags),
        "TAGIFAI_MODEL_NAME": "tagifai-fails-closed",
        # MLflow's client would retry a 503 for minutes; Airflow's retry is the one that counts here.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    env.pop("TAGIFAI_PIPELINE_RUN_ID", None)
    cli = Cli(env, tmp_path)
    name, experiment = env["TAGIFAI_MODEL_NAME"], ("--experiment-name", "e2e")
    _, first, _ = cli("pipeline", "--num-trials", "1", *experiment)
    client = MlflowClient(proxy.uri)
    champion = client.get_model_version_by_alias(name, "champion")
    # A second model (trained anew), evaluated; then its register, while MLflow fails the champion's files.
    _, elt, _ = cli("elt", *experiment)
    _, validate, _ = cli("validate", "--elt-run", elt["run_id"])
    _, train, _ = cli("train", "--data-run", validate["run_id"], "--force")
    _, evaluate, _ = cli("evaluate", "--train-run", train["run_id"])
    proxy.failing = champion.source.removeprefix("models:/")  # the champion's logged model id
    code, _, stderr = cli("register", "--evaluate-run", evaluate["run_id"], check=False)
    assert code == 1, stderr  # may pass: retried
    assert proxy.refused > 0 and "error: register: cannot score the models now (no decision)" in stderr
    assert client.get_model_version_by_alias(name, "champion").version == champion.version == first["version"]
    assert client.get_model_version_by_alias(name, "challenger").version == first["version"]
    # The retry, once MLflow answers again, re-scores the champion and decides.
    proxy.failing = ""
    _, retried, _ = cli("register", "--evaluate-run", evaluate["run_id"])
    decided = client.get_run(retried["run_id"])
    assert decided.data.tags["champion_unloadable"] == "" and "champion_holdout_f1" in decided.data.metrics
    assert client.get_model_version_by_alias(name, "challenger").version == retried["version"] != first["version"]
