"""Drain on retirement: out of routing first, terminated once what the router sent has finished.

Level-triggered like the rest: the drain's start is a tag on the instance (`T.DRAINING`, epoch
seconds), so every router leaves the instance out on its next refresh, and any controller,
restarted or not, terminates it once `drain_s` has passed. A timer terminates it on time
between steps; a crash loses only the timer, and the next converge terminates what drained.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.ec2 import LIVE_STATES, Ec2Fleet, Ec2Instance

DRAIN_S = 35.0  # the router's upstream timeout (30 s) and a margin: what it sent has finished
log = logging.getLogger("hybridserve.aws.ec2")


class Drain:
    """Retires instances of one fleet through a drain of `drain_s` seconds (0: at once)."""

    def __init__(self, fleet: Ec2Fleet, drain_s: float, clock: Callable[[], float]) -> None:
        self.fleet = fleet
        self.drain_s = drain_s
        self.clock = clock
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self._idle = threading.Event()  # no drain of this process is waiting to end
        self._idle.set()

    def retire(
        self,
        found: list[Ec2Instance],
        ids: set[str],
        may_serve: Callable[[Ec2Instance], bool],
    ) -> None:
        """Drain what may hold requests (`may_serve`: the router may have sent it some),
        terminate what cannot or has drained. Pending, stopped and never-ready instances are
        terminated at once: nobody was routed to them."""
        now = self.clock()
        drain, terminate = [], []
        for i in found:
            if i.instance_id not in ids:
                continue
            if i.draining_since is not None:
                if now - i.draining_since >= self.drain_s:
                    terminate.append(i.instance_id)
            elif self.drain_s > 0 and i.state == "running" and may_serve(i):
                drain.append(i.instance_id)
            else:
                terminate.append(i.instance_id)
        self.fleet.terminate(terminate)
        self.fleet.mark(drain, T.DRAINING, f"{now:.3f}")
        left = [
            (i.draining_since or now) + self.drain_s - now
            for i in found
            if i.instance_id in ids and i.instance_id not in terminate
        ]
        if left:
            self._later(max(0.0, min(left)))

    def _later(self, delay_s: float) -> None:
        with self._lock:
            if self._closed or (self._timer is not None and self._timer.is_alive()):
                return
            self._idle.clear()
            self._timer = threading.Timer(delay_s + 0.05, self._terminate_drained)
            self._timer.daemon = True
            self._timer.start()

    def _terminate_drained(self) -> None:
        with self._lock:
            self._timer = None  # so that _later can schedule the next one from here
        left: list[float] = []
        try:
            draining = [
                i
                for i in self.fleet.observe()
                if i.draining_since is not None and i.state in LIVE_STATES
            ]
            now = self.clock()
            done = [i.instance_id for i in draining if now - i.draining_since >= self.drain_s]
            self.fleet.terminate(done)
            left = [
                i.draining_since + self.drain_s - now for i in draining if i.instance_id not in done
            ]
        except (ClientError, BotoCoreError):  # the next converge terminates them
            log.exception("terminating drained instances failed")
        if left:
            self._later(max(0.0, min(left)))
        else:
            self._idle.set()

    def wait(self) -> None:
        """Block until every drain this process started has ended (a CLI command that
        retires must not exit with its instances left draining)."""
        self._idle.wait(self.drain_s + 60.0)

    def close(self) -> None:
        """Stop the timer; the tags stay, and the next controller terminates what drained."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._idle.set()
