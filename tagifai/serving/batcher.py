"""Micro-batching: one model call at a time, in a worker thread; what queues up meanwhile shares the next call.

Requests of the same model, columns, dtypes and params are scored as one frame (tagifai's model scores
each row on its own, so each gets the rows it would have got alone); a batch that fails is re-scored
request by request, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.utils.proto_json_utils import _get_jsonable_obj

from tagifai.serving.follower import Loaded
from tagifai.serving.protocol import Payload, RequestError, one_line


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
    params = json.dumps(payload.params, sort_keys=True, default=str) if payload.params else None
    return job.loaded, tuple(payload.data.columns), tuple(payload.data.dtypes), params


def score(loaded: Loaded, payload: Payload) -> Any:
    """The JSON-able predictions for one request, as MLflow's scoring server makes them (records for frames).

    Raises:
        RequestError: MLflow's status (400) when the model refuses the input.
    """
    try:
        return _get_jsonable_obj(loaded.model.predict(payload.data, params=payload.params))
    except MlflowException as exc:
        raise RequestError(exc.get_http_status_code(), one_line(exc), exc.error_code) from None
    except Exception as exc:
        raise RequestError(400, f"the model cannot score this input: {one_line(exc)}") from None


def score_batch(jobs: list[Job]) -> None:
    """Score `jobs`, those of equal `batch_key` as one frame; resolve each job's future with its own rows."""
    groups: dict[Any, list[Job]] = {}
    for job in jobs:
        if job.future.set_running_or_notify_cancel():  # False: its request gave up waiting
            groups.setdefault(batch_key(job), []).append(job)
    for group in groups.values():
        if len(group) > 1:
            frame = pd.concat([job.payload.data for job in group], ignore_index=True)
            try:
                rows = score(group[0].loaded, Payload(frame, group[0].payload.params))
            except RequestError:
                rows = None  # someone's input is bad: score each alone so only they get the error
            if isinstance(rows, list) and len(rows) == len(frame):
                remaining = iter(rows)
                for job in group:
                    job.future.set_result(list(islice(remaining, job.payload.rows)))
                continue
        for job in group:
            try:
                job.future.set_result(score(job.loaded, job.payload))
            except Exception as exc:
                job.future.set_exception(exc)


class Scorer:
    """Scores requests one model call at a time, off the event loop; what queues up meanwhile shares the next call."""

    # Stop adding queued requests to a batch once it holds this many rows; bigger requests are scored alone.
    max_batch_rows = 256

    def __init__(self) -> None:
        """Nothing runs until the first `submit()`."""
        self._queue: deque[Job] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, loaded: Loaded, payload: Payload) -> Any:
        """Score `payload` with `loaded` (on the event loop); the JSON-able predictions, or `score`'s RequestError."""
        if payload.batchable and payload.rows >= self.max_batch_rows:
            return await asyncio.to_thread(score, loaded, payload)  # in a thread of its own, not ahead of small ones
        job = Job(loaded, payload, Future())
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return await asyncio.wrap_future(job.future)

    async def _work(self) -> None:
        while self._queue:
            jobs = [self._queue.popleft()]
            rows = jobs[0].payload.rows
            while self._queue and rows < self.max_batch_rows:
                jobs.append(self._queue.popleft())
                rows += jobs[-1].payload.rows
            await asyncio.to_thread(score_batch, jobs)
