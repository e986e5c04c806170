"""The fleet types every layer shares: what a backend observes, what it did, where the router
may send, and what one control step decided.

They sit at the bottom of the import graph (dataclasses only, no numpy, no planner), so the
data plane (router, backends) can use them without loading the planner and scipy with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: the planner imports this module, never the reverse
    from hybridserve.planner.base import Plan, PlanInput


@dataclass(frozen=True)
class PoolState:
    """Observed instances of one pool: ready ones, and launching ones with seconds until ready."""

    ready: int = 0
    pending_ready_in_s: tuple[float, ...] = ()

    @property
    def total(self) -> int:
        return self.ready + len(self.pending_ready_in_s)


@dataclass(frozen=True)
class FleetView:
    """What a backend observes of the fleet, by pool key (`type/market`)."""

    pools: dict[str, PoolState] = field(default_factory=dict)

    def get(self, key: str) -> PoolState:
        return self.pools.get(key, PoolState())

    def totals(self) -> dict[str, int]:
        return {k: s.total for k, s in self.pools.items() if s.total}

    def ready_rps(self, pools) -> float:
        """Requests/s the ready instances serve, given pool specs with `key` and `capacity_rps`."""
        return float(sum(self.get(p.key).ready * p.capacity_rps for p in pools))


@dataclass(frozen=True)
class Action:
    """One change to the fleet: an instance launched or retired, and why. `reconcile` decides
    them (a launch has no instance id yet: ""), a backend executes them and returns them with
    the ids it got; the simulated, local and AWS backends share this one vocabulary."""

    kind: Literal["launch", "retire"]
    pool: str
    instance_id: str
    time_s: float
    reason: str = ""


@dataclass(frozen=True)
class Endpoint:
    """A ready instance the router may send requests to: its V2 base URL, its pool, and the
    models it holds (None: whatever it serves, as for a single-model deployment)."""

    instance_id: str
    pool: str
    url: str  # e.g. http://127.0.0.1:8101 (no trailing slash); the V2 routes hang below it
    models: frozenset[str] | None = None  # a multi-model instance's loaded models
    # (model, variant) of each model it holds as a family's variant (model-less serving)
    variants: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Decision:
    """One control step: the fleet it saw, the plan, the inputs, and (once applied) what the\n    backend did."""

    time_s: float
    fleet: FleetView
    plan: Plan
    actions: list[Action]
    inputs: PlanInput
    forecast_source: str = ""  # which forecaster of the chain answered
    plan_source: str = ""  # which planner of the chain decided
    forecaster_fallbacks: int = 0  # cumulative, since the controller started
    planner_fallbacks: int = 0
    valid: bool = True  # False: no planner could plan, the fleet is held as it is
    planner_state: dict = field(default_factory=dict)  # the planner's, after this decision
    intent: str = ""  # names the decision (controller run / step): a retry reuses its tokens
    keep_warm: int = 0  # Lambda environments to keep initialised (`hybridserve.keep_warm`)
    warm_pings: int = 0  # warm-up pings to send now, concurrently (0: no round this step)
