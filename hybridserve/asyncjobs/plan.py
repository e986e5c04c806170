"""How many fleet and Lambda workers the async queue needs now: a pure decision on numbers.

The backlog (visible and in-flight jobs) must be done before the oldest job's deadline. For each
fleet size n from 0 to `max_fleet` the fleet does what it can in the time left (a new instance
only after its launch delay), Lambda takes the rest (only jobs within its 15-minute limit) at a
concurrency that finishes in time, and the plan is the cheapest n that meets the deadline:
fleet seconds, each instance billed at least `min_bill_s` and for its boot, against Lambda's
price per job. A large backlog with time to spare goes to the fleet, a burst with little time
to Lambda, both while the fleet boots; an empty queue is zero of either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from hybridserve.config_base import Strict

LAMBDA_LIMIT_S = 900.0  # Lambda's 15-minute timeout


class AsyncPolicy(Strict):
    deadline_s: float = Field(600.0, gt=0)  # per job, submit to result (the deadline SLO)
    max_fleet: int = Field(4, ge=0)  # instances running async workers, at most
    max_lambda: int = Field(50, ge=0)  # concurrent Lambda workers, at most
    min_bill_s: float = Field(60.0, ge=0)  # EC2 bills at least a minute per instance
    lambda_limit_s: float = Field(LAMBDA_LIMIT_S, gt=0, le=LAMBDA_LIMIT_S)


@dataclass(frozen=True)
class AsyncView:
    """What the backend observes each interval."""

    visible: int  # jobs waiting
    in_flight: int  # jobs being run
    oldest_age_s: float  # the oldest job's time in the queue
    fleet_ready: int  # async instances serving
    fleet_launching: int  # async instances booting
    job_s: float  # one job's share of a fleet instance's time (1 / its throughput)
    lambda_job_s: float  # one job's duration on a Lambda worker
    boot_left_s: float = 0.0  # the booting instances' time until ready (their mean)


@dataclass(frozen=True)
class AsyncPrices:
    fleet_usd_s: float  # one async instance
    launch_s: float  # its launch delay
    lambda_usd_job: float  # one job on Lambda: GB-s of `lambda_job_s` and the request
    lambda_cold_s: float = 0.0  # a new Lambda worker's cold start


@dataclass(frozen=True)
class AsyncPlan:
    fleet: int
    lambda_workers: int
    cost_usd: float  # what the plan expects the backlog to cost
    reason: str
    meets_deadline: bool = True


def plan(v: AsyncView, p: AsyncPrices, policy: AsyncPolicy) -> AsyncPlan:
    jobs = v.visible + v.in_flight
    if jobs == 0:
        return AsyncPlan(0, 0, 0.0, "the queue is empty: no workers")
    slack = max(policy.deadline_s - v.oldest_age_s, 0.0)
    work = jobs * v.job_s
    lambda_ok = v.lambda_job_s <= policy.lambda_limit_s
    best: AsyncPlan | None = None
    fallback: AsyncPlan | None = None
    # jobs one Lambda worker finishes in time (jobs do not split; a new worker starts cold)
    per_worker = math.floor(max(slack - p.lambda_cold_s, 0.0) / v.lambda_job_s + 1e-9)
    for n in range(policy.max_fleet + 1):
        ready = min(n, v.fleet_ready)
        booting = min(n - ready, v.fleet_launching)
        new = n - ready - booting  # launched now: their boot is billed, and waited for
        cap = (
            ready * slack
            + booting * max(0.0, slack - v.boot_left_s)
            + new * max(0.0, slack - p.launch_s)
        )
        fleet_work = min(work, cap)
        rest = math.ceil((work - fleet_work) / v.job_s - 1e-9) if v.job_s > 0 else 0
        lam = math.ceil(rest / max(per_worker, 1)) if rest and lambda_ok else 0
        fleet_s = n * max(policy.min_bill_s, fleet_work / n) + new * p.launch_s if n else 0.0
        cost = fleet_s * p.fleet_usd_s + rest * p.lambda_usd_job
        ok = (rest == 0 or (lambda_ok and per_worker > 0)) and lam <= policy.max_lambda
        if ok and (best is None or cost < best.cost_usd - 1e-12):
            why = (
                f"{jobs} jobs ({work:.0f} s of fleet work) due in {slack:.0f} s: "
                f"{n} instance{'s' * (n != 1)} and {lam} Lambda worker{'s' * (lam != 1)}"
            )
            best = AsyncPlan(n, lam, cost, why)
        if n == policy.max_fleet:
            lam_max = policy.max_lambda if lambda_ok else 0
            why = (
                f"{jobs} jobs due in {slack:.0f} s cannot all meet the deadline: every worker "
                f"allowed ({n} instances, {lam_max} Lambda workers"
                f"{'' if lambda_ok else f'; jobs over {policy.lambda_limit_s:.0f} s run only on the fleet'})"
            )
            fallback = AsyncPlan(n, lam_max, cost, why, meets_deadline=False)
    return best or fallback  # type: ignore[return-value]
