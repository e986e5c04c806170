"""Simulated backend: launch delays, retirements and spot interruptions on a simulated clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hybridserve.config import Pool, SpotOptions
from hybridserve.fleet import Action, FleetView, PoolState


@dataclass
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

    def advance(self, t: float) -> None:
        """Move the clock to t; spot instances may receive an interruption notice on the way."""
        dt = t - self.clock
        if dt < 0:
            raise ValueError(f"simulated clock cannot go back from {self.clock} to {t}")
        rate = self.spot.interruptions_per_hour / 3600.0
        if rate > 0 and dt > 0:
            for key, live in self._live.items():
                if not key.endswith("/spot"):
                    continue
                keep = []
                for inst in live:
                    if self.rng.random() < -np.expm1(-rate * dt):
                        inst.notice_at = self.clock + self.rng.random() * dt
                        inst.ended_at = inst.notice_at + self.spot.notice_s
                        inst.end_reason = "spot-interruption"
                    else:
                        keep.append(inst)
                self._live[key] = keep
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

    def converge(self, target: Mapping[str, int]) -> list[Action]:
        now = self.clock
        actions: list[Action] = []
        for key in sorted(set(target) | set(self._live)):
            want = int(target.get(key, 0))
            if want < 0:
                raise ValueError(f"target for {key} is negative: {want}")
            live = self._live.setdefault(key, [])
            if want > len(live):
                pool = self.pools.get(key)
                if pool is None:
                    raise KeyError(f"unknown pool {key!r}; known: {sorted(self.pools)}")
                delay = 0.0 if (self.warm_start and now == 0.0) else pool.launch_delay_s
                for _ in range(want - len(live)):
                    inst = SimInstance(len(self.instances), key, now, now + delay)
                    self.instances.append(inst)
                    live.append(inst)
                    actions.append(Action("launch", key, str(inst.id), now))
            elif want < len(live):
                # retire launching ones first, then the most recently ready
                live.sort(key=lambda i: (i.ready_at > now, i.ready_at))
                for inst in live[want:]:
                    inst.ended_at = now
                    inst.end_reason = "retired"
                    actions.append(Action("retire", key, str(inst.id), now))
                del live[want:]
        return actions
