"""The open-loop load generator: schedules, payloads, and real runs against local servers
(the project's V2 server, and small Starlette apps that fail or stall on purpose)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from hybridserve.cli.bench import bench
from hybridserve.loadgen.payload import BenchError, build_payload, fetch_metadata, load_payload
from hybridserve.loadgen.result import BenchResult
from hybridserve.loadgen.run import bench_sync
from hybridserve.loadgen.schedules import poisson_schedule, trace_schedule
from predictors.model import TensorSpec
from predictors.v2 import decode_request
from simulations.traces import load_trace

uvicorn = pytest.importorskip("uvicorn")

from tests.model_server_helpers import ServerThread  # noqa: E402  (uvicorn on a free port)

pytest.importorskip("aiohttp")
pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

REPORT_KEYS = {
    "url",
    "model",
    "duration_s",
    "warmup_s",
    "scheduled",
    "sent",
    "ok",
    "errors",
    "error_count",
    "offered_rps",
    "achieved_rps",
    "span_s",
    "latency_ms",
    "send_lag_ms",
    "warmup_requests",
    "timeline",
}
LATENCY_KEYS = ["p50", "p90", "p95", "p99", "p99.9", "max"]


class TinyModel:
    """Row sums of an INT64 [-1, 8] input: the cheapest model the V2 server can serve."""

    name = "tiny"
    version = "1"
    platform = "numpy"
    max_batch = 64
    inputs = [TensorSpec("ids", "INT64", (-1, 8))]
    outputs = [TensorSpec("y", "FP32", (-1,))]
    ready = True

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["ids"].sum(axis=1).astype(np.float32)}


@pytest.fixture(scope="module")
def v2_server():
    from predictors.server import create_app

    with ServerThread(create_app([TinyModel()], max_batch=8, max_delay_ms=1)) as s:
        yield s


def flaky_app(*, fail_every: int = 0, stall_every: int = 0, stall_s: float = 0.0):
    """A V2-looking app answering 503 to every ``fail_every``-th request and sleeping
    ``stall_s`` on every ``stall_every``-th (or until ``app.state.release`` is set, so a
    test can stall for minutes and still stop the server at once); ``app.state`` records
    what it saw."""
    seen = {"n": 0, "failed": 0, "stalled": 0, "auth": set(), "open": 0, "max_open": 0}
    release = threading.Event()

    async def meta(request: Request) -> Response:
        seen["auth"].add(request.headers.get("authorization"))
        spec = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
        return JSONResponse({"name": request.path_params["name"], "inputs": [spec]})

    async def infer(request: Request) -> Response:
        seen["open"] += 1
        seen["max_open"] = max(seen["max_open"], seen["open"])
        try:
            return await answer(request)
        finally:
            seen["open"] -= 1

    async def answer(request: Request) -> Response:
        await request.body()
        seen["n"] += 1
        seen["auth"].add(request.headers.get("authorization"))
        n = seen["n"]
        if fail_every and n % fail_every == 0:
            seen["failed"] += 1
            return JSONResponse({"error": "overloaded"}, status_code=503)
        if stall_every and n % stall_every == 0:
            seen["stalled"] += 1
            end = time.monotonic() + stall_s
            while time.monotonic() < end and not release.is_set():
                await asyncio.sleep(0.02)
        return JSONResponse({"model_name": "m", "outputs": []})

    app = Starlette(
        routes=[
            Route("/v2/models/{name}", meta, methods=["GET"]),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        ]
    )
    app.state.seen = seen
    app.state.release = release
    return app


def bench_within(app, url: str, limit_s: float, schedule: np.ndarray, **kw) -> BenchResult:
    """`bench_sync` in a thread, failing after `limit_s`; then the app's stalls end."""
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(bench_sync, url, schedule, b"{}", model="m", **kw)
        try:
            return run.result(timeout=limit_s)
        finally:
            app.state.release.set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ schedules


