"""The BATCH-style buffer in front of Lambda: spilled requests wait briefly to share one invoke.

`batch_params` is the analytic choice (pure): with Poisson arrivals at the current spill rate,
a batch opened by one request and closed at `size` requests or after `timeout_ms` has a known
size distribution, so its expected cost per request follows from Lambda's pricing; the size that
minimises it is picked among those whose timeout plus service time fit the SLO slack.
`SpillBuffer` applies it on the event loop: one forward pass per batch (the handler's `batch`
event), bounded pending requests, Lambda's concurrency respected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hybridserve.pricing import lambda_billed_ms_array, lambda_gb_s


@dataclass(frozen=True)
class BatchParams:
    size: int
    timeout_ms: float
    expected_size: float
    usd_per_request: float


def batch_params(
    rate_rps: float,
    slack_ms: float,
    service_ms: Sequence[float],
    *,
    memory_gb: float,
    usd_per_gb_s: float,
    usd_per_request: float,
    max_batch: int | None = None,
) -> BatchParams:
    """Batch size and timeout of least expected cost per request within the SLO slack.

    `service_ms[b]` is Lambda's warm time for a batch of b (index 0 unused). A batch of size b may
    wait `slack_ms - service_ms[b]`; sizes whose service alone exceeds the slack are out, and a
    batch of one never waits. Ties go to the smaller batch (lower latency at equal cost).
    """
    top = len(service_ms) - 1 if max_batch is None else min(max_batch, len(service_ms) - 1)
    if top < 1:
        raise ValueError("service_ms needs entries for batch sizes 1.. (index 0 unused)")
    svc = np.asarray(service_ms[1 : top + 1], dtype=float)
    sizes = np.arange(1, top + 1)
    timeouts = np.maximum(slack_ms - svc, 0.0)
    timeouts[0] = 0.0
    feasible = slack_ms - svc >= 0
    feasible[0] = True
    # compute $ per invoke, by batch size
    billed = lambda_gb_s(memory_gb * 1024.0, lambda_billed_ms_array(svc)) * usd_per_gb_s
    best: BatchParams | None = None
    lam = max(rate_rps, 0.0) / 1000.0  # per ms
    for j in np.flatnonzero(feasible):
        b = int(sizes[j])
        mu = lam * timeouts[j]
        k = np.arange(b)
        p = batch_size_pmf(b, mu)
        e_size = float(np.dot(p, k + 1))
        e_cost = float(np.dot(p, billed[:b])) + usd_per_request
        per_req = e_cost / e_size
        if best is None or per_req < best.usd_per_request * (1 - 1e-9):
            best = BatchParams(b, float(timeouts[j]), e_size, per_req)
    assert best is not None
    return best


def batch_size_pmf(b: int, mu: float) -> np.ndarray:
    """P(S = k) for k = 1..b of a batch opened by one request and closed at `b` requests or at
    its timeout, with Poisson(`mu`) further arrivals before the timeout: S = min(b, 1 + N)."""
    p = poisson_pmf(b, mu)
    p[-1] = 1.0 - p[:-1].sum() if b > 1 else 1.0
    return np.clip(p, 0.0, 1.0)


def poisson_pmf(n: int, mu: float | np.ndarray) -> np.ndarray:
    """P(N = k) for k = 0..n-1, N ~ Poisson(mu), in log space (no underflow before the tail);
    an array of means gives one row per mean. Written out so that the router does not import
    scipy.stats (0.4 s and 30 MB) for one pmf."""
    k = np.arange(n)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n)))))[:n]
    m = np.asarray(mu, dtype=float)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.exp(k * np.log(np.maximum(m, 0.0)) - np.maximum(m, 0.0) - log_fact)
    # 0 * log(0) is nan: a mean of zero puts all its mass on k = 0
    return np.where(m > 0, out, (k == 0).astype(float))


class Invoker(Protocol):
    async def invoke(self, payload: bytes) -> Any: ...


@dataclass(frozen=True)
class SpillResult:
    """What a spilled request gets back: an HTTP status and a V2 JSON body."""

    status: int
    body: bytes
    cold_start: bool = False


class Overloaded(Exception):
    """The buffer is full: the fleet and Lambda's concurrency are both exhausted."""


