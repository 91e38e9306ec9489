"""Micro-batching: requests that queue up while the model is busy are scored as one frame.

One model call runs at a time, in a worker thread (never on the event loop, so a slow prediction
delays no other request's I/O). Requests that arrive meanwhile are scored together at the next call
when they share the model, columns, dtypes and params, which amortizes the model's fixed per-call
cost; tagifai's model scores each row independently, so every request gets the rows it would have
got alone. A batch that fails is re-scored request by request, so one bad request never fails its
neighbours.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tagifai.serving.follower import Loaded
from tagifai.serving.protocol import Payload, RequestError, jsonable, one_line

# Stop adding queued requests to a batch once it holds this many rows; bigger requests are scored alone.
MAX_BATCH_ROWS = 256


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


def score_jobs(jobs: list[Job]) -> None:
    """Score queued jobs, each group of equal `batch_key` as one frame; skip those whose request gave up."""
    groups: dict[Any, list[Job]] = {}
    for job in jobs:
        if job.future.set_running_or_notify_cancel():  # False: its deadline passed while it waited
            groups.setdefault(batch_key(job), []).append(job)
    for group in groups.values():
        try:
            score_batch(group)
        except Exception as exc:  # answer whoever is still waiting
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)


class Scorer:
    """Scores requests one model call at a time, off the event loop; what queues up meanwhile shares the next call."""

    def __init__(self, max_batch_rows: int = MAX_BATCH_ROWS) -> None:
        """Nothing runs until the first `submit()`."""
        self.max_batch_rows = max_batch_rows
        self._queue: deque[Job] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, loaded: Loaded, payload: Payload) -> Any:
        """Score `payload` with `loaded`; the JSON-able predictions. Call it on the event loop.

        Raises:
            RequestError: 400 for input the model refuses.
        """
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
            await asyncio.to_thread(score_jobs, jobs)
