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


@dataclass(frozen=True)
class Endpoint:
    """A ready instance the router may send requests to: its V2 base URL and its pool."""

    instance_id: str
    pool: str
    url: str  # e.g. http://127.0.0.1:8101 (no trailing slash); the V2 routes hang below it


class Backend(Protocol):
    def now(self) -> float:
        """Seconds on this backend's clock (wall clock live, simulated time offline)."""

    def observe(self) -> FleetView:
        """Instances that serve or will serve, by pool; ones being lost are already excluded."""

    def converge(self, target: Mapping[str, int]) -> list[Action]:
        """Launch or retire so that each pool's count (ready + launching) equals its target."""


class ServingBackend(Backend, Protocol):
    """A live backend: besides the Controller's calls it tells the router where to send."""

    def endpoints(self) -> list[Endpoint]:
        """Ready instances (health-checked), in a stable order; cheap enough to call every 100 ms."""

    def close(self) -> None:
        """Stop everything this backend started locally (processes, threads); idempotent."""
