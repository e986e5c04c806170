"""The router's upstream client: a slow instance is told apart from a dead one, and the router
keeps the slow one (retrying the request) while it drops the dead one."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hybridserve.fleet import Endpoint
from hybridserve.router.app import Router, RouterConfig
from hybridserve.router.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


async def serve(behaviour: str):
    """A one-trick server: 'ok' answers, 'slow' reads and never answers, 'drop' reads and
    closes the connection without a word."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if behaviour == "ok":
            writer.write(OK)
            await writer.drain()
        elif behaviour == "slow":
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _request(behaviour: str, timeout_s: float = 0.3):
    if behaviour == "dead":
        port = closed_port()
        server = None
    else:
        server, port = await serve(behaviour)
    pool = UpstreamPool(f"http://127.0.0.1:{port}", timeout_s=timeout_s)
    try:
        return await pool.request(b"POST", "/v2/models/m/infer", b"{}")
    finally:
        pool.close()
        if server is not None:
            server.close()


def test_an_answer_comes_back() -> None:
    status, headers, body = asyncio.run(_request("ok"))
    assert status == 200 and body == b"{}" and headers[b"content-type"] == b"application/json"


def test_a_slow_instance_times_out() -> None:
    with pytest.raises(UpstreamTimeout, match="no answer within 0.3 s"):
        asyncio.run(_request("slow"))


@pytest.mark.parametrize("behaviour", ["dead", "drop"])
def test_a_dead_instance_is_not_a_timeout(behaviour: str) -> None:
    with pytest.raises(UpstreamError) as e:
        asyncio.run(_request(behaviour, timeout_s=5.0))
    assert not isinstance(e.value, UpstreamTimeout)


async def _forward_to(behaviour: str):
    server, port = (None, closed_port()) if behaviour == "dead" else await serve(behaviour)
    ep = Endpoint("i-1", "c5.large/on_demand", f"http://127.0.0.1:{port}")
    cfg = RouterConfig(
        model_name="m", slo_ms=300.0, batch_ms={1: 1.0}, lambda_ms=(0.0, 30.0),
        upstream_timeout_s=0.3,
    )  # fmt: skip
    router = Router(cfg, lambda: [ep], None)
    router.refresh()
    u = router.ups[0]
    ratio = u.ratio
    try:
        status, _, _, ok = await router._forward(u, "/v2/models/m/infer", b"{}", None)
    finally:
        u.pool.close()
        if server is not None:
            server.close()
    return router, ok, ratio, u


def test_the_router_keeps_a_slow_instance_and_drops_a_dead_one() -> None:
    router, ok, ratio, u = asyncio.run(_forward_to("slow"))
    assert not ok  # the request is retried elsewhere
    assert [x.endpoint.instance_id for x in router.ups] == ["i-1"]
    assert router.metrics.upstream_timeouts == 1 and router.metrics.instance_failures == 0
    assert u.ratio > ratio  # it learned the instance is slower than its profile
    router, ok, _, _ = asyncio.run(_forward_to("dead"))
    assert not ok and router.ups == []
    assert router.metrics.instance_failures == 1 and router.metrics.upstream_timeouts == 0
