"""Local backend: the whole system on one machine, with model-server processes as instances.

The same Controller that drives the simulator and EC2 drives real processes here: converge
launches an instance "pending", its ``hybridserve model-server`` process is spawned once the
launch delay has passed (emulating a VM's boot) and it serves once its ``/v2/health/ready``
answers 200 (readiness from the server, as on AWS). A process that dies is *lost*, like a
vanished spot instance: it leaves the fleet and the next converge replaces it.

This module is the backend's protocol side (converge, observe, endpoints, kill, notice, close); the
manager thread and the processes it runs are in `hybridserve.backends.local_processes`.
"""

from __future__ import annotations

import atexit
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from hybridserve.backends.local_processes import (
    KILL_AFTER_TERM_S,
    LocalInstance,
    LocalProcesses,
    child_env,
    connect_host,
    send_signal,
)
from hybridserve.config import Pool
from hybridserve.fleet import Action, Endpoint, FleetView, PoolState
from hybridserve.reconcile import Observed, reconcile

DEFAULT_START_S = 1.0  # spawn-to-ready guess until one start is measured (mlp: ~1 s on 2 cores)


class LocalBackend(LocalProcesses):
    """`ServingBackend` over local ``hybridserve model-server`` processes; mirrors SimulatedBackend.

    A background manager thread (every `probe_interval_s`) spawns due instances, probes the
    readiness of starting ones, detects dead processes and terminates retired ones. Every public
    method is thread-safe: the controller converges from its thread while the router reads
    `endpoints()`; the lock is never held during I/O. `close()` (also on exit of the
    interpreter, through atexit) leaves no process behind.

    `launch_delay_s` overrides every pool's launch delay (~90 s for a VM; a few seconds locally).
    `start_timeout_s`: a server not ready this long after its spawn is killed (and so lost).
    """

    def __init__(
        self,
        artifact: str | Path,
        pools: list[Pool],
        *,
        launch_delay_s: float | None = None,
        drain_s: float = 2.0,
        max_batch: int = 8,
        max_delay_ms: float = 5.0,
        threads: int = 1,
        max_queue: int = 1024,
        host: str = "127.0.0.1",
        probe_interval_s: float = 0.1,
        log_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.artifact = Path(artifact)
        self._check_artifact()
        if launch_delay_s is not None and launch_delay_s < 0:
            raise ValueError(f"launch_delay_s must be >= 0, got {launch_delay_s}")
        if drain_s < 0 or probe_interval_s <= 0 or start_timeout_s <= 0:
            raise ValueError("drain_s must be >= 0; probe_interval_s, start_timeout_s > 0")
        if max_batch < 1 or threads < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("max_batch, threads, max_queue must be >= 1; max_delay_ms >= 0")
        self.pools = {p.key: p for p in pools}
        self.launch_delay_s = launch_delay_s
        self.drain_s = drain_s
        self.max_batch = max_batch
        self.max_delay_ms = max_delay_ms
        self.threads = threads
        self.max_queue = max_queue
        self.host = host
        self.probe_interval_s = probe_interval_s
        self.start_timeout_s = start_timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._env = child_env(threads, env)
        self._connect_host = connect_host(host)

        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_id = 0
        self._instances: dict[str, LocalInstance] = {}  # every instance ever, by id
        self._live: dict[str, list[LocalInstance]] = {}  # pool -> pending, starting, ready
        self._ending: dict[str, LocalInstance] = {}  # retired or lost with a process to stop
        self._endpoints: tuple[Endpoint, ...] = ()
        self._events: list[tuple[float, str, str, str]] = []
        self._start_times: list[float] = []
        atexit.register(self.close)

    # --- the Backend protocol -------------------------------------------------------------

    def now(self) -> float:
        """Monotonic seconds since the backend was created."""
        return time.monotonic() - self._t0

    def observe(self) -> FleetView:
        """Ready count and, for instances not yet ready, estimated seconds until ready."""
        with self._lock:
            now = self.now()
            start = self._expected_start_locked()
            out = {}
            for key, live in self._live.items():
                if not live:
                    continue
                ready = sum(1 for i in live if i.state == "ready")
                pend = tuple(self._ready_in(i, now, start) for i in live if i.state != "ready")
                out[key] = PoolState(ready=ready, pending_ready_in_s=pend)
        return FleetView(out)

    def converge(self, target: Mapping[str, int], *, intent: str | None = None) -> list[Action]:
        """Launch or retire so each pool's count (ready + launching) equals its target.

        Executes `hybridserve.reconcile`'s actions, as every backend does: launching instances
        retire first, then the most recently ready ones, which drain for `drain_s`. The whole
        target is checked before anything changes: every key must name a pool.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("LocalBackend is closed")
            now = self.now()
            observed = [
                Observed(i.id, key, not _serving(i), _since(i))
                for key, live in self._live.items()
                for i in live
            ]
            # raises before any change (an unknown pool, a negative count)
            actions = self._execute_locked(reconcile(target, observed, now, pools=self.pools), now)
            self._ensure_thread_locked()
        return actions

    def _execute_locked(self, decided: list[Action], now: float) -> list[Action]:
        """Carry out `reconcile`'s actions (a launch gets its instance id); a subclass that
        reconciles a part of the fleet at a time executes its actions here too."""
        actions: list[Action] = []
        for a in decided:
            if a.kind == "launch":
                inst = LocalInstance(
                    f"local-{self._next_id}", a.pool, now, now + self._launch_delay(a.pool)
                )
                self._next_id += 1
                self._instances[inst.id] = inst
                self._live.setdefault(a.pool, []).append(inst)
                a = replace(a, instance_id=inst.id)
            else:
                inst = self._instances[a.instance_id]
                drain = self.drain_s if inst.state == "ready" else 0.0
                self._end_locked(inst, "retired", now + drain)
                self._live[a.pool].remove(inst)
            self._record_locked(now, a.kind, inst)
            actions.append(a)
        if actions:
            self._refresh_endpoints_locked()
        return actions

    # --- serving --------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """Ready instances, in launch order; a copy of a cached tuple (no I/O)."""
        with self._lock:
            return list(self._endpoints)

    def kill(self, instance_id: str) -> None:
        """SIGKILL an instance's process (failure injection); the manager then reports it lost.

        An instance not yet spawned is lost at once, as a VM that fails to boot.
        """
        with self._lock:
            inst = self._instances.get(instance_id)
            if inst is None:
                raise KeyError(f"unknown instance {instance_id!r}")
            proc = inst.proc
            if proc is None and inst.state in ("pending", "spawning"):
                self._lose_locked(inst, "killed before its process started")
        if proc is not None:
            send_signal(proc, kill=True)

    def notice(self, instance_ids: list[str], notice_s: float = 120.0) -> list[str]:
        """A spot interruption notice (failure injection, as the fault layer sends on AWS):
        each live instance named leaves routing and the count at once and its process stops
        `notice_s` later, so what was sent to it finishes; `Controller.on_notice` then
        launches the replacement. Returns the instances taken."""
        took = []
        with self._lock:
            now = self.now()
            for iid in instance_ids:
                inst = self._instances.get(iid)
                if inst is None or inst not in self._live.get(inst.pool, []):
                    continue
                self._live[inst.pool].remove(inst)
                self._end_locked(inst, "retired", now + (notice_s if _serving(inst) else 0.0))
                self._record_locked(now, "notice", inst)
                took.append(iid)
            if took:
                self._refresh_endpoints_locked()
        return took

    def events(self) -> list[tuple[float, str, str, str]]:
        """(time, kind, pool, instance id), kind one of launch, ready, retire, notice, lost."""
        with self._lock:
            return list(self._events)

    def start_times(self) -> list[float]:
        """Measured seconds from spawn to ready, per instance that became ready."""
        with self._lock:
            return list(self._start_times)

    @property
    def expected_start_s(self) -> float:
        """Spawn-to-ready estimate in observe(): median of the last 5 measured, else 1 s."""
        with self._lock:
            return self._expected_start_locked()

    def pids(self) -> dict[str, int]:
        """Instance id -> pid of every model server this backend started (checks, tests)."""
        with self._lock:
            return {i.id: i.proc.pid for i in self._instances.values() if i.proc is not None}

    def close(self) -> None:
        """Stop the manager and every process (SIGTERM, SIGKILL after 5 s); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            now = self.now()
            for live in self._live.values():
                for inst in live:
                    self._end_locked(inst, "retired", now)
            self._live.clear()
            self._endpoints = ()
            procs = [i.proc for i in self._instances.values() if i.proc is not None]
        for p in procs:
            send_signal(p, kill=False)
        deadline = time.monotonic() + KILL_AFTER_TERM_S
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                send_signal(p, kill=True)
                p.wait()
        atexit.unregister(self.close)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- estimates ------------------------------------------------------------------------

    def _check_artifact(self) -> None:
        """Fail at construction, not at the first spawn, when the servers' model is missing (a
        subclass whose `artifact` is a model repository checks that instead)."""
        if not (self.artifact / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.artifact}: not a model artifact (no manifest.json)")

    def _expected_start_locked(self) -> float:
        if not self._start_times:
            return DEFAULT_START_S
        return float(statistics.median(self._start_times[-5:]))

    def _launch_delay(self, key: str) -> float:
        if self.launch_delay_s is not None:
            return self.launch_delay_s
        return self.pools[key].launch_delay_s

    @staticmethod
    def _ready_in(inst: LocalInstance, now: float, start: float) -> float:
        if inst.state == "pending":
            return max(0.0, inst.spawn_at - now) + start
        if inst.spawned_at is None:  # spawning
            return start
        return max(0.0, start - (now - inst.spawned_at))


def _serving(inst: LocalInstance) -> bool:
    return inst.state == "ready" and inst.ready_at is not None


def _since(inst: LocalInstance) -> float:
    """Ready time once serving, launch time before: scale-in retires the newest first."""
    return inst.ready_at if _serving(inst) and inst.ready_at is not None else inst.launched_at
