"""Where the money went: the cost causes, and the attribution rules the simulator's `--explain`
(simulations/explain.py) and `serve`'s cost metric share.

EC2, per instance (the bill is `pricing.ec2_billed_s` of its run, from launch to end):
- launch overhead: billed seconds from launch until the instance first serves (the first whole
  second at or after it is ready, as the data plane counts serving seconds);
- minimum bill: what the 60 s minimum adds to a run shorter than a minute;
- base fleet / over-provisioning: each serving second, the fleet's price is split by the share
  of its capacity the arrivals of that second needed, min(1, arrivals / capacity): the used
  capacity-seconds are the base fleet, the idle rest (headroom) is over-provisioning. The
  fraction of a second between its last whole serving second and its end is idle too.
A spot instance that EC2 interrupts within its first hour is free (AWS's rule), so it adds
nothing to any cause.

Spill (Lambda), in requests Lambda served (throttled ones are not billed):
- planned: the interval's mean demand above the fleet's capacity that the forecast foresaw (the
  plan chose Lambda for it: lambda-only, or a hybrid fleet planned below the forecast);
- forecast miss: the interval's mean demand above both the capacity and the forecast;
- within-interval burst: what spills beyond those two, i.e. seconds above a capacity that covers
  the interval's mean (bursts, and the Poisson noise of a second);
- launch lag and spot loss: spill that instances still booting, or a spot instance lost before
  its replacement is ready, cause (the simulator measures them by replaying the data plane
  without them; the live meter by a per-second rule, see `LiveCostMeter`).
Cold starts: the init time Lambda bills on a cold invoke, its own cause.

Only numpy and the pricing functions: the router imports this (no scipy, no planner).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from hybridserve.pricing import ec2_billed_s

EC2_CAUSES = ("base_fleet", "over_provisioning", "launch_overhead", "minimum_bill")
SPILL_CAUSES = (
    "spill_planned",
    "spill_forecast_miss",
    "spill_burst",
    "spill_launch_lag",
    "spill_spot_loss",
)
CAUSES = (*EC2_CAUSES, *SPILL_CAUSES, "cold_starts", "keep_warm")
LABELS = {
    "base_fleet": "base fleet",
    "over_provisioning": "over-provisioning",
    "launch_overhead": "launch overhead",
    "minimum_bill": "minimum bill",
    "spill_planned": "spill: planned",
    "spill_forecast_miss": "spill: forecast miss",
    "spill_burst": "spill: within-interval burst",
    "spill_launch_lag": "spill: launch lag",
    "spill_spot_loss": "spill: spot loss",
    "cold_starts": "cold starts",
    "keep_warm": "keep-warm pings",
}
SPOT_FREE_S = 3600.0  # EC2 does not charge a spot instance it interrupts within its first hour


def serving_span(ready_at: float, ended_at: float | None) -> tuple[int, float]:
    """Whole seconds an instance serves: from ceil(ready) to floor(end) (inf while it runs);
    the data plane's rule (simulations.dataplane.serving_span)."""
    stop = math.inf if ended_at is None else int(math.floor(ended_at + 1e-9))
    return int(math.ceil(ready_at - 1e-9)), stop


@dataclass(frozen=True)
class InstanceSeconds:
    """One instance's billed seconds by cause: launch [launched, serve_from), whole serving
    seconds [serve_from, serve_to), idle tail [serve_to, stop), plus the minimum's top-up."""

    launched: float
    serve_from: float
    serve_to: float
    stop: float
    billed: float  # 0 when free

    @property
    def free(self) -> bool:
        return self.billed == 0.0

    @property
    def ran(self) -> float:
        return self.stop - self.launched

    @property
    def launch_s(self) -> float:
        return 0.0 if self.free else self.serve_from - self.launched

    @property
    def serving_s(self) -> float:
        return 0.0 if self.free else self.serve_to - self.serve_from

    @property
    def tail_s(self) -> float:
        return 0.0 if self.free else self.stop - self.serve_to

    @property
    def minimum_s(self) -> float:
        return 0.0 if self.free else self.billed - self.ran


def instance_seconds(
    launched_at: float,
    ready_at: float,
    ended_at: float | None,
    end_reason: str | None,
    end_s: float,
    *,
    spot_credit: bool = True,
) -> InstanceSeconds:
    """The split of one instance's bill up to `end_s` (the end of the trace, or now): launch,
    serving, tail and minimum seconds sum to `ec2_billed_s` of its run (0 when the spot credit
    applies). `ready_at` may be inf (not ready yet)."""
    stop = end_s if ended_at is None else min(ended_at, end_s)
    ran = stop - launched_at
    free = spot_credit and end_reason == "spot-interruption" and ran < SPOT_FREE_S
    first, last = serving_span(ready_at, ended_at) if math.isfinite(ready_at) else (math.inf, 0)
    serve_from = min(max(first, launched_at), stop)
    serve_to = min(max(min(last, end_s), serve_from), stop)
    return InstanceSeconds(
        launched_at, serve_from, serve_to, stop, 0.0 if free else ec2_billed_s(ran)
    )


