"""Explained cost: a replayed policy's bill per control interval and per cause.

Causes and their definitions are those of `hybridserve.attribution` (shared with `serve`'s
cost metric); here they are applied to the simulator's instance timeline and data plane:

EC2 (sums to `dataplane.ec2_bill`, instance by instance):
- launch overhead: billed seconds from launch until the instance first serves (the first whole
  second at or after ready), spread over the intervals they fall in;
- minimum bill: `ec2_billed_s(ran) - ran`, the 60 s minimum's top-up, in the interval where the
  instance stopped;
- base fleet: per serving second, the serving fleet's price times min(1, arrivals / capacity):
  the capacity-seconds the second's arrivals used, at the fleet's price per capacity;
- over-provisioning: the rest of the serving seconds' price (idle capacity, the headroom
  target tracking and the SLO's queueing margin keep), and the fraction of a second an
  instance runs after its last whole serving second.
Spot instances EC2 interrupted within their first hour are free and add nothing.

Lambda (sums to `dataplane.lambda_bill`): requests Lambda served, priced at the warm price of
one request (request charge + compute), by cause, plus the cold starts' init as its own cause.
Keep-warm rounds (the controller's pings, and the containers they started) are their own
cause. Spill causes come from counterfactual replays of the same data plane (with the same
keep-warm rounds), in this order, each interval on its own:
1. spot loss: the served requests that disappear when every spot-interrupted instance keeps
   serving until its replacement is ready (a launch in its pool within one interval of the
   notice; without one, the notice plus the pool's launch delay);
2. launch lag: of what remains, what disappears when, in addition, every instance serves from
   its launch instead of its ready time;
3. the remainder r, with that replay's mean capacity C, the interval's mean arrival rate A and
   the forecast mean F the interval was planned with (`hybridserve.attribution.split_shortfall`):
   planned = (min(F, A) - C)+ and forecast miss = (A - max(F, C))+ (in requests over the
   interval, at most r between them, shared in that proportion), within-interval burst = the
   rest: spill in seconds above a capacity that covers the interval's mean (bursts, and the
   Poisson noise of a second). lambda-only plans no fleet at all: all its remainder is planned.
A step that would remove more than remains (replays are not exactly monotone) is capped, so
the per-interval causes are non-negative and sum to the interval's Lambda bill.
"""

from __future__ import annotations

import copy
import csv
import math
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

from hybridserve.attribution import (
    CAUSES,
    EC2_CAUSES,
    LABELS,
    SPILL_CAUSES,
    instance_seconds,
    serving_split,
    split_shortfall,
)
from hybridserve.config import Pool, Scenario
from simulations import dataplane
from simulations.replay import PolicyResult

NO_FLEET = frozenset({"lambda-only"})  # policies that plan every request for Lambda


@dataclass
class Explanation:
    """USD per control interval and cause of one policy's replay, and spill requests by cause."""

    policy: str
    interval_s: int
    usd: dict[str, np.ndarray]
    spilled: dict[str, np.ndarray] = field(default_factory=dict)
    bill_usd: float = 0.0  # the replay's bill (ec2_bill + lambda_bill), which usd sums to

    @property
    def intervals(self) -> int:
        return len(next(iter(self.usd.values())))

    def totals(self) -> dict[str, float]:
        return {c: float(np.sum(self.usd[c])) for c in CAUSES}

    @property
    def total_usd(self) -> float:
        return float(sum(self.totals().values()))

    def as_json(self) -> dict:
        tot = self.totals()
        whole = sum(tot.values())
        return {
            "total_usd": round(whole, 6),
            "by_cause_usd": {c: round(v, 6) for c, v in tot.items()},
            "share": {c: round(v / whole, 6) if whole > 0 else 0.0 for c, v in tot.items()},
            "spilled_requests": {c: round(float(np.sum(v)), 3) for c, v in self.spilled.items()},
        }


