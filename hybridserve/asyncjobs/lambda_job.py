"""One async job on Lambda, from the scenario: how long it runs, what the plan prices it at,
and what an invoke's answer bills; the same for the local and the AWS runtime (the charge
itself is `hybridserve.pricing`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridserve.config import (
    Scenario,
    lambda_cold_start_s,
    lambda_service_s,
    lambda_usd_per_request,
)
from hybridserve.pricing import lambda_invoke_usd


@dataclass(frozen=True)
class LambdaJob:
    seconds: float  # warm, batch 1
    usd: float  # one warm job, the request included: the plan's price
    cold_s: float  # a new worker's cold start
    memory_mb: int
    usd_per_gb_s: float
    usd_per_request: float

    @classmethod
    def of(cls, sc: Scenario) -> LambdaJob:
        s = lambda_service_s(sc, 1)
        pr = sc.lambda_pricing
        return cls(
            s,
            lambda_usd_per_request(sc, s),
            lambda_cold_start_s(sc),
            sc.lambda_.memory_mb,
            pr.usd_per_gb_s,
            pr.usd_per_request,
        )

    def billed_usd(self, res: Any) -> float:
        """An InvokeResult's charge: its billed ms (this job's warm time when not reported)."""
        ms = res.billed_ms if res.billed_ms is not None else self.seconds * 1000.0
        return lambda_invoke_usd(ms, self.memory_mb, self.usd_per_gb_s, self.usd_per_request)
