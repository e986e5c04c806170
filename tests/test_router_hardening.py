"""The router against hostile requests: oversized bodies, bad binary headers, paths that try to
reach the upstream request line, and an open bind without an API key."""

from __future__ import annotations

import http.client
import json
import logging

import numpy as np
import pytest

from hybridserve.fleet import Endpoint
from tests.test_router import Fleet, _router, artifact, model, request, serve_router, server  # noqa: F401

pytest.importorskip("uvicorn")


@pytest.fixture
def routed(model, server, serve_router):  # noqa: F811
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    router = _router(model, fleet, max_body_bytes=4096)
    rs = serve_router(router)
    rs.request("GET", "/v2/health/ready")
    router.refresh()
    return router, rs


def test_a_body_over_the_limit_is_refused_with_413(routed, model):  # noqa: F811
    router, rs = routed
    path = f"/v2/models/{model.name}/infer"
    status, _, body = rs.request("POST", path, b"x" * 5000)
    assert status == 413 and b"over 4096 bytes" in body
    ok = request(model, np.ones((1, 16), np.float32))
    assert len(ok) < 4096 and rs.request("POST", path, ok)[0] == 200


@pytest.mark.parametrize("hl", [b"\xff\xfe", b"-1", b"12abc", b"999999"])
def test_a_bad_binary_header_is_400_and_leaks_no_queue_slot(routed, model, hl):  # noqa: F811
    router, rs = routed
    conn = http.client.HTTPConnection("127.0.0.1", rs.port, timeout=10)
    for _ in range(70):  # more than max_queue: a leaked slot per request would fill the instance
        conn.putrequest("POST", f"/v2/models/{model.name}/infer")
        conn.putheader("Inference-Header-Content-Length", hl)
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"{}")
        r = conn.getresponse()
        assert r.status == 400 and b"Inference-Header-Content-Length" in r.read()
    conn.close()
    assert [u.outstanding for u in router.ups] == [0]
    ok = request(model, np.ones((1, 16), np.float32))
    assert rs.request("POST", f"/v2/models/{model.name}/infer", ok)[0] == 200


@pytest.mark.parametrize(
    "path,code",
    [
        ("/v2/models/{m}/versions/1%0d%0aX-Injected:%20yes/infer", 400),
        ("/v2/models/{m}/versions/..%2f..%2fadmin/infer", 400),
        ("/v2/models/{m}%0d%0aX-Injected:%20yes/infer", 404),
        ("/v2/models/{m}/versions/%20/ready", 400),
    ],
)
def test_paths_are_checked_before_they_reach_an_instance(routed, model, path, code):  # noqa: F811
    router, rs = routed
    ok = request(model, np.ones((1, 16), np.float32))
    status, _, body = rs.request(
        "POST" if "infer" in path else "GET", path.format(m=model.name), ok
    )
    assert status == code, body
    assert "error" in json.loads(body)
    # a valid version is routed on the path the router built
    good = f"/v2/models/{model.name}/versions/1/infer"
    assert rs.request("POST", good, ok)[0] in (200, 404)


def test_an_open_bind_without_a_key_warns(caplog):
    from hybridserve.router_stack import warn_if_open

    with caplog.at_level(logging.WARNING, logger="hybridserve"):
        assert warn_if_open("127.0.0.1", None) is False
        assert warn_if_open("0.0.0.0", "k") is False
        assert warn_if_open("0.0.0.0", None) is True
        assert warn_if_open("::", None) is True
    assert sum("without an API key" in r.getMessage() for r in caplog.records) == 2
