"""The Backend protocol the Controller drives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from hybridserve.fleet import Action, Endpoint, FleetView

__all__ = ["Action", "Backend", "Endpoint", "ServingBackend"]


class Backend(Protocol):
    def now(self) -> float:
        """Seconds on this backend's clock (wall clock live, simulated time offline)."""

    def observe(self) -> FleetView:
        """Instances that serve or will serve, by pool; ones being lost are already excluded."""

    def converge(self, target: Mapping[str, int], *, intent: str | None = None) -> list[Action]:
        """Launch or retire so that each pool's count (ready + launching) equals its target.
        `intent` names the decision; a backend whose launches take idempotency tokens (AWS)
        derives them from it, so a retried decision cannot launch twice."""


class ServingBackend(Backend, Protocol):
    """A live backend: besides the Controller's calls it tells the router where to send."""

    def endpoints(self) -> list[Endpoint]:
        """Ready instances (health-checked), in a stable order; cheap enough to call every 100 ms."""

    def close(self) -> None:
        """Stop everything this backend started locally (processes, threads); idempotent."""
