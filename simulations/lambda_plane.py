"""The Lambda side of the fast data plane: what the fleet spills, per second.

Lambda, as the router's BATCH buffer drives it (`spill_batching`): each second the buffer's
batch size and timeout are `batch_params` at the router's spill-rate estimate (updated once a
second with gain 0.3, as its tick does); one invoke per batch, billed its expected duration
(the function's own, without the invocation overhead) and one request charge (`lambda_bill`
with the replay's `lambda_invokes` and `lambda_billed_ms`). The router holds at most the
concurrency limit in flight: full batches drain at limit x size / s_L(size) per second and the
rest waits (a backlog carried from second to second, Lindley's recursion again), up to the
buffer's 256 pending requests, beyond which requests are refused (failed: counted against
attainment, not billed). A request is within the SLO if its wait for a slot plus its batch's
formation and service fit. Needed containers per second are the Poisson-peaked busy count
c + 3 sqrt(c), c = invokes x their time, plus the containers still starting (a cold
container takes no invoke until its start is over, so arrivals meanwhile need others); the
pool keeps each container for keep-alive after last use (a trailing max), and growth of the
pool is counted as cold starts; starting containers also hold concurrency slots. A round of
W warm-up pings (`pings`, the controller's keep-warm rounds, `hybridserve.keep_warm`) holds W
containers for keep-alive after it; those of them not already warm are the pings' own cold
starts (billed, but no request waits on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter

from hybridserve.config import Scenario, lambda_cold_start_s, lambda_service_s
from simulations.queueing import clamp_scan, exp_tail, poisson_wait, queue_tail

#: The router's defaults that shape its BATCH buffer (hybridserve.router.config.RouterConfig).
_ROUTER_MARGIN_MS = 10.0  # RouterConfig.margin_ms: the SLO budget is the SLO minus this
_ROUTER_MAX_PENDING = 256  # RouterConfig.max_spill_pending: more buffered are refused (503)
_NOISY_SLOTS = 64  # with at most this many concurrency slots, Poisson noise queues invokes
_LAMBDA_LOOKBACK_S = (1, 3)
SPILL_RATE_GAIN = 0.3  # the router's tick: rate += 0.3 (spilled in the last second - rate)
_RATE_GRID = np.concatenate([[0.0], np.geomspace(0.01, 1e6, 400)])


@dataclass(frozen=True)
class SpillBatching:
    """The router's BATCH buffer (`hybridserve.router.buffer.batch_params`) by spill rate, on a
    grid of rates: the batch size it closes at, its timeout, the expected size of a batch, the
    Lambda time of a full batch (the invoke's round trip: what holds a concurrency slot), and the
    expected time and billed milliseconds of one invoke over the sizes a batch may close at."""

    rates: np.ndarray
    size: np.ndarray
    timeout_s: np.ndarray
    e_size: np.ndarray
    full_s: np.ndarray
    e_busy_s: np.ndarray
    e_billed_ms: np.ndarray
    p_timeout: np.ndarray  # a batch closes at its timeout (not full)
    e_close_s: np.ndarray  # expected time from a batch's opening to its closing
    e_fill_s: np.ndarray  # expected time to fill, given that it fills before the timeout
    round_trip_s: np.ndarray  # Lambda's time by batch size (index 0 unused)
    billed_ms: np.ndarray  # billed milliseconds by batch size (index 0 unused)

    def closing(
        self, size: np.ndarray, timeout_s: np.ndarray, rate: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Expected size, time and billed ms of a batch opened with `size` and `timeout_s` when
        requests arrive at `rate` (Poisson): it closes with 1 + N of them, N ~ Poisson(rate x
        timeout) cut at size - 1."""
        size = np.asarray(size, dtype=int)
        m = np.maximum(np.asarray(rate, dtype=float), 0.0) * np.asarray(timeout_s, dtype=float)
        top = int(size.max(initial=1))
        k = np.arange(top)
        log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, max(top, 2))))))[:top]
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = k[None, :] * np.log(m)[:, None] - m[:, None] - log_fact[None, :]
        p = np.where(m[:, None] > 0, np.exp(logp), (k[None, :] == 0).astype(float))
        p = np.where(k[None, :] < size[:, None] - 1, p, 0.0)
        last = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)  # P(S = size)
        p[np.arange(len(size)), size - 1] += last
        return {
            "e_size": p @ (k + 1.0),
            "e_busy_s": p @ self.round_trip_s[1 : top + 1],
            "e_billed_ms": p @ self.billed_ms[1 : top + 1],
        }

    def at(self, rate: np.ndarray) -> dict[str, np.ndarray]:
        """Per-second values at `rate` (req/s): the buffer's choice at the grid rate at or
        below it, expectations interpolated between grid rates."""
        r = np.maximum(np.asarray(rate, dtype=float), 0.0)
        i = np.clip(np.searchsorted(self.rates, r, side="right") - 1, 0, len(self.rates) - 1)
        return {
            "size": self.size[i],
            "timeout_s": self.timeout_s[i],
            "full_s": self.full_s[i],
            "e_size": np.interp(r, self.rates, self.e_size),
            "e_busy_s": np.interp(r, self.rates, self.e_busy_s),
            "e_billed_ms": np.interp(r, self.rates, self.e_billed_ms),
            "p_timeout": np.interp(r, self.rates, self.p_timeout),
            "e_close_s": np.interp(r, self.rates, self.e_close_s),
            "e_fill_s": np.interp(r, self.rates, self.e_fill_s),
        }