class SpillBuffer:
    """Collects spilled requests into batches and invokes the function once per batch.

    `params` is read at each batch's opening, so the router can retune it every second from the
    measured spill rate. At most `concurrency` invokes run at once; a request arriving while
    `max_pending` are already buffered or in flight raises Overloaded (the router answers 503).
    """

    def __init__(
        self,
        invoke: Callable[[bytes], Awaitable[Any]],
        params: BatchParams,
        *,
        concurrency: int,
        max_pending: int,
        on_result: Callable[[Any, int], None] | None = None,
    ) -> None:
        if concurrency < 1 or max_pending < 1:
            raise ValueError("concurrency and max_pending must be >= 1")
        self.invoke = invoke
        self.params = params
        self.concurrency = concurrency
        self.max_pending = max_pending
        self.on_result = on_result
        self.pending = 0  # buffered + in flight
        self.in_flight = 0
        self._batch: list[tuple[bytes, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()

    def submit(self, body: bytes) -> asyncio.Future:
        """Queue one request (a V2 JSON request object as bytes); the future gets a SpillResult."""
        if self.pending >= self.max_pending:
            raise Overloaded(f"{self.pending} spilled requests pending (limit {self.max_pending})")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending += 1
        self._batch.append((body, fut))
        p = self.params
        if len(self._batch) >= p.size or p.timeout_ms <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(p.timeout_ms / 1000.0, self.flush)
        return fut

    def flush(self) -> None:
        """Send what is buffered now as one batch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        payload = b'{"batch":[' + b",".join(b for b, _ in batch) + b"]}"
        try:
            async with self._slots:
                self.in_flight += 1
                try:
                    res = await self.invoke(payload)
                finally:
                    self.in_flight -= 1
            results = split_responses(res, len(batch))
            if self.on_result is not None:
                self.on_result(res, len(batch))
        except Exception as e:  # every waiter gets an answer, whatever failed
            results = [failure(e)] * len(batch)
        finally:
            self.pending -= len(batch)
        for (_, fut), r in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(r)

    async def close(self) -> None:
        self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def failure(e: BaseException) -> SpillResult:
    """Map an invoke failure to the status a client should see."""
    name = type(e).__name__
    if name == "LambdaThrottled":
        status = 503
    elif isinstance(e, TimeoutError):
        status = 504
    else:
        status = 502
    return SpillResult(
        status, json.dumps({"error": f"spill to Lambda failed: {name}: {e}"}).encode()
    )


def split_responses(res: Any, n: int) -> list[SpillResult]:
    """The handler's `{"responses": [...]}` back into one result per request, in order."""
    cold = getattr(res, "init_ms", None) is not None
    ferr = getattr(res, "function_error", None)
    try:
        doc = json.loads(res.payload)
    except (ValueError, AttributeError) as e:
        return [SpillResult(502, _err(f"spill function returned no JSON: {e}"), cold)] * n
    if ferr:
        msg = doc.get("errorMessage", doc) if isinstance(doc, dict) else doc
        return [SpillResult(502, _err(f"spill function failed ({ferr}): {msg}"), cold)] * n
    if isinstance(doc, dict) and "error" in doc and "responses" not in doc:
        return [SpillResult(int(doc.get("status", 500)), _err(str(doc["error"])), cold)] * n
    responses = doc.get("responses") if isinstance(doc, dict) else None
    if not isinstance(responses, list) or len(responses) != n:
        got = len(responses) if isinstance(responses, list) else type(responses).__name__
        return [
            SpillResult(502, _err(f"spill function returned {got} responses for {n}"), cold)
        ] * n
    out = []
    for r in responses:
        if isinstance(r, dict) and "error" in r:
            out.append(SpillResult(int(r.get("status", 500)), _err(str(r["error"])), cold))
        else:
            out.append(SpillResult(200, json.dumps(r, separators=(",", ":")).encode(), cold))
    return out


def _err(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
