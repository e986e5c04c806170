"""Fast data plane: replay per-second arrivals through a fleet timeline, vectorised.

Model (the same one the per-request discrete-event mode in `des.py` simulates exactly):
- An instance of pool k, at its operating batch size, is a server of rate mu_k (req/s) whose
  requests each take s_k (the batch service time) after their wait in the queue. The router
  joins the shortest queue weighted by capacity, so the fleet behaves as one pooled queue of rate
  mu = sum mu_k and a request's latency is wait + s, s the capacity-weighted mean of s_k.
- The router spills a request when its predicted latency would exceed the SLO, i.e. when the
  queue ahead exceeds Q = sum mu_k (SLO - s_k). VM-only policies never spill (Q = inf).
- Per second, backlog follows Lindley's recursion with a cap: b[t] = min(Q, max(0, b[t-1] + a[t] -
  mu)). Each step is a clamp x -> min(H, max(L, x + D)); clamps compose into clamps, so the whole
  recursion is one associative prefix scan in numpy (log2(n) passes), exact for the fluid model.
- Within a second, the fluid part spreads arrivals evenly: waits ramp linearly between the
  second's start and end backlog. On top comes the queueing that Poisson arrivals cause even
  below capacity: with c instances, a request waits with the Erlang-C probability, for an
  exponential time of mean 1 / (2 (mu - a)) (M/D/c: half of M/M/c), capped at the typical
  excursion of the second's arrivals given their count (a Brownian bridge: 0.5 sqrt(a) / mu).
  Only requests that find the fluid queue empty get it (the bias comes from the reflection at
  zero; behind a backlog the noise shifts waits both ways), and none in seconds at or over
  capacity, where the fluid queue already holds the excess. Attainment per second stays in closed form; under spill, the
  requests that this wait would push past the SLO go to Lambda, as the router would send them.
- Lambda, as the router's BATCH buffer drives it: `lambda_plane` (batches, concurrency slots,
  cold starts, the bill's invokes and duration), fed each chunk's spill.
- The queueing formulas both parts use are in `queueing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridserve.config import (
    Pool,
    Scenario,
    lambda_cold_start_s,
    lambda_service_s,
)
from hybridserve.keep_warm import ping_hold_ms
from hybridserve.pricing import (
    ec2_billed_s,
    lambda_billed_ms_array,
    lambda_compute_usd,
    lambda_gb_s,
    lambda_init_usd,
)
from simulations.lambda_plane import LambdaState, SpillBatching, lambda_seconds, spill_batching
from simulations.queueing import clamp_scan, exp_tail, poisson_wait, spill_probability


def histogram_edges(slo_s: float) -> np.ndarray:
    """Latency bin edges (s), ~1% wide, with the SLO itself an edge so requests served exactly at
    the SLO are not reported above it. Bins are right-closed: (e_k, e_k+1]."""
    below = np.geomspace(1e-4, slo_s, 1000)
    above = np.geomspace(slo_s, 1e6, 1200)[1:]
    return np.concatenate([below, above])


@dataclass
class LatencyHistogram:
    """Counts of requests by latency bin; the last bin collects failures and unbounded waits."""

    edges: np.ndarray = field(default_factory=lambda: histogram_edges(0.3))
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.edges))

    def add_points(self, lat_s: np.ndarray, n: np.ndarray) -> None:
        lat = np.asarray(lat_s, dtype=float)
        w = np.asarray(n, dtype=float)
        ok = w > 0
        if not ok.any():
            return
        e = self.edges
        idx = np.searchsorted(e, lat[ok] - 1e-12, side="left") - 1
        idx = np.where(np.isfinite(lat[ok]), np.clip(idx, 0, len(e) - 2), len(e) - 1)
        self.counts += np.bincount(idx, weights=w[ok], minlength=len(e))

    def percentile(self, q: float) -> float:
        total = self.counts.sum()
        if total <= 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        k = int(np.searchsorted(cum, q / 100.0 * total))
        if k >= len(self.edges) - 1:
            return float("inf")
        prev = cum[k - 1] if k else 0.0
        frac = (q / 100.0 * total - prev) / max(self.counts[k], 1e-12)
        lo, hi = self.edges[k], self.edges[k + 1]
        return float(lo * (hi / lo) ** np.clip(frac, 0, 1))


def serving_span(inst) -> tuple[int, float]:
    """Whole seconds an instance serves: from ceil(ready) to floor(end) (inf while it runs)."""
    stop = np.inf if inst.ended_at is None else int(np.floor(inst.ended_at + 1e-9))
    return int(np.ceil(inst.ready_at - 1e-9)), stop


def fleet_capacity(
    instances: list, pools: dict[str, Pool], start: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per second in [start, start+length): fleet rate mu, sum of mu_k * s_k and instance count.

    An instance serves whole seconds from ceil(ready) to floor(end)."""
    mu = np.zeros(length + 1)
    mus = np.zeros(length + 1)
    cnt = np.zeros(length + 1)
    for inst in instances:
        p = pools[inst.pool]
        first, stop = serving_span(inst)
        a, b = max(first - start, 0), int(min(stop - start, length))
        if b <= a:
            continue
        mu[a] += p.capacity_rps
        mu[b] -= p.capacity_rps
        mus[a] += p.capacity_rps * p.latency_s
        mus[b] -= p.capacity_rps * p.latency_s
        cnt[a] += 1
        cnt[b] -= 1
    return np.cumsum(mu)[:length], np.cumsum(mus)[:length], np.rint(np.cumsum(cnt)[:length])