def explain(counts: np.ndarray, sc: Scenario, result: PolicyResult) -> Explanation:
    """Attribute `result` (a `run_policy` on `counts` under `sc`) per interval and cause."""
    pools = {p.key: p for p in sc.pools}
    dt = sc.control_interval_s
    usd = ec2_by_interval(counts, result.instances, pools, dt)
    n = len(usd["base_fleet"])
    if result.spill:
        fc = result.forecast_rps
        if result.policy in NO_FLEET:
            fc = np.full(n, np.inf)
        elif fc is None or len(fc) < n:
            fc = np.full(n, np.nan)
        spill_usd, spilled = spill_by_interval(
            counts, result.instances, pools, sc, fc[:n], result.warm_rounds
        )
    else:
        spill_usd = {c: np.zeros(n) for c in (*SPILL_CAUSES, "cold_starts", "keep_warm")}
        spilled = {c: np.zeros(n) for c in SPILL_CAUSES}
    usd.update(spill_usd)
    return Explanation(result.policy, dt, usd, spilled, result.cost_usd)


def _spread(out: np.ndarray, t0: float, t1: float, rate: float, dt: int) -> None:
    """Add rate x seconds of [t0, t1) to the intervals they fall in."""
    last = len(out) - 1
    if t1 <= t0:
        if t1 < t0:  # a tail of -1e-9 s: float noise of the serving span, kept so sums close
            out[min(int(t0 // dt), last)] += (t1 - t0) * rate
        return
    k0, k1 = int(t0 // dt), min(int(math.ceil(t1 / dt)), last + 1)
    for k in range(k0, max(k1, k0 + 1)):
        lo, hi = max(t0, k * dt), min(t1, (k + 1) * dt) if k < last else t1
        out[min(k, last)] += (hi - lo) * rate


def ec2_by_interval(
    counts: np.ndarray, instances: list, pools: dict[str, Pool], dt: int
) -> dict[str, np.ndarray]:
    """The EC2 causes per interval; they sum to `dataplane.ec2_bill(instances, pools, T)`."""
    T = len(counts)
    n = -(-T // dt)
    out = {c: np.zeros(n) for c in EC2_CAUSES}
    price = np.zeros(T + 1)
    for inst in instances:
        s = instance_seconds(
            inst.launched_at, inst.ready_at, inst.ended_at, inst.end_reason, float(T)
        )
        if s.free:
            continue
        r = pools[inst.pool].price_usd_s
        _spread(out["launch_overhead"], s.launched, s.serve_from, r, dt)
        _spread(out["over_provisioning"], s.serve_to, s.stop, r, dt)
        out["minimum_bill"][min(max(math.ceil(s.stop / dt) - 1, 0), n - 1)] += s.minimum_s * r
        if s.serve_to > s.serve_from:
            price[int(round(s.serve_from))] += r
            price[int(round(s.serve_to))] -= r
    mu, _, _ = dataplane.fleet_capacity(instances, pools, 0, T)
    base, over = serving_split(np.cumsum(price)[:T], mu, np.asarray(counts, dtype=float))
    out["base_fleet"] += _per_interval(base, dt)
    out["over_provisioning"] += _per_interval(over, dt)
    return out


def _per_interval(x: np.ndarray, dt: int) -> np.ndarray:
    pad = (-len(x)) % dt
    return np.concatenate([x, np.zeros(pad)]).reshape(-1, dt).sum(axis=1)


def keep_until_replaced(instances: list, pools: dict[str, Pool], dt: int) -> list:
    """Copies of `instances` where each spot-interrupted one serves until its replacement is
    ready: the first launch in its pool within `dt` of the notice, else notice + launch delay."""
    out = [copy.copy(i) for i in instances]
    by_pool: dict[str, list] = {}
    for i in sorted(out, key=lambda i: i.launched_at):
        by_pool.setdefault(i.pool, []).append(i)
    starts = {k: [i.launched_at for i in v] for k, v in by_pool.items()}
    for i in out:
        if i.end_reason != "spot-interruption" or i.notice_at is None or i.ended_at is None:
            continue
        lst, st = by_pool[i.pool], starts[i.pool]
        j = bisect_left(st, i.notice_at - 1e-9)
        ready = i.notice_at + pools[i.pool].launch_delay_s
        while j < len(lst) and st[j] <= i.notice_at + dt:
            if lst[j] is not i:
                ready = lst[j].ready_at
                break
            j += 1
        i.ended_at = max(i.ended_at, ready)
    return out


def ready_at_launch(instances: list) -> list:
    """Copies of `instances` that serve from their launch (no boot, no model load)."""
    out = [copy.copy(i) for i in instances]
    for i in out:
        i.ready_at = i.launched_at
    return out


def spill_by_interval(
    counts: np.ndarray,
    instances: list,
    pools: dict[str, Pool],
    sc: Scenario,
    forecast_rps: np.ndarray,
    warm_rounds: list[tuple[float, int]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """USD per interval of each spill cause, of cold starts and of keep-warm (summing to the
    Lambda bill), and Lambda-served requests per spill cause, by the sequential replays above."""
    dt = sc.control_interval_s
    T = len(counts)

    def run(insts: list) -> dataplane.DataPlaneTotals:
        return dataplane.replay(counts, insts, pools, sc, spill=True, warm_rounds=warm_rounds)

    actual = run(instances)
    fixed_spot = keep_until_replaced(instances, pools, dt)
    no_spot = run(fixed_spot)
    no_lag = run(ready_at_launch(fixed_spot))
    n0 = np.concatenate(actual.interval_served)
    n1 = np.concatenate(no_spot.interval_served)
    n2 = np.concatenate(no_lag.interval_served)
    spot = np.clip(n0 - n1, 0.0, n0)
    r1 = n0 - spot
    lag = np.clip(r1 - n2, 0.0, r1)
    r2 = r1 - lag
    length = np.minimum(dt, T - np.arange(len(n0)) * dt).astype(float)
    cap = np.concatenate(no_lag.interval_capacity) * dt / length
    arrivals = np.concatenate(actual.interval_arrivals)
    planned, missed, burst = split_shortfall(r2, arrivals, cap, forecast_rps, length)
    spilled = {
        "spill_planned": planned,
        "spill_forecast_miss": missed,
        "spill_burst": burst,
        "spill_launch_lag": lag,
        "spill_spot_loss": spot,
    }
    unit = sum(dataplane.lambda_bill(1.0, 0.0, sc))  # one warm request: request + compute
    init = dataplane.lambda_bill(0.0, 1.0, sc)[1]  # what a cold start adds
    usd = {c: spilled[c] * unit for c in SPILL_CAUSES}
    usd["cold_starts"] = np.concatenate(actual.interval_cold) * init
    ping_req = dataplane.lambda_bill(0.0, 0.0, sc, pings=1.0)[0]  # a ping's request charge
    ms = dataplane.lambda_bill(0.0, 0.0, sc, ping_ms=1.0)[1]  # a billed millisecond
    ping_init = dataplane.lambda_bill(0.0, 0.0, sc, ping_cold=1.0)[1]  # a container it started
    usd["keep_warm"] = (
        np.concatenate(actual.interval_pings) * ping_req
        + np.concatenate(actual.interval_ping_ms) * ms
        + np.concatenate(actual.interval_ping_cold) * ping_init
    )
    return usd, spilled


# --- presentation ----------------------------------------------------------------------------


def format_explain(explanations: list[Explanation]) -> str:
    """Per cause, USD and share of each policy's bill."""
    if not explanations:
        return ""
    head = ["cause", *(e.policy for e in explanations)]
    rows = []
    tots = [e.totals() for e in explanations]
    wholes = [sum(t.values()) for t in tots]
    for c in CAUSES:
        if all(t[c] == 0 for t in tots):
            continue
        rows.append(
            [LABELS[c]]
            + [
                f"{t[c]:,.2f} {t[c] / w:6.1%}" if w > 0 else "0.00"
                for t, w in zip(tots, wholes, strict=True)
            ]
        )
    rows.append(["total", *(f"{w:,.2f} {1:6.0%}" for w in wholes)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = ["where the money went (USD, share of the policy's bill):", "", line(head)]
    out.append("-" * len(out[-1]))
    out += [line(r) for r in rows]
    return "\n".join(out)


def write_explain_csv(explanations: list[Explanation], path: str) -> None:
    """Per policy and interval: USD by cause (columns) and the interval's total."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "interval", "start_s", *CAUSES, "total_usd"])
        for e in explanations:
            for k in range(e.intervals):
                vals = [float(e.usd[c][k]) for c in CAUSES]
                w.writerow(
                    [e.policy, k, k * e.interval_s, *(f"{v:.9g}" for v in vals), f"{sum(vals):.9g}"]
                )
