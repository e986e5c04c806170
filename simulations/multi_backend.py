"""The simulated placement backend: shards of instances on a simulated clock, models loading
and unloading on them. It executes `PlacementAction`s as the local and AWS backends would and
keeps the timeline the multi-model data plane replays.

- A new replica serves after its pool's launch delay plus loading its shard's models one after
  another (their measured `load_s`); a model loaded onto running replicas serves on them after
  its `load_s` (its requests spill to Lambda meanwhile, as the router spills a cold model).
- Retiring takes the replicas that are not ready yet first, then the newest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridserve.multimodel.packing import Shard
from hybridserve.multimodel.placement import PlacementAction
from hybridserve.multimodel.table import ModelTable


@dataclass
class SimInstance:
    pool: str  # the pool's key, as `dataplane.ec2_bill` reads it
    launched_at: float
    ready_at: float
    ended_at: float | None = None
    end_reason: str | None = None


@dataclass
class Served:
    """Model `model` in variant `choice` served by a shard from `start` to `end` (None: on)."""

    model: int
    choice: int
    loaded_at: float  # the load began
    start: float  # serving (loaded) from
    end: float | None = None


@dataclass
class SimShard:
    sid: int
    pool: int
    instances: list[SimInstance] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    def live(self) -> list[SimInstance]:
        return [i for i in self.instances if i.ended_at is None]

    def current(self) -> dict[int, Served]:
        return {s.model: s for s in self.served if s.end is None}


@dataclass
class SimPlacementBackend:
    table: ModelTable
    shards: dict[int, SimShard] = field(default_factory=dict)
    next_sid: int = 0
    loads: int = 0
    evictions: int = 0
    now: float = 0.0

    def observe(self) -> tuple[Shard, ...]:
        out = []
        for sh in self.shards.values():
            live = sh.live()
            if not live:
                continue
            members = tuple(sorted((m, s.choice) for m, s in sh.current().items()))
            out.append(Shard(sh.pool, members, len(live), sh.sid))
        return tuple(out)

    def _boot_s(self, sh: SimShard) -> float:
        p = self.table.pools[sh.pool]
        loads = sum(self.table.choices[s.choice].load_s for s in sh.current().values())
        return p.launch_delay_s + loads

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        self.now = now
        for a in sorted(actions, key=lambda a: a.kind != "unload"):  # free memory first
            if a.kind == "create":
                sh = SimShard(self.next_sid, a.pool)
                self.next_sid += 1
                self.shards[sh.sid] = sh
                for m, c in a.members:
                    sh.served.append(Served(m, c, now, now))  # loaded while booting
                    self.loads += 1
                self._launch(sh, a.count, now)
                continue
            sh = self.shards[a.sid]
            if a.kind == "launch":
                self._launch(sh, a.count, now)
            elif a.kind == "retire":
                live = sorted(sh.live(), key=lambda i: (i.ready_at <= now, i.launched_at))
                for inst in live[: a.count] if a.count < len(live) else live:
                    inst.ended_at = now
                if not sh.live():
                    for s in sh.current().values():
                        s.end = now
            elif a.kind == "unload":
                cur = sh.current().get(a.model)
                if cur is not None:
                    cur.end = now
                    self.evictions += a.reason == "evict"
            elif a.kind == "load":
                ld = self.table.choices[a.choice].load_s
                sh.served.append(Served(a.model, a.choice, now, now + ld))
                self.loads += 1

    def make_ready(self, now: float) -> None:
        """The warm start: what the first decision launched and loaded serves from `now`."""
        for sh in self.shards.values():
            for inst in sh.instances:
                inst.launched_at = inst.ready_at = min(inst.ready_at, now)
            for sv in sh.served:
                sv.start = min(sv.start, now)

    def _launch(self, sh: SimShard, n: int, now: float) -> None:
        boot = self._boot_s(sh)
        for _ in range(n):
            sh.instances.append(SimInstance(self.table.pools[sh.pool].key, now, now + boot))