def spill_batching(sc: Scenario, max_batch: int = 8) -> SpillBatching:
    """The buffer's choices as the router makes them from this scenario (`router_config`):
    Lambda's time by batch size from the profile, the slack a fraction of the SLO less the
    router's margin, Lambda's prices. An invoke is billed the function's own duration, its
    batch's service time without the invocation overhead (the service's per-call latency, which
    Lambda does not bill: the REPORT line's Duration is the handler's)."""
    from hybridserve.pricing import lambda_billed_ms_array
    from hybridserve.router.buffer import batch_params, batch_size_pmf, poisson_pmf

    ms = np.array([0.0] + [lambda_service_s(sc, b) * 1000.0 for b in range(1, max_batch + 1)])
    handler_ms = np.maximum(ms[1:] - sc.model.lambda_.invoke_overhead_ms, 0.0)
    billed = lambda_billed_ms_array(handler_ms)
    slack = (sc.slo.latency_ms - _ROUTER_MARGIN_MS) * sc.batch_latency_fraction
    p = sc.lambda_pricing
    mem_gb = sc.lambda_.memory_mb / 1024.0
    cols: dict[str, list[float]] = {k: [] for k in ("size", "timeout", "e_size", "full", "busy",
                                                    "billed", "p_to", "close", "fill")}  # fmt: skip
    x = (np.arange(32) + 0.5) / 32  # quadrature over the timeout
    for rate in _RATE_GRID:
        bp = batch_params(rate, slack, ms, memory_gb=mem_gb, usd_per_gb_s=p.usd_per_gb_s,
                          usd_per_request=p.usd_per_request)  # fmt: skip
        b = bp.size
        prob = batch_size_pmf(b, rate / 1000.0 * bp.timeout_ms)  # as batch_params weighs them
        cols["size"].append(b)
        cols["timeout"].append(bp.timeout_ms / 1000.0)
        cols["e_size"].append(bp.expected_size)
        cols["full"].append(ms[b] / 1000.0)
        cols["busy"].append(float(np.dot(prob, ms[1 : b + 1])) / 1000.0)
        cols["billed"].append(float(np.dot(prob, billed[:b])))
        # the batch closes at the (b-1)-th arrival after its first, or at the timeout
        t_out = bp.timeout_ms / 1000.0
        if b > 1 and t_out > 0:
            p_open = poisson_pmf(b - 1, rate * t_out * x).sum(axis=1)
            p_to = float(poisson_pmf(b - 1, rate * t_out).sum())
            close = float(p_open.mean() * t_out)
        else:
            p_to, close = 1.0, 0.0
        cols["p_to"].append(p_to)
        cols["close"].append(close)
        cols["fill"].append((close - t_out * p_to) / (1.0 - p_to) if p_to < 1.0 - 1e-9 else 0.0)
    return SpillBatching(
        rates=_RATE_GRID,
        size=np.array(cols["size"], dtype=float),
        timeout_s=np.array(cols["timeout"]),
        e_size=np.array(cols["e_size"]),
        full_s=np.array(cols["full"]),
        e_busy_s=np.array(cols["busy"]),
        e_billed_ms=np.array(cols["billed"]),
        p_timeout=np.array(cols["p_to"]),
        e_close_s=np.array(cols["close"]),
        e_fill_s=np.array(cols["fill"]),
        round_trip_s=ms / 1000.0,
        billed_ms=np.concatenate([[0.0], billed]),
    )


@dataclass
class LambdaState:
    """What the Lambda side carries from one chunk of the replay to the next."""

    needed: np.ndarray = field(default_factory=lambda: np.zeros(0))  # beyond one container
    invokes: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last keep-alive s
    rate: float = 0.0  # the router's spill-rate estimate
    backlog: float = 0.0  # spilled requests waiting for a concurrency slot
    lost: np.ndarray = field(default_factory=lambda: np.zeros(0))  # cold containers' seconds ahead
    last_rate: float = 0.0  # the spill of the last second that had any
    pings: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last keep-alive s


