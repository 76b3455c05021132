"""Work for one model, off the event loop: a bounded queue and worker threads, each with its
own session, that group compatible requests into one run (dynamic batching).

A request is admitted only while fewer than `max_queue` requests wait (queued or being
grouped); otherwise `QueueFull`, which the app answers with 503. A worker takes the oldest
request, then for up to `delay` seconds after it arrived adds requests whose inputs have
the same shapes except the batch axis, until `max_batch` rows; it runs them as one batch,
splits the outputs back and resolves each request's future on its event loop.

Requests whose future is already done (timed out, client gone) are skipped. Besides
inference, a worker runs calls (text generation) on its session one at a time, since a
session is used by one thread at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelkiln.backends.base import Session
from modelkiln.serve.metrics import Metrics

Feeds = dict[str, np.ndarray]


class QueueFull(Exception):
    """The model's queue holds `max_queue` waiting requests."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    feeds: Feeds | None = None  # inference
    call: Callable[[Session], Any] | None = None  # anything else, alone on a session
    rows: int = 1
    key: tuple[Any, ...] = ()
    enqueued: float = field(default_factory=time.perf_counter)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


class Batcher:
    def __init__(
        self,
        name: str,
        sessions: list[Session],
        *,
        batch_axis: bool,
        max_batch: int,
        delay: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.batch_axis = batch_axis
        self.max_batch = max(1, max_batch) if batch_axis else 1
        self.delay = max(0.0, delay)
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._collecting: list[list[_Job]] = []  # batches workers are still gathering
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(
                target=self._work, args=(session,), name=f"kiln-{name}-{i}", daemon=True
            )
            for i, session in enumerate(sessions)
        ]
        for thread in self._threads:
            thread.start()

    def _live_waiting(self) -> int:
        """Requests still waiting to run (queued or being gathered), not counting those whose
        client has gone or timed out."""
        gathered = (job for batch in self._collecting for job in batch)
        return sum(not job.future.done() for job in (*self._pending, *gathered))

    def submit(self, feeds: Feeds) -> asyncio.Future[Feeds]:
        """Queue checked feeds; the future resolves to the outputs."""
        rows = next(iter(feeds.values())).shape[0] if self.batch_axis and feeds else 1
        key = tuple(
            (n, a.dtype.str, a.shape[1:] if self.batch_axis else a.shape) for n, a in feeds.items()
        )
        return self._enqueue(feeds=feeds, rows=rows, key=key)

    def submit_call(self, call: Callable[[Session], Any]) -> asyncio.Future[Any]:
        """Queue a call on a session of its own (not batched)."""
        return self._enqueue(call=call)

    def _enqueue(self, **job: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise QueueFull(f"model '{self.name}' is shutting down")
            waiting = self._live_waiting()
            if waiting >= self.max_queue:
                raise QueueFull(
                    f"model '{self.name}' has {waiting} requests waiting, its queue's limit "
                    "(--max-queue-size); retry later"
                )
            self._pending.append(_Job(loop, future, **job))
            # every worker: one gathering a batch of other shapes would leave this job
            self._cond.notify_all()
        # A request that times out or whose client goes wakes the workers, so a batch
        # gathered around it is not held open for nobody.
        future.add_done_callback(self._wake)
        return future

    def _wake(self, _: asyncio.Future[Any]) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what was queued, then end the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker side --------------------------------------------------------------------

    def _work(self, session: Session) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            if batch[0].call is not None:
                self._call(session, batch[0])
            else:
                self._infer(session, batch)

    def _collect(self) -> list[_Job] | None:
        with self._cond:
            while True:
                while self._pending and self._pending[0].future.done():
                    self._pending.popleft()
                if self._pending:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            batch = [first]
            if first.call is not None or self.max_batch <= 1:
                return batch
            rows = first.rows
            deadline = first.enqueued + self.delay
            self._collecting.append(batch)
            try:
                while rows < self.max_batch:
                    taken = self._take_compatible(first.key, self.max_batch - rows)
                    if taken is not None:
                        batch.append(taken)
                        rows += taken.rows
                        continue
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._stopping or all(j.future.done() for j in batch):
                        break
                    self._cond.wait(left)
            finally:
                self._collecting.remove(batch)
            return batch

    def _take_compatible(self, key: tuple[Any, ...], room: int) -> _Job | None:
        for job in self._pending:
            if job.call is None and job.key == key and job.rows <= room and not job.future.done():
                self._pending.remove(job)
                return job
        return None

    def _infer(self, session: Session, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]
        if not live:
            return
        start = time.perf_counter()
        try:
            if len(live) == 1:
                outputs = [session.run(live[0].feeds or {})]
            else:
                names = list(live[0].feeds or {})
                joined = {n: np.concatenate([(j.feeds or {})[n] for j in live]) for n in names}
                merged = session.run(joined)
                bounds = np.cumsum([j.rows for j in live])[:-1]
                parts = {n: np.split(v, bounds) for n, v in merged.items()}
                outputs = [{n: parts[n][i] for n in parts} for i in range(len(live))]
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in live:
                job.resolve(error=exc)
            return
        end = time.perf_counter()
        queue_us = sum((start - j.enqueued) * 1e6 for j in live)
        self.metrics.execution(
            self.name, sum(j.rows for j in live), len(live), queue_us, (end - start) * 1e6
        )
        for job, result in zip(live, outputs, strict=True):
            job.resolve(result)

    def _call(self, session: Session, job: _Job) -> None:
        start = time.perf_counter()
        try:
            assert job.call is not None
            result = job.call(session)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            job.resolve(error=exc)
            return
        end = time.perf_counter()
        self.metrics.execution(self.name, 1, 1, (start - job.enqueued) * 1e6, (end - start) * 1e6)
        job.resolve(result)
