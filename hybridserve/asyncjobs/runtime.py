"""The async queue's actuation: each interval it observes the queue and the async fleet, asks
`plan` for fleet and Lambda workers, converges the fleet through a backend (local model-server
processes here, EC2 on AWS: anything with the Backend protocol) and starts or stops workers.

Fleet workers run `per_instance` jobs at a time against each ready instance's model server (so
its dynamic batcher has work to batch); Lambda workers invoke the model's function, one job
each. A worker over the plan's count finishes its job and stops; a worker whose instance left
the fleet stops at once, and a job it had in flight comes back after its visibility timeout.
A plan that raises keeps the last one (the control loop never stops), and an empty queue
ends with no worker of either kind.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridserve.asyncjobs.plan import AsyncPlan, AsyncPolicy, AsyncPrices, AsyncView, plan
from hybridserve.asyncjobs.queue import JobQueue
from hybridserve.asyncjobs.store import ObjectStore
from hybridserve.asyncjobs.worker import Notifier, run_job
from hybridserve.logs import event

log = logging.getLogger("hybridserve.async")
JSON = {"content-type": "application/json"}
IDLE_POLL_S = 0.05
RETRY_S = 10.0  # an instance a worker could not reach gets workers again after this


@dataclass
class Tally:
    """What the runtime did: outcomes, Lambda's bill inputs and the timeline."""

    outcomes: Counter = field(default_factory=Counter)
    lambda_usd: float = 0.0
    lambda_jobs: int = 0
    fleet_jobs: int = 0
    timeline: list[dict] = field(default_factory=list)  # one row per control step
    plan_failures: int = 0
    redelivered: int = 0  # jobs received again (a worker or its instance died mid-job)


