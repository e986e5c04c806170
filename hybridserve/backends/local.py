"""Local backend: the whole system on one machine, with model-server processes as instances.

The same Controller that drives the simulator and EC2 drives real processes here: converge
launches an instance "pending", its ``hybridserve model-server`` process is spawned once the
launch delay has passed (emulating a VM's boot) and it serves once its ``/v2/health/ready``
answers 200 (readiness from the server, as on AWS). A process that dies is *lost*, like a
vanished spot instance: it leaves the fleet and the next converge replaces it.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

from hybridserve.config import Pool
from hybridserve.fleet import Action, Endpoint, FleetView, PoolState
from hybridserve.reconcile import Observed, reconcile

log = logging.getLogger(__name__)

DEFAULT_START_S = 1.0  # spawn-to-ready guess until one start is measured (mlp: ~1 s on 2 cores)
KILL_AFTER_TERM_S = 5.0  # SIGKILL a process that has not exited this long after SIGTERM
READY_PATH = "/v2/health/ready"

State = Literal["pending", "spawning", "starting", "ready", "retired", "lost"]


@dataclass
class LocalInstance:
    """One instance's life on the backend's clock; `proc` exists from spawn on."""

    id: str
    pool: str
    launched_at: float
    spawn_at: float  # launch + launch delay: when the "VM" has booted and the server starts
    state: State = "pending"
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    url: str | None = None
    spawned_at: float | None = None
    ready_at: float | None = None
    term_at: float | None = None  # retired or lost: when the process gets SIGTERM
    kill_at: float | None = None  # set once SIGTERM is sent
    log_path: Path | None = None


class LocalBackend:
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
        if not (self.artifact / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.artifact}: not a model artifact (no manifest.json)")
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
        self._env = _child_env(threads, env)
        self._connect_host = _connect_host(host)

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

    def converge(self, target: Mapping[str, int]) -> list[Action]:
        """Launch or retire so each pool's count (ready + launching) equals its target.

        Executes `hybridserve.reconcile`'s actions, as every backend does: launching instances
        retire first, then the most recently ready ones, which drain for `drain_s`. The whole
        target is checked before anything changes: every key must name a pool.
        """
        for key in target:
            if key not in self.pools:
                raise KeyError(f"unknown pool {key!r}; known: {sorted(self.pools)}")
        actions: list[Action] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("LocalBackend is closed")
            now = self.now()
            observed = [
                Observed(i.id, key, not _serving(i), _since(i))
                for key, live in self._live.items()
                for i in live
            ]
            for a in reconcile(target, observed, now):  # raises before any change
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
                self._events.append((now, a.kind, a.pool, a.instance_id))
                actions.append(a)
            if actions:
                self._refresh_endpoints_locked()
            self._ensure_thread_locked()
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
            _signal(proc, kill=True)

    def events(self) -> list[tuple[float, str, str, str]]:
        """(time, kind, pool, instance id), kind one of launch, ready, retire, lost."""
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
            _signal(p, kill=False)
        deadline = time.monotonic() + KILL_AFTER_TERM_S
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, kill=True)
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

    # --- the manager thread ---------------------------------------------------------------

    def _ensure_thread_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="hybridserve-local-backend", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # keep managing: a bug here must not strand the fleet
                log.exception("local backend manager tick failed")
            self._stop.wait(self.probe_interval_s)

    def _tick(self) -> None:
        """One pass: spawn due instances, detect deaths, probe starting ones, stop ended ones."""
        with self._lock:
            now = self.now()
            live = [i for insts in self._live.values() for i in insts]
            due = [i for i in live if i.state == "pending" and i.spawn_at <= now]
            for inst in due:
                inst.state = "spawning"
        for inst in due:
            if self._stop.is_set():
                break
            self._spawn(inst)
        with self._lock:
            running = [i for insts in self._live.values() for i in insts if i.proc is not None]
            ending = list(self._ending.values())
        for inst in running:
            assert inst.proc is not None
            code = inst.proc.poll()
            if code is not None:
                with self._lock:
                    if inst.state in ("starting", "ready"):
                        self._lose_locked(inst, f"process exited with code {code}")
            elif inst.state == "starting":
                self._probe_starting(inst)
        for inst in ending:
            self._stop_ended(inst)

    def _spawn(self, inst: LocalInstance) -> None:
        try:
            port = self._free_port()
            proc = self._popen(inst, port)
        except OSError as e:
            with self._lock:
                if inst.state == "spawning":
                    self._lose_locked(inst, f"could not start the model server: {e}")
            return
        with self._lock:
            now = self.now()
            inst.proc, inst.port, inst.spawned_at = proc, port, now
            inst.url = f"http://{_url_host(self._connect_host)}:{port}"
            if inst.state == "spawning":
                inst.state = "starting"
            else:  # retired or killed while spawning: stop the process at once
                inst.term_at = now
                self._ending[inst.id] = inst

    def _popen(self, inst: LocalInstance, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "hybridserve",
            "model-server",
            "--artifact",
            str(self.artifact),
            "--host",
            self.host,
            "--port",
            str(port),
            "--max-batch",
            str(self.max_batch),
            "--max-delay-ms",
            str(self.max_delay_ms),
            "--threads",
            str(self.threads),
            "--max-queue",
            str(self.max_queue),
        ]
        if self.log_dir is None:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the parent
            )
        inst.log_path = self.log_dir / f"{inst.id}.log"
        with open(inst.log_path, "ab") as out:  # the child keeps its own descriptor
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )

    def _free_port(self) -> int:
        """A port the OS considers free, not handed to another live instance of ours.

        Another program may still take it before the server binds: that server exits, is
        reported lost and the next converge replaces it, as any other loss.
        """
        with self._lock:
            taken = {
                i.port
                for i in self._instances.values()
                if i.proc is not None and i.proc.returncode is None
            }
        last: OSError | None = None
        for _ in range(20):
            try:
                with socket.socket(_family(self._connect_host), socket.SOCK_STREAM) as s:
                    s.bind((self.host, 0))
                    port = int(s.getsockname()[1])
            except OSError as e:
                last = e
                time.sleep(0.05)
                continue
            if port not in taken:
                return port
        raise OSError(f"no free port on {self.host}: {last or 'every port offered was ours'}")

    def _probe_starting(self, inst: LocalInstance) -> None:
        assert inst.port is not None and inst.spawned_at is not None
        if _ready(self._connect_host, inst.port, timeout_s=min(1.0, 5 * self.probe_interval_s)):
            with self._lock:
                if inst.state != "starting":
                    return
                now = self.now()
                inst.state, inst.ready_at = "ready", now
                self._start_times.append(now - inst.spawned_at)
                self._events.append((now, "ready", inst.pool, inst.id))
                self._refresh_endpoints_locked()
        elif self.now() - inst.spawned_at > self.start_timeout_s:
            log.warning(
                "instance %s not ready %.0f s after its start; killing it (log: %s)",
                inst.id,
                self.start_timeout_s,
                inst.log_path or "none, pass log_dir",
            )
            assert inst.proc is not None
            _signal(inst.proc, kill=True)

    def _stop_ended(self, inst: LocalInstance) -> None:
        """Retired or lost: SIGTERM once the drain is over, SIGKILL 5 s later, then forget."""
        proc = inst.proc
        if proc is None or proc.poll() is not None:
            with self._lock:
                self._ending.pop(inst.id, None)
            return
        now = self.now()
        if inst.kill_at is None and inst.term_at is not None and now >= inst.term_at:
            _signal(proc, kill=False)
            inst.kill_at = now + KILL_AFTER_TERM_S
        elif inst.kill_at is not None and now >= inst.kill_at:
            _signal(proc, kill=True)

    # --- state changes (lock held) --------------------------------------------------------

    def _end_locked(self, inst: LocalInstance, state: State, term_at: float) -> None:
        inst.state = state
        inst.term_at = term_at
        if inst.proc is not None:
            self._ending[inst.id] = inst

    def _lose_locked(self, inst: LocalInstance, why: str) -> None:
        now = self.now()
        live = self._live.get(inst.pool, [])
        if inst in live:
            live.remove(inst)
        self._end_locked(inst, "lost", now)
        self._events.append((now, "lost", inst.pool, inst.id))
        self._refresh_endpoints_locked()
        log.warning(
            "instance %s (%s) lost: %s (log: %s)",
            inst.id,
            inst.pool,
            why,
            inst.log_path or "none, pass log_dir",
        )

    def _refresh_endpoints_locked(self) -> None:
        ready = [i for insts in self._live.values() for i in insts if i.state == "ready"]
        ready.sort(key=lambda i: int(i.id.rsplit("-", 1)[1]))  # launch order
        self._endpoints = tuple(Endpoint(i.id, i.pool, i.url or "") for i in ready)

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


def _signal(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
    """SIGKILL or SIGTERM, ignoring a process that is already gone."""
    try:
        if kill:
            proc.kill()
        else:
            proc.terminate()
    except (ProcessLookupError, OSError):
        pass


def _ready(host: str, port: int, timeout_s: float) -> bool:
    """GET /v2/health/ready answered 200 (http.client: no proxy settings apply to loopback)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", READY_PATH)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _child_env(threads: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The parent's environment, OMP_NUM_THREADS, `extra`, and a PYTHONPATH that finds this code.

    The child runs ``python -m hybridserve``: the directories the parent imported hybridserve
    and predictors from go first, so the child serves with the same code, installed or not.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    roots: list[str] = []
    for name in ("hybridserve", "predictors"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).resolve().parents[1])
            if root not in roots:
                roots.append(root)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(roots + ([old] if old else []))
    env.update(extra or {})
    return env


def _connect_host(host: str) -> str:
    """Where to reach a server listening on `host` (a wildcard address means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
