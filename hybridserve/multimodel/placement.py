"""From a packing plan and the observed shards to actions: level-triggered, one vocabulary for
every backend (the simulator's now; local processes and AWS execute the same actions).

A planned shard that continues a running one (`sid`) converges its replicas and its model set
there: unloads first (they free the memory the loads need), then loads; a new shard is
created with its replicas, which load its models as they boot; a running shard the plan
drops is retired whole. Unloading a model to make room is an eviction, counted as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hybridserve.multimodel.packing import Packing, Shard


@dataclass(frozen=True)
class PlacementAction:
    kind: Literal["create", "launch", "retire", "load", "unload"]
    sid: int  # -1 for "create": the backend assigns the id
    pool: int = -1
    count: int = 0  # instances to launch or retire
    model: int = -1
    choice: int = -1
    members: tuple[tuple[int, int], ...] = ()  # what a created shard's instances boot with
    reason: str = ""


def reconcile_placement(observed: tuple[Shard, ...], plan: Packing) -> list[PlacementAction]:
    """The actions that take `observed` to `plan` (empty when they already agree)."""
    acts: list[PlacementAction] = []
    running = {sh.sid: sh for sh in observed}
    kept: set[int] = set()
    for sh in plan.shards:
        cur = running.get(sh.sid) if sh.sid >= 0 else None
        if cur is None or cur.pool != sh.pool:
            acts.append(
                PlacementAction(
                    "create", -1, sh.pool, sh.replicas, members=sh.members, reason="plan"
                )
            )
            continue
        kept.add(sh.sid)
        have = dict(cur.members)
        want = dict(sh.members)
        for m, c in cur.members:
            if want.get(m) != c:
                why = "evict" if m not in want else "variant"
                acts.append(
                    PlacementAction("unload", sh.sid, sh.pool, model=m, choice=c, reason=why)
                )
        for m, c in sh.members:
            if have.get(m) != c:
                acts.append(
                    PlacementAction("load", sh.sid, sh.pool, model=m, choice=c, reason="plan")
                )
        if sh.replicas > cur.replicas:
            acts.append(PlacementAction("launch", sh.sid, sh.pool, sh.replicas - cur.replicas))
        elif sh.replicas < cur.replicas:
            acts.append(PlacementAction("retire", sh.sid, sh.pool, cur.replicas - sh.replicas))
    for sid, cur in running.items():
        if sid not in kept:
            acts.append(PlacementAction("retire", sid, cur.pool, cur.replicas, reason="dropped"))
    return acts
