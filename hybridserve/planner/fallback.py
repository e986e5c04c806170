"""A planner that cannot fail: the primary, then a declared fallback, then holding the fleet.

The exact MILP can fail (HiGHS reports an error, a limit stops it, the demand it is fed is
broken); the control loop must still get a plan. A failed or unsound plan (negative or
non-integer counts, unknown pools) is replaced by the fallback planner's, MArk's greedy by
default, and if that fails too the fleet is held as it is. Every fallback is counted and logged
once per episode, never raised.
"""

from __future__ import annotations

import logging
import math

from hybridserve.controller_state import planner_state, restore_planner
from hybridserve.planner.base import Plan, PlanInput, Planner

log = logging.getLogger("hybridserve.planner")


def plan_problem(plan: Plan, inp: PlanInput) -> str | None:
    """Why a plan is unusable, or None."""
    keys = {p.key for p in inp.pools} | set(inp.fleet.totals())
    for key, n in plan.target.items():
        if key not in keys:
            return f"unknown pool {key!r}"
        try:
            v = float(n)
        except (TypeError, ValueError):
            return f"{key}: count {n!r} is not a number"
        if not math.isfinite(v) or v < 0 or not v.is_integer():
            return f"{key}: count {n!r} is not a whole number of instances"
    return None


HOLD = "hold"  # the last resort of every chain: keep the fleet as it is


def hold(inp: PlanInput) -> Plan:
    """Keep every instance there is: the plan of last resort."""
    return Plan(target=dict(inp.fleet.totals()), solved=False)


class FallbackPlanner:
    """`primary`, falling back to `fallback` (then to holding the fleet) on any failure."""

    def __init__(self, primary: Planner, fallback: Planner | None = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.chain = (primary.name, *((fallback.name,) if fallback else ()), HOLD)
        self.fallbacks = 0  # decisions not taken by the primary
        self.failures: dict[str, int] = {}
        self.source = primary.name
        self._failing: set[str] = set()

    def state(self) -> dict:
        return {
            "fallbacks": self.fallbacks,
            "failures": dict(self.failures),
            "source": self.source,
            "failing": sorted(self._failing),
            "primary": planner_state(self.primary),
            "fallback": planner_state(self.fallback) if self.fallback is not None else {},
        }

    def restore(self, state: dict) -> None:
        self.fallbacks = int(state["fallbacks"])
        self.failures = {str(k): int(v) for k, v in state["failures"].items()}
        self.source = str(state["source"])
        self._failing = set(state["failing"])
        restore_planner(self.primary, state["primary"])
        if self.fallback is not None:
            restore_planner(self.fallback, state["fallback"])

    @property
    def solves(self) -> int | None:
        return getattr(self.primary, "solves", None)

    def _try(self, planner: Planner, inp: PlanInput) -> Plan | None:
        try:
            plan = planner.plan(inp)
            problem = plan_problem(plan, inp)
        except Exception as e:  # contained: the next planner in the chain decides
            text = str(e).strip().splitlines()
            problem = f"{type(e).__name__}: {text[0] if text else ''}"
        if problem is None:
            if planner.name in self._failing:
                self._failing.discard(planner.name)
                log.info("planner %s recovered", planner.name)
            return plan
        self.failures[planner.name] = self.failures.get(planner.name, 0) + 1
        if planner.name not in self._failing:
            self._failing.add(planner.name)
            log.warning("planner %s failed (%s); falling back", planner.name, problem)
        return None

    def plan(self, inp: PlanInput) -> Plan:
        plan = self._try(self.primary, inp)
        if plan is not None:
            self.source = self.primary.name
            return plan
        self.fallbacks += 1
        if self.fallback is not None:
            plan = self._try(self.fallback, inp)
            if plan is not None:
                self.source = self.fallback.name
                return plan
        self.source = HOLD
        return hold(inp)
