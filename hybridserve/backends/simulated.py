"""Simulated backend: launch delays, retirements and spot interruptions on a simulated clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from hybridserve.config import Pool, SpotOptions
from hybridserve.fleet import Action, FleetView, PoolState
from hybridserve.reconcile import Observed, reconcile


@dataclass(eq=False)  # an instance is itself, not its field values: list.remove by identity
class SimInstance:
    """One instance's life: billed from launch to end, serving from ready to end."""

    id: int
    pool: str
    launched_at: float
    ready_at: float
    ended_at: float | None = None
    notice_at: float | None = None  # spot interruption notice: gone from the fleet's view
    end_reason: str | None = None

    def gone_at(self) -> float | None:
        return self.notice_at if self.notice_at is not None else self.ended_at


class SimulatedBackend:
    """Keeps every instance's times; the data plane later replays the arrivals through them.

    `warm_start`: instances launched at time 0 are ready at once (the system was running before
    the trace began), so no policy starts from an empty fleet.
    """

    def __init__(
        self,
        pools: list[Pool],
        *,
        spot: SpotOptions | None = None,
        seed: int = 0,
        warm_start: bool = True,
    ) -> None:
        self.pools = {p.key: p for p in pools}
        self.spot = spot or SpotOptions()
        self.rng = np.random.default_rng(seed)
        self.warm_start = warm_start
        self.clock = 0.0
        self.instances: list[SimInstance] = []
        self._live: dict[str, list[SimInstance]] = {}

    def now(self) -> float:
        return self.clock

    def advance(self, t: float, on_notice: Callable[[], object] | None = None) -> None:
        """Move the clock to t; spot instances may receive an interruption notice on the way.

        Each notice takes its instance out of the fleet at its instant, in time order, and
        calls `on_notice` there (`Controller.on_notice`: the replacement launches at the
        notice, as on AWS). Replacements made inside the interval are at risk from the next
        one on."""
        dt = t - self.clock
        if dt < 0:
            raise ValueError(f"simulated clock cannot go back from {self.clock} to {t}")
        rate = self.spot.interruptions_per_hour / 3600.0
        noticed: list[SimInstance] = []
        if rate > 0 and dt > 0:
            for key, live in self._live.items():
                if not key.endswith("/spot"):
                    continue
                for inst in live:
                    if self.rng.random() < -np.expm1(-rate * dt):
                        inst.notice_at = self.clock + self.rng.random() * dt
                        inst.ended_at = inst.notice_at + self.spot.notice_s
                        inst.end_reason = "spot-interruption"
                        noticed.append(inst)
        for inst in sorted(noticed, key=lambda i: i.notice_at or 0.0):
            self._live[inst.pool].remove(inst)
            if on_notice is not None:
                self.clock = float(inst.notice_at or self.clock)
                on_notice()
        self.clock = t

    def observe(self) -> FleetView:
        now = self.clock
        out = {}
        for key, live in self._live.items():
            if live:
                ready = sum(1 for i in live if i.ready_at <= now)
                pend = tuple(i.ready_at - now for i in live if i.ready_at > now)
                out[key] = PoolState(ready=ready, pending_ready_in_s=pend)
        return FleetView(out)

    def converge(self, target: Mapping[str, int], *, intent: str | None = None) -> list[Action]:
        """Execute `reconcile`'s actions; launches are ready after the pool's launch delay."""
        live = self._live
        pools = self.pools
        # an unknown pool falls through to reconcile, which names it
        if all(k in pools and len(live.get(k, ())) == int(n) for k, n in target.items()) and all(
            k in target or not v for k, v in live.items()
        ):
            return []  # converged: most steps of a replay end here, before any object is built
        now = self.clock
        by_id: dict[str, SimInstance] = {}
        observed = []
        counted = {}  # pools that only grow: their instances need not be described
        for key, insts in live.items():
            if len(insts) <= int(target.get(key, 0)):
                counted[key] = len(insts)
                continue
            for i in insts:
                by_id[str(i.id)] = i
                observed.append(Observed(str(i.id), key, i.ready_at > now, i.ready_at))
        done: list[Action] = []
        for a in reconcile(target, observed, now, counted=counted, pools=pools):
            if a.kind == "launch":
                pool = self.pools[a.pool]
                delay = 0.0 if (self.warm_start and now == 0.0) else pool.launch_delay_s
                inst = SimInstance(len(self.instances), a.pool, now, now + delay)
                self.instances.append(inst)
                live.setdefault(a.pool, []).append(inst)
                done.append(Action("launch", a.pool, str(inst.id), now, a.reason))
            else:
                inst = by_id[a.instance_id]
                inst.ended_at = now
                inst.end_reason = "retired"
                live[a.pool].remove(inst)
                done.append(a)
        return done