class AsyncRuntime:
    """One model's async workers, planned each `interval_s`; `run()` on a serving event loop."""

    def __init__(
        self,
        queue: JobQueue,
        store: ObjectStore,
        model: str,
        *,
        backend: Any | None,  # the async fleet's Backend (None: Lambda only)
        pool: str,
        invoker_factory: Callable[[], Any] | None,  # an async LambdaInvoker (None: fleet only)
        policy: AsyncPolicy,
        prices: AsyncPrices,
        job_s: float,
        lambda_job_s: float,
        lambda_usd: Callable[[Any], float],  # one InvokeResult's charge
        interval_s: float = 1.0,
        per_instance: int = 4,
        visibility_s: float = 60.0,
        notifier: Notifier | None = None,
    ) -> None:
        self.queue, self.store, self.model = queue, store, model
        self.backend, self.pool = backend, pool
        self.invoker_factory = invoker_factory
        self.policy, self.prices = policy, prices
        self.job_s, self.lambda_job_s = job_s, lambda_job_s
        self.lambda_usd = lambda_usd
        self.interval_s, self.per_instance = interval_s, per_instance
        self.visibility_s = visibility_s
        self.notifier = notifier
        self.tally = Tally()
        self.last: AsyncPlan = AsyncPlan(0, 0, 0.0, "not planned yet")
        self._fleet_tasks: dict[str, list[asyncio.Task]] = {}  # instance id -> its workers
        self._lambda_tasks: list[asyncio.Task] = []
        self._lambda_wanted = 0
        self._invoker: Any = None
        self._pools: dict[str, Any] = {}
        # instances a worker could not reach, and when: their workers stop (for RETRY_S)
        self._failed: dict[str, float] = {}

    # ------------------------------------------------------------------ control
    def view(self) -> AsyncView:
        visible, in_flight, age = self.queue.depth()
        st = self.backend.observe().get(self.pool) if self.backend is not None else None
        pending = st.pending_ready_in_s if st is not None else ()
        ready = st.ready if st is not None else 0
        boot = sum(pending) / len(pending) if pending else 0.0
        return AsyncView(
            visible, in_flight, age, ready, len(pending), self.job_s, self.lambda_job_s, boot
        )

    def step(self, v: AsyncView | None = None) -> AsyncPlan:
        """Plan once on `v` (observed now when None) and converge (the fleet by its backend,
        the workers here)."""
        v = self.view() if v is None else v
        try:
            p = plan(v, self.prices, self.policy)
        except Exception:  # a planner that fails keeps the last plan: never stops the loop
            self.tally.plan_failures += 1
            log.exception("async plan failed; keeping %s", self.last)
            p = self.last
        if self.backend is None:
            p = AsyncPlan(0, p.lambda_workers, p.cost_usd, p.reason, p.meets_deadline)
        if self.invoker_factory is None:
            p = AsyncPlan(p.fleet, 0, p.cost_usd, p.reason, p.meets_deadline)
        if (p.fleet, p.lambda_workers) != (self.last.fleet, self.last.lambda_workers):
            event(log, "async.plan", fleet=p.fleet, lambda_workers=p.lambda_workers, why=p.reason)
        self.last = p
        if self.backend is not None:
            self.backend.converge({self.pool: p.fleet}, intent=f"async-{time.time():.0f}")
        self._lambda_wanted = p.lambda_workers
        self._sync_workers()
        self.tally.timeline.append(
            {
                "t": time.time(),
                "visible": v.visible,
                "in_flight": v.in_flight,
                "oldest_age_s": round(v.oldest_age_s, 3),
                "fleet_ready": v.fleet_ready,
                "fleet": p.fleet,
                "lambda_workers": p.lambda_workers,
                "workers": self.workers(),
            }
        )
        return p

    def workers(self) -> int:
        """Workers alive now, fleet and Lambda."""
        live = [t for ts in self._fleet_tasks.values() for t in ts if not t.done()]
        return len(live) + sum(not t.done() for t in self._lambda_tasks)

    def _sync_workers(self) -> None:
        loop = asyncio.get_running_loop()
        eps = {e.instance_id: e for e in self.backend.endpoints()} if self.backend else {}
        now = time.monotonic()
        self._failed = {i: t for i, t in self._failed.items() if i in eps and now - t < RETRY_S}
        for iid in list(self._fleet_tasks):
            if iid not in eps or iid in self._failed:
                for t in self._fleet_tasks.pop(iid):
                    t.cancel()  # its instance is gone: an in-flight job comes back later
                pool = self._pools.pop(iid, None)
                if pool is not None:
                    pool.close()
        for iid, ep in eps.items():
            if iid not in self._fleet_tasks and iid not in self._failed:
                infer = self._fleet_infer(iid, ep)
                alive = functools.partial(self._reachable, iid)
                self._fleet_tasks[iid] = [
                    loop.create_task(self._work(infer, alive, "fleet"))
                    for _ in range(self.per_instance)
                ]
        self._lambda_tasks = [t for t in self._lambda_tasks if not t.done()]
        while len(self._lambda_tasks) < self._lambda_wanted:
            infer = self._lambda_infer()
            i = len(self._lambda_tasks)
            self._lambda_tasks.append(
                loop.create_task(self._work(infer, lambda i=i: i < self._lambda_wanted, "lambda"))
            )

    def _reachable(self, iid: str) -> bool:
        return iid not in self._failed

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.step(await asyncio.to_thread(self.view))  # SQS: a network call
                except Exception:  # a backend hiccup must not stop the loop
                    log.exception("async control step failed")
                await asyncio.sleep(self.interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        tasks = [t for ts in self._fleet_tasks.values() for t in ts] + self._lambda_tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fleet_tasks, self._lambda_tasks = {}, []
        for p in self._pools.values():
            p.close()
        self._pools = {}
        if self._invoker is not None:
            await self._invoker.close()
            self._invoker = None

    # ------------------------------------------------------------------ workers
    async def _work(self, infer: Any, wanted: Callable[[], bool], kind: str) -> None:
        """Receive and run jobs while this worker is wanted and there is work."""
        while wanted():
            msgs = await asyncio.to_thread(self.queue.receive, 1, self.visibility_s)
            if not msgs:
                if kind == "lambda":
                    return  # an idle Lambda worker is no worker: the plan starts one again
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if msgs[0].receives > 1:
                self.tally.redelivered += 1
            outcome = await run_job(msgs[0], self.queue, self.store, infer, self.notifier)
            self.tally.outcomes[outcome] += 1
            if outcome == "completed":
                if kind == "fleet":
                    self.tally.fleet_jobs += 1
                else:
                    self.tally.lambda_jobs += 1

    def _fleet_infer(self, iid: str, ep: Any) -> Any:
        from hybridserve.router.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

        pool = self._pools[iid] = UpstreamPool(ep.url)
        path = f"/v2/models/{self.model}/infer"

        async def infer(model: str, body: bytes) -> tuple[int, bytes]:
            try:
                status, _, payload = await pool.request(b"POST", path, body, JSON)
            except UpstreamError as e:
                if not isinstance(e, UpstreamTimeout):
                    self._failed[iid] = time.monotonic()  # its workers stop, its jobs come back
                raise
            return status, payload

        return infer

    def _lambda_infer(self) -> Any:
        async def infer(model: str, body: bytes) -> tuple[int, bytes]:
            if self._invoker is None:
                assert self.invoker_factory is not None
                self._invoker = await self.invoker_factory().start()
            res = await self._invoker.invoke(body)
            self.tally.lambda_usd += self.lambda_usd(res)
            if res.function_error:
                return 502, json.dumps({"error": f"Lambda: {res.function_error}"}).encode()
            try:
                doc = json.loads(res.payload)
            except ValueError:
                return 502, b'{"error":"Lambda answered no JSON"}'
            if isinstance(doc, dict) and "error" in doc and "outputs" not in doc:
                return int(doc.get("status", 500)), res.payload
            return 200, res.payload

        return infer
