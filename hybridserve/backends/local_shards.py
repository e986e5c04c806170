"""Model-server processes grouped in shards, each instance loading the models its shard should
hold: the process half of `LocalPlacementBackend` (`hybridserve.backends.local_placement`).

A shard is a pool of LocalBackend keyed ``"<type>/<market>#s<sid>"`` and mapped to its table
pool (launch delay; the key endpoints are priced by). Its servers run ``--repository`` and
boot with the shard's desired models (``--load NAME:VARIANT``, what the shard wants at spawn
time). Afterwards each ready instance converges to what its shard wants through
`hybridserve.backends.model_calls` (level-triggered, one call in flight per instance, unloads
first, failures retried with backoff), driven from the manager's probe loop.

The router sends a model to an instance only while it is confirmed loaded there in the variant
the shard wants: a model the shard no longer wants leaves the endpoint at once, a load joins it
once the server answered 200.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hybridserve.backends.local import LocalBackend, _serving, _since
from hybridserve.backends.local_processes import LocalInstance
from hybridserve.backends.model_calls import CallFailure, ModelCalls, ModelEvent, Target
from hybridserve.config import Pool
from hybridserve.fleet import Action
from hybridserve.reconcile import Observed, reconcile

log = logging.getLogger("hybridserve.backends.local")
INDEX_FILE = "repository.yaml"


@dataclass
class ShardSpec:
    pool: Pool  # the table's pool
    want: dict[str, str]  # model name -> variant every instance of the shard should serve
    why: dict[str, str] = field(default_factory=dict)  # name -> why it was last taken off


class ShardProcesses(LocalBackend):
    """LocalBackend whose pools are shards and whose servers serve a model repository.

    `repository`: the directory holding ``repository.yaml``. `memory_mb`: each server's
    memory budget for models (None: the server's default, the memory available at start less
    a margin). `call_timeout_s` bounds a load or unload call; a failed one is retried after
    `retry_s`, doubling up to `retry_max_s`. Other keywords are LocalBackend's.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        memory_mb: float | None = None,
        call_timeout_s: float = 60.0,
        retry_s: float = 0.5,
        retry_max_s: float = 15.0,
        **kw: Any,
    ) -> None:
        if memory_mb is not None and not memory_mb > 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
        self.memory_mb = memory_mb
        self._shards: dict[str, ShardSpec] = {}
        self.calls = ModelCalls(
            clock=lambda: self.now(),
            on_change=self._models_changed,
            call_timeout_s=call_timeout_s,
            retry_s=retry_s,
            retry_max_s=retry_max_s,
        )
        super().__init__(repository, [], **kw)

    def _check_artifact(self) -> None:
        if not (self.artifact / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{self.artifact}: not a model repository (no {INDEX_FILE})")

    # --- shards ---------------------------------------------------------------------------

    def add_shard(self, key: str, pool: Pool, want: Mapping[str, str]) -> None:
        with self._lock:
            if key in self._shards:
                raise ValueError(f"shard {key} exists")
            self._shards[key] = ShardSpec(pool, dict(want))
            self.pools[key] = pool

    def remove_shard(self, key: str) -> None:
        """Forget a shard with no live instance (one that has some keeps them)."""
        with self._lock:
            if not self._live.get(key):
                self._shards.pop(key, None)
                self.pools.pop(key, None)
                self._live.pop(key, None)

    def set_models(self, key: str, want: Mapping[str, str], why: Mapping[str, str]) -> None:
        """What the shard's instances should serve from now on; `why` says why models were
        taken off (an ``evict`` is logged as one). Models no longer wanted leave routing now."""
        with self._lock:
            spec = self._shards[key]
            spec.want = dict(want)
            spec.why.update(why)
            self._refresh_endpoints_locked()

    def scale(self, key: str, delta: int) -> list[Action]:
        """Launch (`delta` > 0) or retire (< 0) instances of one shard, as `converge` would:
        launching ones retire first, then the most recently ready, which drain."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ShardProcesses is closed")
            now = self.now()
            live = self._live.get(key, [])
            observed = [Observed(i.id, key, not _serving(i), _since(i)) for i in live]
            target = {key: max(0, len(live) + delta)}
            actions = self._execute_locked(reconcile(target, observed, now, pools=self.pools), now)
            self._ensure_thread_locked()
        return actions

    def live_counts(self) -> dict[str, int]:
        """Shard key -> instances pending, starting or ready."""
        with self._lock:
            return {k: len(v) for k, v in self._live.items() if v}

    def totals(self) -> dict[str, int]:
        """Table pool key -> live instances: what the fleet is billed for."""
        out: dict[str, int] = {}
        with self._lock:
            for key, live in self._live.items():
                if live:
                    pk = self.pools[key].key
                    out[pk] = out.get(pk, 0) + len(live)
        return out

    def model_events(self) -> list[ModelEvent]:
        return self.calls.events()

    def failures(self) -> list[CallFailure]:
        """The last 1000 failed model calls, oldest first."""
        return self.calls.failures()

    def failed(self) -> dict[str, int]:
        """Failed calls by kind (load, unload, index), since the start."""
        return self.calls.failed()

    def close(self) -> None:
        super().close()
        self.calls.close()

    # --- hooks of LocalBackend ------------------------------------------------------------

    def _model_args(self, inst: LocalInstance) -> list[str]:
        """The repository and the shard's models as wanted now; what the server holds once
        ready (it loads every --load before it answers ready, or exits and is lost)."""
        with self._lock:
            spec = self._shards.get(inst.pool)
            want = dict(spec.want) if spec is not None else {}
        self.calls.boot(inst.id, inst.pool, want)
        args = ["--repository", str(self.artifact)]
        for name, variant in want.items():
            args += ["--load", f"{name}:{variant}"]
        if self.memory_mb is not None:
            args += ["--memory-mb", f"{self.memory_mb:g}"]
        return args

    def _tick(self) -> None:
        super()._tick()
        with self._lock:
            if self._closed:
                return
            alive = {i.id for live in self._live.values() for i in live}
            ready = [
                Target(inst.id, key, self._connect_host, inst.port, dict(spec.want), spec.why)
                for key, live in self._live.items()
                if (spec := self._shards.get(key)) is not None
                for inst in live
                if inst.state == "ready" and inst.port is not None
            ]
        self.calls.start(ready, alive)

    def _record_locked(self, now: float, kind: str, inst: LocalInstance) -> None:
        super()._record_locked(now, kind, inst)
        if kind == "ready":
            self.calls.booted(inst.id)
        elif kind in ("retire", "notice", "lost"):
            self.calls.forget([inst.id])

    def _models_changed(self) -> None:
        with self._lock:
            self._refresh_endpoints_locked()

    def _refresh_endpoints_locked(self) -> None:
        """Ready instances priced by their table pool, each with the models it serves."""
        super()._refresh_endpoints_locked()
        eps = []
        for e in self._endpoints:
            spec = self._shards.get(e.pool)
            held = self.calls.serving(e.instance_id, spec.want) if spec is not None else {}
            pool = spec.pool.key if spec is not None else e.pool
            variants = tuple(sorted(held.items()))
            eps.append(replace(e, pool=pool, models=frozenset(held), variants=variants))
        self._endpoints = tuple(eps)
