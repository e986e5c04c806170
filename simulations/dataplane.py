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
- Lambda: spilled requests are served warm in s_L, or cold (cold start + s_L) when the warm pool
  is short. Needed concurrency per second is the Poisson-peaked busy count c + 3 sqrt(c),
  c = spill * s_L; the pool keeps each container for keep-alive after last use (a trailing max),
  and growth of the pool is counted as cold starts. Beyond the concurrency limit, requests are
  throttled (failed: counted against attainment, not billed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import maximum_filter1d

from hybridserve.config import (
    Pool,
    Scenario,
    lambda_cold_start_s,
    lambda_service_s,
)
from hybridserve.pricing import ec2_billed_s, lambda_compute_usd, lambda_init_usd


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


def clamp_scan(d: np.ndarray, hi: np.ndarray, x0: float) -> np.ndarray:
    """x[t] = min(hi[t], max(0, x[t-1] + d[t])) for all t, as a Hillis-Steele prefix scan."""
    D = d.astype(float)
    L = np.zeros_like(D)
    H = hi.astype(float)
    n = len(D)
    s = 1
    while s < n:
        Df, Lf, Hf = D[:-s], L[:-s], H[:-s]
        Dg, Lg, Hg = D[s:], L[s:], H[s:]
        nD = Df + Dg
        nL = np.maximum(Lg, Lf + Dg)
        nH = np.minimum(Hg, np.maximum(Lg, Hf + Dg))
        D = np.concatenate([D[:s], nD])
        L = np.concatenate([L[:s], nL])
        H = np.concatenate([H[:s], nH])
        s *= 2
    return np.minimum(H, np.maximum(L, x0 + D))


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


def poisson_wait(
    a: np.ndarray, mu: np.ndarray, servers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of waiting (Erlang C) and mean conditional wait (s) per second, M/D/c-style."""
    c = np.maximum(servers, 1.0)
    safe_mu = np.where(mu > 0, mu, 1.0)
    rho = np.clip(a / safe_mu, 0.0, 1.0)
    load = rho * c  # offered load in servers
    b = np.ones_like(load)  # Erlang B by recursion, each row stopping at its own c
    for k in range(1, int(c.max()) + 1):
        nb = load * b / (k + load * b)
        b = np.where(k <= c, nb, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = np.where(rho < 1.0, b / (1.0 - rho * (1.0 - b)), 1.0)
        mean = np.minimum(
            0.5 / np.maximum(safe_mu - a, 1e-9), 0.5 * np.sqrt(np.maximum(a, 1.0)) / safe_mu
        )
    ok = (mu > 0) & (a > 0) & (a < mu)  # at or over capacity the fluid queue already holds it
    return np.where(ok, np.clip(pw, 0.0, 1.0), 0.0), np.where(ok, mean, 0.0)


def _exp_tail(
    pw: np.ndarray, rate: np.ndarray, thr: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Fraction of requests with fluid wait w ~ U[lo, hi] (a point if lo == hi) and extra wait X
    (0 w.p. 1-pw, else Exp(rate)) whose total stays within thr."""
    u = np.minimum(hi, thr)
    width = hi - lo
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e_u = np.exp(-rate * np.maximum(thr - u, 0.0))
        e_lo = np.exp(-rate * np.maximum(thr - lo, 0.0))
        ramp = ((u - lo) - pw * (e_u - e_lo) / rate) / np.where(width > 0, width, 1.0)
        point = 1.0 - pw * e_lo
    frac = np.where(
        width > 1e-12, np.where(u > lo, ramp, 0.0), np.where(lo <= thr + 1e-12, point, 0.0)
    )
    return np.clip(frac, 0.0, 1.0)


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
    fracA = _exp_tail(np.zeros_like(pw), rate, thr, lo, hi)
    fracB = _exp_tail(pw, rate, thr, wB, wB)
    metA = nA * fracA
    metB = nB * fracB
    if spill:
        # the router sends the requests whose wait would break the SLO to Lambda instead
        spilled = spilled + (nA - metA) + (nB - metB)
        nA, nB = metA, metB
    met = np.where(serving, metA + metB, 0.0)
    admitted = nA + nB
    if hist is not None:
        _add_fleet_latencies(
            hist, serving, svc, lo, hi, nA, wB, nB, pw, mean_w, thr if spill else None
        )
    return FleetSeconds(b_end=b_end, spill=spilled, met=met, admitted=admitted)


_EXP_POINTS = -np.log1p(-(np.arange(6) + 0.5) / 6)  # quantile points of a unit exponential


def _add_fleet_latencies(hist, serving, svc, lo, hi, nA, wB, nB, pw, mean_w, cap) -> None:
    """Histogram of fleet latencies: fluid ramp/point times (1 - pw) plus pw spread over an
    exponential; with spill, mass past the SLO was sent away and is dropped (cap per second).

    Per second: the ramp's 4 points (weight nA / 4 each) and the point's 7 (the fluid time with
    weight nB (1 - pw), and 6 exponential quantiles sharing nB pw). Built as these 11 columns
    only: a full (points x spread) grid was two-thirds zero weights (measured: 0.45 -> 0.15 s
    per simulated day at 1 req/s granularity, a fifth of a replay)."""
    ramp = (np.arange(4) + 0.5) / 4
    extra = np.concatenate([[0.0], _EXP_POINTS])  # (7,) in units of the mean wait
    lat = np.concatenate(
        [lo[:, None] + (hi - lo)[:, None] * ramp[None, :], wB[:, None] + extra * mean_w[:, None]],
        axis=1,
    )
    lat += svc[:, None]
    probs = np.concatenate([(1 - pw)[:, None], np.repeat((pw / 6)[:, None], 6, axis=1)], axis=1)
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
class LambdaSeconds:
    served: np.ndarray
    cold: np.ndarray
    throttled: np.ndarray
    needed: np.ndarray


def lambda_seconds(spill: np.ndarray, sc: Scenario, prior_needed: np.ndarray) -> LambdaSeconds:
    """Warm pool, cold starts and throttling for per-second spill (see the module docstring)."""
    s_l = lambda_service_s(sc)
    limit = sc.lambda_.concurrency_limit
    throttled = np.maximum(spill - limit / s_l, 0.0)
    served = spill - throttled
    c = served * s_l
    needed = np.where(served > 0, np.minimum(np.ceil(c + 3.0 * np.sqrt(c)), limit), 0.0)
    k = max(1, int(round(sc.lambda_.keep_alive_s)))
    full = np.concatenate([prior_needed[-k:], needed])
    # pool after second t: max of needed over (t-k, t]; cold starts = growth beyond the pool at t-1
    pool = maximum_filter1d(full, size=k, origin=(k - 1) // 2, mode="constant", cval=0.0)
    pool_prev = np.concatenate([[0.0], pool[:-1]])[len(full) - len(needed) :]
    cold = np.maximum(needed - pool_prev, 0.0)
    cold = np.minimum(cold, served)
    return LambdaSeconds(served=served, cold=cold, throttled=throttled, needed=needed)


@dataclass
class DataPlaneTotals:
    requests: float = 0.0
    met: float = 0.0
    spilled: float = 0.0
    lambda_served: float = 0.0
    cold_starts: float = 0.0
    throttled: float = 0.0
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    interval_arrivals: list[np.ndarray] = field(default_factory=list)
    interval_capacity: list[np.ndarray] = field(default_factory=list)
    interval_spill: list[np.ndarray] = field(default_factory=list)
    interval_met: list[np.ndarray] = field(default_factory=list)
    # requests Lambda served and cold starts, per interval (what the bill charges, by interval)
    interval_served: list[np.ndarray] = field(default_factory=list)
    interval_cold: list[np.ndarray] = field(default_factory=list)


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
) -> DataPlaneTotals:
    """Run the fleet and Lambda data plane over the whole trace in day-sized chunks."""
    slo = sc.slo.latency_s
    s_l = lambda_service_s(sc)
    cold_s = lambda_cold_start_s(sc)
    interval = sc.control_interval_s
    chunk_s = max(interval, chunk_s // interval * interval)
    tot = DataPlaneTotals(hist=LatencyHistogram(histogram_edges(slo)))
    b = 0.0
    prior = np.zeros(0)
    by_start = sorted(instances, key=lambda i: i.ready_at)
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
        ls = lambda_seconds(fs.spill, sc, prior)
        prior = np.concatenate([prior, ls.needed])[-int(sc.lambda_.keep_alive_s) - 1 :]
        warm = ls.served - ls.cold
        tot.hist.add_points(np.full(n, s_l), warm)
        tot.hist.add_points(np.full(n, cold_s + s_l), ls.cold)
        tot.hist.add_points(np.full(n, np.inf), ls.throttled)
        met_l = warm * (s_l <= slo) + ls.cold * (cold_s + s_l <= slo)
        tot.requests += float(a.sum())
        tot.met += float(fs.met.sum() + met_l.sum())
        tot.spilled += float(fs.spill.sum())
        tot.lambda_served += float(ls.served.sum())
        tot.cold_starts += float(ls.cold.sum())
        tot.throttled += float(ls.throttled.sum())
        tot.interval_arrivals.append(_per_interval(a.astype(float), interval))
        tot.interval_capacity.append(_per_interval(mu, interval) / interval)
        tot.interval_spill.append(_per_interval(fs.spill, interval))
        tot.interval_met.append(_per_interval(fs.met + met_l, interval))
        tot.interval_served.append(_per_interval(ls.served, interval))
        tot.interval_cold.append(_per_interval(ls.cold, interval))
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


def lambda_bill(served: float, cold: float, sc: Scenario) -> tuple[float, float]:
    """(request charges, compute charges) in USD; init time billed on cold starts if configured."""
    p, mem = sc.lambda_pricing, sc.lambda_.memory_mb
    service_ms = lambda_service_s(sc) * 1000.0
    compute_per_req = lambda_compute_usd(service_ms, mem, p.usd_per_gb_s)
    init = 0.0
    if sc.lambda_.bill_init:  # a cold invoke bills its init with its duration, in one rounding
        init = cold * lambda_init_usd(
            service_ms, lambda_cold_start_s(sc) * 1000.0, mem, p.usd_per_gb_s
        )
    return served * p.usd_per_request, served * compute_per_req + init