@dataclass
class LambdaSeconds:
    served: np.ndarray
    cold: np.ndarray
    throttled: np.ndarray  # refused: the buffer full (fleet and Lambda's concurrency exhausted)
    needed: np.ndarray
    met: np.ndarray  # served within the SLO
    invokes: np.ndarray
    billed_ms: np.ndarray  # compute billed, init aside
    wait_lo: np.ndarray  # a warm request's wait for a slot, from ... (s)
    wait_hi: np.ndarray  # ... to
    buffer_lat: np.ndarray  # (n, 4) a warm request's time in the buffer plus its batch's service
    buffer_w: np.ndarray  # (n, 4) their shares
    ping_cold: np.ndarray  # containers the warm-up pings started
    state: LambdaState


def _pool_prev(needed: np.ndarray, prior: np.ndarray, k: int) -> np.ndarray:
    """The pool of containers after each second's previous one: each kept for `k` seconds
    after the last second that needed it (the max of `needed` over the k seconds before)."""
    full = np.concatenate([prior[-k:], needed])
    pool = maximum_filter1d(full, size=k, origin=(k - 1) // 2, mode="constant", cval=0.0)
    return np.concatenate([[0.0], pool[:-1]])[len(full) - len(needed) :]


def _needed(busy: np.ndarray, limit: int) -> np.ndarray:
    """Containers for `busy` container-seconds per second: the Poisson-peaked c + 3 sqrt(c)."""
    return np.where(busy > 0, np.minimum(np.ceil(busy + 3.0 * np.sqrt(busy)), limit), 0.0)


def lambda_seconds(
    spill: np.ndarray,
    sc: Scenario,
    state: LambdaState | None = None,
    batching: SpillBatching | None = None,
    pings: np.ndarray | None = None,
) -> LambdaSeconds:
    """Lambda's part of each second, as the router's BATCH buffer drives it (the module
    docstring): batches, concurrency slots, cold starts, the bill. `pings`: per second, the
    warm-up pings sent at its start (a keep-warm round), else 0."""
    state = state or LambdaState()
    batching = batching or spill_batching(sc)
    spill = np.asarray(spill, dtype=float)
    n = len(spill)
    slo = sc.slo.latency_s
    limit = sc.lambda_.concurrency_limit
    cold_s = lambda_cold_start_s(sc)
    k = max(1, int(round(sc.lambda_.keep_alive_s)))
    # the buffer's parameters in second t come from the rate estimate after second t-1
    g = SPILL_RATE_GAIN
    est = lfilter([g], [1.0, g - 1.0], spill, zi=[(1.0 - g) * state.rate])[0]
    rate = np.concatenate([[state.rate], est[:-1]])
    b = batching.at(rate)
    # batches close with what arrives at the second's own rate (the last one with spill, for
    # a second without: its backlog was batched then)
    idx = np.where(spill > 0, np.arange(n), -1)
    idx = np.maximum.accumulate(idx) if n else idx
    actual = np.where(idx >= 0, spill[np.maximum(idx, 0)], state.last_rate)
    closing = batching.closing(b["size"], b["timeout_s"], actual)
    e_size = np.maximum(closing["e_size"], 1.0)
    b["e_busy_s"], b["e_billed_ms"] = closing["e_busy_s"], closing["e_billed_ms"]
    # container-seconds busy per second: invokes x their time, plus cold containers starting
    inv = spill / e_size
    busy = inv * b["e_busy_s"]
    # the first container: the chance of an invoke in the second times the chance of none in
    # the keep-alive before it (Poisson invokes); a fluid trickle of spill keeps no container
    # warm. Further containers: growth of the Poisson-peaked need beyond one (`_needed`).
    hist = np.concatenate([state.invokes[-k:], inv])
    c = np.concatenate([[0.0], np.cumsum(hist)])
    j = np.arange(len(hist) - n, len(hist))
    before = c[j] - c[np.maximum(j - k, 0)]
    first = -np.expm1(-inv) * np.exp(-before)
    # containers the pings hold: the last round's count for keep-alive after it
    pings = np.zeros(n) if pings is None else np.asarray(pings, dtype=float)
    pinged_before = _pool_prev(pings, state.pings, k)
    pinged = np.maximum(pings, pinged_before)
    first = np.where(pinged >= 1.0, 0.0, first)

    def colds(lost_now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extra = np.maximum(_needed(busy + lost_now, limit) - 1.0, 0.0)
        kept = np.maximum(_pool_prev(extra, state.needed, k), pinged - 1.0)
        more = np.maximum(extra - kept, 0.0)
        return np.minimum(first + more, spill), extra

    kern = np.clip(cold_s - np.arange(max(1, math.ceil(cold_s))), 0.0, 1.0)
    cold, extra = colds(np.zeros(n))
    for _ in range(2):  # a cold container is busy for its start: later arrivals need others
        lost = np.convolve(cold, kern)
        lost[: len(state.lost)] += state.lost[: len(lost)]
        cold, extra = colds(lost[:n])
    needed = extra
    # a round's pings start the containers neither traffic nor the last round kept warm
    warm_before = np.maximum(
        _pool_prev(extra, state.needed, k) + np.where(before > 0, -np.expm1(-before), 0.0),
        pinged_before,
    )
    ping_cold = np.where(pings > 0, np.maximum(pings - warm_before, 0.0), 0.0)
    lost = np.convolve(cold, kern)
    lost[: len(state.lost)] += state.lost[: len(lost)]
    # the concurrency slots: full batches while they are all busy; refused past the buffer
    slots = np.maximum(limit - lost[:n], 0.0)
    cap = slots * e_size / np.maximum(b["e_busy_s"], 1e-9)  # batches as the buffer closes them
    x0 = state.backlog
    b_end = clamp_scan(spill - cap, np.full(n, float(_ROUTER_MAX_PENDING)), x0)
    b_prev = np.concatenate([[x0], b_end[:-1]])
    refused = np.maximum(b_prev + spill - cap - _ROUTER_MAX_PENDING, 0.0)
    served = spill - refused
    cold = np.minimum(cold, served)
    safe_cap = np.where(cap > 0, cap, 1.0)
    lo = np.where(cap > 0, np.minimum(b_prev, b_end) / safe_cap, np.inf)
    hi = np.where(cap > 0, np.maximum(b_prev, b_end) / safe_cap, np.inf)
    thr = slo - (0.5 * b["e_close_s"] + b["e_busy_s"])  # in the buffer: formation, service
    warm = served - cold
    frac = np.where(np.isfinite(lo), exp_tail(np.zeros(n), np.ones(n), thr, lo, hi), 0.0)
    noise = np.zeros(n)
    if limit <= _NOISY_SLOTS:  # few slots: requests queue for one from Poisson noise alone
        # while they wait, batches fill: the queue drains full batches
        cap_full = slots * b["size"] / np.maximum(b["full_s"], 1e-9)
        quiet = (hi <= 0) & (spill > 0) & (spill < cap_full)
        pw, _ = poisson_wait(spill, cap_full, np.maximum(np.round(slots), 1.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(quiet, spill / np.where(quiet, cap_full, 1.0), 0.0)
            share = np.where(rho > 0, np.minimum(pw / rho, 1.0), 0.0)
        x = np.maximum(thr, 0.0) * cap_full
        tail = queue_tail(spill, cap_full, x, _LAMBDA_LOOKBACK_S) * share
        noise = np.where(quiet, tail, 0.0)
        frac = frac * (1.0 - noise)
    s_l = lambda_service_s(sc)
    met = warm * frac + cold * (cold_s + s_l <= slo)
    invokes = served / e_size
    # in the buffer: a batch's first request waits until it closes (at the timeout, or when
    # full), the others arrive while it is open; then the batch's service
    first = 1.0 / e_size
    blat = np.stack([b["timeout_s"], b["e_fill_s"], 0.25 * b["e_close_s"], 0.75 * b["e_close_s"]],
                    axis=1) + b["e_busy_s"][:, None]  # fmt: skip
    bw = np.stack([first * b["p_timeout"], first * (1.0 - b["p_timeout"]),
                   (1.0 - first) / 2, (1.0 - first) / 2], axis=1)  # fmt: skip
    new_state = LambdaState(
        needed=np.concatenate([state.needed, needed])[-k - 1 :],
        invokes=hist[-k:],
        rate=float(est[-1]) if n else state.rate,
        backlog=float(b_end[-1]) if n else x0,
        lost=lost[n:],
        last_rate=float(actual[-1]) if n else state.last_rate,
        pings=np.concatenate([state.pings, pings])[-k:],
    )
    return LambdaSeconds(
        served=served,
        cold=cold,
        throttled=refused,
        needed=new_state.needed,
        met=met,
        invokes=invokes,
        billed_ms=invokes * b["e_billed_ms"],
        wait_lo=lo,
        wait_hi=hi,
        buffer_lat=blat,
        buffer_w=bw,
        ping_cold=ping_cold,
        state=new_state,
    )
