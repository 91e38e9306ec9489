"""Follow `models:/<name>@<alias>`: a thread asks the registry every `poll_seconds` which version holds it.

`mlflow models serve` resolves the alias once. Here a new version is loaded off the request path,
warmed up on its own input example and swapped in with one assignment of an immutable `State`; each
request reads that reference once, so it is answered by exactly one version and none fails during a
swap. A version that cannot be loaded is reported on /health while the last good one keeps serving.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.tracking import MlflowClient

from tagifai import model as models
from tagifai.serving.protocol import RequestError, one_line

log = logging.getLogger("tagifai")


@dataclass(frozen=True, eq=False)
class Loaded:
    """One loaded model version, ready to score, and what /version says about it."""

    model: Any
    version: str
    info: dict[str, Any]
    schema: Any = None
    directory: str | None = None


@dataclass(frozen=True)
class State:
    """What the server serves and why it may be behind the alias; replaced whole, never mutated."""

    loaded: Loaded | None = None
    last_error: str | None = None


def health(state: State) -> tuple[int, dict[str, Any]]:
    """The /health status code and body for `state`."""
    loaded, error = state.loaded, state.last_error
    if loaded is None:
        return 503, {"status": "unavailable", "model_version": None, "loaded_at": None, "last_error": error}
    status = "degraded" if error else "ok"
    body = {"status": status, "model_version": loaded.version, "loaded_at": loaded.info["loaded_at"]}
    return 200, body | ({"last_error": error} if error else {})


def no_model(state: State) -> RequestError:
    """The 503 answered while no version could be loaded yet."""
    reason = f": {state.last_error}" if state.last_error else " yet"
    return RequestError(503, f"no model loaded{reason}", "TEMPORARILY_UNAVAILABLE")


def load_version(model_name: str, alias: str, version: Any, directory: str) -> Loaded:
    """Load registered `version` of `model_name` into `directory`, score its input example once, describe it.

    A version that loads but cannot score the example it was logged with is refused like one that
    does not load; the first prediction also warms the model up before it takes traffic.
    """
    model = models.load(f"models:/{model_name}/{version.version}", dst_path=directory)
    if model.input_example is not None:
        model.predict(model.input_example)
    tags = dict(version.tags or {})
    try:
        test_f1 = float(tags["test_f1"])
    except (KeyError, ValueError):
        test_f1 = None
    info = {  # what /version says
        "model_name": model_name,
        "alias": alias,
        "model_version": str(version.version),
        "run_id": version.run_id,
        "test_f1": test_f1,
        **{key: tags.get(key) for key in ("data_sha256", "pipeline_run_id", "code_version")},
        "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return Loaded(model, str(version.version), info, model.metadata.get_input_schema(), directory)


class Champion:
    """Follows `models:/<model_name>@<alias>`: `current` is the loaded version the alias pointed at."""

    def __init__(
        self,
        model_name: str,
        alias: str,
        poll_seconds: float,
        on_load: Callable[[Loaded | None, Loaded], None] | None = None,
    ) -> None:
        """Nothing is loaded until `start()` (or `poll()`); `on_load(before, after)` is told of each swap."""
        self.model_name = model_name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.on_load = on_load
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
        try:
            self._client = self._client or MlflowClient()
            version = self._client.get_model_version_by_alias(self.model_name, self.alias)
        except Exception as exc:
            missing = getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
            reason = "no version to serve" if missing else "cannot ask MLflow"
            self._fail(f"{reason} for {self.model_name}@{self.alias}: {one_line(exc)}")
            return
        current = self.state.loaded
        if current is None or current.version != str(version.version):
            self._load(version, current)
        elif self.state.last_error is not None:
            self.state = State(current)
            self._logged_error = None
            log.info("serve: back in sync, champion v%s", current.version)

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
        if self.on_load is not None:
            self.on_load(current, loaded)

    def _fail(self, error: str, key: str | None = None) -> None:
        self.state = State(self.state.loaded, error)
        if (key or error) != self._logged_error:  # one line per new failure (per version), not one per poll
            log.warning("serve: %s", error)
            self._logged_error = key or error