def test_poisson_schedule_is_seeded_sorted_in_range_with_the_asked_rate():
    qps, duration = 500.0, 20.0
    a = poisson_schedule(qps, duration, seed=3)
    assert np.array_equal(a, poisson_schedule(qps, duration, seed=3))
    assert not np.array_equal(a[:100], poisson_schedule(qps, duration, seed=4)[:100])
    assert (np.diff(a) >= 0).all() and a[0] >= 0 and a[-1] < duration
    expected = qps * duration  # Poisson: sd = sqrt(10,000) = 100; allow 5 sd
    assert abs(a.size - expected) < 5 * np.sqrt(expected)
    gaps = np.diff(a)  # mean of ~10,000 exponential gaps: relative sd 1 %; allow 5 %
    assert gaps.mean() == pytest.approx(1 / qps, rel=0.05)
    assert gaps.std() == pytest.approx(1 / qps, rel=0.05)  # exponential: sd == mean
    # a rate so low that the first guess of the count may fall short still fills the window
    low = poisson_schedule(0.5, 200.0, seed=1)
    assert low.size > 50 and low[-1] < 200.0


@pytest.mark.parametrize("qps, duration", [(0, 1), (-1, 1), (float("nan"), 1), (10, 0), (10, -2)])
def test_poisson_schedule_rejects_non_positive_arguments(qps, duration):
    with pytest.raises(ValueError, match="--qps|--duration"):
        poisson_schedule(qps, duration)


def test_trace_schedule_reproduces_the_trace_counts_exactly(tmp_path):
    counts = [3, 0, 5, 1, 0, 7, 2]
    path = tmp_path / "tiny.txt"
    path.write_text(" ".join(map(str, counts)) + "\n")
    trace = load_trace(path)
    s = trace_schedule(trace.counts, seed=1)
    assert (np.diff(s) >= 0).all() and s[0] >= 0 and s[-1] < len(counts)
    assert np.bincount(np.floor(s).astype(int), minlength=len(counts)).tolist() == counts
    assert np.array_equal(s, trace_schedule(trace.counts, seed=1))
    assert not np.array_equal(s, trace_schedule(trace.counts, seed=2))
    capped = trace_schedule(trace.counts, seed=1, duration_s=3)
    assert np.bincount(np.floor(capped).astype(int)).tolist() == counts[:3]
    half = trace_schedule(trace.counts, seed=1, duration_s=2.5)
    assert half.size and half[-1] < 2.5 and (half < 2).sum() == 3


# -------------------------------------------------------------------------------- payload


def test_payload_from_metadata_decodes_with_the_v2_codec_and_the_declared_shapes():
    meta = {
        "name": "m",
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, 128]},
            {"name": "features", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "mask", "datatype": "BOOL", "shape": [2]},
        ],
    }
    body = build_payload(meta, seed=7)
    assert body == build_payload(meta, seed=7)
    assert body != build_payload(meta, seed=8)
    got = decode_request(body).input_arrays()
    assert got["input_ids"].shape == (1, 128) and got["input_ids"].dtype == np.int64
    assert (got["input_ids"] == 1).all()
    assert got["features"].shape == (1, 16) and got["features"].dtype == np.float32
    assert got["features"].std() > 0.1  # normals, not a constant
    assert got["mask"].tolist() == [False, False]
    doc = json.loads(build_payload({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2]}]}))
    assert doc["inputs"][0]["data"] == ["x", "x"]


@pytest.mark.parametrize(
    "meta",
    [
        {"name": "m"},
        {"inputs": [{"name": "a", "shape": [1]}]},
        {"inputs": [{"name": "a", "datatype": "X", "shape": [1]}]},
    ],
)
def test_payload_from_bad_metadata_is_a_clear_error(meta):
    with pytest.raises(BenchError, match="inputs|datatype"):
        build_payload(meta)


