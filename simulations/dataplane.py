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
- Within a second, arrivals are spread evenly (fluid); waits then ramp linearly between the
  second's start and end backlog, which gives attainment per second in closed form.
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
    lambda_usd_per_request,
)

MIN_BILL_S = 60.0
HIST_EDGES = np.geomspace(1e-4, 1e6, 2001)  # seconds; ~1.2% wide bins
_RAMP_POINTS = (np.arange(8) + 0.5) / 8


@dataclass
class LatencyHistogram:
    """Counts of requests by latency bin; the last bin collects failures and unbounded waits."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES)))

    def add_points(self, lat_s: np.ndarray, n: np.ndarray) -> None:
        lat = np.asarray(lat_s, dtype=float)
        w = np.asarray(n, dtype=float)
        ok = w > 0
        if not ok.any():
            return
        idx = np.searchsorted(HIST_EDGES, lat[ok], side="right") - 1
        idx = np.where(
            np.isfinite(lat[ok]), np.clip(idx, 0, len(HIST_EDGES) - 2), len(HIST_EDGES) - 1
        )
        self.counts += np.bincount(idx, weights=w[ok], minlength=len(HIST_EDGES))

    def add_ramps(self, lo: np.ndarray, hi: np.ndarray, n: np.ndarray) -> None:
        """Requests spread uniformly over [lo, hi] per entry (8 quantile points each)."""
        ok = n > 0
        if not ok.any():
            return
        lo, hi, n = lo[ok], hi[ok], n[ok]
        pts = lo[:, None] + (hi - lo)[:, None] * _RAMP_POINTS[None, :]
        self.add_points(pts.ravel(), np.repeat(n / len(_RAMP_POINTS), len(_RAMP_POINTS)))

    def percentile(self, q: float) -> float:
        total = self.counts.sum()
        if total <= 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        k = int(np.searchsorted(cum, q / 100.0 * total))
        if k >= len(HIST_EDGES) - 1:
            return float("inf")
        prev = cum[k - 1] if k else 0.0
        frac = (q / 100.0 * total - prev) / max(self.counts[k], 1e-12)
        lo, hi = HIST_EDGES[k], HIST_EDGES[k + 1]
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


def fleet_capacity(
    instances: list, pools: dict[str, Pool], start: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per second in [start, start+length): fleet rate mu and sum of mu_k * s_k over ready instances.

    An instance serves whole seconds from ceil(ready) to floor(end)."""
    mu = np.zeros(length + 1)
    mus = np.zeros(length + 1)
    for inst in instances:
        p = pools[inst.pool]
        a = int(np.ceil(inst.ready_at - 1e-9)) - start
        e = inst.ended_at
        b = length if e is None else int(np.floor(e + 1e-9)) - start
        a, b = max(a, 0), min(b, length)
        if b <= a:
            continue
        mu[a] += p.capacity_rps
        mu[b] -= p.capacity_rps
        mus[a] += p.capacity_rps * p.latency_s
        mus[b] -= p.capacity_rps * p.latency_s
    return np.cumsum(mu)[:length], np.cumsum(mus)[:length]


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
    width = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        fracA = np.where(
            width > 0,
            np.clip((thr - lo) / np.where(width > 0, width, 1.0), 0.0, 1.0),
            (lo <= thr + 1e-12) * 1.0,
        )
    metA = nA * fracA
    metB = nB * (wB <= thr + 1e-12)
    met = np.where(serving, metA + metB, 0.0)
    admitted = nA + nB
    if hist is not None:
        latA0 = np.where(serving, lo + svc, np.inf)
        latA1 = np.where(serving, hi + svc, np.inf)
        hist.add_ramps(latA0, latA1, nA)
        hist.add_points(np.where(serving, wB + svc, np.inf), nB)
    return FleetSeconds(b_end=b_end, spill=spilled, met=met, admitted=admitted)


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
    tot = DataPlaneTotals()
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
        mu, mus = fleet_capacity(live, pools, start, n)
        fs = fleet_seconds(a, mu, mus, slo, spill, b, tot.hist)
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
        if progress is not None:
            progress(n)
    return tot


def ec2_bill(
    instances: list, pools: dict[str, Pool], end_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """USD per market and billed instance-hours per type: per second, at least 60 s each."""
    usd = {"on_demand": 0.0, "spot": 0.0}
    hours: dict[str, float] = {}
    for inst in instances:
        p = pools[inst.pool]
        stop = end_s if inst.ended_at is None else min(inst.ended_at, end_s)
        billed = max(MIN_BILL_S, stop - inst.launched_at)
        usd[p.market] += billed * p.price_usd_s
        hours[p.instance_type] = hours.get(p.instance_type, 0.0) + billed / 3600.0
    return usd, hours


def lambda_bill(served: float, cold: float, sc: Scenario) -> tuple[float, float]:
    """(request charges, compute charges) in USD; init time billed on cold starts if configured."""
    per_req = sc.lambda_pricing.usd_per_request
    compute_per_req = lambda_usd_per_request(sc) - per_req
    init = 0.0
    if sc.lambda_.bill_init:
        gb = sc.lambda_.memory_mb / 1024.0
        init = (
            cold
            * gb
            * np.ceil(lambda_cold_start_s(sc) * 1000.0)
            / 1000.0
            * sc.lambda_pricing.usd_per_gb_s
        )
    return served * per_req, served * compute_per_req + init
