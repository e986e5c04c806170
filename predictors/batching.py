"""Dynamic batching in front of one model (Triton's dynamic batcher, in asyncio).

Requests wait in a FIFO queue. One worker per model takes the oldest request as soon as the
model is free and adds the following ones while they fit in ``max_batch_size`` rows, waiting at
most ``max_queue_delay_ms`` (counted from the oldest request's arrival) for more, and only while
nothing else is queued. Requests of different batch sizes are concatenated along the first
dimension; requests whose other dimensions differ (dynamic sequence lengths) never share a batch:
the batch takes the later requests shaped like the oldest one, and the others keep their order.
``model.predict`` runs on a single-thread executor, so the event loop keeps serving while the
model computes; its outputs are split back per request.

A full queue rejects with V2Error(503); a failing predict fails only that batch (500) and the
worker goes on with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from predictors.model import Model
from predictors.v2 import V2Error

# upper bounds of the batch-size histogram (rows per predict call); +Inf is implied
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float


@dataclass
class BatcherStats:
    """A snapshot for metrics: counts since start plus the current queue depth."""

    model: str
    max_batch_size: int
    queue_depth: int
    requests_total: int
    rejected_total: int
    failed_batches_total: int
    batches_total: int
    rows_total: int
    batch_sizes: dict[int, int] = field(default_factory=dict)  # rows per predict -> count
    predict_seconds_total: float = 0.0

    def batch_histogram(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs over BATCH_BUCKETS, ending with +Inf."""
        out = []
        for le in BATCH_BUCKETS:
            n = sum(c for s, c in self.batch_sizes.items() if s <= le)
            out.append((repr(float(le)), n))
        out.append(("+Inf", self.batches_total))
        return out

    @property
    def mean_batch_size(self) -> float:
        return self.rows_total / self.batches_total if self.batches_total else 0.0


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {int(a.shape[0]) if a.ndim else -1 for a in inputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise V2Error(400, f"inputs must share one batch dimension, got first dims {sorted(sizes)}")
    return sizes.pop()


def _key(inputs: Mapping[str, np.ndarray]) -> tuple:
    """Requests batch together only when everything but the batch dimension matches."""
    return tuple(sorted((n, a.shape[1:], a.dtype.str) for n, a in inputs.items()))


class DynamicBatcher:
    def __init__(
        self,
        model: Model,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue: int = 1024,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_s = float(max_queue_delay_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"predict-{model.name}")
        self._closed = False
        # counters
        self._requests = 0
        self._rejected = 0
        self._failed_batches = 0
        self._batches = 0
        self._rows = 0
        self._sizes: dict[int, int] = {}
        self._predict_s = 0.0

    # ------------------------------------------------------------------ public
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def stats(self) -> BatcherStats:
        return BatcherStats(
            model=self.model.name,
            max_batch_size=self.max_batch_size,
            queue_depth=len(self._queue),
            requests_total=self._requests,
            rejected_total=self._rejected,
            failed_batches_total=self._failed_batches,
            batches_total=self._batches,
            rows_total=self._rows,
            batch_sizes=dict(self._sizes),
            predict_seconds_total=self._predict_s,
        )

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request (at most max_batch_size rows); its outputs once its batch ran."""
        if self._closed:
            raise V2Error(503, f"model '{self.model.name}' is shutting down")
        rows = _rows(inputs)
        if rows > self.max_batch_size:
            raise V2Error(400, f"batch of {rows} rows exceeds max batch size {self.max_batch_size}")
        self._ensure_worker()
        self._requests += 1
        if len(self._queue) >= self.max_queue:
            self._rejected += 1
            raise V2Error(
                503, f"model '{self.model.name}' is overloaded: queue full ({self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        p = _Pending(dict(inputs), rows, _key(inputs), loop.create_future(), time.monotonic())
        self._queue.append(p)
        assert self._wakeup is not None
        self._wakeup.set()
        return await p.future

    def start(self) -> None:
        """Start the worker on the running loop (submit does it too)."""
        self._ensure_worker()

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with 503."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = None
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(V2Error(503, f"model '{self.model.name}' stopped"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ worker
    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done() and self._loop is loop:
            return
        if self._loop is not loop:  # first use, or a new event loop (tests, asyncio.run)
            self._queue.clear()
            self._wakeup = asyncio.Event()
            self._loop = loop
        self._worker = loop.create_task(self._run(), name=f"batcher-{self.model.name}")

    def _take(self, key: tuple, room: int) -> list[_Pending]:
        """Remove and return queued requests of ``key`` that fit in ``room`` rows, oldest first;
        the others keep their order."""
        taken: list[_Pending] = []
        keep: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # cancelled by the client
                continue
            if p.key == key and p.rows <= room:
                taken.append(p)
                room -= p.rows
            else:
                keep.append(p)
            if room == 0:
                break
        keep.extend(self._queue)
        self._queue = keep
        return taken

    async def _next_batch(self) -> list[_Pending]:
        """Wait for work, then gather one batch: the oldest request plus later ones of the same
        shape while they fit in max_batch_size rows. It waits for more (until the oldest has
        waited max_queue_delay_ms) only while nothing else is queued."""
        assert self._wakeup is not None
        while True:
            while self._queue and self._queue[0].future.done():  # cancelled by the client
                self._queue.popleft()
            if self._queue:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        deadline = first.enqueued + self.max_queue_delay_s
        while rows < self.max_batch_size:
            more = self._take(first.key, self.max_batch_size - rows)
            batch += more
            rows += sum(p.rows for p in more)
            if rows >= self.max_batch_size or self._queue:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                await self._execute(loop, batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(V2Error(503, f"model '{self.model.name}' stopped"))
                raise
            except Exception as e:  # never let the worker die
                self._fail(batch, V2Error(500, f"batching failed: {type(e).__name__}: {e}"))

    def _fail(self, batch: list[_Pending], err: V2Error) -> None:
        self._failed_batches += 1
        for p in batch:
            if not p.future.done():
                p.future.set_exception(err)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        rows = sum(p.rows for p in batch)
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
        t0 = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.model.predict, inputs)
        except Exception as e:
            self._fail(
                batch, V2Error(500, f"model '{self.model.name}' failed: {type(e).__name__}: {e}")
            )
            return
        finally:
            self._predict_s += time.perf_counter() - t0
            self._batches += 1
            self._rows += rows
            self._sizes[rows] = self._sizes.get(rows, 0) + 1
        try:
            outputs = {n: np.asarray(a) for n, a in outputs.items()}
            for n, a in outputs.items():
                if a.ndim == 0 or a.shape[0] != rows:
                    raise ValueError(
                        f"output '{n}' has shape {list(a.shape)}, expected first dimension {rows}"
                    )
        except Exception as e:
            self._fail(batch, V2Error(500, f"model '{self.model.name}' returned bad outputs: {e}"))
            return
        start = 0
        for p in batch:
            end = start + p.rows
            if not p.future.done():
                p.future.set_result({n: a[start:end] for n, a in outputs.items()})
            start = end
