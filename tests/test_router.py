"""The router: routing decisions, the BATCH buffer, and the ASGI app against real model servers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hybridserve.backends.base import Endpoint
from hybridserve.router import SPILL, Router, RouterConfig, batch_params, choose, completion_table
from hybridserve.router.buffer import SpillBuffer, split_responses
from hybridserve.router.policy import batch_curve, within_slo_depth
from tests.conftest import Scrape

pytest.importorskip("aiohttp")
pytest.importorskip("uvicorn")

PROFILE = {1: 10.0, 2: 18.0, 4: 32.0, 8: 60.0}


# ---------------------------------------------------------------------------- policy (pure)
def test_batch_curve_interpolates_and_extrapolates():
    c = batch_curve(PROFILE, 16)
    assert c[0] == 0 and c[1] == 10 and c[2] == 18 and c[4] == 32 and c[8] == 60
    assert c[3] == pytest.approx(25.0)  # between 2 and 4
    assert c[16] == pytest.approx(120.0)  # proportional past the largest profiled size


def test_completion_table_drains_in_batches():
    t = completion_table(PROFILE, max_batch=4, max_queue=10, delay_ms=2.0)
    # ahead 0..3 share the first batch; 4..7 wait one full batch (32 ms) first
    assert t[0] == pytest.approx(10 + 2)
    assert t[3] == pytest.approx(32 + 2)
    assert t[4] == pytest.approx(32 + 10 + 2)
    assert t[9] == pytest.approx(2 * 32 + 18 + 2)
    assert np.all(np.diff(t) >= 0)


def test_choose_spills_exactly_when_the_queue_would_break_the_budget():
    t = completion_table(PROFILE, max_batch=1, max_queue=50)  # 10 ms per request ahead
    budget = 45.0
    depth = within_slo_depth(t, budget)
    assert depth == 4  # 10, 20, 30, 40 fit; the fifth would finish at 50
    assert choose([depth - 1], [t], budget) == 0
    assert choose([depth], [t], budget) == SPILL
    assert choose([len(t)], [t], float("inf")) == SPILL  # beyond the queue bound: never


def test_choose_is_jsq_weighted_by_capacity():
    slow = completion_table({1: 20.0}, 1, 20)
    fast = completion_table({1: 5.0}, 1, 20)
    # the fast instance holds 3 ahead (20 ms) against the slow one's 0 (20 ms): tie -> lower index
    assert choose([0, 3], [slow, fast], 100.0) == 0
    assert choose([1, 3], [slow, fast], 100.0) == 1
    assert choose([2, 1], [fast, fast], 100.0) == 1  # equal instances: shortest queue


# ---------------------------------------------------------------------------- BATCH sizing (pure)
LAMBDA_MS = [0.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
PRICE = dict(memory_gb=2.0, usd_per_gb_s=1.66667e-5, usd_per_request=2e-7)


def test_batch_params_no_load_means_no_wait():
    p = batch_params(0.0, 200.0, LAMBDA_MS, **PRICE)
    assert p.size == 1 and p.timeout_ms == 0.0 and p.expected_size == pytest.approx(1.0)


def test_batch_params_batches_more_as_the_rate_grows_and_fits_the_slack():
    sizes = []
    for rate in (5, 50, 200, 1000):
        p = batch_params(rate, 200.0, LAMBDA_MS, **PRICE)
        assert p.timeout_ms + LAMBDA_MS[p.size] <= 200.0 + 1e-9
        assert 1 <= p.expected_size <= p.size
        sizes.append(p.size)
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    # a batch is cheaper per request than one invoke per request at high rate
    assert batch_params(1000, 200.0, LAMBDA_MS, **PRICE).usd_per_request < (
        2.0 * 20 / 1000 * 1.66667e-5 + 2e-7
    )


def test_batch_params_excludes_sizes_whose_service_breaks_the_slack():
    p = batch_params(10_000, 55.0, LAMBDA_MS, **PRICE)
    assert LAMBDA_MS[p.size] <= 55.0 and p.size <= 4


# ---------------------------------------------------------------------------- the real handler
@pytest.fixture(autouse=True)
def _restore_env():
    yield
    from lambda_handlers import handler as lam

    for inv in HandlerInvoker.made:
        inv.mp.undo()
    HandlerInvoker.made.clear()
    lam._CACHE.clear()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from predictors.artifact import build_artifact

    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


@pytest.fixture(scope="module")
def model(artifact):
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel

    return OnnxModel(load_artifact(artifact))


class HandlerInvoker:
    """The real Lambda handler in this process (the emulator tests cover the process boundary)."""

    made: list[HandlerInvoker] = []

    def __init__(self, artifact: Path, tmp: Path, delay_s: float = 0.0) -> None:
        from lambda_handlers import handler as lam

        self.mp = pytest.MonkeyPatch()
        self.mp.setenv("HYBRIDSERVE_ARTIFACT", str(artifact))
        self.mp.setenv("HYBRIDSERVE_EXTRACT_DIR", str(tmp))
        lam._CACHE.clear()
        self.lam = lam
        self.delay_s = delay_s
        self.payloads: list[dict] = []
        HandlerInvoker.made.append(self)

    async def invoke(self, payload: bytes):
        event = json.loads(payload)
        self.payloads.append(event)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = await asyncio.to_thread(self.lam.handler, event)
        return SimpleNamespace(
            payload=json.dumps(out).encode(),
            function_error=None,
            duration_ms=1.0,
            billed_ms=1,
            init_ms=None,
        )


def request(model, x: np.ndarray, rid: str = "r") -> bytes:
    spec = model.inputs[0]
    return json.dumps(
        {
            "id": rid,
            "inputs": [
                {
                    "name": spec.name,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ],
        }
    ).encode()


def test_buffer_forms_batches_by_size_then_by_timeout(artifact, model, tmp_path):
    inv = HandlerInvoker(artifact, tmp_path)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(1, 16)).astype(np.float32) for _ in range(5)]
    params = batch_params(0.0, 100.0, LAMBDA_MS, **PRICE)
    # a timeout far above a batch's run time: "the four did not wait" holds on a busy machine
    params = type(params)(size=4, timeout_ms=1000.0, expected_size=4.0, usd_per_request=0.0)

    async def main():
        buf = SpillBuffer(inv.invoke, params, concurrency=2, max_pending=16)
        t0 = time.perf_counter()
        futs = [buf.submit(request(model, x, f"r{i}")) for i, x in enumerate(xs)]
        first = await asyncio.gather(*futs[:4])
        t_first = time.perf_counter() - t0
        last = await futs[4]
        t_last = time.perf_counter() - t0
        await buf.close()
        return first + [last], t_first, t_last, buf

    results, t_first, t_last, buf = asyncio.run(main())
    assert [len(p["batch"]) for p in inv.payloads] == [4, 1]  # one forward pass per batch
    assert t_last >= 1.0 > t_first  # the fifth waited for the timeout, the four did not
    assert buf.pending == 0
    for i, (x, r) in enumerate(zip(xs, results, strict=True)):
        assert r.status == 200
        doc = json.loads(r.body)
        assert doc["id"] == f"r{i}"
        want = model.predict({model.inputs[0].name: x})
        got = np.array(doc["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, next(iter(want.values())).ravel(), rtol=1e-5, atol=1e-6)


def test_buffer_bad_row_fails_alone_and_overload_raises(artifact, model, tmp_path):
    from hybridserve.router.buffer import Overloaded

    inv = HandlerInvoker(artifact, tmp_path, delay_s=0.2)
    params = type(batch_params(0.0, 100.0, LAMBDA_MS, **PRICE))(2, 10.0, 2.0, 0.0)

    async def main():
        buf = SpillBuffer(inv.invoke, params, concurrency=1, max_pending=3)
        good = buf.submit(request(model, np.zeros((1, 16), np.float32)))
        bad = buf.submit(b'{"inputs":[{"name":"nope","datatype":"FP32","shape":[1],"data":[1]}]}')
        buf.submit(request(model, np.zeros((1, 16), np.float32)))
        with pytest.raises(Overloaded):
            buf.submit(request(model, np.zeros((1, 16), np.float32)))
        out = await asyncio.gather(good, bad)
        await buf.close()
        return out

    good, bad = asyncio.run(main())
    assert good.status == 200 and bad.status == 400 and b"nope" in bad.body


def test_split_responses_maps_function_errors_and_count_mismatch():
    res = SimpleNamespace(
        payload=b'{"errorMessage":"boom"}', function_error="Unhandled", init_ms=None
    )
    out = split_responses(res, 2)
    assert [r.status for r in out] == [502, 502] and b"boom" in out[0].body
    res = SimpleNamespace(payload=b'{"responses":[{}]}', function_error=None, init_ms=3.0)
    out = split_responses(res, 2)
    assert out[0].status == 502 and b"1 responses for 2" in out[0].body and out[0].cold_start


# ---------------------------------------------------------------------------- the ASGI app
class Fleet:
    """Endpoints a test can change, as a backend would."""

    def __init__(self, eps: list[Endpoint]) -> None:
        self.eps = eps

    def __call__(self) -> list[Endpoint]:
        return list(self.eps)


@pytest.fixture(scope="module")
def server(model):
    from predictors.server import create_app
    from tests.model_server_helpers import ServerThread

    with ServerThread(create_app([model], max_batch=8, max_delay_ms=1)) as s:
        yield s


def _router(model, fleet, invoker=None, **cfg):
    kw = dict(
        model_name=model.name, slo_ms=500.0, batch_ms={1: 1.0, 8: 4.0}, lambda_ms=tuple(LAMBDA_MS)
    )
    kw.update(cfg)
    return Router(RouterConfig(**kw), fleet, invoker)


@pytest.fixture
def serve_router():
    from tests.model_server_helpers import ServerThread

    started = []

    def start(router):
        s = ServerThread(router).__enter__()
        started.append(s)
        return s

    yield start
    for s in started:
        s.__exit__(None, None, None)


def test_router_forwards_to_the_fleet_and_answers_metadata(model, server, serve_router):
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    rs = serve_router(_router(model, fleet))
    x = np.ones((2, 16), np.float32)
    status, headers, body = rs.request("POST", f"/v2/models/{model.name}/infer", request(model, x))
    assert status == 200, body
    doc = json.loads(body)
    want = next(iter(model.predict({model.inputs[0].name: x}).values()))
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]), want.ravel(), rtol=1e-5)
    status, _, body = rs.request("GET", f"/v2/models/{model.name}")
    assert status == 200 and json.loads(body)["inputs"][0]["name"] == model.inputs[0].name
    assert rs.request("GET", "/v2/health/ready")[0] == 200
    assert rs.request("GET", "/v2/models/other")[0] == 404
    metrics = Scrape(rs.request("GET", "/metrics")[2])
    assert metrics.value("hybridserve_router_responses_total", path="fleet", code="200") == 1
    assert metrics.value("hybridserve_fleet_size", pool="c5.large/on_demand") == 1
    assert metrics.type("hybridserve_router_latency_seconds") == "histogram"
    assert metrics.value("hybridserve_router_latency_seconds_count", path="fleet") == 1


def test_bad_requests_get_400_on_both_paths(model, server, serve_router, artifact, tmp_path):
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    rs = serve_router(_router(model, fleet, HandlerInvoker(artifact, tmp_path)))
    path = f"/v2/models/{model.name}/infer"
    for body in (
        b"{not json",
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}',
    ):
        status, _, out = rs.request("POST", path, body)
        assert status == 400 and b"error" in out
    fleet.eps = []  # now everything spills
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}',
    ):
        status, _, out = rs.request("POST", path, body)
        assert status == 400 and b"error" in out, out


def test_spill_when_the_queue_would_break_the_slo(model, server, serve_router, artifact, tmp_path):
    """Profile says 100 ms per request and the budget is 140 ms: one in flight fits, two do not."""
    inv = HandlerInvoker(artifact, tmp_path, delay_s=0.0)
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    router = _router(
        model, fleet, inv, slo_ms=150.0, margin_ms=10.0, batch_ms={1: 100.0}, max_batch=1
    )
    rs = serve_router(router)
    x = np.ones((1, 16), np.float32)
    # hold the instance busy by pretending one request is in flight there
    rs.request("GET", "/v2/health/ready")
    router.refresh()
    router.ups[0].outstanding = 1
    status, _, body = rs.request("POST", f"/v2/models/{model.name}/infer", request(model, x))
    assert status == 200, body
    assert router.metrics.responses.get(("lambda", 200)) == 1
    router.ups[0].outstanding = 0
    status, _, body = rs.request("POST", f"/v2/models/{model.name}/infer", request(model, x))
    assert status == 200 and router.metrics.responses.get(("fleet", 200)) == 1
    assert len(inv.payloads) == 1


def test_overload_answers_503_with_retry_after_and_never_hangs(
    model, serve_router, artifact, tmp_path
):
    inv = HandlerInvoker(artifact, tmp_path, delay_s=0.5)
    rs = serve_router(_router(model, Fleet([]), inv, lambda_concurrency=1, max_spill_pending=2))
    x = np.ones((1, 16), np.float32)
    body = request(model, x)

    def one(_):
        return rs.request("POST", f"/v2/models/{model.name}/infer", body)

    with ThreadPoolExecutor(8) as pool:  # each request has the client's timeout: no hang
        out = list(pool.map(one, range(8)))
    codes = sorted(s for s, _, _ in out)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    rejected = [h for s, h, _ in out if s == 503]
    assert all(h.get("retry-after") == "1" for h in rejected)


def test_vm_only_overload_503_when_queues_are_full(model, server, serve_router):
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    router = _router(model, fleet, spill=False, max_queue=2)
    rs = serve_router(router)
    rs.request("GET", "/v2/health/ready")
    router.refresh()
    router.ups[0].outstanding = 2  # the instance's queue bound is reached
    status, headers, _ = rs.request(
        "POST", f"/v2/models/{model.name}/infer", request(model, np.ones((1, 16), np.float32))
    )
    assert status == 503 and headers.get("retry-after") == "1"


def test_auth(model, server, serve_router):
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])
    rs = serve_router(_router(model, fleet, api_key="s3cret"))
    path = f"/v2/models/{model.name}/infer"
    body = request(model, np.ones((1, 16), np.float32))
    assert rs.request("POST", path, body)[0] == 401
    assert rs.request("POST", path, body, {"authorization": "Bearer wrong"})[0] == 401
    assert rs.request("GET", "/metrics")[0] == 401
    assert rs.request("POST", path, body, {"authorization": "Bearer s3cret"})[0] == 200
    assert rs.request("POST", path, body, {"x-api-key": "s3cret"})[0] == 200
    assert rs.request("GET", "/v2/health/live")[0] == 200  # probes need no key


def test_dead_instance_mid_flight_is_retried_on_lambda(model, serve_router, artifact, tmp_path):
    """An instance that accepts the connection and dies without answering: the request is
    retried once on Lambda, and the instance leaves the routing table."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]

    def die():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()  # connection dropped mid-request

    threading.Thread(target=die, daemon=True).start()
    inv = HandlerInvoker(artifact, tmp_path)
    fleet = Fleet([Endpoint("i-dead", "c5.large/on_demand", f"http://127.0.0.1:{port}")])
    router = _router(model, fleet, inv)
    rs = serve_router(router)
    x = np.ones((1, 16), np.float32)
    status, _, body = rs.request("POST", f"/v2/models/{model.name}/infer", request(model, x))
    sock.close()
    assert status == 200, body
    assert router.metrics.retries == 1 and router.metrics.instance_failures == 1
    assert router.ups == []  # excluded although the backend still lists it
    status, _, _ = rs.request("POST", f"/v2/models/{model.name}/infer", request(model, x))
    assert status == 200 and router.metrics.responses.get(("lambda", 200)) == 1
