"""The multi-model control loop live: the simulator's `MultiController` fed with the router's
per-model arrivals, on the same interval boundaries as the one-model loop (`hybridserve.live`).

Nothing here decides: each interval it takes every model's closed seconds from the router, runs
`MultiController.step` on a worker thread (planning never stalls routing) and logs what the
plan did. A step that raises is logged and counted; the loop never dies. `CappedPlacement`
bounds the instances a machine can hold, as `CappedBackend` does for one model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from hybridserve.live import interval_counts, next_step_at
from hybridserve.logs import event
from hybridserve.multimodel.controller import MultiController, MultiDecision, PlacementBackend
from hybridserve.multimodel.packing import Shard
from hybridserve.multimodel.placement import PlacementAction

log = logging.getLogger("hybridserve.live")


@dataclass
class CappedPlacement:
    """A placement backend whose creates and launches stop at `max_instances` in all (this
    machine's cores bound the local fleet); what is cut stays on Lambda, as the router spills
    a model no instance holds."""

    backend: PlacementBackend
    max_instances: int
    trimmed: int = 0  # instances the cap refused, in all

    def __post_init__(self) -> None:
        if self.max_instances < 0:
            raise ValueError(f"max_instances must be >= 0, got {self.max_instances}")

    def observe(self) -> tuple[Shard, ...]:
        return self.backend.observe()

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        live = sum(sh.replicas for sh in self.backend.observe())
        live -= sum(a.count for a in actions if a.kind == "retire")
        kept = []
        for a in actions:
            if a.kind in ("create", "launch"):
                n = max(0, min(a.count, self.max_instances - live))
                self.trimmed += a.count - n
                if n == 0:
                    continue
                a = replace(a, count=n)
                live += n
            kept.append(a)
        self.backend.apply(kept, now)


@dataclass
class MultiLiveLoop:
    """Runs `controller.step` once per interval on the router's per-model counts."""

    controller: MultiController
    take_counts: Callable[[], Mapping[str, list[tuple[int, int]]]]
    names: list[str]  # the fleet's models, in the controller's order
    decisions: list[MultiDecision] = field(default_factory=list)
    # cumulative, read by the router's /metrics (a dict the router holds a reference to)
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "forecaster_fallbacks": 0,
            "planner_fallbacks": 0,
            "step_failures": 0,
        }
    )

    def counts(self) -> np.ndarray:
        """(models, interval seconds): each model's last interval, zeros for one not seen."""
        closed = self.take_counts()
        dt = self.controller.interval_s
        return np.stack([interval_counts(list(closed.get(n, ())), dt) for n in self.names])

    def step(self) -> MultiDecision:
        counts = self.counts()
        d = self.controller.step(counts, time.time())
        self.decisions.append(d)
        del self.decisions[:-100]
        self.stats["forecaster_fallbacks"] = self.controller.forecaster_fallbacks
        self.stats["planner_fallbacks"] = self.controller.planner_fallbacks
        event(
            log,
            "controller.multi_step",
            arrivals_rps={
                n: round(float(c.mean()), 3) for n, c in zip(self.names, counts, strict=True)
            },
            **step_summary(d, self.names, self.controller.table),
        )
        return d

    def safe_step(self) -> MultiDecision | None:
        """`step`, but a failure is logged and counted instead of raised."""
        try:
            return self.step()
        except Exception:
            self.stats["step_failures"] += 1
            log.exception(
                "multi-model control step failed; the next one runs in %s s",
                self.controller.interval_s,
            )
            return None

    async def run(self) -> None:
        """Steps just after each epoch second that is a multiple of the interval."""
        while True:
            now = time.time()
            await asyncio.sleep(next_step_at(now, self.controller.interval_s) - now)
            await asyncio.to_thread(self.safe_step)


def step_summary(d: MultiDecision, names: list[str], table) -> dict:
    """What a step planned and did, for its log line (live, and `controller run` on AWS)."""
    return {
        "plan_by": d.plan.source,
        "solved": d.solved,
        "plan_ms": round(d.plan_s * 1000.0, 2),
        "shards": [
            {
                "pool": table.pools[sh.pool].key,
                "replicas": sh.replicas,
                "models": {names[m]: table.choices[c].variant for m, c in sh.members},
            }
            for sh in d.plan.shards
        ],
        "actions": [_describe(a, names, table) for a in d.actions],
    }


def _describe(a: PlacementAction, names: list[str], table) -> str:
    what = f"{a.kind} shard {a.sid}"
    if a.kind in ("load", "unload"):
        what += f" {names[a.model]} ({table.choices[a.choice].variant})"
    elif a.kind == "create":
        models = ", ".join(f"{names[m]} ({table.choices[c].variant})" for m, c in a.members)
        what = f"create {a.count} x {table.pools[a.pool].key} with {models}"
    elif a.count:
        what += f" x{a.count}"
    return what + (f" [{a.reason}]" if a.reason else "")
