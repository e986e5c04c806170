"""Simulated backend: launch delays, retirements and spot interruptions on a simulated clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from hybridserve.config import ConfigError, Pool, SpotOptions
from hybridserve.fleet import Action, FleetView, PoolState
from hybridserve.reconcile import Observed, reconcile
from hybridserve.spot_interruptions import Reclaim, take_notices


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
        spot_types = [p.instance_type for p in pools if p.market == "spot"]
        # per pool, the hazard of the random models (interruptions per hour per instance)
        self.rates = {
            f"{t}/spot": r for t, r in self.spot.rates_per_hour(spot_types).items() if r > 0
        }
        self._reclaims = self.spot.reclaims()
        self._next_reclaim = 0
        self.missed: list[Reclaim] = []  # trace rows that found no live instance of their type
        strange = [r for r in self._reclaims if r.instance_type not in spot_types]
        if strange:
            r = strange[0]
            raise ConfigError(
                f"{self.spot.interruption_trace}:{r.line}: {r.instance_type} is no spot pool of "
                f"this scenario (spot pools: {spot_types}); add it to instance_types (with spot "
                f"in markets) or remove the row"
            )

    def now(self) -> float:
        return self.clock

    def advance(self, t: float, on_notice: Callable[[], object] | None = None) -> None:
        """Move the clock to t; spot instances may receive an interruption notice on the way.

        Each notice takes its instance out of the fleet at its instant, in time order, and
        calls `on_notice` there (`Controller.on_notice`: the replacement launches at the
        notice, as on AWS; both go through `take_notices`). Under the random models
        (`advisor`, `rate`), replacements made inside the interval are at risk from the next
        one on; under `trace`, each row reclaims among the instances live at its second."""
        dt = t - self.clock
        if dt < 0:
            raise ValueError(f"simulated clock cannot go back from {self.clock} to {t}")
        if self.spot.interruptions == "trace":
            self._replay_reclaims(t, on_notice)
        elif dt > 0:
            for at, inst in self._draw(dt):
                self.clock = at
                take_notices([str(inst.id)], self.notice, on_notice)
        self.clock = t

    def _draw(self, dt: float) -> list[tuple[float, SimInstance]]:
        """The notices of the next `dt` seconds, in time order, for the instances live now: each
        with its pool's hazard h, split into an independent part (1 - c) h and pool-wide
        shocks at rate h that take each instance with probability c (`spot.correlation`)."""
        c = self.spot.correlation
        at: dict[int, tuple[float, SimInstance]] = {}
        for key, live in self._live.items():
            rate = self.rates.get(key, 0.0) / 3600.0
            if rate <= 0 or not live:
                continue
            p = -np.expm1(-(1.0 - c) * rate * dt)
            for inst in live:  # the rate model's draws as before the bands, when c is 0
                if self.rng.random() < p:
                    at[inst.id] = (self.clock + self.rng.random() * dt, inst)
            if c > 0:
                for _ in range(int(self.rng.poisson(rate * dt))):
                    when = self.clock + self.rng.random() * dt
                    for inst in live:
                        if self.rng.random() < c and when < at.get(inst.id, (np.inf,))[0]:
                            at[inst.id] = (when, inst)
        return sorted(at.values(), key=lambda x: x[0])

    def _replay_reclaims(self, t: float, on_notice: Callable[[], object] | None) -> None:
        """The trace's rows in [clock, t): each reclaims one live instance of its type (the
        oldest, or a seeded-random one); a row that finds none is kept in `missed`."""
        rows = self._reclaims
        while self._next_reclaim < len(rows) and rows[self._next_reclaim].time_s < t:
            row = rows[self._next_reclaim]
            self._next_reclaim += 1
            self.clock = max(self.clock, row.time_s)
            live = self._live.get(f"{row.instance_type}/spot", [])
            if not live:
                self.missed.append(row)
                continue
            pick = 0 if self.spot.trace_pick == "oldest" else int(self.rng.integers(len(live)))
            take_notices([str(live[pick].id)], self.notice, on_notice)

    def notice(self, instance_ids: list[str]) -> list[str]:
        """A spot interruption notice, now, for some instances (what `AwsBackend.notice` takes
        from EventBridge): each still live leaves the fleet's view at once and ends `notice_s`
        later, when EC2 reclaims it; returns those taken."""
        took = []
        for iid in instance_ids:
            k = int(iid) if iid.isdigit() else -1
            inst = self.instances[k] if 0 <= k < len(self.instances) else None
            if inst is None or inst not in self._live.get(inst.pool, ()):
                continue  # not this fleet's, retired or noticed already
            self._live[inst.pool].remove(inst)
            inst.notice_at = self.clock
            inst.ended_at = self.clock + self.spot.notice_s
            inst.end_reason = "spot-interruption"
            took.append(iid)
        return took

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
