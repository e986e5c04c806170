"""The model-server processes behind LocalBackend: each instance's record and life states, the
manager thread that spawns due instances, probes the readiness of starting ones, detects dead
processes and stops ended ones, and the process helpers it uses (the child's environment,
signals, the ``/v2/health/ready`` probe, addresses and free ports).

`LocalProcesses` is LocalBackend's base class: it holds the manager's half of the backend and
works on the state that ``LocalBackend.__init__`` sets up (declared below).
"""

from __future__ import annotations

import http.client
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hybridserve.fleet import Endpoint
from hybridserve.logs import event

log = logging.getLogger("hybridserve.backends.local")  # LocalBackend's records keep one logger

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


class LocalProcesses:
    """The manager thread and the state changes it makes, for `LocalBackend` (its subclass).

    Every method here runs with the attributes below, which ``LocalBackend.__init__`` sets, and
    the backend's clock ``now()``; the ``_locked`` ones expect ``self._lock`` held.
    """

    artifact: Path
    host: str
    max_batch: int
    max_delay_ms: float
    threads: int
    max_queue: int
    probe_interval_s: float
    start_timeout_s: float
    log_dir: Path | None
    _env: dict[str, str]
    _connect_host: str
    _lock: threading.Lock
    _stop: threading.Event
    _thread: threading.Thread | None
    _instances: dict[str, LocalInstance]
    _live: dict[str, list[LocalInstance]]
    _ending: dict[str, LocalInstance]
    _endpoints: tuple[Endpoint, ...]
    _events: list[tuple[float, str, str, str]]
    _start_times: list[float]

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
            *self._model_args(inst),
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

    def _model_args(self, inst: LocalInstance) -> list[str]:
        """What the server of `inst` serves, as model-server arguments: the one artifact here;
        a subclass serving a model repository names it and the models to load at boot. Called
        at spawn, without the lock held."""
        return ["--artifact", str(self.artifact)]

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
                self._record_locked(now, "ready", inst)
                self._refresh_endpoints_locked()
        elif self.now() - inst.spawned_at > self.start_timeout_s:
            log.warning(
                "instance %s not ready %.0f s after its start; killing it (log: %s)",
                inst.id,
                self.start_timeout_s,
                inst.log_path or "none, pass log_dir",
            )
            assert inst.proc is not None
            send_signal(inst.proc, kill=True)

    def _stop_ended(self, inst: LocalInstance) -> None:
        """Retired or lost: SIGTERM once the drain is over, SIGKILL 5 s later, then forget."""
        proc = inst.proc
        if proc is None or proc.poll() is not None:
            with self._lock:
                self._ending.pop(inst.id, None)
            return
        now = self.now()
        if inst.kill_at is None and inst.term_at is not None and now >= inst.term_at:
            send_signal(proc, kill=False)
            inst.kill_at = now + KILL_AFTER_TERM_S
        elif inst.kill_at is not None and now >= inst.kill_at:
            send_signal(proc, kill=True)

    # --- state changes (lock held) --------------------------------------------------------

    def _record_locked(self, now: float, kind: str, inst: LocalInstance) -> None:
        """One life event of an instance (launch, ready, retire, notice, lost): kept for
        `events()` and logged, so that a `serve` process's log tells when each instance was
        launched, served and (`ends_s`: when its process is told to stop, after any drain)
        ended, on the wall clock, which is what an instance is billed for."""
        self._events.append((now, kind, inst.pool, inst.id))
        fields: dict[str, object] = {"kind": kind, "instance": inst.id, "pool": inst.pool}
        if kind == "ready" and inst.spawned_at is not None:
            fields["start_s"] = round(now - inst.spawned_at, 3)
        if kind in ("retire", "notice", "lost") and inst.term_at is not None:
            fields["ends_s"] = round(max(inst.term_at - now, 0.0), 3)
        event(log, "backend.instance", **fields)

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
        self._record_locked(now, "lost", inst)
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


def send_signal(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
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


def child_env(threads: int, extra: Mapping[str, str] | None) -> dict[str, str]:
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


def connect_host(host: str) -> str:
    """Where to reach a server listening on `host` (a wildcard address means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
