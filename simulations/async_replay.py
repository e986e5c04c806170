"""Offline replay of async jobs through the async planner: what `hybridserve.asyncjobs.plan`
would cost and how many jobs it would finish by their deadline on a jobs trace.

Every control interval the replay builds the `AsyncView` the backend would observe and calls the
real `plan` (fleet-only and Lambda-only are the same function under another `AsyncPolicy`, never
a copy of its logic). Between decisions the workers run jobs FIFO in continuous time:

- a fleet instance serves `launch_s` after its launch, one job at a time, each `job_s` plus the
  payload's transfer from S3 (payload_bytes / `s3_mb_s`, an assumption: 100 MB/s per worker);
  one the plan no longer wants takes no new job and ends when its current job does;
- a Lambda worker starts at once; a job runs `lambda_job_s` plus the transfer, plus
  `cold_start_s` when no container has been idle under `keep_alive_s` (containers are reused
  most recent first); jobs over the 15-minute limit run only on the fleet, which takes the
  oldest job of all while Lambda takes the oldest it may run.

Bills come from `hybridserve.pricing` (EC2 per instance lifetime with its 60 s minimum, Lambda
per invoke with its init on a cold start) plus SQS and S3 requests per job from
`hybridserve/data/async-prices-us-east-1.yaml`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from hybridserve.asyncjobs.plan import AsyncPlan, AsyncPolicy, AsyncPrices, AsyncView, plan
from hybridserve.config import default_catalog
from hybridserve.pricing import ec2_usd, lambda_invoke_usd
from simulations.async_jobs import (
    JobsTrace,
    load_request_prices,
    read_jobs,
    synthetic_jobs,
)

__all__ = [
    "AsyncResult", "AsyncSimParams", "JobsTrace", "compare_async", "read_jobs", "replay_async",
    "synthetic_jobs",
]  # fmt: skip

INF = math.inf


@dataclass(frozen=True)
class AsyncSimParams:
    """The workload's timings and the prices the replay bills them at."""

    job_s: float = 20.0  # one job on a fleet instance, without its transfer
    lambda_job_s: float = 30.0  # one job on a Lambda worker, without transfer or cold start
    launch_s: float = 90.0  # a fleet instance's launch to serving (the catalog's c6i.xlarge)
    cold_start_s: float = 5.0  # a Lambda container's init (assumption: a model image)
    keep_alive_s: float = 300.0  # an idle Lambda container stays warm this long (assumption)
    s3_mb_s: float = 100.0  # payload transfer from S3, MB/s per worker (assumption)
    lambda_memory_mb: int = 4096
    fleet_usd_h: float = 0.17  # c6i.xlarge on demand (catalog-us-east-1.yaml)
    lambda_usd_per_gb_s: float = 1.66667e-05  # x86_64 (catalog-us-east-1.yaml)
    lambda_usd_per_request: float = 2e-07
    request_usd_submit: float = 1.08e-05  # SQS and S3 requests of a submit (price file)
    request_usd_worker: float = 6.6e-06  # ... and of a worker running the job

    def __post_init__(self) -> None:
        for name in ("job_s", "lambda_job_s", "s3_mb_s", "fleet_usd_h", "lambda_memory_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("launch_s", "cold_start_s", "keep_alive_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def default_params(instance_type: str = "c6i.xlarge", **overrides: float) -> AsyncSimParams:
    """Prices from the built-in catalog (an instance type's on-demand price and launch delay,
    Lambda x86_64) and the request price file; `overrides` replace any field."""
    cat = default_catalog()
    if instance_type not in cat.instances:
        raise ValueError(f"instance type {instance_type!r} is not in the catalog")
    it, lam, req = cat.instances[instance_type], cat.lambda_["x86_64"], load_request_prices()
    base = {
        "launch_s": it.launch_delay_s,
        "fleet_usd_h": it.on_demand_usd_h,
        "lambda_usd_per_gb_s": lam.usd_per_gb_s,
        "lambda_usd_per_request": lam.usd_per_request,
        "request_usd_submit": req.submit_usd,
        "request_usd_worker": req.worker_usd,
    }
    return AsyncSimParams(**{**base, **overrides})


@dataclass
class AsyncResult:
    """One policy's replay: completion, deadline attainment and the bill by part."""

    policy: str
    jobs: int
    completed: int
    deadline_attainment: float  # share of all jobs done within deadline_s of their submit
    p50_completion_s: float
    p99_completion_s: float
    cost_usd: float
    cost_per_job_usd: float
    fleet_usd: float
    lambda_usd: float
    requests_usd: float
    fleet_instance_s: float
    fleet_launches: int
    lambda_jobs: int
    lambda_cold_starts: int
    lambda_fraction: float  # of the completed jobs
    drain_s: float  # last submit to last completion; nan when some job never completed
    idle_workers_at_end: int
    always_on_cost_usd: float
    always_on_fleet: int
    fallbacks: int  # decisions that could not meet the deadline
    completion_s: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    on_lambda: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))

    def to_dict(self) -> dict:
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, np.ndarray):
                continue
            if isinstance(v, float):
                v = None if not math.isfinite(v) else round(v, 8 if "usd" in k else 4)
            out[k] = v
        return out


