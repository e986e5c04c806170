"""The open-loop run of a benchmark: one body POSTed at each scheduled time (to one model, or
to each request's model of a mix with that model's body), measured into preallocated arrays and
reduced to a BenchResult.

Open loop means every request leaves at its scheduled time however many are still outstanding,
so a slow server shows up as latency and errors instead of silently lowering the offered rate
(the coordinated-omission trap of closed-loop clients). The generator must keep up at 1,000+
requests/s on a 2-core machine that also runs the server, so the hot path is lean: one event
loop (uvloop when importable), one pooled keep-alive aiohttp session, one prebuilt body and
header set, send times precomputed as a numpy array, a mix's models as small ints indexing
prebuilt URLs and bodies, one scheduler coroutine that launches
everything already due in one go (lag never accumulates), and results written into
preallocated numpy arrays. Nothing is logged per request.

``send lag`` (actual start of a request minus its scheduled time) is the generator's own
health: when its p99 exceeds a few milliseconds the numbers describe the client, not the
server. Latency is measured from the actual send, so it includes waiting for a pooled
connection when all ``connections`` are busy.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import numpy as np

from hybridserve.loadgen.payload import BenchError, infer_url, normalize_url, request_headers
from hybridserve.loadgen.result import BenchResult, summarize

#: Status codes below zero are exception kinds; these are fixed, others are numbered per run.
_KIND_TIMEOUT = -1
_KIND_CONNECT = -2
_FIXED_KINDS = {_KIND_TIMEOUT: "timeout", _KIND_CONNECT: "connect"}
#: Requests due this soon are sent now: uvloop timers have 1 ms resolution, so sleeping for
#: less rounds to zero and spins the scheduler (about 20 wake-ups per request at 1,500/s).
EARLY_S = 0.0005


def _exception_kind(exc: BaseException, kinds: dict[int, str], codes: dict[str, int]) -> int:
    """Negative status code for an exception: timeout, connect, or its class name."""
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _KIND_TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _KIND_CONNECT
    name = type(exc).__name__
    code = codes.get(name)
    if code is None:
        code = -(len(kinds) + 1)
        codes[name] = code
        kinds[code] = name
    return code


async def run_bench(
    url: str,
    schedule: np.ndarray,
    body: bytes,
    *,
    model: str = "distilbert",
    models: Sequence[str] | None = None,
    bodies: Mapping[str, bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    connections: int = 256,
    warmup_s: float = 0.0,
    duration_s: float | None = None,
) -> BenchResult:
    """POST ``body`` to ``{url}/v2/models/{model}/infer`` at each time of ``schedule`` (seconds
    from the start, sorted), open loop; return the measurements.

    ``duration_s`` is the schedule's nominal length (default: just past the last send); the
    run ends by ``duration_s + timeout_s`` at the latest, requests still open then counting as
    timeouts. HTTP errors and exceptions are results, never raised.

    A model mix: ``models`` names the model of each scheduled request (as long as the
    schedule); request ``i`` then goes to ``models[i]``'s route with ``bodies[models[i]]``
    (``body`` for a model ``bodies`` lacks), ``model`` is ignored, and the result breaks the
    figures down per model (in ``bodies``' order, then first use).
    """
    try:
        import aiohttp
    except ModuleNotFoundError as e:  # pragma: no cover - aiohttp is in the serve extra
        raise BenchError(
            f"bench needs aiohttp ({e}); install it with: pip install 'hybridserve[serve]'"
        ) from None
    from yarl import URL

    if timeout_s <= 0:
        raise ValueError(f"--timeout-s must be > 0, got {timeout_s!r}")
    if connections < 1:
        raise ValueError(f"--connections must be >= 1, got {connections!r}")
    if warmup_s < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup_s!r}")
    schedule = np.asarray(schedule, dtype=np.float64)
    if schedule.ndim != 1 or (schedule.size and (np.diff(schedule) < 0).any()):
        raise ValueError("schedule must be a sorted 1-D array of send times in seconds")
    n = int(schedule.size)
    if duration_s is None:
        duration_s = float(schedule[-1]) + 1e-3 if n else 0.0

    names, which, label = _route(n, model, models, bodies)
    targets = [URL(infer_url(url, name)) for name in names]
    payloads = [(bodies or {}).get(name, body) for name in names]
    status = np.zeros(n, dtype=np.int32)  # 0 = no answer (yet)
    latency = np.full(n, np.nan)
    lag = np.full(n, np.nan)  # NaN = never sent
    done_at = np.full(n, np.nan)
    kinds: dict[int, str] = dict(_FIXED_KINDS)
    codes: dict[str, int] = {v: k for k, v in kinds.items()}
    times = schedule.tolist()  # Python floats: cheaper to index in the hot loop

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    session = aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers or request_headers()),
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    clock = time.perf_counter
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task] = set()
    t0 = clock() + 0.01  # a moment to get the scheduler going

    async def one(i: int) -> None:
        start = clock()
        lag[i] = start - t0 - times[i]
        k = which[i]
        try:
            async with session.post(targets[k], data=payloads[k]) as resp:
                await resp.read()
                status[i] = resp.status
        except Exception as e:  # results, not failures of the run
            status[i] = _exception_kind(e, kinds, codes)
        end = clock()
        latency[i] = end - start
        done_at[i] = end - t0

    try:
        i = 0
        while i < n:
            now = clock() - t0
            due = times[i]
            if due > now + EARLY_S:
                await asyncio.sleep(due - now)
                continue
            j = bisect.bisect_right(times, now + EARLY_S, i + 1)
            for k in range(i, j):
                task = loop.create_task(one(k))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            i = j
        remaining = t0 + duration_s + timeout_s - clock()
        if inflight and remaining > 0:
            await asyncio.wait(set(inflight), timeout=remaining)
        for task in list(inflight):
            task.cancel()
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
    finally:
        await session.close()
    return summarize(
        normalize_url(url),
        label,
        schedule,
        duration_s,
        warmup_s,
        status,
        latency,
        lag,
        done_at,
        kinds,
        mix=None if models is None else (names, np.asarray(which, dtype=np.intp)),
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _route(
    n: int,
    model: str,
    models: Sequence[str] | None,
    bodies: Mapping[str, bytes] | None = None,
) -> tuple[list[str], list[int], str]:
    """The model names a run sends to, each request's index into them (ints, so the hot loop
    does no string lookups), and the result's ``model`` label (the names, comma-joined)."""
    if models is None:
        return [model], [0] * n, model
    if len(models) != n:
        raise ValueError(f"models has {len(models)} names for a schedule of {n} requests")
    index = {name: k for k, name in enumerate(bodies or ())}
    which = [index.setdefault(str(m), len(index)) for m in models]
    return list(index), which, ",".join(index)


def _run(coro: Coroutine[Any, Any, BenchResult]) -> BenchResult:
    """Run on a fresh event loop (uvloop when importable) in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError("bench_sync called inside a running event loop: await run_bench()")
    loop = _loop_factory()()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def bench_sync(
    url: str,
    schedule: np.ndarray,
    body: bytes,
    *,
    model: str = "distilbert",
    models: Sequence[str] | None = None,
    bodies: Mapping[str, bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    connections: int = 256,
    warmup_s: float = 0.0,
    duration_s: float | None = None,
) -> BenchResult:
    """:func:`run_bench` from synchronous code, on its own (uv)loop."""
    return _run(
        run_bench(
            url,
            schedule,
            body,
            model=model,
            models=models,
            bodies=bodies,
            headers=headers,
            timeout_s=timeout_s,
            connections=connections,
            warmup_s=warmup_s,
            duration_s=duration_s,
        )
    )