@dataclass
class FleetSeconds:
    """Per-second outcome of the fleet part."""

    b_end: np.ndarray
    spill: np.ndarray
    met: np.ndarray  # admitted requests within the SLO
    admitted: np.ndarray


def fleet_seconds(
    a: np.ndarray,
    mu: np.ndarray,
    mus: np.ndarray,
    servers: np.ndarray,
    slo_s: float,
    spill: bool,
    b0: float,
    hist: LatencyHistogram | None = None,
) -> FleetSeconds:
    """Fluid fleet over consecutive seconds with a carried backlog b0 (see the module docstring)."""
    a = a.astype(float)
    serving = mu > 0
    svc = np.where(serving, mus / np.where(serving, mu, 1.0), 0.0)
    Q = np.maximum(mu * slo_s - mus, 0.0) if spill else np.full(len(a), np.inf)
    if not spill:
        Q = np.where(serving, Q, np.inf)
    b_end = clamp_scan(a - mu, Q, b0)
    b_prev = np.concatenate([[b0], b_end[:-1]])
    d = a - mu
    safe_mu = np.where(serving, mu, 1.0)
    up = d > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        tau_c = np.where(up, np.clip((Q - b_prev) / np.where(up, d, 1.0), 0.0, 1.0), 1.0)
        tau_e = np.where(d < 0, np.clip(b_prev / np.where(d < 0, -d, 1.0), 0.0, 1.0), 1.0)
    tau = np.where(up, tau_c, tau_e)
    nA = a * tau
    wA0 = b_prev / safe_mu
    wA1 = (b_prev + d * tau) / safe_mu
    nB = np.where(up, mu * (1.0 - tau), a * (1.0 - tau))
    wB = np.where(up, np.where(np.isfinite(Q), Q, 0.0) / safe_mu, 0.0)
    spilled = np.where(up, d * (1.0 - tau), 0.0) if spill else np.zeros_like(a)
    if spill:
        # no instance serving: everything spills
        nA = np.where(serving, nA, 0.0)
        nB = np.where(serving, nB, 0.0)
        spilled = np.where(serving, spilled, a)
    thr = slo_s - svc
    lo, hi = np.minimum(wA0, wA1), np.maximum(wA0, wA1)
    pw, mean_w = poisson_wait(a, mu, servers)
    rate = 1.0 / np.maximum(mean_w, 1e-12)
    # noise only biases waits upward where the fluid queue is empty (reflection at zero);
    # behind a backlog it shifts waits both ways and averages out
    pw = np.where(up, 0.0, pw)
    fracA = exp_tail(np.zeros_like(pw), rate, thr, lo, hi)
    fracB = exp_tail(pw, rate, thr, wB, wB)
    if spill:
        fracB = np.where(pw > 0, 1.0 - spill_probability(a, mu, thr, pw), fracB)
    metA = nA * fracA
    metB = nB * fracB
    if spill:
        # the router sends the requests whose wait would break the SLO to Lambda instead
        spilled = spilled + (nA - metA) + (nB - metB)
        nA, nB = metA, metB
    met = np.where(serving, metA + metB, 0.0)
    admitted = nA + nB
    if hist is not None:
        # at the cap, an admitted request waits between the cap less one request's share of an
        # instance (1 / its rate: the router puts it on the shortest queue) and the cap
        per_inst = np.where(serving, mu / np.maximum(servers, 1.0), np.inf)
        spread = np.where(up & serving, np.minimum(wB, 1.0 / per_inst), 0.0) if spill else None
        _add_fleet_latencies(
            hist, serving, svc, lo, hi, nA, wB, nB, pw, mean_w, thr if spill else None, spread
        )
    return FleetSeconds(b_end=b_end, spill=spilled, met=met, admitted=admitted)