def always_on(
    submit: np.ndarray, fleet_dur: np.ndarray, deadline_s: float, p: AsyncSimParams
) -> tuple[int, float]:
    """An always-on fleet sized to drain the largest burst by the deadline, and its cost.

    The largest burst is the most fleet work (job seconds plus transfers) submitted within any
    `deadline_s`-long window; the fleet is that work over `deadline_s`, rounded up (at least
    one instance), running from the first submit to the last submit plus `deadline_s`. The cost
    adds the same SQS and S3 requests as a replay, so it compares with `cost_usd`."""
    n = len(submit)
    if n == 0:
        return 0, 0.0
    cum = np.concatenate(([0.0], np.cumsum(fleet_dur)))
    hi = np.searchsorted(submit, submit + deadline_s, side="left")
    work = float(np.max(cum[hi] - cum[:-1]))
    size = max(1, math.ceil(work / deadline_s - 1e-9))
    span = float(submit[-1] - submit[0]) + deadline_s
    fleet = size * ec2_usd(span, p.fleet_usd_h / 3600.0)
    return size, fleet + n * (p.request_usd_submit + p.request_usd_worker)


class _Replay:
    """The replay's state: jobs (as lists, for the per-job loop), fleet instances, Lambda slots
    and containers, and the running jobs."""

    def __init__(self, jobs: JobsTrace, policy: AsyncPolicy, p: AsyncSimParams) -> None:
        self.policy, self.p = policy, p
        n = self.n = len(jobs)
        xfer = np.asarray(jobs.payload_bytes, dtype=float) / (p.s3_mb_s * 1e6)
        base = np.full(n, p.job_s) if jobs.job_s is None else np.asarray(jobs.job_s, dtype=float)
        self.submit_np = np.asarray(jobs.submit_s, dtype=float)
        self.fdur_np = base + xfer
        self.ldur_np = base * (p.lambda_job_s / p.job_s) + xfer
        elig = self.ldur_np <= policy.lambda_limit_s
        # prefix sums for the backlog's mean job times: all jobs, and the Lambda-eligible ones
        self.cum_f = np.concatenate(([0.0], np.cumsum(self.fdur_np)))
        self.cum_l = np.concatenate(([0.0], np.cumsum(self.ldur_np)))
        self.cum_le = np.concatenate(([0.0], np.cumsum(np.where(elig, self.ldur_np, 0.0))))
        self.cnt_e = np.concatenate(([0], np.cumsum(elig)))
        self.submit, self.fdur, self.ldur = (
            self.submit_np.tolist(), self.fdur_np.tolist(), self.ldur_np.tolist()
        )  # fmt: skip
        self.elig = elig.tolist()
        self.elig_idx = np.flatnonzero(elig).tolist()
        self.assigned = [False] * n
        self.start = [INF] * n
        self.end = [INF] * n
        self.on_lambda = [False] * n
        self.fp = self.lp = 0  # oldest unassigned job; oldest unassigned Lambda-eligible one
        self.n_assigned = 0
        self.sum_f = self.sum_l = self.sum_le = 0.0  # of assigned jobs
        self.cnt_ae = 0  # assigned Lambda-eligible jobs
        self.running: list[tuple[float, float, float, float, bool]] = []  # end, submit, f, l, e
        # fleet: per instance, launch, ready, busy until, end (inf while alive)
        self.launch_at: list[float] = []
        self.ready_at: list[float] = []
        self.busy: list[float] = []
        self.end_at: list[float] = []
        self.active: list[int] = []  # alive and wanted
        self.retiring: list[int] = []  # ending with their current job
        # Lambda: the plan's concurrency as slot free times; containers' busy and idle ends
        self.lam = 0
        self.slots: list[float] = []
        self.lam_running: list[float] = []
        self.idle_containers: deque[float] = deque()
        self.lambda_usd = 0.0
        self.cold_starts = 0

    # ---- observing ----------------------------------------------------------------------

    def view(self, t: float) -> AsyncView:
        self.running = [r for r in self.running if r[0] > t]
        n_sub = int(np.searchsorted(self.submit_np, t, side="right"))
        visible = n_sub - self.n_assigned
        inflight = len(self.running)
        oldest = min((r[1] for r in self.running), default=INF)
        if visible:
            while self.assigned[self.fp]:
                self.fp += 1
            oldest = min(oldest, self.submit[self.fp])
        ready = sum(1 for i in self.active if self.ready_at[i] <= t)
        boots = [self.ready_at[i] - t for i in self.active if self.ready_at[i] > t]
        jobs = visible + inflight
        job_s, lambda_job_s = self.p.job_s, self.p.lambda_job_s
        if jobs:
            run_f = sum(r[2] for r in self.running)
            job_s = (self.cum_f[n_sub] - self.sum_f + run_f) / jobs
            n_e = int(self.cnt_e[n_sub]) - self.cnt_ae + sum(1 for r in self.running if r[4])
            if n_e:  # the mean Lambda time of the backlog's jobs Lambda may run
                run_le = sum(r[3] for r in self.running if r[4])
                lambda_job_s = (self.cum_le[n_sub] - self.sum_le + run_le) / n_e
            else:  # none: their mean, over the limit, so the plan sends none to Lambda
                run_l = sum(r[3] for r in self.running)
                lambda_job_s = (self.cum_l[n_sub] - self.sum_l + run_l) / jobs
        return AsyncView(
            visible=visible,
            in_flight=inflight,
            oldest_age_s=0.0 if oldest == INF else max(0.0, t - oldest),
            fleet_ready=ready,
            fleet_launching=len(self.active) - ready,
            job_s=job_s,
            lambda_job_s=lambda_job_s,
            boot_left_s=sum(boots) / len(boots) if boots else 0.0,
        )

    def alive_workers(self, t: float) -> int:
        fleet = len(self.active) + sum(1 for i in self.retiring if self.end_at[i] > t)
        return fleet + self.lam

    # ---- acting -------------------------------------------------------------------------

    def apply(self, d: AsyncPlan, t: float) -> None:
        self.retiring = [i for i in self.retiring if self.end_at[i] > t]
        want, have = d.fleet, len(self.active)
        while want > have and self.retiring:  # keep a retiring instance rather than launch
            i = self.retiring.pop()
            self.end_at[i] = INF
            self.active.append(i)
            have += 1
        for _ in range(want - have):
            self.active.append(len(self.launch_at))
            self.launch_at.append(t)
            self.ready_at.append(t + self.p.launch_s)
            self.busy.append(t)
            self.end_at.append(INF)
        if want < have:  # booting ones first (newest first), then idle, then the soonest free
            order = sorted(
                self.active,
                key=lambda i: (self.ready_at[i] <= t, max(self.busy[i], t), -self.launch_at[i]),
            )
            for i in order[: have - want]:
                self.active.remove(i)
                self.end_at[i] = max(t, self.busy[i]) if self.ready_at[i] <= t else t
                if self.end_at[i] > t:
                    self.retiring.append(i)
        if d.lambda_workers != self.lam:
            self._resize_lambda(d.lambda_workers, t)

    def _resize_lambda(self, want: int, t: float) -> None:
        """`want` slots: the `want` latest ends of the running Lambda jobs, padded with `t`
        (a new job may start once fewer than `want` are running)."""
        ends = sorted(e for e in self.lam_running if e > t)[-want:] if want else []
        self.slots = ends + [t] * (want - len(ends))
        heapq.heapify(self.slots)
        self.lam = want

    def dispatch(self, t0: float, t1: float) -> int:
        """Start jobs in [t0, t1), FIFO, on the earliest free worker (the fleet on a tie)."""
        fheap = [(max(self.ready_at[i], self.busy[i], t0), i) for i in self.active]
        heapq.heapify(fheap)
        slots, submit, assigned, elig_idx = self.slots, self.submit, self.assigned, self.elig_idx
        n, n_elig, started = self.n, len(elig_idx), 0
        p = self.p
        gb_s, req, mem = p.lambda_usd_per_gb_s, p.lambda_usd_per_request, p.lambda_memory_mb
        while True:
            while self.fp < n and assigned[self.fp]:
                self.fp += 1
            while self.lp < n_elig and assigned[elig_idx[self.lp]]:
                self.lp += 1
            sf = sl = INF
            if fheap and self.fp < n:
                sf = max(fheap[0][0], submit[self.fp])
            if slots and self.lp < n_elig:
                sl = max(slots[0], submit[elig_idx[self.lp]], t0)
            if min(sf, sl) >= t1:
                return started
            if sf <= sl:
                j, s = self.fp, sf
                e = s + self.fdur[j]
                i = heapq.heapreplace(fheap, (e, fheap[0][1]))[1]
                self.busy[i] = e
            else:
                j, s = elig_idx[self.lp], sl
                cold = self._container(s)
                e = s + cold + self.ldur[j]
                heapq.heapreplace(slots, e)
                heapq.heappush(self.lam_running, e)
                self.lambda_usd += lambda_invoke_usd(
                    self.ldur[j] * 1000.0, mem, gb_s, req, init_ms=cold * 1000.0
                )
                self.on_lambda[j] = True
            assigned[j] = True
            self.start[j], self.end[j] = s, e
            self.n_assigned += 1
            started += 1
            self.sum_f += self.fdur[j]
            self.sum_l += self.ldur[j]
            if self.elig[j]:
                self.sum_le += self.ldur[j]
                self.cnt_ae += 1
            self.running.append((e, submit[j], self.fdur[j], self.ldur[j], self.elig[j]))

    def _container(self, s: float) -> float:
        """A Lambda container for a job starting at `s`: the most recently idle warm one, else a
        cold start; returns the cold start's seconds (0 when warm)."""
        idle, busy = self.idle_containers, self.lam_running
        while busy and busy[0] <= s:
            idle.append(heapq.heappop(busy))
        while idle and idle[0] < s - self.p.keep_alive_s:
            idle.popleft()
        if idle:
            idle.pop()
            return 0.0
        self.cold_starts += 1
        return self.p.cold_start_s


