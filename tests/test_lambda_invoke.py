"""The async Lambda invoker against the local emulator: results, retries, timeouts, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import sys
import time

import numpy as np
import pytest

pytest.importorskip("aiobotocore")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # to build the test artifact

from hybridserve.aws.invoke import (  # noqa: E402
    InvokeResult,
    LambdaInvokeError,
    LambdaInvoker,
    LambdaThrottled,
    LambdaTimeout,
    backoff_delay,
    parse_report,
)
from hybridserve.lambda_emulator.server import LambdaEmulator  # noqa: E402
from predictors.artifact import load_artifact  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402

FN = "hybridserve-spill"
SLEEP = "tests.lambda_test_handlers:sleep"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


def invoker(url: str, **kw) -> LambdaInvoker:
    return LambdaInvoker(FN, endpoint_url=url, local_credentials=True, seed=0, **kw)


def sleep_event(s: float) -> bytes:
    return json.dumps({"sleep_s": s}).encode()


def test_invoke_returns_payload_and_report_figures_cold_then_warm(artifact):
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    event = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}]
    }

    async def run(url: str) -> tuple[InvokeResult, InvokeResult, dict]:
        async with invoker(url) as inv:
            cold = await inv.invoke(json.dumps(event).encode())
            warm = await inv.invoke(json.dumps({"batch": [event]}).encode())
            assert inv.in_flight == 0
            return cold, warm, inv.stats()

    with LambdaEmulator(artifact) as emu:
        cold, warm, stats = asyncio.run(run(emu.url))
    y = json.loads(cold.payload)["outputs"][0]
    want = OnnxModel(load_artifact(artifact))._session.run(None, {"x": x})[0]
    np.testing.assert_allclose(
        np.array(y["data"], np.float32).reshape(y["shape"]), want, rtol=1e-5, atol=1e-6
    )
    assert json.loads(warm.payload)["responses"][0]["outputs"][0]["shape"] == [2, 4]
    assert cold.function_error is None and cold.attempts == 1
    assert cold.init_ms is not None and cold.init_ms > 0 and warm.init_ms is None
    assert cold.duration_ms is not None and cold.duration_ms > 0
    assert cold.billed_ms >= cold.duration_ms + cold.init_ms - 0.01  # init is billed
    assert warm.billed_ms >= warm.duration_ms and warm.billed_ms >= 1
    assert stats == {
        "invocations": 2,
        "throttled": 0,
        "retries": 0,
        "cold_starts": 1,
        "timeouts": 0,
        "errors": 0,
    }


def test_throttled_invokes_back_off_and_all_succeed():
    async def run(url: str) -> tuple[list[InvokeResult], dict]:
        async with invoker(url, max_attempts=100, backoff_base_s=0.01, backoff_cap_s=0.1) as inv:
            res = await asyncio.gather(*(inv.invoke(sleep_event(0.2)) for _ in range(4)))
            return res, inv.stats()

    with LambdaEmulator(None, handler=SLEEP, concurrency=1) as emu:
        results, stats = asyncio.run(run(emu.url))
        emu_stats = emu.stats()
    assert all(r.function_error is None for r in results)
    assert len({json.loads(r.payload)["pid"] for r in results}) == 1  # one environment
    assert stats["throttled"] > 0 and stats["retries"] > 0 and stats["errors"] == 0
    assert stats["throttled"] == emu_stats["throttles"] == stats["retries"]
    assert sum(r.attempts for r in results) == 4 + stats["retries"]
    assert max(r.attempts for r in results) > 1 and emu_stats["invocations"] == 4


def test_still_throttled_after_max_attempts_raises(tmp_path):
    go = tmp_path / "go"  # the slow invoke holds its environment until this file exists

    async def run(url: str) -> dict:
        async with invoker(url, max_attempts=1) as inv:
            hold = json.dumps({"sleep_s": 60, "until": str(go)}).encode()
            slow = asyncio.ensure_future(inv.invoke(hold))
            deadline = time.monotonic() + 30
            while emu.stats()["busy"] == 0:
                assert time.monotonic() < deadline, "the slow invoke never started"
                await asyncio.sleep(0.01)
            with pytest.raises(LambdaThrottled, match=f"{FN}.*TooManyRequestsException"):
                await inv.invoke(sleep_event(0))
            go.touch()
            assert (await slow).function_error is None
            return inv.stats()

    with LambdaEmulator(None, handler=SLEEP, concurrency=1) as emu:
        stats = asyncio.run(run(emu.url))
    assert stats["throttled"] == 1 and stats["retries"] == 0 and stats["errors"] == 1


def test_a_throttle_is_waited_out_within_throttle_wait_s(tmp_path):
    """The router's spill invoker waits for a busy function (a keep-warm round holding every
    environment) past max_attempts, for throttle_wait_s; past it, it raises as before."""
    go = tmp_path / "go"

    async def run(url: str) -> tuple[InvokeResult, dict]:
        async with (
            invoker(url, max_attempts=1, throttle_wait_s=30, backoff_cap_s=0.05) as inv,
            invoker(url, max_attempts=1, throttle_wait_s=0.1, backoff_cap_s=0.05) as brief,
        ):
            hold = json.dumps({"sleep_s": 60, "until": str(go)}).encode()
            slow = asyncio.ensure_future(inv.invoke(hold))
            deadline = time.monotonic() + 30
            while emu.stats()["busy"] == 0:
                assert time.monotonic() < deadline, "the slow invoke never started"
                await asyncio.sleep(0.01)
            with pytest.raises(LambdaThrottled, match=r"after \d+ attempts in 0\.\d+ s"):
                await brief.invoke(sleep_event(0))
            waiting = asyncio.ensure_future(inv.invoke(sleep_event(0)))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # still backing off: max_attempts=1 did not end it
            go.touch()
            assert (await slow).function_error is None
            return await waiting, inv.stats()

    with LambdaEmulator(None, handler=SLEEP, concurrency=1) as emu:
        res, stats = asyncio.run(run(emu.url))
    assert res.function_error is None and res.attempts > 1
    assert stats["throttled"] == res.attempts - 1 and stats["errors"] == 0


def test_an_invoke_past_its_deadline_raises_lambda_timeout():
    async def run(url: str) -> dict:
        async with invoker(url, timeout_s=0.3) as inv:
            with pytest.raises(LambdaTimeout, match=FN):
                await inv.invoke(sleep_event(2.0))
            assert inv.in_flight == 0
            return inv.stats()

    with LambdaEmulator(None, handler=SLEEP) as emu:
        stats = asyncio.run(run(emu.url))
    assert stats["timeouts"] == 1 and stats["invocations"] == 1


def test_function_errors_surface_in_the_result():
    async def run(url: str) -> tuple[InvokeResult, dict]:
        async with invoker(url) as inv:
            return await inv.invoke(b'{"n": 7}'), inv.stats()

    with LambdaEmulator(None, handler="tests.lambda_test_handlers:fail") as emu:
        res, stats = asyncio.run(run(emu.url))
    assert res.function_error == "Unhandled"
    body = json.loads(res.payload)
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "boom 7"
    assert stats["errors"] == 1


def test_concurrency_is_bounded_by_the_semaphore():
    async def run(url: str) -> tuple[int, dict]:
        async with invoker(url, max_concurrency=2) as inv:
            seen = 0

            async def watch() -> None:
                nonlocal seen
                while True:
                    seen = max(seen, inv.in_flight)
                    await asyncio.sleep(0.005)

            w = asyncio.ensure_future(watch())
            await asyncio.gather(*(inv.invoke(sleep_event(0.15)) for _ in range(6)))
            w.cancel()
            return seen, inv.stats()

    with LambdaEmulator(None, handler=SLEEP, concurrency=4) as emu:
        seen, stats = asyncio.run(run(emu.url))
        emu_stats = emu.stats()
    assert seen == 2 and stats["throttled"] == 0 and emu_stats["environments"] == 2


def test_unknown_function_and_unreachable_endpoint_are_invoke_errors():
    async def run(url: str) -> dict:
        async with LambdaInvoker("nope", endpoint_url=url, local_credentials=True) as inv:
            with pytest.raises(LambdaInvokeError, match="nope.*ResourceNotFoundException"):
                await inv.invoke(b"{}")
            return inv.stats()

    with LambdaEmulator(None, handler=SLEEP) as emu:
        stats = asyncio.run(run(emu.url))
    assert stats["retries"] == 0 and stats["errors"] == 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused

    async def refused() -> None:
        async with invoker(f"http://127.0.0.1:{port}", timeout_s=5) as inv:
            with pytest.raises(LambdaInvokeError, match=FN):
                await inv.invoke(b"{}")

    asyncio.run(refused())


def test_misuse_and_missing_aiobotocore_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="endpoint_url"):
        LambdaInvoker(FN, local_credentials=True)
    with pytest.raises(ValueError, match="max_attempts"):
        LambdaInvoker(FN, max_attempts=0)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(LambdaInvoker(FN).invoke(b"{}"))
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(RuntimeError, match=r"pip install 'hybridserve\[aws\]'"):
        asyncio.run(LambdaInvoker(FN).start())


def test_backoff_is_full_jitter_within_its_bounds():
    rng = random.Random(1)
    base, cap = 0.02, 1.0
    for attempt in range(12):
        hi = min(cap, base * 2**attempt)
        draws = [backoff_delay(attempt, rng, base, cap) for _ in range(400)]
        assert all(0.0 <= d <= hi for d in draws)
        assert max(draws) > 0.9 * hi and min(draws) < 0.1 * hi  # spread over the whole range
        assert np.mean(draws) == pytest.approx(hi / 2, rel=0.15)
    assert backoff_delay(10_000, rng, base, cap) <= cap  # no overflow
    a = [backoff_delay(3, random.Random(7), base, cap) for _ in range(2)]
    assert a[0] == a[1]  # seeded: reproducible


def test_report_parsing_is_robust():
    def tail(*lines: str) -> str:
        return base64.b64encode("\n".join(lines).encode()).decode()

    rid = "0f8e2c53-1a4b-4f7e-9a51-3c6f1d2e7b90"
    cold = (
        f"REPORT RequestId: {rid}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t"
        "Memory Size: 2048 MB\tMax Memory Used: 180 MB\tInit Duration: 812.33 ms\t"
    )
    assert parse_report(tail(f"START RequestId: {rid}", "hello", cold, "")) == (12.34, 13, 812.33)
    warm = cold.split("Init Duration")[0]
    assert parse_report(tail(warm)) == (12.34, 13, None)
    assert parse_report(tail(f"REPORT RequestId: {rid}\tDuration: 5 ms\t")) == (5.0, None, None)
    assert parse_report(tail("no report here")) == (None, None, None)
    assert parse_report(None) == (None, None, None)
    assert parse_report("%%% not base64") == (None, None, None)


def test_a_connection_that_is_never_accepted_is_a_timeout_or_an_error(tmp_path):
    # a listening socket whose accept queue is full drops new SYNs (Linux): connect hangs
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    fillers = []
    for _ in range(4):  # fill the accept queue; never accepted
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)

    async def run(timeout_s: float) -> Exception:
        async with invoker(url, timeout_s=timeout_s) as inv:
            with pytest.raises((LambdaTimeout, LambdaInvokeError)) as e:
                await inv.invoke(b"{}")
            assert inv.in_flight == 0
            return e.value

    try:
        # the deadline is the connect limit: a timeout, whichever of the invoke's deadline and
        # botocore's connect timeout (both 0.3 s) fires first
        short = asyncio.run(run(0.3))
        assert isinstance(short, LambdaTimeout) and "0.3 s" in str(short)
        long = asyncio.run(run(5.0))  # unreachable within 3 s, deadline not reached: an error
        assert isinstance(long, LambdaInvokeError) and "cannot connect within 3 s" in str(long)
    finally:
        for c in fillers:
            c.close()
        srv.close()
