"""Level-triggered reconciliation: desired counts per pool against instances observed by tags.

Pure: observed instances and a target in, an ordered list of actions out. Running it again on
the state those actions produce yields no action, so a controller that crashes mid-way and
restarts converges without duplicates: it adopts what it finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class ObservedInstance:
    instance_id: str
    pool: str  # "type/market"
    state: (
        str  # EC2 state name: pending | running | stopping | stopped | shutting-down | terminated
    )
    launch_time: float  # epoch seconds
    interrupted: bool = False  # a spot interruption notice or a failed health check: replace it

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES and not self.interrupted


@dataclass(frozen=True)
class Launch:
    pool: str
    count: int
    kind: Literal["launch"] = "launch"


@dataclass(frozen=True)
class Terminate:
    instance_ids: tuple[str, ...]
    reason: str
    kind: Literal["terminate"] = "terminate"


Action = Launch | Terminate


def reconcile(target: Mapping[str, int], observed: list[ObservedInstance]) -> list[Action]:
    """Actions that take the observed fleet to `target` (pools absent from it go to zero).

    Interrupted or stopped instances are terminated and not counted (their share is replaced).
    Scale-in removes pending instances first (they serve nobody yet), then the newest running.
    """
    actions: list[Action] = []
    dead = tuple(
        sorted(
            i.instance_id
            for i in observed
            if i.state in ("stopping", "stopped") or (i.interrupted and i.state in LIVE_STATES)
        )
    )
    if dead:
        actions.append(Terminate(dead, "interrupted or stopped"))
    by_pool: dict[str, list[ObservedInstance]] = {}
    for inst in observed:
        if inst.live:
            by_pool.setdefault(inst.pool, []).append(inst)
    for pool in sorted(set(target) | set(by_pool)):
        want = int(target.get(pool, 0))
        if want < 0:
            raise ValueError(f"target for {pool} is negative: {want}")
        have = by_pool.get(pool, [])
        if want > len(have):
            actions.append(Launch(pool, want - len(have)))
        elif want < len(have):
            order = sorted(
                have, key=lambda i: (i.state != "pending", -i.launch_time, i.instance_id)
            )
            ids = tuple(sorted(i.instance_id for i in order[: len(have) - want]))
            actions.append(Terminate(ids, f"scale in {pool} to {want}"))
    return actions