def serving_split(price_usd: np.ndarray | float, capacity: np.ndarray | float, demand):
    """(base fleet, over-provisioning) of a serving fleet's `price_usd` for one second (or per
    second, on arrays): the share min(1, demand / capacity) of it is base."""
    cap = np.asarray(capacity, dtype=float)
    used = np.where(
        cap > 0, np.minimum(1.0, np.asarray(demand, dtype=float) / np.where(cap > 0, cap, 1.0)), 0.0
    )
    base = np.asarray(price_usd, dtype=float) * used
    return base, np.asarray(price_usd, dtype=float) - base


def split_shortfall(
    served: np.ndarray | float,
    arrivals: np.ndarray | float,
    capacity_rps: np.ndarray | float,
    forecast_rps: np.ndarray | float,
    interval_s: float,
):
    """(planned, forecast miss, burst) of `served` spilled requests in an interval of
    `arrivals` whose fleet had `capacity_rps` on average and whose forecast mean was
    `forecast_rps` (nan: none). The mean shortfall (arrivals above capacity x interval) is
    planned up to the forecast and missed above it; what spilled beyond it is burst."""
    served = np.asarray(served, dtype=float)
    a = np.asarray(arrivals, dtype=float) / interval_s
    c = np.asarray(capacity_rps, dtype=float)
    f = np.nan_to_num(np.asarray(forecast_rps, dtype=float), nan=0.0)
    planned = np.maximum(np.minimum(f, a) - c, 0.0) * interval_s
    missed = np.maximum(a - np.maximum(f, c), 0.0) * interval_s
    short = planned + missed
    mean_part = np.minimum(served, short)
    share = np.where(short > 0, planned / np.where(short > 0, short, 1.0), 0.0)
    p = mean_part * share
    return p, mean_part - p, served - mean_part


# --- the live meter ------------------------------------------------------------------------


@dataclass
class Lifetime:
    """An instance's life on the wall clock (epoch s), as the live path knows it."""

    id: str
    pool: str
    launched_at: float
    ready_at: float = math.inf
    ended_at: float | None = None
    end_reason: str | None = None  # "retired", "lost", "spot-interruption"


def lifetimes_from_events(
    events: Iterable[tuple[float, str, str, str]], offset_s: float = 0.0
) -> list[Lifetime]:
    """Lifetimes from a backend's (time, kind, pool, id) events (LocalBackend.events): kinds
    launch, ready, retire, notice, lost; `offset_s` turns the backend's clock into epoch s."""
    out: dict[str, Lifetime] = {}
    for t, kind, pool, iid in events:
        t = t + offset_s
        if kind == "launch":
            out[iid] = Lifetime(iid, pool, t)
            continue
        life = out.get(iid)
        if life is None:
            continue
        if kind == "ready":
            life.ready_at = t
        elif life.ended_at is None:
            life.ended_at = t
            life.end_reason = {"notice": "spot-interruption", "lost": "lost"}.get(kind, "retired")
    return list(out.values())


