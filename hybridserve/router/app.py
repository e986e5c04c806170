"""The router: the only endpoint clients see, speaking the same KServe V2 protocol as a server.

Per inference request it joins the instance with the shortest predicted completion (queue
ahead drained in batches at the profiled service time, corrected by observed latencies) or, when
even that would break the SLO budget, spills the request through the BATCH buffer to Lambda.
A request whose instance dies mid-flight (connection lost) or sheds it (503) is retried once on
Lambda. 503 with Retry-After only when the fleet and Lambda's concurrency are both exhausted.

Raw ASGI (no framework, router/asgi.py) and a lean pooled HTTP/1.1 client per instance
(router/upstream.py): the router's own cost is a few dict reads and a list scan per request. Every second it turns its measured arrivals into the counts
the Controller consumes, retunes the buffer from the spill rate and rescales each instance's
completion table by its learnt correction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

from hybridserve.fleet import Endpoint
from hybridserve.logs import event
from hybridserve.pricing import lambda_gb_s, lambda_init_usd
from hybridserve.router.asgi import (
    HL,
    BadRequest,
    as_json_request,
    header_length,
    reply,
    reply_json,
)
from hybridserve.router.buffer import BatchParams, Overloaded, SpillBuffer, batch_params
from hybridserve.router.config import RouterConfig
from hybridserve.router.endpoints import dispatch
from hybridserve.router.metrics import RouterMetrics
from hybridserve.router.policy import SPILL, choose, completion_table
from hybridserve.router.upstream import Upstream, UpstreamError, UpstreamTimeout
from predictors.prometheus import Exposition

log = logging.getLogger("hybridserve.router")

HL_NAME = "inference-header-content-length"
JSON_HEADERS = {"content-type": "application/json"}
BINARY_HEADERS = {"content-type": "application/octet-stream"}


class Router:
    """ASGI app. `endpoints` lists ready instances (called every `refresh_s`); `invoker` sends
    spilled batches to Lambda (None: no Lambda); `metadata` answers model metadata without a hop."""

    def __init__(
        self,
        cfg: RouterConfig,
        endpoints: Callable[[], list[Endpoint]],
        invoker: Any | None = None,
        *,
        metadata: dict | None = None,
        fleet_usd_per_s: Callable[[], float] | None = None,
        refresh_s: float = 0.1,
        cost_meter: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.endpoints_fn = endpoints
        self.invoker = invoker if cfg.spill else None
        self.metadata = metadata
        self.fleet_usd_per_s = fleet_usd_per_s
        # a hybridserve.attribution.LiveCostMeter: cost by cause, fed each closed second
        self.cost_meter = cost_meter
        self._retries_seen = 0
        self.refresh_s = refresh_s
        self.metrics = RouterMetrics()
        self._exposition = Exposition(self._metric_families)
        self.ups: list[Upstream] = []
        self._by_id: dict[str, Upstream] = {}
        self._failed: dict[str, float] = {}  # instance id -> when it failed (excluded a while)
        self._base = [
            float(x)
            for x in completion_table(cfg.batch_ms, cfg.max_batch, cfg.max_queue, cfg.delay_ms)
        ]
        self._budget = cfg.budget_ms
        self._lambda_ratio = 1.0
        self._key = cfg.api_key.encode() if cfg.api_key else None
        self.counts: deque[tuple[int, int]] = deque(maxlen=cfg.counts_kept_s)  # (epoch s, arrivals)
        self._second = int(time.time())
        self._second_count = 0
        self._spill_rate = 0.0
        self._tasks: list[asyncio.Task] = []
        self.buffer: SpillBuffer | None = None
        self._started = False
        self._lambda_usd = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.invoker is not None:
            if hasattr(self.invoker, "start"):
                await self.invoker.start()
            self.buffer = SpillBuffer(
                self.invoker.invoke,
                self._batch_params(0.0),
                concurrency=self.cfg.lambda_concurrency,
                max_pending=self.cfg.max_spill_pending,
                on_result=self._on_lambda,
            )
        self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresher()), loop.create_task(self._ticker())]
        event(log, "router.start", slo_ms=self.cfg.slo_ms, spill=self.cfg.spill)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.buffer is not None:
            await self.buffer.close()
        if self.invoker is not None and hasattr(self.invoker, "close"):
            await self.invoker.close()
        for u in self.ups:
            u.pool.close()
        self._started = False

    def refresh(self) -> None:
        """Take the backend's ready instances; keep state of the ones we know."""
        now = time.monotonic()
        self._failed = {k: t for k, t in self._failed.items() if now - t < 10.0}
        eps = [e for e in self.endpoints_fn() if e.instance_id not in self._failed]
        if [u.endpoint for u in self.ups] == eps:
            return
        by_id = {}
        for e in eps:
            u = self._by_id.get(e.instance_id)
            if u is None or u.endpoint != e:
                u = Upstream(e, self._base, self.cfg.upstream_timeout_s)
            by_id[e.instance_id] = u
        for iid, old in self._by_id.items():
            if by_id.get(iid) is not old:
                old.pool.close()
        self._by_id = by_id
        self.ups = list(by_id.values())
        event(log, "router.fleet", instances=[e.instance_id for e in eps])

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                self.refresh()
            except Exception:  # a backend hiccup must not stop routing
                log.exception("refreshing endpoints failed")

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0 - (time.time() % 1.0))
            self.tick(int(time.time()))

    def tick(self, second: int) -> None:
        """Close the seconds before `second`: arrivals counts, spill rate, buffer and tables.

        Both the ticker and a request crossing a second boundary call it; only the first call for
        a second does anything, so the spill rate is updated once per second."""
        if second <= self._second:
            return
        spilled = self.metrics.take_second_spills()
        meter = self.cost_meter
        while self._second < second:
            self.counts.append((self._second, self._second_count))
            if meter is not None:  # the spills since the last tick count in its last second
                last = self._second == second - 1
                retried = self.metrics.retries - self._retries_seen if last else 0
                self._retries_seen += retried
                pools = [u.endpoint.pool for u in self.ups]
                n = spilled if last else 0
                meter.second(self._second, pools, self._second_count, n, retried)
            self._second += 1
            self._second_count = 0
        self._spill_rate += 0.3 * (spilled - self._spill_rate)
        if self.buffer is not None:
            self.buffer.params = self._batch_params(self._spill_rate)
        for u in self.ups:
            u.rescale()

    def _batch_params(self, rate: float) -> BatchParams:
        c = self.cfg
        ms = [x * self._lambda_ratio for x in c.lambda_ms]
        return batch_params(
            rate,
            self._budget * c.spill_slack_fraction,
            ms,
            memory_gb=c.lambda_memory_gb,
            usd_per_gb_s=c.lambda_usd_per_gb_s,
            usd_per_request=c.lambda_usd_per_request,
        )

    def _on_lambda(self, res: Any, n: int) -> None:
        billed = getattr(res, "billed_ms", None)
        init = getattr(res, "init_ms", None)
        dur = getattr(res, "duration_ms", None)
        self.metrics.lambda_invoke(n, init is not None)
        if billed is not None:
            c = self.cfg
            # billed comes from Lambda and includes the init (AWS since 2025)
            gb_s = lambda_gb_s(c.lambda_memory_gb * 1024.0, billed)
            usd = gb_s * c.lambda_usd_per_gb_s + c.lambda_usd_per_request
            self._lambda_usd += usd
            if self.cost_meter is not None:
                cold = 0.0
                if init is not None and dur is not None:
                    mb = c.lambda_memory_gb * 1024.0
                    cold = lambda_init_usd(dur, init, mb, c.lambda_usd_per_gb_s)
                self.cost_meter.lambda_invoke(usd, cold)
        if dur is not None and init is None and 0 < n < len(self.cfg.lambda_ms):
            r = dur / max(self.cfg.lambda_ms[n], 1e-3)
            self._lambda_ratio = min(
                8.0, max(0.25, self._lambda_ratio + 0.1 * (r - self._lambda_ratio))
            )

    def take_counts(self) -> list[tuple[int, int]]:
        """Per-second arrival counts closed since the last call (the Controller's input).

        Called from the control loop's thread while the event loop appends: each popleft is
        atomic, so a second closed meanwhile is taken now or next time, never dropped (a copy
        then `clear` could drop it)."""
        out = []
        while True:
            try:
                out.append(self.counts.popleft())
            except IndexError:
                return out

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """ASGI entry: the endpoints (router/endpoints.py) call back into `infer`."""
        await dispatch(self, scope, receive, send)

    def ready(self) -> bool:
        return bool(self.ups) or self.invoker is not None

    # ------------------------------------------------------------------ inference
    async def infer(self, path: str, body: bytes, headers: list, send: Callable) -> None:
        t0 = time.perf_counter()
        sec = int(time.time())
        if sec != self._second:
            self.tick(sec)
        self._second_count += 1
        hl = None
        for k, v in headers:
            if k == HL:
                try:
                    hl = header_length(v, len(body))
                except BadRequest as e:  # refused before any instance counts it
                    self.metrics.request("rejected", 400, time.perf_counter() - t0, 0.0)
                    await reply_json(send, 400, {"error": str(e)})
                    return
                break
        u = self._pick(self._budget)
        if u is None and self.buffer is None:  # VM-only: queue beyond the SLO, don't drop
            u = self._pick(math.inf)
        if u is not None:
            status, payload, out_headers, ok = await self._forward(u, path, body, hl)
            route = "fleet"
            if not ok:
                status, payload, out_headers = await self._retry(path, body, hl)
                route = "retry"
        elif self.buffer is not None:
            route = "lambda"
            status, payload = await self._spill(body, hl)
            out_headers = ()
        else:
            route = "rejected"
            status, payload, out_headers = (
                503,
                b'{"error":"no instance can take the request and Lambda spill is off"}',
                (),
            )
        if status == 503:
            out_headers = (*out_headers, (b"retry-after", str(self.cfg.retry_after_s).encode()))
        # counted before the reply: a client holding its response must find it in the metrics
        self.metrics.request(route, status, time.perf_counter() - t0, self.cfg.slo_ms)
        await reply(send, status, payload, extra=out_headers)

    def _pick(self, budget_ms: float) -> Upstream | None:
        """The instance `choose` picks within `budget_ms`, or None (spill or reject)."""
        ups = self.ups
        if not ups:
            return None
        i = choose([u.outstanding for u in ups], [u.table for u in ups], budget_ms)
        return None if i == SPILL else ups[i]

    async def _forward(
        self, u: Upstream, path: str, body: bytes, hl: bytes | None
    ) -> tuple[int, bytes, tuple, bool]:
        """Send to an instance; ok=False when the instance died or shed the request."""
        q = u.outstanding
        predicted = u.base[q] if q < len(u.base) else u.base[-1]
        u.outstanding += 1
        t0 = time.perf_counter()
        hdrs = JSON_HEADERS if hl is None else {**BINARY_HEADERS, HL_NAME: hl.decode()}
        try:
            status, rh, payload = await u.pool.request(b"POST", path, body, hdrs)
        except UpstreamTimeout:
            # slow, not dead: it stays in the fleet, and what it took teaches its latency model
            # (fewer requests go its way), while this request is retried elsewhere
            self.metrics.upstream_timeouts += 1
            u.learn(predicted, (time.perf_counter() - t0) * 1000.0)
            return 0, b"", (), False
        except UpstreamError as e:
            self._instance_failed(u, e)
            return 0, b"", (), False
        finally:
            u.outstanding -= 1
        if status == 503:  # shedding (queue full, draining): Lambda takes it
            return status, payload, (), False
        if status == 200:
            u.learn(predicted, (time.perf_counter() - t0) * 1000.0)
        extra = rh.get(HL)
        if extra:
            return (
                status,
                payload,
                ((b"content-type", b"application/octet-stream"), (HL, extra)),
                True,
            )
        return status, payload, (), True

    def _instance_failed(self, u: Upstream, e: BaseException) -> None:
        iid = u.endpoint.instance_id
        if iid not in self._failed:
            self._failed[iid] = time.monotonic()
            self.metrics.instance_failures += 1
            event(
                log,
                "router.instance_failed",
                level=logging.WARNING,
                instance=iid,
                error=f"{type(e).__name__}: {e}",
            )
        self.ups = [x for x in self.ups if x.endpoint.instance_id != iid]
        self._by_id.pop(iid, None)

    async def _retry(self, path: str, body: bytes, hl: bytes | None) -> tuple[int, bytes, tuple]:
        """Once more, on Lambda (or, without Lambda, on another instance)."""
        self.metrics.retries += 1
        if self.buffer is not None:
            status, payload = await self._spill(body, hl, urgent=True)
            return status, payload, ()
        u = self._pick(math.inf)
        if u is None:
            return 503, b'{"error":"the instance failed and no other can take the request"}', ()
        status, payload, headers, ok = await self._forward(u, path, body, hl)
        if not ok:
            return 503, payload or b'{"error":"the instance failed twice"}', ()
        return status, payload, headers

    async def _spill(
        self, body: bytes, hl: bytes | None, urgent: bool = False
    ) -> tuple[int, bytes]:
        try:
            doc = as_json_request(body, hl)
        except ValueError as e:
            return 400, json.dumps({"error": str(e)}).encode()
        assert self.buffer is not None
        try:
            fut = self.buffer.submit(doc)
        except Overloaded as e:
            return 503, json.dumps({"error": f"overloaded: fleet full and {e}"}).encode()
        self.metrics.spills += 1
        if urgent:
            self.buffer.flush()
        res = await fut
        return res.status, res.body

    # ------------------------------------------------------------------ metrics
    def render_metrics(self) -> bytes:
        """The text exposition of the router's collector (built now, from the counters)."""
        return self._exposition.render()

    def _metric_families(self) -> Iterator[Metric]:
        fleet_usd_s = self.fleet_usd_per_s() if self.fleet_usd_per_s else 0.0
        lambda_usd_s = self.metrics.lambda_usd_rate(self._lambda_usd)
        params = self.buffer.params if self.buffer is not None else None
        return self.metrics.families(
            ups=self.ups,
            spill_pending=self.buffer.pending if self.buffer is not None else 0,
            lambda_in_flight=self.buffer.in_flight if self.buffer is not None else 0,
            usd_per_hour=(fleet_usd_s + lambda_usd_s) * 3600.0,
            batch=params,
            cost_by_cause=None if self.cost_meter is None else self.cost_meter.totals(),
        )
