"""Keep-warm planning: how many Lambda environments to keep initialised, decided each step.

Why: a burst that spills from idle lands on environments that are still starting (a cold start
of about a second against an SLO of a few hundred ms), and every cold start also bills its init.
Bursts recur: a trace whose seconds are mostly empty and sometimes carry hundreds of requests
missed its SLO on cold starts alone under every spilling policy, while a floor of warm
environments met it and lowered the bill (README, the heavy-tailed family).

The decision, a function of numbers like the planner's: each control step, the seconds of the
interval just ended give the environments their spill needed, the most over `lookback_s` is
the floor W to keep warm (at most `max_environments` and the concurrency limit), and a round of
W concurrent warm-up pings goes out when W rises or `every_s` has passed since the last round,
so no environment reaches the keep-alive between rounds. What spills in a second is the excess
of its arrivals over the ready fleet's capacity; at one request's Lambda time s, the busy
environment-seconds per second are c = excess x s, and their Poisson peak c + 3 sqrt(c)
environments (the data plane's own rule, `simulations.lambda_plane`).

Price: a round costs W request charges and W x `hold_ms` of compute. At the defaults (2 GB,
75 ms, every 300 s) one environment kept warm for the hour of `lookback_s` costs 12 pings,
about $3.2e-5: the init bill of one cold start (0.95 s at 2 GB). An hour's memory therefore
pays for itself if the burst comes back once in it, before counting the SLO.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from pydantic import Field

from hybridserve.config_base import Strict


class KeepWarmOptions(Strict):
    """The scenario's `lambda.keep_warm`: planned warm environments for the spill function."""

    enabled: bool = True
    every_s: float | None = Field(None, gt=0, le=86_400)  # None: half the keep-alive
    lookback_s: float = Field(3600.0, ge=0, le=7 * 86_400)
    max_environments: int = Field(100, ge=0)  # AWS deployments reserve 100 by default
    hold_ms: float = Field(75.0, ge=0, le=10_000)  # a ping's hold: concurrent pings, distinct envs


def ping_hold_ms(n: int, hold_ms: float) -> float:
    """How long each ping of a round of `n` holds its environment: concurrent pings hold it so
    that each lands on its own; a lone ping needs none (it is answered at once, ~1 ms)."""
    return float(hold_ms) if n > 1 and hold_ms > 0 else 0.0


def environments_needed(excess_rps: np.ndarray, service_s: float) -> int:
    """Most environments any one second needed: the Poisson peak of its busy count."""
    busy = np.nan_to_num(np.asarray(excess_rps, dtype=float), nan=0.0, posinf=0.0) * service_s
    busy = busy[busy > 0]
    if not len(busy):
        return 0
    return int(np.ceil(np.max(busy + 3.0 * np.sqrt(busy))))


class KeepWarmPlanner:
    """The per-step decision, with its state (the peaks of the lookback, the last round)."""

    def __init__(
        self,
        options: KeepWarmOptions,
        *,
        service_s: float,
        interval_s: int,
        keep_alive_s: float,
        concurrency_limit: int,
    ) -> None:
        self.service_s = float(service_s)
        self.every_s = options.every_s if options.every_s is not None else keep_alive_s / 2.0
        # a round cannot outlast the keep-alive: environments would expire between rounds
        live = options.enabled and keep_alive_s > 0 and self.every_s < keep_alive_s
        self.cap = min(options.max_environments, concurrency_limit) if live else 0
        self.hold_ms = options.hold_ms
        steps = max(1, math.ceil(options.lookback_s / interval_s)) if options.lookback_s else 1
        self.peaks: deque[int] = deque(maxlen=steps)
        self.last_round_s: float | None = None
        self.last_round_n = 0

    def decide(self, counts: np.ndarray, capacity_rps: float, now_s: float) -> tuple[int, int]:
        """(environments to keep warm, pings to send now) after an interval of `counts`
        arrivals per second, the ready fleet serving `capacity_rps`."""
        if self.cap == 0:
            return 0, 0
        excess = np.asarray(counts, dtype=float) - max(float(capacity_rps), 0.0)
        self.peaks.append(min(environments_needed(excess, self.service_s), self.cap))
        warm = max(self.peaks)
        due = self.last_round_s is None or now_s - self.last_round_s >= self.every_s - 1e-9
        if warm == 0 or not (due or warm > self.last_round_n):
            return warm, 0
        self.last_round_s, self.last_round_n = float(now_s), warm
        return warm, warm

    def state(self) -> dict[str, Any]:
        return {"peaks": list(self.peaks), "last_round_s": self.last_round_s,
                "last_round_n": self.last_round_n}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.peaks.clear()
        self.peaks.extend(int(p) for p in state.get("peaks", ()))
        last = state.get("last_round_s")
        self.last_round_s = None if last is None else float(last)
        self.last_round_n = int(state.get("last_round_n", 0))
