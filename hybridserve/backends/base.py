"""The Backend protocol the Controller drives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from hybridserve.planner.base import FleetView


@dataclass(frozen=True)
class Action:
    """One change a backend made while converging: an instance launched or retired."""

    kind: Literal["launch", "retire"]
    pool: str
    instance_id: str
    time_s: float


class Backend(Protocol):
    def now(self) -> float:
        """Seconds on this backend's clock (wall clock live, simulated time offline)."""

    def observe(self) -> FleetView:
        """Instances that serve or will serve, by pool; ones being lost are already excluded."""

    def converge(self, target: Mapping[str, int]) -> list[Action]:
        """Launch or retire so that each pool's count (ready + launching) equals its target."""