def replay_async(
    jobs: JobsTrace,
    policy: AsyncPolicy,
    params: AsyncSimParams | None = None,
    *,
    control_interval_s: float = 10.0,
    name: str = "hybrid",
) -> AsyncResult:
    """Replay `jobs` under `policy`, deciding every `control_interval_s` with `plan`.

    The replay ends once every job is done and the planner has seen an empty queue at two
    decisions (the workers still alive then are `idle_workers_at_end`), or when nothing can
    change any more: every job submitted, none running or launching, the oldest past its
    deadline and no job started in an interval (jobs no worker may ever run, e.g. with
    max_fleet = max_lambda = 0): those are reported as not completed."""
    p = params or default_params()
    if not control_interval_s > 0:
        raise ValueError(f"control_interval_s must be > 0, got {control_interval_s}")
    r = _Replay(jobs, policy, p)
    dt, n = float(control_interval_s), len(jobs)
    fleet_s = p.fleet_usd_h / 3600.0
    last_submit = r.submit[-1] if n else 0.0
    k, fallbacks, done_ticks, idle_end = 0, 0, 0, 0
    while True:
        t = k * dt
        v = r.view(t)
        if r.n_assigned == n and not v.in_flight:
            done_ticks += 1
            if done_ticks >= 2:
                idle_end = r.alive_workers(t)
                break
        lam_usd = lambda_invoke_usd(
            v.lambda_job_s * 1000.0, p.lambda_memory_mb, p.lambda_usd_per_gb_s,
            p.lambda_usd_per_request,
        )  # fmt: skip
        d = plan(v, AsyncPrices(fleet_s, p.launch_s, lam_usd, p.cold_start_s), policy)
        fallbacks += not d.meets_deadline
        r.apply(d, t)
        started = r.dispatch(t, t + dt)
        stuck = (
            last_submit <= t
            and r.n_assigned < n
            and not started
            and not any(e > t for e, *_ in r.running)
            and all(r.ready_at[i] <= t for i in r.active)
            and v.oldest_age_s >= policy.deadline_s
        )
        if stuck:
            idle_end = r.alive_workers(t)
            break
        k += 1
        nxt = k * dt
        if (
            r.n_assigned < n
            and not r.active
            and not r.lam
            and r.submit[r.n_assigned] > nxt
            and r.n_assigned == int(np.searchsorted(r.submit_np, nxt, side="right"))
            and not any(e > nxt for e, *_ in r.running)
        ):  # nothing queued, nothing alive: on to the decision that sees the next submit
            k = max(k, math.ceil(r.submit[r.n_assigned] / dt - 1e-12))
    return _result(r, name, t, fallbacks, idle_end)


