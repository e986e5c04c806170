"""Judging a canary against the stable version (issue 15): a pure decision on two samples of
requests, path by path (the fleet and Lambda are judged apart: a version's latency on one says
nothing of the other), as a rollout's controller calls it each step.

Two one-sided tests, each at `alpha`, and a margin that the difference must also pass, so a
significant but harmless difference (a 1% slower p99 on a huge sample) does not roll back:
- **errors** (server errors only: a client's 4xx is no version's fault): Fisher's exact test
  that the canary's error rate is greater, and the rates differing by more than
  `error_margin`. It runs from `min_error_requests` canary requests on, so a canary failing
  outright rolls back within seconds rather than after the full sample. On a path the stable
  version has not served (the canary spills to Lambda, the stable does not) the canary's
  errors are compared with the stable's on every path;
- **latency** (successful requests): the Mann-Whitney U test that the canary's latencies are
  stochastically greater, and its p99 above the stable's by more than `latency_margin` (10%)
  and by more than `latency_margin_ms` (5 ms: the sub-millisecond differences of a small
  model's batches are significant on a large sample and no client's concern against an SLO of
  hundreds of ms). It needs `min_requests` on both versions.

A path below the minimum is waited for, unless it carries under `minor_share` of the canary's
requests (a hybrid fleet spills a few percent to Lambda: at a 5% canary, that path might never
gather 200 requests); such a path is judged on its errors only. The canary is promoted once
every other path it served has the minimum on both versions and nothing failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field
from scipy.stats import fisher_exact, mannwhitneyu

from hybridserve.config_base import Strict

Decision = Literal["promote", "rollback", "wait"]


class CanaryPolicy(Strict):
    min_requests: int = Field(200, ge=10)  # per version and path, before latency is judged
    min_error_requests: int = Field(20, ge=1)  # canary requests on a path before errors are
    alpha: float = Field(0.01, gt=0, lt=0.5)  # each one-sided test's significance
    error_margin: float = Field(0.01, ge=0, le=1)  # absolute error-rate difference tolerated
    latency_margin: float = Field(0.10, ge=0)  # relative p99 increase tolerated
    latency_margin_ms: float = Field(5.0, ge=0)  # ... and absolute: below it no client notices
    minor_share: float = Field(0.1, ge=0, le=1)  # a path under this share: judged on errors only


@dataclass(frozen=True)
class PathSample:
    """One version's requests on one path over the judged window."""

    requests: int
    errors: int  # server errors (5xx, timeouts)
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # successful ones

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"errors {self.errors} must be within 0..requests {self.requests}")


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: tuple[str, ...]  # one line per finding, naming the path and the test


def judge(
    stable: dict[str, PathSample], canary: dict[str, PathSample], policy: CanaryPolicy
) -> Verdict:
    """Roll back at the first path the canary is worse on; promote when every path it served
    is judged on enough requests and none is worse; else wait (saying what for)."""
    failures: list[str] = []
    waiting: list[str] = []
    minor: list[str] = []
    total = sum(c.requests for c in canary.values())
    # a path the stable version has not served (a canary spilling where the stable does not):
    # its errors are compared with the stable version's on every path
    pooled = PathSample(
        sum(x.requests for x in stable.values()), sum(x.errors for x in stable.values())
    )
    for path, c in sorted(canary.items()):
        if c.requests == 0:
            continue
        s = stable.get(path, PathSample(0, 0))
        bad = _errors(path, s if s.requests else pooled, c, policy, s.requests == 0)
        if bad:
            failures.append(bad)
        if min(s.requests, c.requests) < policy.min_requests:
            if c.requests < policy.minor_share * total:
                minor.append(f"{path} ({c.requests} of {total} canary requests) on errors only")
                continue
            waiting.append(
                f"{path}: {c.requests} canary and {s.requests} stable requests, "
                f"{policy.min_requests} each needed"
            )
            continue
        bad = _latency(path, s, c, policy)
        if bad:
            failures.append(bad)
    if failures:
        return Verdict("rollback", tuple(failures))
    if waiting or not any(c.requests for c in canary.values()):
        return Verdict("wait", tuple(waiting) or ("no canary requests yet",))
    why = "every path judged on enough requests, none worse"
    return Verdict("promote", (why + (f"; {', '.join(minor)}" if minor else ""),))


def _errors(
    path: str, s: PathSample, c: PathSample, p: CanaryPolicy, pooled: bool = False
) -> str | None:
    if c.requests < p.min_error_requests or s.requests == 0:
        return None
    cr, sr = c.errors / c.requests, s.errors / s.requests
    if cr - sr <= p.error_margin:
        return None
    table = [[c.errors, c.requests - c.errors], [s.errors, s.requests - s.errors]]
    pval = float(fisher_exact(table, alternative="greater").pvalue)
    if pval >= p.alpha:
        return None
    against = f"{sr:.2%} (the stable version's on every path)" if pooled else f"{sr:.2%}"
    return (
        f"{path}: error rate {cr:.2%} against {against} (Fisher's exact, one-sided "
        f"p={pval:.2g} < {p.alpha:g})"
    )


def _latency(path: str, s: PathSample, c: PathSample, p: CanaryPolicy) -> str | None:
    if len(c.latency_ms) == 0 or len(s.latency_ms) == 0:
        return None
    cp99, sp99 = (float(np.percentile(x, 99)) for x in (c.latency_ms, s.latency_ms))
    if cp99 <= sp99 * (1.0 + p.latency_margin) or cp99 - sp99 <= p.latency_margin_ms:
        return None
    pval = float(mannwhitneyu(c.latency_ms, s.latency_ms, alternative="greater").pvalue)
    if pval >= p.alpha:
        return None
    return (
        f"{path}: p99 {cp99:.1f} ms against {sp99:.1f} ms (Mann-Whitney U, one-sided "
        f"p={pval:.2g} < {p.alpha:g})"
    )
