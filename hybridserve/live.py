"""The live control loop: the simulator's Controller fed with the router's measured arrivals.

Every control interval it takes the per-second arrival counts the router closed, hands them to
`Controller.step` (forecast, plan, converge) on a worker thread so planning never stalls
routing, logs the decision, and sends the decision's keep-warm round (`warm`) beside routing.
Nothing here decides: the Controller and its planners do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from hybridserve.controller import Controller
from hybridserve.fleet import Action, Decision, FleetView
from hybridserve.logs import event

log = logging.getLogger("hybridserve.live")

#: A step runs this long after the epoch second that ends its interval: the router's ticker
#: closes that second at the boundary itself, so the step finds it closed.
STEP_AFTER_S = 0.25


def next_step_at(now: float, interval_s: int, after_s: float = STEP_AFTER_S) -> float:
    """When the step after `now` (epoch s) runs: just after the next epoch second that is a
    multiple of `interval_s`. Every interval is then `interval_s` whole seconds of the
    router's counts, on the same boundaries whenever the loop started and however long each
    step took (the simulator's intervals are [k dt, (k+1) dt) of its trace)."""
    return (math.floor((now - after_s) / interval_s) + 1) * interval_s + after_s


def interval_counts(closed: list[tuple[int, int]], interval_s: int) -> np.ndarray:
    """The last `interval_s` seconds of (second, count) pairs as a dense array; seconds the router
    did not see (before it started) count zero."""
    out = np.zeros(interval_s)
    if not closed:
        return out
    last = closed[-1][0]
    for sec, n in closed:
        i = interval_s - 1 - (last - sec)
        if 0 <= i < interval_s:
            out[i] += n
    return out


class CappedBackend:
    """A backend whose fleet may not exceed `max_instances` in total (a quota, as on an account).

    Pools keep their planned order of preference: the cap trims from the last pool listed."""

    def __init__(self, inner, max_instances: int) -> None:
        if max_instances < 0:
            raise ValueError(f"max_instances must be >= 0, got {max_instances}")
        self.inner = inner
        self.max_instances = max_instances

    def now(self) -> float:
        return self.inner.now()

    def observe(self) -> FleetView:
        return self.inner.observe()

    def converge(self, target: Mapping[str, int], *, intent: str | None = None) -> list[Action]:
        left = self.max_instances
        capped = {}
        for key, n in target.items():
            capped[key] = min(int(n), left)
            left -= capped[key]
        return self.inner.converge(capped, intent=intent)


class LiveLoop:
    """Runs `controller.step` once per interval on the router's counts."""

    def __init__(
        self, controller: Controller, take_counts: Callable[[], list[tuple[int, int]]]
    ) -> None:
        self.controller = controller
        self.take_counts = take_counts
        self.decisions: list[Decision] = []
        # cumulative, read by the router's /metrics (a dict the router holds a reference to)
        self.stats: dict[str, int] = {
            "forecaster_fallbacks": 0,
            "planner_fallbacks": 0,
            "step_failures": 0,
            "warm_pings": 0,
            "warm_failures": 0,
        }
        # sends n warm-up pings (`aws.warm.warm_round` bound to the spill function); None: the
        # deployment has no function to keep warm
        self.warm: Callable[[int], Awaitable[Any]] | None = None
        self._round: asyncio.Task | None = None

    def step(self) -> Decision:
        counts = interval_counts(self.take_counts(), self.controller.interval_s)
        d = self.controller.step(counts)
        self.decisions.append(d)
        del self.decisions[:-100]
        self.stats["forecaster_fallbacks"] = d.forecaster_fallbacks
        self.stats["planner_fallbacks"] = d.planner_fallbacks
        event(
            log,
            "controller.step",
            arrivals_rps=round(float(counts.mean()), 3),
            keep_warm=d.keep_warm,
            warm_pings=d.warm_pings,
            counts=[int(x) for x in counts],  # what it decided on, second by second
            fleet=d.fleet.totals(),
            target=dict(d.plan.target),
            actions=[f"{a.kind} {a.pool} {a.instance_id}" for a in d.actions],
            forecast_by=d.forecast_source,
            plan_by=d.plan_source,
        )
        return d

    def safe_step(self) -> Decision | None:
        """`step`, but a failure is logged and counted instead of raised: the loop never dies."""
        try:
            return self.step()
        except Exception:
            self.stats["step_failures"] += 1
            log.exception(
                "control step failed; the next one runs in %s s", self.controller.interval_s
            )
            return None

    def start_warm_round(self, d: Decision | None) -> None:
        """Send the decision's keep-warm round as a task beside routing and the next step;
        one still in flight (a slow function) makes this one count as failed, not queue."""
        if d is None or not d.warm_pings or self.warm is None:
            return
        if self._round is not None and not self._round.done():
            self.stats["warm_failures"] += d.warm_pings
            log.warning(
                "keep-warm round of %d skipped: the last one is still running", d.warm_pings
            )
            return
        self._round = asyncio.get_running_loop().create_task(self._warm_round(d.warm_pings))

    async def _warm_round(self, n: int) -> None:
        """One round; its failures are counted and logged, never raised into the loop."""
        assert self.warm is not None
        try:
            report = await self.warm(n)
        except Exception:
            self.stats["warm_failures"] += n
            log.exception("keep-warm round of %d failed", n)
            return
        self.stats["warm_pings"] += n
        self.stats["warm_failures"] += len(report.errors)
        event(log, "lambda.keep_warm", **asdict(report))

    async def run(self) -> None:
        """Steps at `next_step_at`: on the epoch seconds that are multiples of the interval,
        never drifting by the steps' own duration (sleeping one interval after each step did:
        5 ms a step, a second every 15 minutes at 5 s, and the interval's boundaries with it)."""
        while True:
            now = time.time()
            await asyncio.sleep(next_step_at(now, self.controller.interval_s) - now)
            self.start_warm_round(await asyncio.to_thread(self.safe_step))
