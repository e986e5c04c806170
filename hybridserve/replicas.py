"""N router replicas on one port, one Controller behind them (`router.replicas: N` locally).

The controller's process keeps the fleet, the Lambda emulator and the control loop, and runs
no router itself: it starts N replica processes (hybridserve/router/replica.py) that bind the
serving port with SO_REUSEPORT, tells them the fleet through `fleet.json` whenever it changes,
and sums the arrivals they publish (hybridserve/arrivals.py) into the counts the Controller
takes, once per interval, once per request. A replica that dies takes only the connections it
held (their clients get a connection error, never silence); the kernel sends new connections
to the others, and the supervisor starts a new replica in its place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridserve.arrivals import ArrivalMerger, DirArrivals, write_atomic
from hybridserve.logs import event
from hybridserve.router.replica import FLEET, SPEC, reuseport_socket

log = logging.getLogger("hybridserve.replicas")

PUBLISH_EVERY_S = 0.5  # how often a replica publishes its arrivals (a local file: cheap)
STALE_S = 3.0  # a replica silent this long no longer holds back the others' seconds


class ReplicaSet:
    """Start, feed, supervise and stop the router replicas; `take_counts` for the LiveLoop.

    `spec` is what every replica builds its router from (router config, metadata, Lambda);
    `fleet_doc()` is the fleet and the controller's stats, written to `fleet.json` when they
    change."""

    def __init__(
        self,
        n: int,
        state_dir: Path,
        spec: dict[str, Any],
        fleet_doc: Callable[[], dict[str, Any]],
        *,
        log_dir: Path | None = None,
        owns_dir: bool = False,
    ) -> None:
        if n < 1:
            raise ValueError(f"router.replicas must be >= 1, got {n}")
        self.n = n
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = dict(spec)
        self.fleet_doc = fleet_doc
        self.log_dir = log_dir
        self.owns_dir = owns_dir  # remove the state directory on close
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts = 0
        self.store = DirArrivals(self.dir)
        self.merger = ArrivalMerger(STALE_S)
        self._reserved: socket.socket | None = None
        self._written: str | None = None
        self.port: int | None = None

    def start(self, timeout_s: float = 60.0) -> int:
        """Start every replica and wait until each listens; returns the port they share."""
        host, port = self.spec["host"], int(self.spec["port"])
        if port == 0:  # pick a port and hold it (bound, never listening: it takes no connection)
            self._reserved = reuseport_socket(host, 0)
            port = self._reserved.getsockname()[1]
        self.port = port
        keep_s = max(600, 4 * int(self.spec.get("interval_s", 60)))
        self.spec.update(port=port, replicas=self.n, publish_every_s=PUBLISH_EVERY_S, keep_s=keep_s)
        write_atomic(self.dir / SPEC, json.dumps(self.spec))
        self.write_fleet()
        for i in range(self.n):
            self._spawn(f"r{i}")
        deadline = time.monotonic() + timeout_s
        while not all(self.is_ready(r) for r in self.procs):
            dead = [r for r, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.close()
                why = f"replica {dead[0]} exited" if dead else f"not ready in {timeout_s:g} s"
                raise RuntimeError(f"the router replicas did not start: {why}{self._log_hint()}")
            time.sleep(0.05)
        event(log, "replicas.started", replicas=self.n, port=port, pids=self.pids())
        return port

    def _log_hint(self) -> str:
        return f" (see {self.log_dir}/router-*.log)" if self.log_dir else ""

    def _spawn(self, replica: str) -> None:
        (self.dir / f"ready-{replica}.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "hybridserve.router.replica", "--state-dir", str(self.dir),
               "--replica", replica]  # fmt: skip
        err = (
            open(self.log_dir / f"router-{replica}.log", "ab")  # noqa: SIM115
            if self.log_dir
            else subprocess.DEVNULL
        )
        self.procs[replica] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def is_ready(self, replica: str) -> bool:
        p = self.dir / f"ready-{replica}.json"
        try:
            return json.loads(p.read_text())["pid"] == self.procs[replica].pid
        except (OSError, ValueError, KeyError):
            return False

    def pids(self) -> dict[str, int]:
        return {r: p.pid for r, p in self.procs.items()}

    def kill(self, replica: str) -> None:
        """SIGKILL one replica (failure injection): the supervisor replaces it."""
        self.procs[replica].send_signal(signal.SIGKILL)

    def write_fleet(self) -> None:
        """`fleet.json` anew, when what it says changed."""
        doc = json.dumps(self.fleet_doc(), sort_keys=True)
        if doc != self._written:
            write_atomic(self.dir / FLEET, doc)
            self._written = doc

    def supervise(self) -> None:
        """Replace a replica that died (logged and counted)."""
        for replica, p in list(self.procs.items()):
            if p.poll() is not None:
                self.restarts += 1
                event(log, "replicas.lost", level=logging.WARNING, replica=replica,
                      code=p.returncode, restarts=self.restarts)  # fmt: skip
                self._spawn(replica)

    def take_counts(self) -> list[tuple[int, int]]:
        """Per-second arrivals summed over the replicas, each second once (for LiveLoop)."""
        return self.merger.take(self.store.read_all(), time.time())

    async def run(self) -> None:
        """Beside the control loop: the fleet out every 0.1 s, dead replicas replaced."""
        while True:
            await asyncio.sleep(0.1)
            try:
                self.write_fleet()
                self.supervise()
            except Exception:  # a hiccup here must not stop the fleet's updates
                log.exception("replica upkeep failed")

    def close(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every replica (they finish what they hold), SIGKILL what is left; idempotent."""
        procs, self.procs = list(self.procs.values()), {}
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        for f in self.dir.glob("ready-*.json"):
            f.unlink(missing_ok=True)
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