_EXP_POINTS = -np.log1p(-(np.arange(6) + 0.5) / 6)  # quantile points of a unit exponential


def _add_fleet_latencies(
    hist, serving, svc, lo, hi, nA, wB, nB, pw, mean_w, cap, spread=None
) -> None:
    """Histogram of fleet latencies: fluid ramp/point times (1 - pw) plus pw spread over an
    exponential; with spill, mass past the SLO was sent away and is dropped (cap per second).

    Per second: the ramp's 4 points (weight nA / 4 each) and the point's 10 (the fluid time,
    spread evenly over [wB - spread, wB] in 4 points sharing weight nB (1 - pw), and 6
    exponential quantiles sharing nB pw). Built as these 14 columns only: a full (points x
    spread) grid was two-thirds zero weights (measured: 0.45 -> 0.15 s per simulated day at
    1 req/s granularity, a fifth of a replay)."""
    ramp = (np.arange(4) + 0.5) / 4
    spread = np.zeros_like(wB) if spread is None else spread
    point = wB[:, None] - spread[:, None] * ramp[None, :]
    lat = np.concatenate(
        [
            lo[:, None] + (hi - lo)[:, None] * ramp[None, :],
            point,
            wB[:, None] + _EXP_POINTS[None, :] * mean_w[:, None],
        ],
        axis=1,
    )
    lat += svc[:, None]
    probs = np.concatenate(
        [np.repeat(((1 - pw) / 4)[:, None], 4, axis=1), np.repeat((pw / 6)[:, None], 6, axis=1)],
        axis=1,
    )
    w = np.concatenate([np.repeat((nA / 4)[:, None], 4, axis=1), nB[:, None] * probs], axis=1)
    lat[~serving] = np.inf
    if cap is not None:
        kept = np.where(lat <= (cap + svc)[:, None] + 1e-12, w, 0.0)
        # renormalise per second: the admitted counts already exclude what spilled
        tot_k = kept.sum(axis=1)
        tot_w = nA + nB
        w = kept * np.where(tot_k > 0, tot_w / np.where(tot_k > 0, tot_k, 1.0), 0.0)[:, None]
    hist.add_points(lat.ravel(), w.ravel())