class LiveCostMeter:
    """Cost by cause of a running `serve`, for its `hybridserve_cost_usd_total{cause}` counter.

    What it knows, and how it attributes (the rules above, applied to what the live path sees):
    - per second the router closes: the ready instances' pools, arrivals, spilled requests and
      retries (`second`). Base fleet / over-provisioning are that second's price split by
      arrivals over capacity: serving seconds are those the router saw each instance ready.
    - instance lifetimes (`lifetimes`, e.g. from LocalBackend.events): launch overhead and, once
      an instance ended, its minimum bill. The spot credit is not applied (a counter only
      grows). Without lifetimes (AWS mode) these two causes stay 0, and no spill is launch lag
      or a launching replacement's spot loss.
    - Lambda's charge per invoke (`lambda_invoke`): the init part of a cold invoke is the cold
      start cause; the warm rest is split over the spill causes by requests when the router's
      interval closes (so the spill causes lag the spend by up to one interval).
    Spill causes, per spilled second: a retry (its instance failed under it) is spot loss (an
    instance lost); while a replacement of a lost or noticed instance is launching (a launch
    in its pool within one interval after the loss), spot loss; while any other instance is
    launching, launch lag; else, per interval of the router's clock, `split_shortfall` with
    the interval's mean capacity and the forecast the control loop planned it with
    (`forecasts`: (epoch s, forecast mean) of its recent decisions, the last before the
    interval's middle counts; none: no spill counts as planned).
    Unlike the simulator it cannot replay an interval without the lag or the loss, so a second
    counts whole for one cause.
    """

    def __init__(
        self,
        pools: Mapping[str, tuple[float, float]],
        interval_s: int,
        *,
        lifetimes: Callable[[], list[Lifetime]] | None = None,
        forecasts: Callable[[], Iterable[tuple[float, float]]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.pools = dict(pools)  # pool key -> (USD per s, capacity req/s)
        self.interval_s = max(1, int(interval_s))
        self.lifetimes = lifetimes
        self.forecasts = forecasts
        self.clock = clock or time.time
        self._lock = threading.Lock()
        self.usd = dict.fromkeys(CAUSES, 0.0)  # accumulated, but launch overhead and minimum
        self.spilled = dict.fromkeys(SPILL_CAUSES, 0.0)  # requests by cause
        self._warm_pending = 0.0  # warm Lambda spend not yet split over the spill causes
        self._retried = 0
        self._bucket: int | None = None
        self._rows: list[tuple[int, int, int, float]] = []  # second, arrivals, spilled, capacity

    def second(
        self, sec: int, ready_pools: Iterable[str], arrivals: int, spilled: int, retried: int = 0
    ) -> None:
        """One closed second of the router's clock (`spilled` includes the `retried`)."""
        price = cap = 0.0
        for key in ready_pools:
            p, c = self.pools.get(key, (0.0, 0.0))
            price += p
            cap += c
        base, over = serving_split(price, cap, arrivals)
        with self._lock:
            self.usd["base_fleet"] += float(base)
            self.usd["over_provisioning"] += float(over)
            bucket = sec // self.interval_s
            if self._bucket is not None and bucket != self._bucket:
                self._close_bucket()
            self._bucket = bucket
            self._retried += retried
            self._rows.append((sec, arrivals, max(spilled - retried, 0), cap))

    def lambda_invoke(self, usd: float, cold_usd: float = 0.0) -> None:
        """One invoke's charge, of which `cold_usd` is the init a cold start bills."""
        with self._lock:
            cold = min(max(cold_usd, 0.0), usd)
            self.usd["cold_starts"] += cold
            self._warm_pending += usd - cold

    def _close_bucket(self) -> None:
        rows, self._rows = self._rows, []
        n = dict.fromkeys(SPILL_CAUSES, 0.0)
        n["spill_spot_loss"] = float(self._retried)
        self._retried = 0
        lives = self.lifetimes() if self.lifetimes is not None and any(r[2] for r in rows) else []
        rest = 0.0
        for sec, _, k, _ in rows:
            cause = self._launching(lives, sec + 0.5) if k > 0 else None
            if cause is None:
                rest += k
            else:
                n[cause] += k
        if rest > 0:
            start = rows[0][0]
            arrivals = sum(r[1] for r in rows)
            cap = sum(r[3] for r in rows) / len(rows)
            made = sorted(self.forecasts() if self.forecasts is not None else ())
            fc = [r for t, r in made if t <= start + self.interval_s / 2]
            p, m, b = split_shortfall(rest, arrivals, cap, fc[-1] if fc else np.nan, len(rows))
            n["spill_planned"] += float(p)
            n["spill_forecast_miss"] += float(m)
            n["spill_burst"] += float(b)
        total = sum(n.values())
        if total <= 0:
            return  # the spend waits for the next interval with spill
        for cause, k in n.items():
            self.spilled[cause] += k
            self.usd[cause] += self._warm_pending * k / total
        self._warm_pending = 0.0

    def _launching(self, lives: list[Lifetime], t: float) -> str | None:
        """The cause of spill at `t` that launching instances explain, if any."""
        pending = [
            x
            for x in lives
            if x.launched_at <= t < x.ready_at and (x.ended_at is None or x.ended_at > t)
        ]
        if not pending:
            return None
        for x in pending:
            for y in lives:
                if (
                    y.end_reason in ("lost", "spot-interruption")
                    and y.ended_at is not None
                    and y.pool == x.pool
                    and 0.0 <= x.launched_at - y.ended_at <= self.interval_s
                ):
                    return "spill_spot_loss"
        return "spill_launch_lag"

    def totals(self) -> dict[str, float]:
        """USD by cause so far; each only grows (a Prometheus counter)."""
        now = self.clock()
        lives = self.lifetimes() if self.lifetimes is not None else []
        with self._lock:
            out = dict(self.usd)
        for x in lives:
            s = instance_seconds(
                x.launched_at, x.ready_at, x.ended_at, x.end_reason, now, spot_credit=False
            )
            price = self.pools.get(x.pool, (0.0, 0.0))[0]
            out["launch_overhead"] += s.launch_s * price
            if x.ended_at is not None:
                out["minimum_bill"] += s.minimum_s * price
        return out
