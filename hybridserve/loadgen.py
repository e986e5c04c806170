"""Open-loop HTTP load generator for V2 inference endpoints (what `hybridserve bench` runs).

Open loop means every request leaves at its scheduled time however many are still outstanding,
so a slow server shows up as latency and errors instead of silently lowering the offered rate
(the coordinated-omission trap of closed-loop clients). The generator must keep up at 1,000+
requests/s on a 2-core machine that also runs the server, so the hot path is lean: one event
loop (uvloop when importable), one pooled keep-alive aiohttp session, one prebuilt body and
header set, send times precomputed as a numpy array, one scheduler coroutine that launches
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
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LAG_WARN_MS",
    "BenchError",
    "BenchResult",
    "bench_sync",
    "build_payload",
    "fetch_metadata",
    "infer_url",
    "load_payload",
    "normalize_url",
    "poisson_schedule",
    "request_headers",
    "run_bench",
    "trace_schedule",
]

#: Above this p99 send lag (ms) the generator itself may be the bottleneck.
LAG_WARN_MS = 5.0
#: Percentiles reported for OK latencies, as (key, percentile).
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
#: Status codes below zero are exception kinds; these are fixed, others are numbered per run.
_KIND_TIMEOUT = -1
_KIND_CONNECT = -2
_FIXED_KINDS = {_KIND_TIMEOUT: "timeout", _KIND_CONNECT: "connect"}
#: Requests due this soon are sent now: uvloop timers have 1 ms resolution, so sleeping for
#: less rounds to zero and spins the scheduler (about 20 wake-ups per request at 1,500/s).
EARLY_S = 0.0005


class BenchError(RuntimeError):
    """A benchmark cannot start (bad payload, unreachable server); the message says why."""


# ------------------------------------------------------------------------------ schedules


def poisson_schedule(qps: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (s, sorted, in ``[0, duration_s)``) of a Poisson process at ``qps``.

    Exponential gaps drawn in one vectorised batch sized a few standard deviations above the
    expected count, topped up in the (vanishingly rare) case that is not enough.
    """
    if not (math.isfinite(qps) and qps > 0):
        raise ValueError(f"--qps must be > 0, got {qps!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"--duration must be > 0, got {duration_s!r}")
    rng = np.random.default_rng(seed)
    mean = qps * duration_s
    n = int(mean + 6 * math.sqrt(mean) + 16)
    times = np.cumsum(rng.exponential(1.0 / qps, n))
    while times[-1] < duration_s:
        more = np.cumsum(rng.exponential(1.0 / qps, n)) + times[-1]
        times = np.concatenate([times, more])
    return times[: int(np.searchsorted(times, duration_s, side="left"))]


def trace_schedule(
    counts: np.ndarray, seed: int = 0, duration_s: float | None = None
) -> np.ndarray:
    """Send times replaying per-second ``counts``: second ``i``'s requests spread uniformly at
    random within ``[i, i+1)``, sorted; ``duration_s`` cuts the replay short.

    Uniform placement is what a Poisson process conditioned on the count would give, and the
    counts per second are reproduced exactly.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("trace counts must be a 1-D array of non-negative integers")
    if duration_s is not None:
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"--duration must be > 0, got {duration_s!r}")
        counts = counts[: math.ceil(duration_s)]
    rng = np.random.default_rng(seed)
    seconds = np.repeat(np.arange(counts.size, dtype=np.float64), counts)
    times = np.sort(seconds + rng.random(seconds.size))
    if duration_s is not None:
        times = times[: int(np.searchsorted(times, duration_s, side="left"))]
    return times


# -------------------------------------------------------------------------------- payload


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (no trailing slash)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def infer_url(url: str, model: str) -> str:
    return f"{normalize_url(url)}/v2/models/{model}/infer"


def request_headers(api_key: str | None = None) -> dict[str, str]:
    """Headers sent with every request (and the metadata fetch)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def fetch_metadata(
    url: str, model: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """``GET {url}/v2/models/{model}`` as a dict; BenchError naming the URL on any failure.

    Synchronous (urllib): it runs once before the benchmark, and works inside or outside an
    event loop. Proxy variables are ignored, as the benchmark's aiohttp session ignores them.
    """
    target = f"{normalize_url(url)}/v2/models/{model}"
    req = urllib.request.Request(target, headers={"Accept": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # like aiohttp: no proxy
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace").strip()
        raise BenchError(
            f"model metadata {target} answered HTTP {e.code}: {detail or e.reason} "
            f"(is --model {model!r} served there?)"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise BenchError(f"cannot reach {target}: {reason} (is the server running?)") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BenchError(f"model metadata {target} is not JSON: {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise BenchError(f"model metadata {target} is not a JSON object")
    return doc


_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}


def build_payload(metadata: Mapping[str, Any], seed: int = 0) -> bytes:
    """A V2 JSON request matching the model's declared inputs, batch of one.

    Dynamic (-1) dims become 1; integers are 1 (a valid token id for any vocabulary), floats
    seeded standard normals, BOOL false, BYTES ``"x"``. One body is reused for every request.
    """
    name = metadata.get("name", "?")
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BenchError(f"model {name!r} metadata lists no 'inputs' to build a request from")
    rng = np.random.default_rng(seed)
    out = []
    for spec in inputs:
        try:
            tname, datatype = str(spec["name"]), str(spec["datatype"])
            shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise BenchError(
                f"model {name!r} metadata input {spec!r:.80} lacks name, datatype or shape"
            ) from None
        if any(d < 0 for d in shape):
            raise BenchError(f"model {name!r} input {tname!r} has a bad shape {spec['shape']}")
        n = math.prod(shape)
        if datatype in _INT_TYPES:
            data: list[Any] = [1] * n
        elif datatype in _FLOAT_TYPES:
            data = rng.standard_normal(n).astype(np.float32).tolist()
        elif datatype == "BOOL":
            data = [False] * n
        elif datatype == "BYTES":
            data = ["x"] * n
        else:
            raise BenchError(f"model {name!r} input {tname!r} has unknown datatype {datatype!r}")
        out.append({"name": tname, "datatype": datatype, "shape": shape, "data": data})
    return json.dumps({"inputs": out}, separators=(",", ":")).encode()


def load_payload(path: str | Path) -> bytes:
    """A request body file, checked to be a V2 JSON request (sent as is afterwards)."""
    expected = (
        'a V2 JSON inference request like {"inputs": [{"name", "datatype", "shape", "data"}]}'
    )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BenchError(f"--payload {path}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchError(f"--payload {path}: not JSON ({e}); expected {expected}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise BenchError(f"--payload {path}: no non-empty 'inputs' list; expected {expected}")
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not {"name", "datatype", "shape"} <= t.keys():
            raise BenchError(
                f"--payload {path}: inputs[{i}] lacks name, datatype or shape; expected {expected}"
            )
    return raw


# --------------------------------------------------------------------------------- result


@dataclass
class BenchResult:
    """What one run measured; ``to_dict()`` is the JSON report.

    Counts and latencies cover the measured requests only (scheduled at or after
    ``warmup_s``); ``timeline`` covers every second, warm-up included.
    """

    url: str
    model: str
    duration_s: float
    warmup_s: float
    scheduled: int
    sent: int
    ok: int
    errors: dict[str, int]
    offered_rps: float
    achieved_rps: float
    span_s: float
    latency_ms: dict[str, float | None]
    send_lag_ms: dict[str, float | None]
    warmup_requests: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # per request, for scripts (not in the JSON): send time s, HTTP status (<= 0: no answer), ms
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def lag_warning(self) -> str | None:
        """A warning when the generator was late, else None."""
        p99 = self.send_lag_ms.get("p99")
        if p99 is None or p99 <= LAG_WARN_MS:
            return None
        return (
            f"warning: send lag p99 {p99:.1f} ms > {LAG_WARN_MS:g} ms: the load generator may be "
            "the bottleneck (too busy a machine, or too high a rate for one process)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples", None)
        d["error_count"] = self.error_count
        return d


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 3)


def _latency_summary(lat_s: np.ndarray) -> dict[str, float | None]:
    keys = [k for k, _ in PERCENTILES] + ["max", "mean"]
    if lat_s.size == 0:
        return dict.fromkeys(keys)
    qs = np.percentile(lat_s, [q for _, q in PERCENTILES])
    out: dict[str, float | None] = {k: _ms(v) for (k, _), v in zip(PERCENTILES, qs, strict=True)}
    out["max"] = _ms(lat_s.max())
    out["mean"] = _ms(lat_s.mean())
    return out


def _timeline(
    schedule: np.ndarray, status: np.ndarray, latency: np.ndarray, sent: np.ndarray
) -> list[dict[str, Any]]:
    """Per scheduled second: sent, ok, errors, p99 of OK latencies (None without any)."""
    if schedule.size == 0:
        return []
    sec = np.floor(schedule).astype(np.int64)
    nsec = int(sec[-1]) + 1
    ok = (status >= 200) & (status < 300)
    sent_n = np.bincount(sec, weights=sent, minlength=nsec).astype(np.int64)
    ok_n = np.bincount(sec, weights=ok, minlength=nsec).astype(np.int64)
    err_n = np.bincount(sec, weights=sent & ~ok, minlength=nsec).astype(np.int64)
    ok_sec, ok_lat = sec[ok], latency[ok]
    bounds = np.searchsorted(ok_sec, np.arange(nsec + 1))  # schedule is sorted
    rows = []
    for t in range(nsec):
        lat = ok_lat[bounds[t] : bounds[t + 1]]
        p99 = _ms(np.percentile(lat, 99.0)) if lat.size else None
        rows.append(
            {
                "t": t,
                "sent": int(sent_n[t]),
                "ok": int(ok_n[t]),
                "errors": int(err_n[t]),
                "p99_ms": p99,
            }
        )
    return rows


def _summarize(
    url: str,
    model: str,
    schedule: np.ndarray,
    duration_s: float,
    warmup_s: float,
    status: np.ndarray,
    latency: np.ndarray,
    lag: np.ndarray,
    done_at: np.ndarray,
    kinds: Mapping[int, str],
) -> BenchResult:
    """Reduce the per-request arrays to the report (vectorised)."""
    started = ~np.isnan(lag)
    measured = schedule >= warmup_s
    m_sent = started & measured
    ok = (status >= 200) & (status < 300)
    m_ok = ok & measured
    bad = m_sent & ~ok
    errors: dict[str, int] = {}
    codes, n = np.unique(status[bad], return_counts=True)
    for code, cnt in zip(codes.tolist(), n.tolist(), strict=True):
        # 0: no answer by the run's deadline, i.e. a timeout; < 0: an exception kind.
        kind = f"http_{code}" if code > 0 else kinds[code] if code < 0 else "timeout"
        errors[kind] = errors.get(kind, 0) + int(cnt)
    window = max(duration_s - warmup_s, 1e-9)
    ends = done_at[m_sent & ~np.isnan(done_at)]
    span = max(duration_s, float(ends.max()) if ends.size else 0.0) - warmup_s
    span = max(span, 1e-9)
    lag_m = lag[m_sent]
    lag_ms: dict[str, float | None] = (
        {
            "p50": _ms(np.percentile(lag_m, 50)),
            "p99": _ms(np.percentile(lag_m, 99)),
            "max": _ms(lag_m.max()),
        }
        if lag_m.size
        else {"p50": None, "p99": None, "max": None}
    )
    return BenchResult(
        url=url,
        model=model,
        duration_s=round(float(duration_s), 6),
        warmup_s=float(warmup_s),
        scheduled=int(measured.sum()),
        sent=int(m_sent.sum()),
        ok=int(m_ok.sum()),
        errors=dict(sorted(errors.items())),
        offered_rps=round(int(measured.sum()) / window, 3),
        achieved_rps=round(int(m_ok.sum()) / span, 3),
        span_s=round(span, 6),
        latency_ms=_latency_summary(latency[m_ok]),
        send_lag_ms=lag_ms,
        warmup_requests=int((~measured).sum()),
        timeline=_timeline(schedule, status, latency, started),
        samples={"send_s": schedule, "status": status, "latency_ms": latency * 1000.0},
    )


# ------------------------------------------------------------------------------------ run


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

    target = URL(infer_url(url, model))
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
        try:
            async with session.post(target, data=body) as resp:
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
    return _summarize(
        normalize_url(url),
        model,
        schedule,
        duration_s,
        warmup_s,
        status,
        latency,
        lag,
        done_at,
        kinds,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


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
            headers=headers,
            timeout_s=timeout_s,
            connections=connections,
            warmup_s=warmup_s,
            duration_s=duration_s,
        )
    )
