"""A local AWS Lambda: the spill function of local mode, behind AWS's own Invoke API.

Local mode's Lambda must behave like the real one where it matters to the router and to the
bill: it answers the Lambda Invoke REST API (`POST /2015-03-31/functions/{name}/invocations`,
the same headers, status codes and error shapes), so the one async invoker
(`hybridserve.aws.invoke`) and any boto3 client work unchanged against it and against AWS. Its
execution environments are real worker processes with Lambda's scaling (`environments.py`), so
a cold start really pays for the interpreter, the imports and the model load. Each invoke's
REPORT line is what AWS writes; `stats()` and `/metrics` (`metrics.py`) sum the bill.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridserve.lambda_emulator import worker as proto
from hybridserve.lambda_emulator.environments import (
    Environment,
    EnvironmentPool,
    Throttled,
    exit_code,
    exit_reason,
    read_reply,
)
from hybridserve.lambda_emulator.metrics import EmulatorMetrics
from hybridserve.pricing import lambda_billed_ms
from predictors.prometheus import CONTENT_TYPE, Exposition

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous request and response limit
LOG_TAIL_BYTES = 4096  # X-Amz-Log-Result carries the last 4 KB of the log
VERSION = "$LATEST"


@dataclass
class _Outcome:
    """What one invoke produced, before it becomes an HTTP response."""

    payload: bytes
    function_error: bool
    duration_ms: float
    init_ms: float | None
    max_memory_mb: int
    log: bytes = b""
    billed_ms: int = field(init=False, default=0)


class _ShuttingDown(Exception):
    """The emulator is stopping: no new invokes."""


class _BadRequest(Exception):
    """The event is not JSON (Lambda answers 400 without running the function)."""


class LambdaEmulator:
    """A Lambda function served locally over the Invoke API (see the module docstring)."""

    def __init__(
        self,
        artifact: str | Path | None,
        *,
        function_name: str = "hybridserve-spill",
        handler: str = proto.DEFAULT_HANDLER,
        concurrency: int = 2,
        keep_alive_s: float = 60.0,
        memory_mb: int = 2048,
        timeout_s: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
        log_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
        if keep_alive_s <= 0 or timeout_s <= 0:
            raise ValueError(
                f"keep_alive_s and timeout_s must be > 0 (got {keep_alive_s}, {timeout_s})"
            )
        if not 128 <= memory_mb <= 10240:
            raise ValueError(f"memory_mb must be within Lambda's 128..10240 (got {memory_mb})")
        if artifact is not None and "://" not in str(artifact) and not Path(artifact).exists():
            raise ValueError(f"artifact not found: {artifact} (expected a model artifact dir)")
        self.artifact = artifact
        self.function_name = function_name
        self.handler = handler
        self.concurrency = concurrency
        self.keep_alive_s = float(keep_alive_s)
        self.memory_mb = memory_mb
        self.timeout_s = float(timeout_s)
        self.host = host
        self.port = port
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._extra_env = dict(env or {})

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._url: str | None = None
        self._started = False
        self._stopped = False
        self._stopping = False
        self._tmp: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self.pool = EnvironmentPool(
            function_name=function_name,
            handler=handler,
            concurrency=concurrency,
            keep_alive_s=self.keep_alive_s,
            timeout_s=self.timeout_s,
            log_dir=self.log_dir,
        )
        self.metrics = EmulatorMetrics(function_name, memory_mb)
        self._exposition = Exposition(lambda: self.metrics.families(self.pool.size, self.pool.busy))

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """`http://host:port` of the running emulator (the boto3 `endpoint_url`)."""
        if self._url is None:
            raise RuntimeError("LambdaEmulator is not started: call start() first")
        return self._url

    def start(self) -> LambdaEmulator:
        """Serve on a background thread's event loop; returns once the port is listening."""
        if self._started:
            raise RuntimeError("LambdaEmulator.start() called twice")
        self._started = True
        self._tmp = tempfile.mkdtemp(prefix="hybridserve-lambda-")
        self.pool.worker_env = self._make_worker_env()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="lambda-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._stopped = True
            self._cleanup_files()
            raise RuntimeError(
                f"Lambda emulator could not listen on {self.host}:{self.port}: {failure[0]}"
            ) from failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and end every worker process (idempotent)."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)
        self.pool.kill_all()
        self._cleanup_files()

    def __enter__(self) -> LambdaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters since start: invokes, cold starts, throttles, errors, environments, bill."""
        return self.metrics.stats(self.pool.size, self.pool.busy)

    def worker_pids(self) -> list[int]:
        """Process ids of the live execution environments (tests, debugging)."""
        return [e.proc.pid for e in list(self.pool.live)]

    def _make_worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(path),
                "HYBRIDSERVE_EXTRACT_DIR": str(self._tmp),
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_FUNCTION_VERSION": VERSION,
                "OMP_NUM_THREADS": "1",
            }
        )
        if self.artifact is not None:
            loc = str(self.artifact)
            env["HYBRIDSERVE_ARTIFACT"] = loc if "://" in loc else str(Path(loc).resolve())
        env.update(self._extra_env)
        return env

    def _cleanup_files(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=8 * MAX_SYNC_PAYLOAD)  # we answer 413 ourselves
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._http_invoke)
        app.router.add_get("/emulator/stats", self._http_stats)
        app.router.add_get("/metrics", self._http_metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._url = f"http://{self.host}:{port}"
        self._spawn_task(self.pool.reap_loop())

    async def _shutdown(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        self.pool.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ invoking

    async def _invoke(self, event: bytes, request_id: str, tail: bool) -> _Outcome:
        """Run one event on an environment (raises `Throttled`, `_BadRequest`, `_ShuttingDown`)."""
        env = self.pool.acquire()
        init_ms = None
        if env is None:
            env, init_ms, init_error = await self.pool.spawn()
            self.metrics.counts["cold_starts"] += 1
            if env is None:
                return self._account(_Outcome(init_error or b"", True, 0.0, init_ms, 0))
            if self._stopping:
                self.pool.discard(env)
                raise _ShuttingDown
        try:
            out = await self._call(env, event, request_id, tail)
        except _BadRequest:
            self.pool.release(env)
            raise
        except BaseException:
            self.pool.discard(env)
            raise
        out.init_ms = init_ms
        self.pool.release(env)
        return self._account(out)

    async def _call(self, env: Environment, event: bytes, rid: str, tail: bool) -> _Outcome:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        env.write_transport.write(
            proto.encode_request(rid, time.time() + self.timeout_s, event, tail=tail)
        )
        timer = loop.call_later(self.timeout_s, self.pool.time_out, env)
        try:
            kind, duration_ms, mem, log, payload = await read_reply(env.reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            elapsed = (time.perf_counter() - t0) * 1000.0
            if env.timed_out:
                msg = f"RequestId: {rid} Error: Task timed out after {self.timeout_s:.2f} seconds"
                return _Outcome(
                    proto._error(msg, "Sandbox.Timedout"), True, self.timeout_s * 1000.0, None, 0
                )
            reason = exit_reason(await exit_code(env.proc))
            msg = f"RequestId: {rid} Error: Runtime exited with error: {reason}"
            return _Outcome(proto._error(msg, "Runtime.ExitError"), True, elapsed, None, 0)
        finally:
            timer.cancel()
        if kind == proto.BAD_REQUEST:
            raise _BadRequest(payload.decode("utf-8", "replace"))
        if env.timed_out:
            msg = f"RequestId: {rid} Error: Task timed out after {self.timeout_s:.2f} seconds"
            return _Outcome(
                proto._error(msg, "Sandbox.Timedout"), True, self.timeout_s * 1000.0, None, mem
            )
        if len(payload) > MAX_SYNC_PAYLOAD:
            payload = proto._error(
                f"Response payload size ({len(payload)} bytes) exceeded maximum allowed payload "
                f"size ({MAX_SYNC_PAYLOAD} bytes).",
                "Function.ResponseSizeTooLarge",
            )
            return _Outcome(payload, True, duration_ms, None, mem, log)
        return _Outcome(payload, kind != proto.OK, duration_ms, None, mem, log)

    def _account(self, out: _Outcome) -> _Outcome:
        """Bill the invoke as AWS does: 1 ms granularity, init included on a cold start."""
        out.billed_ms = lambda_billed_ms(out.duration_ms + (out.init_ms or 0.0))
        self.metrics.invoked(out.duration_ms, out.init_ms, out.billed_ms, out.function_error)
        return out

    def _report(self, rid: str, out: _Outcome) -> str:
        line = (
            f"REPORT RequestId: {rid}\tDuration: {out.duration_ms:.2f} ms\t"
            f"Billed Duration: {out.billed_ms} ms\tMemory Size: {self.memory_mb} MB\t"
            f"Max Memory Used: {out.max_memory_mb} MB\t"
        )
        if out.init_ms is not None:
            line += f"Init Duration: {out.init_ms:.2f} ms\t"
        return line

    def _log_tail(self, rid: str, out: _Outcome) -> str:
        body = out.log.decode("utf-8", "replace")
        if body and not body.endswith("\n"):
            body += "\n"
        text = (
            f"START RequestId: {rid} Version: {VERSION}\n{body}END RequestId: {rid}\n"
            f"{self._report(rid, out)}\n"
        ).encode()
        return base64.b64encode(text[-LOG_TAIL_BYTES:]).decode()

    async def _run_event(self, event: bytes) -> None:
        """InvocationType=Event: queued, retried while throttled, result discarded."""
        delay = 0.01
        while not self._stopping:
            try:
                await self._invoke(event, str(uuid.uuid4()), False)
                return
            except (_BadRequest, _ShuttingDown):
                return
            except Throttled:
                self.metrics.counts["throttles"] += 1
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    # ------------------------------------------------------------------ HTTP

    async def _http_invoke(self, request: Any) -> Any:
        from aiohttp import web

        rid = str(uuid.uuid4())
        name, qualifier = _split_function_name(request.match_info["name"])
        qualifier = qualifier or request.query.get("Qualifier")
        if name != self.function_name or qualifier not in (None, VERSION):
            arn = f"arn:aws:lambda:local:000000000000:function:{name}"
            arn += f":{qualifier}" if qualifier else ""
            return _aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}", rid)
        itype = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if itype == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": rid})
        if itype not in ("RequestResponse", "Event"):
            return _aws_error(
                400,
                "InvalidParameterValueException",
                f"Unsupported invocation type {itype!r}: expected RequestResponse, Event or DryRun",
                rid,
            )
        event = await request.read()
        limit = MAX_SYNC_PAYLOAD if itype == "RequestResponse" else 256 * 1024
        if len(event) > limit:
            return _aws_error(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
                rid,
            )
        if itype == "Event":
            self._spawn_task(self._run_event(event))
            return web.Response(status=202, headers={"x-amzn-RequestId": rid})
        tail = request.headers.get("X-Amz-Log-Type") == "Tail"
        try:
            if self._stopping:
                raise _ShuttingDown
            out = await self._invoke(event, rid, tail)
        except Throttled:
            self.metrics.counts["throttles"] += 1
            return _aws_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                rid,
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        except _BadRequest as e:
            return _aws_error(400, "InvalidRequestContentException", str(e), rid)
        except _ShuttingDown:
            return _aws_error(503, "ServiceException", "the emulator is shutting down", rid)
        headers = {
            "X-Amz-Executed-Version": VERSION,
            "X-Amz-Request-Id": rid,
            "x-amzn-RequestId": rid,
        }
        if out.function_error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if tail:
            headers["X-Amz-Log-Result"] = self._log_tail(rid, out)
        return web.Response(
            status=200, body=out.payload, headers=headers, content_type="application/json"
        )

    async def _http_stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.stats())

    async def _http_metrics(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(body=self._exposition.render(), headers={"Content-Type": CONTENT_TYPE})


def _split_function_name(raw: str) -> tuple[str, str | None]:
    """Name, name:qualifier, (partial) ARN -> (name, qualifier or None)."""
    if ":function:" in raw:
        raw = raw.split(":function:", 1)[1]
    name, _, qualifier = raw.partition(":")
    return name, qualifier or None


def _aws_error(status: int, error_type: str, message: str, rid: str, **extra: str) -> Any:
    """An error as Lambda sends it, so botocore raises the modelled exception."""
    from aiohttp import web

    return web.Response(
        status=status,
        body=json.dumps({"Type": "User", "message": message, **extra}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": rid},
    )
