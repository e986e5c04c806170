"""The emulator's execution environments: worker processes spawned, reused and reaped as Lambda
does it.

A warm environment if one is idle (the most recently used, so extras age out), else a new one up
to the concurrency limit, else throttled; environments idle past the keep-alive are ended. The
pool runs on the emulator's event loop and knows nothing of HTTP or billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridserve.lambda_emulator import worker as proto

INIT_LIMIT_S = 10.0  # Lambda's INIT phase limit


@dataclass(eq=False)
class Environment:
    """One execution environment: a worker process and the pipes to it."""

    proc: subprocess.Popen
    reader: asyncio.StreamReader
    read_transport: asyncio.BaseTransport
    write_transport: asyncio.WriteTransport
    last_used: float = 0.0
    timed_out: bool = False
    discarded: bool = False


class Throttled(Exception):
    """No idle environment and no room for a new one."""


class EnvironmentPool:
    """Worker processes for one function (see the module docstring); event-loop only."""

    def __init__(
        self,
        *,
        function_name: str,
        handler: str,
        concurrency: int,
        keep_alive_s: float,
        timeout_s: float,
        log_dir: Path | None,
    ) -> None:
        self.function_name = function_name
        self.handler = handler
        self.concurrency = concurrency
        self.keep_alive_s = keep_alive_s
        self.timeout_s = timeout_s
        self.log_dir = log_dir
        self.worker_env: dict[str, str] = {}
        self.closing = False
        self.live: set[Environment] = set()
        self.idle: list[Environment] = []  # most recently used last
        self.spawning = 0
        self.procs: set[subprocess.Popen] = set()  # every worker not yet reaped
        self._seq = 0

    @property
    def size(self) -> int:
        """Environments alive or starting."""
        return len(self.live) + self.spawning

    @property
    def busy(self) -> int:
        return self.size - len(self.idle)

    def acquire(self) -> Environment | None:
        """An idle environment (most recent first), None to spawn one (reserved), or Throttled."""
        if self.idle:
            return self.idle.pop()
        if self.size < self.concurrency:
            self.spawning += 1
            return None
        raise Throttled

    async def spawn(self) -> tuple[Environment | None, float, bytes | None]:
        """Start a worker (its reservation taken by `acquire`) and wait for READY: (env, init
        ms, None) or (None, ms, error payload). A started one joins the pool unless closing."""
        try:
            env, init_ms, error = await self._start()
        finally:
            self.spawning -= 1
        if env is not None and not self.closing:
            self.live.add(env)
        return env, init_ms, error

    async def _start(self) -> tuple[Environment | None, float, bytes | None]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self._seq += 1
        stderr: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            stderr = open(self.log_dir / f"{self.function_name}-{self._seq:04d}.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hybridserve.lambda_emulator.worker",
                    "--handler",
                    self.handler,
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self.worker_env,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()
        self.procs.add(proc)
        reader = asyncio.StreamReader(limit=2**16)
        rt, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), proc.stdout
        )
        wt, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        env = Environment(proc, reader, rt, wt)  # type: ignore[arg-type]
        limit = max(INIT_LIMIT_S, self.timeout_s)
        try:
            kind, _, _, _, payload = await asyncio.wait_for(read_reply(reader), limit)
        except asyncio.TimeoutError:
            kind, payload = (
                -1,
                proto._error(f"INIT phase timed out after {limit:.2f} seconds", "Sandbox.Timedout"),
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await exit_code(proc)
            kind, payload = (
                -1,
                proto._error(
                    f"Runtime exited with error: {exit_reason(code)} during INIT",
                    "Runtime.ExitError",
                ),
            )
        except BaseException:
            self.discard(env)
            raise
        init_ms = (time.perf_counter() - t0) * 1000.0
        if kind == proto.READY:
            return env, init_ms, None
        self.discard(env)
        return None, init_ms, payload

    def release(self, env: Environment) -> None:
        """Back to idle after an invoke; a dead, timed-out or orphaned one is ended instead."""
        if self.closing or env not in self.live or env.timed_out or env.proc.poll() is not None:
            self.discard(env)
            return
        env.last_used = time.monotonic()
        self.idle.append(env)

    def discard(self, env: Environment) -> None:
        """Kill an environment (timed out, crashed, expired or shutting down); idempotent."""
        self.live.discard(env)
        if env.discarded:
            return
        env.discarded = True
        with contextlib.suppress(ValueError):
            self.idle.remove(env)
        if env.proc.poll() is None:
            with contextlib.suppress(OSError):
                env.proc.kill()
        if not env.write_transport.is_closing():  # a dead worker's pipes close themselves
            env.write_transport.abort()
        if not env.read_transport.is_closing():
            env.read_transport.close()

    def time_out(self, env: Environment) -> None:
        env.timed_out = True
        if env.proc.poll() is None:
            with contextlib.suppress(OSError):
                env.proc.kill()

    async def reap_loop(self) -> None:
        """End environments idle longer than the keep-alive; collect dead processes."""
        tick = min(1.0, max(0.02, self.keep_alive_s / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for env in [e for e in self.idle if now - e.last_used > self.keep_alive_s]:
                self.discard(env)
            self.procs -= {p for p in self.procs if p.poll() is not None}

    def close(self) -> None:
        """End every environment (busy invokes end with an error at once)."""
        self.closing = True
        for e in list(self.live):
            self.discard(e)

    def kill_all(self) -> None:
        """After the loop stopped: kill and reap every worker process, spawning ones included."""
        self.live.clear()
        self.idle.clear()
        for p in list(self.procs):
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
            p.wait()
        self.procs.clear()


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, float, int, bytes, bytes]:
    """(kind, duration ms, max RSS MB, log bytes, payload) of the next worker reply."""
    (n,) = proto.FRAME.unpack(await reader.readexactly(proto.FRAME.size))
    body = await reader.readexactly(n)
    kind, duration_ms, mem, log_len = proto.REPLY.unpack_from(body)
    start = proto.REPLY.size
    return kind, duration_ms, mem, body[start : start + log_len], body[start + log_len :]


async def exit_code(proc: subprocess.Popen, wait_s: float = 0.2) -> int | None:
    """The exit status of a worker whose pipe closed, waiting briefly for it to be reapable."""
    deadline = time.monotonic() + wait_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return proc.returncode


def exit_reason(code: int | None) -> str:
    if code is None:
        return "the runtime closed its pipe"
    if code < 0:
        try:
            return f"signal: {signal.Signals(-code).name.removeprefix('SIG').lower()}"
        except ValueError:
            return f"signal: {-code}"
    return f"exit status {code}"