def test_payload_file_must_be_a_v2_json_request(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}')
    assert load_payload(good) == good.read_bytes()
    for text in ("not json", "[1, 2]", '{"inputs": []}', '{"inputs": [{"name": "x"}]}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(BenchError, match=r"bad\.json.*expected a V2 JSON inference request"):
            load_payload(bad)
    with pytest.raises(BenchError, match="missing.json"):
        load_payload(tmp_path / "missing.json")


# ------------------------------------------------------------------------- end to end


def test_open_loop_run_against_the_v2_server(v2_server):
    headers = {"Content-Type": "application/json"}
    body = build_payload(fetch_metadata(v2_server.url, "tiny", headers), seed=0)
    schedule = poisson_schedule(200, 2.0, seed=0)
    r = bench_sync(v2_server.url, schedule, body, model="tiny", headers=headers, duration_s=2.0)
    assert r.scheduled == r.sent == schedule.size
    assert r.ok == r.sent and r.errors == {} and r.error_count == 0
    lat = [r.latency_ms[k] for k in LATENCY_KEYS]
    assert all(x is not None and x > 0 for x in lat) and lat == sorted(lat)
    assert r.latency_ms["p50"] <= r.latency_ms["mean"] * 10
    assert r.offered_rps == pytest.approx(schedule.size / 2.0)
    assert r.achieved_rps == pytest.approx(r.offered_rps, rel=0.1)
    assert r.send_lag_ms["p99"] is not None and r.send_lag_ms["p99"] >= 0
    assert sum(row["sent"] for row in r.timeline) == r.sent
    assert sum(row["ok"] for row in r.timeline) == r.ok
    assert [row["t"] for row in r.timeline] == [0, 1]
    d = r.to_dict()
    assert set(d) == REPORT_KEYS
    json.dumps(d)  # serialisable as is


def test_warmup_requests_are_sent_but_not_counted(v2_server):
    body = build_payload(fetch_metadata(v2_server.url, "tiny"), seed=0)
    schedule = poisson_schedule(100, 1.0, seed=5)
    r = bench_sync(v2_server.url, schedule, body, model="tiny", warmup_s=0.5, duration_s=1.0)
    early = int((schedule < 0.5).sum())
    assert r.warmup_requests == early and r.scheduled == r.sent == schedule.size - early
    assert r.ok == r.sent
    assert r.offered_rps == pytest.approx((schedule.size - early) / 0.5)
    assert sum(row["sent"] for row in r.timeline) == schedule.size  # the timeline has them all


def test_http_errors_are_counted_by_status_and_the_rest_succeeds():
    app = flaky_app(fail_every=3)
    with ServerThread(app) as s:
        schedule = poisson_schedule(150, 1.0, seed=2)
        r = bench_sync(s.url, schedule, b'{"inputs": []}', model="m", duration_s=1.0)
    n = schedule.size
    assert app.state.seen["n"] == n == r.sent
    assert r.errors == {"http_503": n // 3}
    assert r.ok == n - n // 3
    assert sum(row["errors"] for row in r.timeline) == n // 3


def test_stalled_requests_time_out_and_the_run_does_not_hang():
    # stalls of 10 minutes: a run that waited one out would miss the 60 s bound by far
    app = flaky_app(stall_every=4, stall_s=600.0)
    with ServerThread(app) as s:
        schedule = np.linspace(0.0, 0.5, 20, endpoint=False)
        r = bench_within(app, s.url, 60, schedule, timeout_s=2.0, duration_s=0.5)
    assert r.sent == 20
    assert r.errors == {"timeout": 5} and r.ok == 15
    assert r.latency_ms["max"] < 2000  # OK latencies exclude the timed-out ones


def test_the_run_deadline_cuts_requests_the_client_timeout_missed(monkeypatch):
    """Even if aiohttp's own timeout never fired, the run ends at duration + timeout."""
    import aiohttp

    real = aiohttp.ClientTimeout
    monkeypatch.setattr(aiohttp, "ClientTimeout", lambda **kw: real(total=None))
    app = flaky_app(stall_every=2, stall_s=600.0)
    with ServerThread(app) as s:
        schedule = np.linspace(0.0, 0.2, 10, endpoint=False)
        r = bench_within(app, s.url, 60, schedule, timeout_s=2.0, duration_s=0.2)
    assert r.sent == 10 and r.ok == 5 and r.errors == {"timeout": 5}


def test_sends_do_not_wait_for_answers():
    """Open loop: 20 requests due within 0.2 s to a server taking 2 s each are all in
    flight together (a closed-loop client would keep one, or a few, open)."""
    app = flaky_app(stall_every=1, stall_s=2.0)  # far longer than sending all 20 takes
    with ServerThread(app) as s:
        schedule = np.linspace(0.0, 0.2, 20, endpoint=False)
        r = bench_sync(s.url, schedule, b"{}", model="m", timeout_s=10.0, duration_s=0.2)
    assert r.ok == r.sent == 20
    assert app.state.seen["max_open"] >= 15
    assert r.latency_ms["p50"] >= 2000


def test_unreachable_server_counts_connect_errors():
    url = f"http://127.0.0.1:{_free_port()}"
    schedule = np.linspace(0.0, 0.2, 10, endpoint=False)
    r = bench_sync(url, schedule, b"{}", model="m", timeout_s=2.0, duration_s=0.2)
    assert r.sent == 10 and r.ok == 0 and r.errors == {"connect": 10}
    assert r.latency_ms["p50"] is None and r.achieved_rps == 0


def test_lag_warning_only_above_the_threshold():
    def result(p99):
        return BenchResult("u", "m", 1.0, 0.0, 1, 1, 1, {}, 1.0, 1.0, 1.0, {}, {"p99": p99})

    assert result(1.0).lag_warning is None and result(None).lag_warning is None
    assert "bottleneck" in result(12.0).lag_warning


# -------------------------------------------------------------------------------- CLI


def test_cli_json_report_and_api_key_from_the_environment():
    app = flaky_app()
    with ServerThread(app) as s:
        res = CliRunner().invoke(
            bench,
            ["--url", s.url, "--model", "m", "--qps", "50", "--duration", "1", "--json"],
            env={"HYBRIDSERVE_API_KEY": "sekrit"},
        )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert set(doc) == REPORT_KEYS
        assert doc["sent"] == doc["ok"] > 0 and doc["errors"] == {}
        assert set(doc["latency_ms"]) == {*LATENCY_KEYS, "mean"}
        assert set(doc["send_lag_ms"]) == {"p50", "p99", "max"}
        assert all(set(row) == {"t", "sent", "ok", "errors", "p99_ms"} for row in doc["timeline"])
        assert app.state.seen["auth"] == {"Bearer sekrit"}
        human = CliRunner().invoke(
            bench, ["--url", s.url, "--model", "m", "--qps", "20", "--duration", "0.5"]
        )
    assert human.exit_code == 0, human.output
    assert "achieved" in human.stdout and "p99.9" in human.stdout and "timeline" not in human.stdout


def test_cli_trace_replay_sends_the_trace_counts(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("period,count\n0,10\n1,0\n2,6\n")
    with ServerThread(flaky_app()) as s:
        res = CliRunner().invoke(
            bench, ["--url", s.url, "--model", "m", "--trace", str(path), "--json"]
        )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [row["sent"] for row in doc["timeline"]] == [10, 0, 6]
    assert doc["ok"] == 16 and doc["duration_s"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duration", "1"], "--qps or --trace"),
        (["--qps", "10", "--trace", "x.txt"], "--qps or --trace"),
        (["--qps", "0"], "--qps"),
        (["--qps", "-5"], "--qps"),
        (["--qps", "10", "--duration", "0"], "--duration"),
        (["--qps", "10", "--duration", "-1"], "--duration"),
        (["--qps", "10", "--duration", "soon"], "--duration"),
        (["--qps", "10", "--timeout-s", "0"], "--timeout-s"),
        (["--qps", "10", "--duration", "2", "--warmup", "2"], "--warmup"),
        (["--trace", "does-not-exist.txt"], "does-not-exist.txt"),
    ],
)
def test_cli_usage_errors_name_the_option(args, message):
    res = CliRunner().invoke(bench, ["--url", "http://127.0.0.1:9", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_cli_unreachable_metadata_url_and_bad_payload_are_named(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(bench, ["--url", url, "--qps", "10", "--duration", "1"])
    assert res.exit_code == 2 and f"{url}/v2/models/distilbert" in res.output
    bad = tmp_path / "body.json"
    bad.write_text("{oops")
    res = CliRunner().invoke(bench, ["--url", url, "--qps", "10", "--payload", str(bad)])
    assert res.exit_code == 2 and "body.json" in res.output and "expected" in res.output
