"""The multi-model controller's placement backend on one machine: shards of local
``hybridserve model-server`` processes, loading and unloading models as the plan says.

It executes the `PlacementAction`s that `reconcile_placement` decides with the meaning the
simulator gives them (`simulations.multi_backend.SimPlacementBackend`): unloads first, then a
created shard's instances boot with its models, launch and retire change a shard's replicas
(retiring those not ready first, then the newest), load and unload change the models a shard
should hold. `apply` only records intent and starts processes; the running servers converge to
it in the background (`hybridserve.backends.local_shards`), so the controller never waits on
a model load. `observe` reports what the plan asked of each shard that has a live instance.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from hybridserve.backends.local_shards import ShardProcesses
from hybridserve.backends.model_calls import CallFailure
from hybridserve.fleet import Endpoint
from hybridserve.multimodel.packing import Shard
from hybridserve.multimodel.placement import PlacementAction
from hybridserve.multimodel.table import ModelTable

KINDS = ("create", "launch", "retire", "load", "unload")


class PlacementEvent(NamedTuple):
    """An instance's life (launch, ready, retire, notice, lost) or a model's on it (load,
    unload, evict, load-failed, unload-failed, index-failed; `model` names it)."""

    time: float
    kind: str
    shard: str  # "<type>/<market>#s<sid>"
    instance: str
    model: str = ""
    detail: str = ""  # a model's variant ("boot": loaded at spawn), or a failure's message


@dataclass
class _Placed:
    """A shard as the plan left it: its pool and the (model -> choice) it should hold."""

    sid: int
    pool: int
    key: str
    members: dict[int, int]


class LocalPlacementBackend:
    """`PlacementBackend` over local model-server processes, one shard a group of them.

    `repository`: a directory whose ``repository.yaml`` lists every model of the table under
    its served name with each variant it may take (``models: {name: {variant: artifact}}``).
    `memory_mb`: each server's budget for models (None: the server's default). The other
    settings are LocalBackend's; `launch_delay_s` overrides the table pools' delays.
    Thread-safe: the controller applies from its thread while the router reads `endpoints()`.
    """

    def __init__(
        self,
        table: ModelTable,
        repository: str | Path,
        *,
        launch_delay_s: float | None = None,
        drain_s: float = 2.0,
        max_batch: int = 8,
        max_delay_ms: float = 2.0,
        threads: int = 1,
        max_queue: int = 1024,
        memory_mb: float | None = None,
        log_dir: str | Path | None = None,
        probe_interval_s: float = 0.1,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 60.0,
        retry_s: float = 0.5,
        retry_max_s: float = 15.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.table = table
        self.repository = Path(repository)
        _check_index(table, self.repository)
        self.procs = ShardProcesses(
            self.repository,
            memory_mb=memory_mb,
            call_timeout_s=call_timeout_s,
            retry_s=retry_s,
            retry_max_s=retry_max_s,
            launch_delay_s=launch_delay_s,
            drain_s=drain_s,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            threads=threads,
            max_queue=max_queue,
            host=host,
            probe_interval_s=probe_interval_s,
            log_dir=log_dir,
            start_timeout_s=start_timeout_s,
        )
        self._lock = threading.Lock()  # taken before the processes' own lock, never after
        self._shards: dict[int, _Placed] = {}
        self._next_sid = 0
        self._loads = 0
        self._evictions = 0

    # --- the PlacementBackend protocol ----------------------------------------------------

    def observe(self) -> tuple[Shard, ...]:
        """Each shard with a live (pending, starting or ready) instance: its pool, the members
        the plan asked for (loaded or loading) and its live instances. A shard whose instances
        all died is not seen: the controller creates it again."""
        with self._lock:
            live = self.procs.live_counts()
            return tuple(
                Shard(sh.pool, tuple(sorted(sh.members.items())), live[sh.key], sid)
                for sid, sh in sorted(self._shards.items())
                if live.get(sh.key, 0) > 0
            )

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        """Execute the actions, unloads first; returns at once (servers converge behind).

        Every action is checked before anything changes (ValueError or KeyError). `now` is the
        controller's clock; processes keep this backend's own (`now()`).
        """
        with self._lock:
            for a in actions:
                self._check_locked(a)
            for a in sorted(actions, key=lambda a: a.kind != "unload"):  # free memory first
                if a.kind == "create":
                    self._create_locked(a)
                    continue
                sh = self._shards[a.sid]
                if a.kind == "launch":
                    self.procs.scale(sh.key, a.count)
                elif a.kind == "retire":
                    self.procs.scale(sh.key, -a.count)
                elif a.kind == "unload":
                    if sh.members.pop(a.model, None) is not None:
                        self._evictions += a.reason == "evict"
                        name = self.table.fleet.models[a.model].name
                        self.procs.set_models(sh.key, self._names(sh.members), {name: a.reason})
                else:  # load
                    sh.members[a.model] = a.choice
                    self._loads += 1
                    self.procs.set_models(sh.key, self._names(sh.members), {})
            live = self.procs.live_counts()
            for sid in [s for s, sh in self._shards.items() if live.get(sh.key, 0) == 0]:
                self.procs.remove_shard(self._shards.pop(sid).key)  # retired whole, or died

    # --- serving and accounting -----------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """Ready instances, priced by their table pool, each with the models confirmed loaded
        there in the variant its shard wants (a cached copy: no I/O)."""
        return self.procs.endpoints()

    def totals(self) -> dict[str, int]:
        """Table pool key -> live instances (what the fleet's cost rate counts)."""
        return self.procs.totals()

    @property
    def loads(self) -> int:
        """Models the plan loaded (each member of a created shard, each load), as simulated."""
        with self._lock:
            return self._loads

    @property
    def evictions(self) -> int:
        """Unloads the plan made to make room (reason ``evict``), as simulated."""
        with self._lock:
            return self._evictions

    def failed(self) -> dict[str, int]:
        """Failed model calls to the servers by kind (load, unload, index); each is retried."""
        return self.procs.failed()

    def failures(self) -> list[CallFailure]:
        """The last failed model calls: instance, call, model, HTTP status, server's message."""
        return self.procs.failures()

    def events(self) -> list[PlacementEvent]:
        """Instance and model events in time order."""
        out = [PlacementEvent(t, k, p, i) for t, k, p, i in self.procs.events()]
        out += [PlacementEvent(*e) for e in self.procs.model_events()]
        out.sort(key=lambda e: e.time)  # stable: an instance's ready precedes its boot loads
        return out

    def now(self) -> float:
        return self.procs.now()

    def kill(self, instance_id: str) -> None:
        """SIGKILL an instance's process (failure injection); it is then lost."""
        self.procs.kill(instance_id)

    def notice(self, instance_ids: list[str], notice_s: float = 120.0) -> list[str]:
        """A spot interruption notice: the instances leave routing and their shards' counts at
        once and stop `notice_s` later (LocalBackend.notice); returns those taken."""
        return self.procs.notice(instance_ids, notice_s)

    def pids(self) -> dict[str, int]:
        return self.procs.pids()

    def close(self) -> None:
        """Stop every process and the background work; idempotent."""
        self.procs.close()

    def __enter__(self) -> LocalPlacementBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _check_locked(self, a: PlacementAction) -> None:
        t = self.table
        if a.kind not in KINDS:
            raise ValueError(f"unknown placement action {a.kind!r}")
        if a.kind == "create":
            if not 0 <= a.pool < len(t.pools):
                raise ValueError(f"create: no pool {a.pool} in the table")
            pairs = list(a.members)
        elif a.sid not in self._shards:
            raise KeyError(f"{a.kind}: no running shard {a.sid}")
        else:
            pairs = [(a.model, a.choice)] if a.kind == "load" else []
        if a.kind in ("create", "launch", "retire") and a.count < 0:
            raise ValueError(f"{a.kind}: negative count {a.count}")
        for m, c in pairs:
            if not 0 <= m < t.n_models or c not in t.model_choices[m]:
                raise ValueError(f"{a.kind}: model {m} cannot take choice {c}")

    def _create_locked(self, a: PlacementAction) -> None:
        sid = self._next_sid
        self._next_sid += 1
        pool = self.table.pools[a.pool]
        sh = _Placed(sid, a.pool, f"{pool.key}#s{sid}", dict(a.members))
        self._shards[sid] = sh
        self._loads += len(sh.members)  # loaded while booting
        self.procs.add_shard(sh.key, pool, self._names(sh.members))
        self.procs.scale(sh.key, a.count)

    def _names(self, members: dict[int, int]) -> dict[str, str]:
        """(model -> choice) as the servers know it: served name -> variant."""
        t = self.table
        return {t.fleet.models[m].name: t.choices[c].variant for m, c in sorted(members.items())}


def _check_index(table: ModelTable, root: Path) -> None:
    """Every (model, variant) the planner may choose must be in the repository's index, so a
    plan never asks a server for a model it cannot find."""
    from predictors.repository_index import INDEX, read_index

    models, problems = read_index(root)
    t = table
    missing = [
        f"{t.fleet.models[m].name}:{t.choices[c].variant}"
        for m, cs in enumerate(t.model_choices)
        for c in cs
        if t.choices[c].variant not in models.get(t.fleet.models[m].name, {})
    ]
    if missing:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise ValueError(f"{root / INDEX} lacks {', '.join(missing)}{why}")