@dataclass
class DataPlaneTotals:
    requests: float = 0.0
    met: float = 0.0
    spilled: float = 0.0
    lambda_served: float = 0.0
    cold_starts: float = 0.0
    throttled: float = 0.0
    lambda_invokes: float = 0.0  # batches the buffer sent (one invoke each)
    lambda_billed_ms: float = 0.0  # their billed duration, cold starts' init aside
    warm_pings: float = 0.0  # keep-warm pings sent (one invoke each)
    warm_ping_ms: float = 0.0  # their billed milliseconds
    ping_cold_starts: float = 0.0  # containers they started
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    interval_arrivals: list[np.ndarray] = field(default_factory=list)
    interval_capacity: list[np.ndarray] = field(default_factory=list)
    interval_spill: list[np.ndarray] = field(default_factory=list)
    interval_met: list[np.ndarray] = field(default_factory=list)
    # requests Lambda served and cold starts, per interval (what the bill charges, by interval)
    interval_served: list[np.ndarray] = field(default_factory=list)
    interval_cold: list[np.ndarray] = field(default_factory=list)
    interval_pings: list[np.ndarray] = field(default_factory=list)  # keep-warm pings
    interval_ping_ms: list[np.ndarray] = field(default_factory=list)  # their billed ms
    interval_ping_cold: list[np.ndarray] = field(default_factory=list)  # containers they started


def _per_interval(x: np.ndarray, interval: int) -> np.ndarray:
    n = len(x) // interval * interval
    out = x[:n].reshape(-1, interval).sum(axis=1)
    return np.concatenate([out, [x[n:].sum()]]) if n < len(x) else out


