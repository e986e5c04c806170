"""Planners: pure decisions from (demand, fleet, pools, prices) to a target fleet.

A planner never touches a clock, a process or AWS; state it keeps between calls (hysteresis,
the last solved plan) is explicit on the object.
"""

from hybridserve.fleet import FleetView, PoolState  # re-exported: planners take them
from hybridserve.planner.base import Plan, PlanInput, Planner
from hybridserve.planner.exact import ExactPlanner
from hybridserve.planner.greedy import GreedyPlanner
from hybridserve.planner.simple import NoFleetPlanner, ReactivePlanner, StaticPlanner

__all__ = [
    "ExactPlanner",
    "FleetView",
    "GreedyPlanner",
    "NoFleetPlanner",
    "Plan",
    "PlanInput",
    "Planner",
    "PoolState",
    "ReactivePlanner",
    "StaticPlanner",
]
