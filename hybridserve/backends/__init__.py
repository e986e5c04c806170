"""Backends: the only place that touches a clock, processes or AWS.

Each converges an observed fleet to the planner's target. Simulated (this package), local
processes and AWS implement the same `Backend` protocol.
"""

from hybridserve.backends.base import Action, Backend, Endpoint, ServingBackend
from hybridserve.backends.local import LocalBackend
from hybridserve.backends.simulated import SimInstance, SimulatedBackend

__all__ = [
    "Action",
    "Backend",
    "Endpoint",
    "LocalBackend",
    "ServingBackend",
    "SimInstance",
    "SimulatedBackend",
]