def replay(
    counts: np.ndarray,
    instances: list,
    pools: dict[str, Pool],
    sc: Scenario,
    *,
    spill: bool,
    chunk_s: int = 86_400,
    progress=None,
    batching: SpillBatching | None = None,
    warm_rounds: list[tuple[float, int]] | None = None,
) -> DataPlaneTotals:
    """Run the fleet and Lambda data plane over the whole trace in day-sized chunks.
    `batching` is `spill_batching(sc)`, computed here unless a caller replaying many fleets
    of one scenario passes it in. `warm_rounds`: the keep-warm rounds, (time s, pings)."""
    slo = sc.slo.latency_s
    s_l = lambda_service_s(sc)
    cold_s = lambda_cold_start_s(sc)
    interval = sc.control_interval_s
    chunk_s = max(interval, chunk_s // interval * interval)
    tot = DataPlaneTotals(hist=LatencyHistogram(histogram_edges(slo)))
    b = 0.0
    lam = LambdaState()
    batching = batching or spill_batching(sc)
    by_start = sorted(instances, key=lambda i: i.ready_at)
    pings = np.zeros(len(counts))
    ping_ms = np.zeros(len(counts))  # billed: a ping's hold, at least a millisecond
    hold = sc.lambda_.keep_warm.hold_ms
    for t, w in warm_rounds or ():
        if 0 <= t < len(counts) and w > pings[int(t)]:
            pings[int(t)] = float(w)
            ping_ms[int(t)] = w * float(
                lambda_billed_ms_array(np.array([ping_hold_ms(w, hold)]))[0]
            )
    ramp = (np.arange(4) + 0.5) / 4
    for start in range(0, len(counts), chunk_s):
        a = counts[start : start + chunk_s]
        n = len(a)
        live = [
            i for i in by_start
            if i.ready_at < start + n and (i.ended_at is None or i.ended_at > start)
        ]  # fmt: skip
        mu, mus, servers = fleet_capacity(live, pools, start, n)
        fs = fleet_seconds(a, mu, mus, servers, slo, spill, b, tot.hist)
        b = float(fs.b_end[-1])
        ls = lambda_seconds(fs.spill, sc, lam, batching, pings[start : start + n])
        lam = ls.state
        warm = ls.served - ls.cold
        waits = ls.wait_lo[:, None] + (ls.wait_hi - ls.wait_lo)[:, None] * ramp[None, :]
        lat_w = waits[:, :, None] + ls.buffer_lat[:, None, :]  # (n, 4 slot waits, 4 in buffer)
        w_w = (warm / 4)[:, None, None] * ls.buffer_w[:, None, :]
        tot.hist.add_points(lat_w.ravel(), np.broadcast_to(w_w, lat_w.shape).ravel())
        tot.hist.add_points(np.full(n, cold_s + s_l), ls.cold)
        tot.hist.add_points(np.full(n, np.inf), ls.throttled)
        met_l = ls.met
        tot.requests += float(a.sum())
        tot.met += float(fs.met.sum() + met_l.sum())
        tot.spilled += float(fs.spill.sum())
        tot.lambda_served += float(ls.served.sum())
        tot.cold_starts += float(ls.cold.sum())
        tot.throttled += float(ls.throttled.sum())
        tot.lambda_invokes += float(ls.invokes.sum())
        tot.lambda_billed_ms += float(ls.billed_ms.sum())
        tot.warm_pings += float(pings[start : start + n].sum())
        tot.warm_ping_ms += float(ping_ms[start : start + n].sum())
        tot.ping_cold_starts += float(ls.ping_cold.sum())
        tot.interval_arrivals.append(_per_interval(a.astype(float), interval))
        tot.interval_capacity.append(_per_interval(mu, interval) / interval)
        tot.interval_spill.append(_per_interval(fs.spill, interval))
        tot.interval_met.append(_per_interval(fs.met + met_l, interval))
        tot.interval_served.append(_per_interval(ls.served, interval))
        tot.interval_cold.append(_per_interval(ls.cold, interval))
        tot.interval_pings.append(_per_interval(pings[start : start + n], interval))
        tot.interval_ping_ms.append(_per_interval(ping_ms[start : start + n], interval))
        tot.interval_ping_cold.append(_per_interval(ls.ping_cold, interval))
        if progress is not None:
            progress(n)
    return tot


def ec2_bill(
    instances: list, pools: dict[str, Pool], end_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """USD per market and billed instance-hours per type: per second, at least 60 s each.

    A spot instance that EC2 itself interrupts within its first hour is not charged (AWS's rule
    for Spot; one the user stops is billed to the second)."""
    usd = {"on_demand": 0.0, "spot": 0.0}
    hours: dict[str, float] = {}
    for inst in instances:
        p = pools[inst.pool]
        stop = end_s if inst.ended_at is None else min(inst.ended_at, end_s)
        ran = stop - inst.launched_at
        free = inst.end_reason == "spot-interruption" and ran < 3600.0
        billed = 0.0 if free else ec2_billed_s(ran)
        usd[p.market] += billed * p.price_usd_s
        hours[p.instance_type] = hours.get(p.instance_type, 0.0) + billed / 3600.0
    return usd, hours


def lambda_bill(
    served: float,
    cold: float,
    sc: Scenario,
    *,
    invokes: float | None = None,
    billed_ms: float | None = None,
    pings: float = 0.0,
    ping_ms: float = 0.0,
    ping_cold: float = 0.0,
) -> tuple[float, float]:
    """(request charges, compute charges) in USD; init time billed on cold starts if configured.

    Without `invokes`: every request its own invoke at the warm price of one. With `invokes`
    and `billed_ms` (the replay's `lambda_invokes`, `lambda_billed_ms`): the batches the
    router's buffer sent, one request charge each, and their billed milliseconds. `pings`
    keep-warm pings (the replay's `warm_pings`), a request charge each, `ping_ms` their billed
    milliseconds (`warm_ping_ms`), and `ping_cold` the containers they started, each its init."""
    p, mem = sc.lambda_pricing, sc.lambda_.memory_mb
    service_ms = lambda_service_s(sc) * 1000.0
    ping_compute = float(lambda_gb_s(mem, ping_ms)) * p.usd_per_gb_s
    if invokes is not None:
        compute = float(lambda_gb_s(mem, billed_ms or 0.0)) * p.usd_per_gb_s
        requests_usd = invokes * p.usd_per_request
    else:
        compute = served * lambda_compute_usd(service_ms, mem, p.usd_per_gb_s)
        requests_usd = served * p.usd_per_request
    init = 0.0
    if sc.lambda_.bill_init:  # a cold invoke bills its init with its duration, in one rounding
        init_ms = lambda_cold_start_s(sc) * 1000.0
        init = cold * lambda_init_usd(service_ms, init_ms, mem, p.usd_per_gb_s)
        init += ping_cold * lambda_init_usd(0.0, init_ms, mem, p.usd_per_gb_s)
    return requests_usd + pings * p.usd_per_request, compute + init + ping_compute
