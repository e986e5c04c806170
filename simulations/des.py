"""Per-request discrete-event mode: slow and exact, the check on the fast data plane.

Same fleet timeline and the same serving model as `dataplane.py`, but nothing pooled or fluid:
- arrivals: a Poisson process given each second's count (uniform random times in the second);
- each ready instance keeps its own FIFO queue; a request occupies 1/mu_i of the server and
  finishes s_i after its service starts (the instance at its operating batch size);
- the router computes each ready instance's predicted latency (its queue's wait + s_i), takes the
  smallest, and spills to Lambda when that exceeds the SLO (VM-only policies never spill);
- Lambda keeps real containers: a warm idle one (most recently used first) serves in s_L; none
  idle means a cold start (cold + s_L); containers expire keep-alive after their last use; with
  the concurrency limit busy, the request is throttled (a failure).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from hybridserve.config import Pool, Scenario, lambda_cold_start_s, lambda_service_s
from simulations.dataplane import LatencyHistogram, histogram_edges, serving_span


@dataclass
class DESResult:
    requests: int
    met: int
    spilled: int
    cold_starts: int
    throttled: int
    latencies_s: np.ndarray
    slo_s: float

    @property
    def slo_attainment(self) -> float:
        return self.met / self.requests if self.requests else 1.0

    def percentile_ms(self, q: float) -> float:
        """Percentile through the same histogram as the fast mode (comparable resolution)."""
        h = LatencyHistogram(histogram_edges(self.slo_s))
        h.add_points(self.latencies_s, np.ones(len(self.latencies_s)))
        return h.percentile(q) * 1000.0


def simulate_requests(
    counts: np.ndarray,
    instances: list,
    pools: dict[str, Pool],
    sc: Scenario,
    *,
    spill: bool,
    seed: int = 0,
) -> DESResult:
    """Replay every request of `counts` (seconds from 0) through the instance timeline."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    secs = np.repeat(np.arange(len(counts)), counts)
    times = secs + rng.random(n)
    times.sort(kind="stable")
    slo = sc.slo.latency_s
    s_l = lambda_service_s(sc)
    cold_s = lambda_cold_start_s(sc)
    keep = sc.lambda_.keep_alive_s
    limit = sc.lambda_.concurrency_limit

    # instance start/stop events in time order
    events: list[tuple[float, int, int]] = []
    for idx, inst in enumerate(instances):
        start, stop = serving_span(inst)
        if stop > start:
            events.append((float(start), 1, idx))
            events.append((float(stop), 0, idx))
    events.sort()
    rate = np.array([pools[i.pool].capacity_rps for i in instances] or [1.0])
    svc = np.array([pools[i.pool].latency_s for i in instances] or [0.0])
    free_at = np.zeros(len(instances))
    active: list[int] = []
    ev = 0

    busy: list[float] = []  # heap of busy containers' finish times
    idle: list[float] = []  # stack of idle containers' last-use times (most recent on top)
    lat = np.empty(n)
    met = spilled = cold = throttled = 0
    for r in range(n):
        t = times[r]
        while ev < len(events) and events[ev][0] <= t:
            _, kind, idx = events[ev]
            if kind:
                active.append(idx)
                free_at[idx] = max(free_at[idx], events[ev][0])
            elif idx in active:
                active.remove(idx)
            ev += 1
        best, best_pred = -1, np.inf
        for i in active:
            pred = max(free_at[i] - t, 0.0) + svc[i]
            if pred < best_pred - 1e-12 or (
                abs(pred - best_pred) <= 1e-12 and rate[i] > rate[best]
            ):
                best, best_pred = i, pred
        if best >= 0 and (not spill or best_pred <= slo + 1e-12):
            start = max(free_at[best], t)
            free_at[best] = start + 1.0 / rate[best]
            lat[r] = best_pred
        elif not spill:
            lat[r] = np.inf  # no instance at all: the request waits without bound
        else:
            spilled += 1
            while busy and busy[0] <= t:
                idle.append(heapq.heappop(busy))
            while idle and t - idle[0] > keep:  # oldest idle containers expire first
                idle.pop(0)
            if idle:
                idle.pop()
                heapq.heappush(busy, t + s_l)
                lat[r] = s_l
            elif len(busy) < limit:
                cold += 1
                heapq.heappush(busy, t + cold_s + s_l)
                lat[r] = cold_s + s_l
            else:
                throttled += 1
                lat[r] = np.inf
        if lat[r] <= slo + 1e-12:
            met += 1
    return DESResult(n, met, spilled, cold, throttled, lat, slo)
