"""Per-request discrete-event mode: slow and exact, the check on the fast data plane.

Same fleet timeline and the same serving model as `dataplane.py`, but nothing pooled or fluid:
- arrivals: a Poisson process given each second's count (uniform random times in the second);
- each ready instance keeps its own FIFO queue; a request occupies 1/mu_i of the server and
  finishes s_i after its service starts (the instance at its operating batch size);
- the router computes each ready instance's predicted latency (its queue's wait + s_i), takes the
  smallest, and spills to Lambda when that exceeds the SLO (VM-only policies never spill);
- Lambda as the router drives it: spilled requests wait in its BATCH buffer, a batch closing at
  the size or the timeout that `batch_params` picks from the router's spill-rate estimate (its
  per-second update, `lambda_plane.SPILL_RATE_GAIN`); each batch is one invoke. Lambda keeps real
  containers: a warm idle one (most recently used first) serves a batch of b in s_L(b); none
  idle means a cold start (cold + s_L(b)); containers expire keep-alive after their last use;
  with every concurrency slot busy the batch waits for the first to free (the router holds at
  most the limit in flight), and a request finding the buffer's limit of pending requests
  already reached is refused (a failure). A keep-warm round of W pings at time r keeps W
  containers as if used at r: the idle ones most recently used, and new ones (the pings' cold
  starts) for the rest.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from hybridserve.config import Pool, Scenario, lambda_cold_start_s, lambda_service_s
from simulations.dataplane import LatencyHistogram, histogram_edges, serving_span
from simulations.lambda_plane import _ROUTER_MAX_PENDING, SPILL_RATE_GAIN, spill_batching


@dataclass
class DESResult:
    requests: int
    met: int
    spilled: int
    cold_starts: int
    throttled: int  # refused: the buffer's pending limit reached
    latencies_s: np.ndarray
    slo_s: float
    invokes: int = 0
    ping_cold_starts: int = 0  # containers the keep-warm pings started

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
    warm_rounds: list[tuple[float, int]] | None = None,
) -> DESResult:
    """Replay every request of `counts` (seconds from 0) through the instance timeline;
    `warm_rounds` are the keep-warm rounds, (time s, pings)."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    secs = np.repeat(np.arange(len(counts)), counts)
    times = secs + rng.random(n)
    times.sort(kind="stable")
    slo = sc.slo.latency_s
    cold_s = lambda_cold_start_s(sc)
    keep = sc.lambda_.keep_alive_s
    limit = sc.lambda_.concurrency_limit
    batching = spill_batching(sc)
    svc_l = [0.0] + [lambda_service_s(sc, b) for b in range(1, int(batching.size.max()) + 1)]

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
    flight: list[tuple[float, int]] = []  # heap of dispatched batches: (finish, requests)
    in_flight = 0
    batch: list[int] = []  # the open batch's requests
    deadline = size = 0.0
    est, second, second_spills = 0.0, 0, 0  # the router's spill-rate estimate
    lat = np.full(n, np.nan)
    spilled = cold = throttled = invokes = ping_cold = 0
    rounds = sorted(warm_rounds or ())
    next_round = 0

    def ping(t_round: float, w: int) -> None:
        """A round of `w` warm-up pings at `t_round`."""
        nonlocal ping_cold
        while busy and busy[0] <= t_round:
            idle.append(heapq.heappop(busy))
        while idle and t_round - idle[0] > keep:
            idle.pop(0)
        touched = min(w, len(idle))
        for j in range(len(idle) - touched, len(idle)):
            idle[j] = t_round
        new = max(w - len(idle) - len(busy), 0)
        ping_cold += new
        # the new ones below the warm ones the round touched: those serve first (a new one's
        # second of start is not modelled, as in the fast mode)
        at = len(idle) - touched
        idle[at:at] = [t_round] * new

    def dispatch(t_close: float) -> None:
        """The open batch leaves at `t_close`: a warm container, a cold one, or the first slot
        to free."""
        nonlocal cold, invokes, in_flight, batch
        while busy and busy[0] <= t_close:
            idle.append(heapq.heappop(busy))
        while idle and t_close - idle[0] > keep:  # oldest idle containers expire first
            idle.pop(0)
        if idle:
            idle.pop()
            start, extra = t_close, 0.0
        elif len(busy) < limit:
            start, extra = t_close, cold_s
            cold += 1
        else:
            start, extra = heapq.heappop(busy), 0.0  # the first container to free takes it
        finish = start + extra + svc_l[len(batch)]
        heapq.heappush(busy, finish)
        heapq.heappush(flight, (finish, len(batch)))
        in_flight += len(batch)
        invokes += 1
        for j in batch:
            lat[j] = finish - times[j]
        batch = []

    for r in range(n):
        t = times[r]
        while next_round < len(rounds) and rounds[next_round][0] <= t:
            ping(*rounds[next_round])
            next_round += 1
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
            continue
        if not spill:
            lat[r] = np.inf  # no instance at all: the request waits without bound
            continue
        spilled += 1
        sec = int(t)
        if sec > second:  # the router's tick, once a second
            est += SPILL_RATE_GAIN * (second_spills - est)
            est *= (1.0 - SPILL_RATE_GAIN) ** (sec - second - 1)
            second, second_spills = sec, 0
        second_spills += 1
        if batch and t >= deadline:
            dispatch(deadline)
        while flight and flight[0][0] <= t:
            in_flight -= heapq.heappop(flight)[1]
        if in_flight + len(batch) >= _ROUTER_MAX_PENDING:
            throttled += 1
            lat[r] = np.inf
            continue
        if not batch:
            b = batching.at(np.array([est]))
            size, deadline = float(b["size"][0]), t + float(b["timeout_s"][0])
        batch.append(r)
        if len(batch) >= size:
            dispatch(t)
    if batch:
        dispatch(deadline)
    met = int((lat <= slo + 1e-12).sum())
    return DESResult(n, met, spilled, cold, throttled, lat, slo, invokes, ping_cold)
