"""The router: the only endpoint clients see, speaking the same KServe V2 protocol as a server.

Per inference request it joins the instance with the shortest predicted completion (queue
ahead drained in batches at the profiled service time, corrected by observed latencies) or, when
even that would break the SLO budget, spills the request through the BATCH buffer to Lambda.
A request whose instance dies mid-flight (connection lost) or sheds it (503) is retried once on
Lambda. 503 with Retry-After only when the fleet and Lambda's concurrency are both exhausted.

Several models (router/models.py): a request for model m goes only to instances holding m, its
prediction counting every model's work queued there; each model spills through its own buffer
to its own Lambda function, and one that no instance holds spills at once. An instance that
answers 404 (m was unloaded there) is dropped for m until the next refresh and the request
retried once elsewhere.

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
from hybridserve.router.buffer import BatchParams, Overloaded, SpillBuffer
from hybridserve.router.config import RouterConfig
from hybridserve.router.endpoints import dispatch
from hybridserve.router.metrics import RouterMetrics
from hybridserve.router.models import (
    Invokers,
    ModelBook,
    ModelState,
    Slot,
    as_candidate,
    assign,
    drain,
    lambda_serves,
    left,
    nowhere,
)
from hybridserve.router.rollouts import Rollouts
from hybridserve.router.upstream import Upstream, UpstreamError, UpstreamTimeout
from hybridserve.router.variants import VariantRefused, allowed_variants
from predictors.prometheus import Exposition

log = logging.getLogger("hybridserve.router")

HL_NAME = "inference-header-content-length"
JSON_HEADERS = {"content-type": "application/json"}
BINARY_HEADERS = {"content-type": "application/octet-stream"}


class Router:
    """ASGI app. `endpoints` lists ready instances (called every `refresh_s`); `invoker` sends
    `cfg.model_name`'s spilled batches to Lambda (None: no Lambda); `invokers` gives other
    models theirs, as a mapping or a factory called once per model the router learns of (None:
    that model has none); `metadata` answers `cfg.model_name`'s metadata without a hop."""

    def __init__(
        self,
        cfg: RouterConfig,
        endpoints: Callable[[], list[Endpoint]],
        invoker: Any | None = None,
        *,
        invokers: Invokers | None = None,
        metadata: dict | None = None,
        fleet_usd_per_s: Callable[[], float] | None = None,
        refresh_s: float = 0.1,
        cost_meter: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.endpoints_fn = endpoints
        self.book = ModelBook(cfg, invoker, invokers, self._on_lambda)
        self.models = self.book.by_name
        self._primary = self.book.primary
        self._primary.metadata = metadata
        self.invoker = self._primary.invoker
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
        self._unloaded: set[tuple[str, str]] = set()  # (instance, model) 404s until the refresh
        self._started = False
        self._budget = cfg.budget_ms
        self._max_queue = cfg.max_queue
        self._key = cfg.api_key.encode() if cfg.api_key else None
        self.counts: deque[tuple[int, int]] = deque(maxlen=cfg.counts_kept_s)  # (epoch s, arrivals)
        self._second = int(time.time())
        self._second_count = 0
        self._tasks: list[asyncio.Task] = []
        self._lambda_usd = 0.0
        self.rollouts = Rollouts(self)
        self.jobs: Any = None  # hybridserve.asyncjobs.front.AsyncFront, when async is on

    # ------------------------------------------------------------------ models
    @property
    def buffer(self) -> SpillBuffer | None:
        """`cfg.model_name`'s spill buffer."""
        return self._primary.buffer

    @property
    def metadata(self) -> dict | None:
        return self._primary.metadata

    @metadata.setter
    def metadata(self, doc: dict | None) -> None:
        self._primary.metadata = doc

    def served(self) -> list[str]:
        """The models a request may name now: on a ready instance or with a Lambda function
        (and `cfg.model_name`, always)."""
        return self.book.served()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.book.start()
        self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresher()), loop.create_task(self._ticker())]
        event(log, "router.start", slo_ms=self.cfg.slo_ms, spill=self.cfg.spill)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.rollouts.close()
        await self.book.close()
        for u in self.ups:
            u.pool.close()
        self._started = False

    def refresh(self) -> None:
        """Take the backend's ready instances; keep state of the ones we know."""
        now = time.monotonic()
        self._failed = {k: t for k, t in self._failed.items() if now - t < 10.0}
        eps = [e for e in self.endpoints_fn() if e.instance_id not in self._failed]
        if not self._unloaded and [u.endpoint for u in self.ups] == eps:
            return
        self._unloaded = set()
        self.book.learn(eps)
        by_id = {}
        for e in eps:
            u = self._by_id.get(e.instance_id)
            if u is None or u.endpoint != e:
                u = self.book.upstream(e)
            by_id[e.instance_id] = u
        for iid, old in self._by_id.items():
            if by_id.get(iid) is not old:
                old.pool.close()
        self._by_id = by_id
        self.ups = list(by_id.values())
        assign(self.models, self.ups, self._unloaded, self._max_queue)
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
            try:
                self.rollouts.step(time.monotonic())
            except Exception:  # a judging failure must not stop routing
                log.exception("stepping the rollouts failed")

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
            self.book.close_second(self._second)
            if meter is not None:  # the spills since the last tick count in its last second
                last = self._second == second - 1
                retried = self.metrics.retries - self._retries_seen if last else 0
                self._retries_seen += retried
                pools = [u.endpoint.pool for u in self.ups]
                n = spilled if last else 0
                meter.second(self._second, pools, self._second_count, n, retried)
            self._second += 1
            self._second_count = 0
        self.book.retune()  # each model's buffer follows its own spill rate
        for u in self.ups:
            u.rescale()

    def _batch_params(self, rate: float, model: ModelState | None = None) -> BatchParams:
        return (model or self._primary).batch_params(self.cfg, rate)

    def _on_lambda(self, res: Any, n: int, model: ModelState | None = None) -> None:
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
        if dur is not None and init is None:
            (model or self._primary).learn_lambda(dur, n)

    def take_counts(self) -> list[tuple[int, int]]:
        """Per-second arrival counts closed since the last call (the Controller's input), all
        models together; safe from the control loop's thread (see `models.drain`)."""
        return drain(self.counts)

    def take_model_counts(self) -> dict[str, list[tuple[int, int]]]:
        """`take_counts` per model: the seconds each model closed since the last call. Over the
        same seconds they add up to the total (a router 404 for a name it never knew is in
        neither)."""
        return {name: drain(ms.counts) for name, ms in list(self.models.items())}

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """ASGI entry: the endpoints (router/endpoints.py) call back into `infer`."""
        await dispatch(self, scope, receive, send)

    def ready(self) -> bool:
        return bool(self.ups) or self.book.any_lambda

    # ------------------------------------------------------------------ inference
    async def infer(
        self,
        path: str,
        body: bytes,
        headers: list,
        send: Callable,
        model: ModelState | None = None,
        version: str | None = None,
    ) -> str:
        """Route one request for `model` (`cfg.model_name`'s when None) and answer it; of a
        family's model, only to where a variant it allows (`version`, min_accuracy) is loaded.
        Returns the route taken (fleet, retry, lambda, rejected)."""
        t0 = time.perf_counter()
        ms = model or self._primary
        sec = int(time.time())
        if sec != self._second:
            self.tick(sec)
        self._second_count += 1
        ms.second_count += 1
        hl = None
        for k, v in headers:
            if k == HL:
                try:
                    hl = header_length(v, len(body))
                except BadRequest as e:  # refused before any instance counts it
                    self.metrics.request("rejected", 400, time.perf_counter() - t0, 0.0, ms.name)
                    await reply_json(send, 400, {"error": str(e)})
                    return "rejected"
                break
        allowed = None
        if ms.accuracy:
            try:
                allowed = allowed_variants(ms.name, ms.accuracy, version, body, hl)
            except VariantRefused as e:
                self.metrics.request("rejected", e.status, time.perf_counter() - t0, 0.0, ms.name)
                await reply_json(send, e.status, {"error": e.message})
                return "rejected"
        c = ms.pick(self._budget, self._max_queue, allowed)
        if c is None and ms.buffer is None:  # VM-only: queue beyond the SLO, don't drop
            c = ms.pick(math.inf, self._max_queue, allowed)
        if c is not None:
            u, slot = (c.up, c) if type(c) is Slot else (c, None)
            status, payload, out_headers, ok = await self._forward(u, path, body, hl, ms, slot)
            route = "fleet"
            if not ok:
                status, payload, out_headers = await self._retry(
                    path, body, hl, ms, status == 404, allowed
                )
                route = "retry"
        elif ms.buffer is not None and lambda_serves(ms, allowed):  # over budget, or cold
            route = "lambda"
            status, payload = await self._spill(body, hl, ms)
            out_headers = ()
        else:
            route = "rejected"
            status, payload = nowhere(ms, ms is self._primary, self.served(), allowed)
            out_headers = ()
        if status == 503:
            out_headers = (*out_headers, (b"retry-after", str(self.cfg.retry_after_s).encode()))
        # counted before the reply: a client holding its response must find it in the metrics
        self.metrics.request(route, status, time.perf_counter() - t0, self.cfg.slo_ms, ms.name)
        await reply(send, status, payload, extra=out_headers)
        return route

    async def _forward(
        self,
        u: Upstream,
        path: str,
        body: bytes,
        hl: bytes | None,
        model: ModelState | None = None,
        slot: Slot | None = None,
    ) -> tuple[int, bytes, tuple, bool]:
        """Send to an instance; ok=False when the instance died, shed the request (503) or does
        not hold the model (404: unloaded since the refresh)."""
        if slot is None:
            q = u.outstanding
            predicted = u.base[q] if q < len(u.base) else u.base[-1]
        else:
            predicted = slot.predicted_ms()
            slot.enter()
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
            if u.slots is not None:
                left(u, model or self._primary)
        if status == 503:  # shedding (queue full, draining): Lambda takes it
            return status, payload, (), False
        if status == 404 and b"no version" not in payload:  # not a version the client named
            self._unloaded_at(u, model or self._primary)
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

    def _unloaded_at(self, u: Upstream, ms: ModelState) -> None:
        iid = u.endpoint.instance_id
        if (iid, ms.name) not in self._unloaded:
            self._unloaded.add((iid, ms.name))
            self.metrics.unloaded_404s += 1
            event(log, "router.model_unloaded", level=logging.WARNING, instance=iid, model=ms.name)
        ms.drop(u)

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
        assign(self.models, self.ups, self._unloaded, self._max_queue)

    async def _retry(
        self,
        path: str,
        body: bytes,
        hl: bytes | None,
        model: ModelState | None = None,
        unloaded: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> tuple[int, bytes, tuple]:
        """Once more: on Lambda (or, without Lambda, on another instance); after a 404 first on
        another instance holding the model within the budget. The instance's 404 never reaches
        the client."""
        ms = model or self._primary
        self.metrics.retries += 1
        c = ms.pick(self._budget, self._max_queue, allowed) if unloaded else None
        if c is None and ms.buffer is not None and lambda_serves(ms, allowed):
            status, payload = await self._spill(body, hl, ms, urgent=True)
            return status, payload, ()
        if c is None:
            c = ms.pick(math.inf, self._max_queue, allowed)
        if c is None:
            why = f"model {ms.name!r} was unloaded there" if unloaded else "the instance failed"
            msg = f"{why} and no other instance or Lambda function can take the request"
            return 503, json.dumps({"error": msg}).encode(), ()
        u, slot = as_candidate(c)
        status, payload, headers, ok = await self._forward(u, path, body, hl, ms, slot)
        if not ok:
            if status == 404:
                payload = b'{"error":"the model was unloaded from two instances in a row"}'
            return 503, payload or b'{"error":"the instance failed twice"}', ()
        return status, payload, headers

    async def _spill(
        self, body: bytes, hl: bytes | None, model: ModelState | None = None, urgent: bool = False
    ) -> tuple[int, bytes]:
        ms = model or self._primary
        try:
            doc = as_json_request(body, hl)
        except ValueError as e:
            return 400, json.dumps({"error": str(e)}).encode()
        buffer = ms.buffer
        assert buffer is not None
        try:
            fut = buffer.submit(doc)
        except Overloaded as e:
            return 503, json.dumps({"error": f"overloaded: fleet full and {e}"}).encode()
        self.metrics.spills += 1
        ms.spills += 1
        if urgent:
            buffer.flush()
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
        buffers = [ms.buffer for ms in self.models.values() if ms.buffer is not None]
        yield from self.rollouts.families()
        yield from self.metrics.families(
            ups=self.ups,
            spill_pending=sum(b.pending for b in buffers),
            lambda_in_flight=sum(b.in_flight for b in buffers),
            usd_per_hour=(fleet_usd_s + lambda_usd_s) * 3600.0,
            batch=params,
            cost_by_cause=None if self.cost_meter is None else self.cost_meter.totals(),
            models=list(self.models.values()),
        )