def _result(r: _Replay, name: str, t_end: float, fallbacks: int, idle_end: int) -> AsyncResult:
    p, policy, n = r.p, r.policy, r.n
    for i in r.active + r.retiring:  # whoever is alive at the end stops then
        r.end_at[i] = max(t_end, r.busy[i]) if r.end_at[i] == INF else r.end_at[i]
    lifetimes = np.asarray(r.end_at, dtype=float) - np.asarray(r.launch_at, dtype=float)
    fleet_usd = float(sum(ec2_usd(s, p.fleet_usd_h / 3600.0) for s in lifetimes.tolist()))
    end = np.asarray(r.end, dtype=float)
    done = np.isfinite(end)
    completed = int(done.sum())
    comp = end[done] - r.submit_np[done]
    on_lambda = np.asarray(r.on_lambda, dtype=bool)
    requests = n * p.request_usd_submit + completed * p.request_usd_worker
    cost = fleet_usd + r.lambda_usd + requests
    ao_size, ao_usd = always_on(r.submit_np, r.fdur_np, policy.deadline_s, p)
    lambda_jobs = int(on_lambda.sum())
    pct = np.percentile(comp, [50, 99]) if completed else (math.nan, math.nan)
    return AsyncResult(
        policy=name,
        jobs=n,
        completed=completed,
        deadline_attainment=float(np.sum(comp <= policy.deadline_s + 1e-9) / n) if n else 1.0,
        p50_completion_s=float(pct[0]),
        p99_completion_s=float(pct[1]),
        cost_usd=cost,
        cost_per_job_usd=cost / n if n else 0.0,
        fleet_usd=fleet_usd,
        lambda_usd=r.lambda_usd,
        requests_usd=requests,
        fleet_instance_s=float(lifetimes.sum()),
        fleet_launches=len(r.launch_at),
        lambda_jobs=lambda_jobs,
        lambda_cold_starts=r.cold_starts,
        lambda_fraction=lambda_jobs / completed if completed else 0.0,
        drain_s=float(end.max() - r.submit_np[-1]) if n and completed == n else math.nan,
        idle_workers_at_end=idle_end,
        always_on_cost_usd=ao_usd,
        always_on_fleet=ao_size,
        fallbacks=fallbacks,
        completion_s=comp,
        on_lambda=on_lambda,
    )


def compare_async(
    jobs: JobsTrace,
    policy: AsyncPolicy,
    params: AsyncSimParams | None = None,
    *,
    control_interval_s: float = 10.0,
) -> list[AsyncResult]:
    """The hybrid plan, fleet-only (max_lambda = 0) and Lambda-only (max_fleet = 0): the same
    `plan` under three policies."""
    variants = {
        "hybrid": policy,
        "fleet-only": policy.model_copy(update={"max_lambda": 0}),
        "lambda-only": policy.model_copy(update={"max_fleet": 0}),
    }
    return [
        replay_async(jobs, pol, params, control_interval_s=control_interval_s, name=name)
        for name, pol in variants.items()
    ]
