"""Keep-warm: when to ping, the ping loop, and N warm environments on the local emulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


from hybridserve.aws.warm import keep_warm, keep_warm_loop, keep_warm_plan  # noqa: E402


@pytest.mark.parametrize(
    ("now", "last", "every", "conc", "want"),
    [
        (100.0, None, 60.0, 3, 3),  # never invoked: warm now
        (100.0, 90.0, 60.0, 3, 0),  # invoked 10 s ago
        (150.0, 90.0, 60.0, 3, 3),  # idle exactly every_s
        (151.0, 90.0, 60.0, 1, 1),
        (100.0, 90.0, 5.0, 0, 0),  # concurrency 0: off
        (100.0, 130.0, 60.0, 3, 0),  # a last invoke in the future counts as now
    ],
)
def test_keep_warm_plan(now, last, every, conc, want):
    assert keep_warm_plan(now, last, every, conc) == want


def test_keep_warm_plan_rejects_bad_settings():
    with pytest.raises(ValueError, match="every_s"):
        keep_warm_plan(0.0, None, 0.0, 1)
    with pytest.raises(ValueError, match="every_s"):
        keep_warm_plan(0.0, None, float("nan"), 1)
    with pytest.raises(ValueError, match="concurrency"):
        keep_warm_plan(0.0, None, 1.0, -1)


class FakeInvoker:
    max_concurrency = 4

    def __init__(self) -> None:
        self.payloads: list[dict] = []

    async def invoke(self, payload: bytes) -> Any:
        from hybridserve.aws.invoke import InvokeResult

        self.payloads.append(json.loads(payload))
        return InvokeResult(b'{"warm": true}', None, 1.0, 1, None, 1)


def test_keep_warm_loop_pings_when_idle_and_stops():
    inv = FakeInvoker()
    clock = [0.0]
    reports = []

    async def run() -> int:
        stop = asyncio.Event()

        async def advance() -> None:
            for _ in range(40):
                await asyncio.sleep(0.002)
                clock[0] += 1.0
            stop.set()

        mover = asyncio.ensure_future(advance())
        n = await keep_warm_loop(
            inv, every_s=10.0, concurrency=2, stop=stop, on_report=reports.append,
            clock=lambda: clock[0], tick_s=0.001,
        )  # fmt: skip
        await mover
        return n

    rounds = asyncio.run(run())
    assert 4 <= rounds <= 5  # at t=0, then every 10 s of the 40
    assert len(inv.payloads) == 2 * rounds and all(r.warm == 2 for r in reports)
    assert inv.payloads[0] == {"warmup": True, "hold_ms": 75.0}


@pytest.fixture(scope="module")
def artifact(mlp_fp32_artifact):
    pytest.importorskip("aiobotocore")
    return mlp_fp32_artifact


def test_keep_warm_starts_n_environments_on_the_emulator(artifact):
    from hybridserve.aws.invoke import LambdaInvoker
    from hybridserve.lambda_emulator.server import LambdaEmulator

    async def run(url: str, emu: LambdaEmulator) -> tuple:
        async with LambdaInvoker(
            "hybridserve-spill", endpoint_url=url, local_credentials=True, max_concurrency=3
        ) as inv:
            first = await keep_warm(inv, 3)
            envs_after_first = emu.stats()["environments"]
            second = await keep_warm(inv, 3)
            with pytest.raises(ValueError, match="max_concurrency"):
                await keep_warm(inv, 4)
            return first, envs_after_first, second

    with LambdaEmulator(artifact, concurrency=4) as emu:
        first, envs_after_first, second = asyncio.run(run(emu.url, emu))
        stats = emu.stats()
    assert first.errors == () and first.sent == first.warm == 3 and first.cold_starts == 3
    assert envs_after_first == 3
    assert second.errors == () and second.warm == 3 and second.cold_starts == 0
    assert stats["environments"] == 3 and stats["cold_starts"] == 3 and stats["errors"] == 0


def test_keep_warm_reports_a_failing_function_without_raising():
    pytest.importorskip("aiobotocore")
    from hybridserve.aws.invoke import LambdaInvoker
    from hybridserve.lambda_emulator.server import LambdaEmulator

    async def run(url: str) -> Any:
        async with LambdaInvoker(
            "hybridserve-spill", endpoint_url=url, local_credentials=True
        ) as inv:
            return await keep_warm(inv, 2)

    with LambdaEmulator(None, handler="tests.lambda_test_handlers:fail") as emu:
        report = asyncio.run(run(emu.url))
    assert report.sent == 2 and report.warm == 0 and len(report.errors) == 2
    assert all(e.startswith("function error Unhandled") for e in report.errors)
