"""The model server's data plane and dynamic batching: validation against the model's spec,
batches that never exceed max_batch, a failing batch, a full queue (503), requests with different
dynamic dimensions, and the same over HTTP with concurrent requests and overload."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from predictors.batching import DynamicBatcher
from predictors.dataplane import DataPlane
from predictors.model import TensorSpec
from predictors.v2 import InferRequest, Tensor, V2Error
from tests.conftest import Scrape, wait_until
from tests.model_server_helpers import (  # server_fixture: the module's `server` fixture
    POISON,
    LinearModel,
    ServerThread,
    expected,
    infer_ok,
    json_body,
    make_app,
    rows,
    server_fixture,  # noqa: F401
)

# ------------------------------------------------------------------------- data plane, batcher


def _req(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> InferRequest:
    return InferRequest([Tensor(name, datatype, tuple(x.shape), x)])


@pytest.mark.parametrize(
    "request_,status,message",
    [
        (_req(rows(2), name="z"), 400, "unknown input 'z'"),
        (
            _req(rows(2).astype(np.float64), datatype="FP64"),
            400,
            "input 'x': expected datatype FP32, got FP64",
        ),
        (_req(rows(2)[:, :3]), 400, "input 'x': expected shape [-1, 4], got [2, 3]"),
        (_req(np.zeros((0, 4), np.float32)), 400, "empty batch"),
        (InferRequest([Tensor("x", "FP32", (1, 4), rows(1))], outputs=[]), 200, ""),
    ],
)
def test_dataplane_validates_against_the_model_spec(request_, status, message):
    dp = DataPlane([LinearModel()], max_batch=4)
    if status == 200:
        resp = dp.infer_sync("linear", request_)
        assert [t.name for t in resp.outputs] == ["y", "label"]
        return
    with pytest.raises(V2Error) as e:
        asyncio.run(dp.infer("linear", request_))
    assert (e.value.status, message in e.value.message) == (status, True), e.value.message


def test_dataplane_unknown_model_is_404_and_large_batches_are_split():
    model = LinearModel(max_batch=16)
    dp = DataPlane([model], max_batch=4, max_delay_ms=1)
    with pytest.raises(V2Error) as e:
        asyncio.run(dp.infer("nope", _req(rows(1))))
    assert e.value.status == 404 and "model 'nope' not found" in e.value.message
    with pytest.raises(V2Error) as e:
        dp.model_metadata("linear", version="7")
    assert e.value.status == 404
    x = rows(11)
    resp = asyncio.run(dp.infer("linear", _req(x)))
    y, lab = expected(x)
    np.testing.assert_allclose(resp.outputs[0].data, y, rtol=1e-6)
    np.testing.assert_array_equal(resp.outputs[1].data, lab)
    assert max(model.calls) <= 4 and sum(model.calls) == 11
    meta = dp.model_metadata("linear")
    assert meta["versions"] == ["1"] and meta["platform"] == "numpy"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


def test_batcher_batches_mixed_sizes_never_exceeding_max_and_survives_a_failing_batch():
    model = LinearModel(delay_s=0.01, max_batch=8)

    async def main():
        b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=5)
        xs = [rows(1 + i % 4, seed=i) for i in range(24)]
        outs = await asyncio.gather(*(b.submit({"x": x}) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["y"], expected(x)[0], rtol=1e-6)
        poisoned = rows(2)
        poisoned[0, 0] = POISON
        results = await asyncio.gather(
            b.submit({"x": rows(1)}), b.submit({"x": poisoned}), return_exceptions=True
        )
        assert all(isinstance(r, V2Error) and r.status == 500 for r in results), results
        assert "poisoned input" in results[1].message
        after = await b.submit({"x": rows(3)})  # the worker is still alive
        np.testing.assert_allclose(after["y"], expected(rows(3))[0], rtol=1e-6)
        s = b.stats()
        await b.stop()
        return s

    s = asyncio.run(main())
    assert max(model.calls) <= 8 and max(s.batch_sizes) > 1
    assert s.failed_batches_total == 1 and s.queue_depth == 0
    assert s.batch_histogram()[-1] == ("+Inf", s.batches_total)


def test_batcher_rejects_with_503_when_the_queue_is_full():
    model = LinearModel(delay_s=0.05, max_batch=1)

    async def main():
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_ms=0, max_queue=2)
        res = await asyncio.gather(
            *(b.submit({"x": rows(1)}) for _ in range(8)), return_exceptions=True
        )
        await b.stop()
        return res, b.stats()

    res, s = asyncio.run(main())
    rejected = [r for r in res if isinstance(r, V2Error)]
    assert rejected and all(r.status == 503 and "queue full" in r.message for r in rejected)
    assert len(rejected) == s.rejected_total and len(res) - len(rejected) >= 2


class RowSum:
    """A model with a dynamic second dimension: requests of different widths never batch."""

    name, version, max_batch = "rowsum", "1", 8
    inputs = [TensorSpec("x", "INT64", (-1, -1))]
    outputs = [TensorSpec("s", "INT64", (-1,))]
    ready = True

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def predict(self, inputs):
        time.sleep(0.005)
        self.shapes.append(inputs["x"].shape)
        return {"s": inputs["x"].sum(axis=1)}


def test_requests_with_different_dynamic_dims_are_batched_separately():
    model = RowSum()
    dp = DataPlane([model], max_batch=8, max_delay_ms=5)
    xs = [np.full((1 + i % 2, 2 + i % 3), i, dtype=np.int64) for i in range(12)]

    async def main():
        return await asyncio.gather(*(dp.infer("rowsum", _req(x, datatype="INT64")) for x in xs))

    for x, r in zip(xs, asyncio.run(main()), strict=True):
        np.testing.assert_array_equal(r.outputs[0].data, x.sum(axis=1))
    assert all(n <= 8 for n, _ in model.shapes) and len(model.shapes) < len(xs)


# ----------------------------------------------------------------------------- over HTTP


def test_large_request_is_split_into_max_batch_chunks(server):
    x = rows(21, seed=11)
    before = len(server.model.calls)
    status, _, raw = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 200
    y = np.array(json.loads(raw)["outputs"][0]["data"], np.float32).reshape(21, 3)
    np.testing.assert_allclose(y, expected(x)[0], rtol=1e-6)
    assert max(server.model.calls[before:]) <= 8


def _post_many(server: ServerThread, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    def one(body):
        s, _, raw = server.request("POST", "/v2/models/linear/infer", body)
        return s, raw

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies, timeout=30))


def test_concurrent_requests_are_batched():
    model = LinearModel(delay_s=0.02, max_batch=8)
    with ServerThread(make_app(model, max_batch=8, max_delay_ms=5)) as s:
        xs = [rows(1, seed=i) for i in range(32)]
        results = _post_many(s, [json_body(x) for x in xs])
        for x, (status, raw) in zip(xs, results, strict=True):
            assert status == 200, raw
            y = np.array(json.loads(raw)["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(y, expected(x)[0].ravel(), rtol=1e-6)
        stats = s.app.state.dataplane.stats()["linear"]
        assert stats.rows_total == 32 and max(stats.batch_sizes) > 1, stats
        assert max(model.calls) <= 8 and stats.batches_total < 32
        m = Scrape(s.request("GET", "/metrics")[2])
        le1 = m.value("hybridserve_batch_size_bucket", model="linear", le="1.0")
        assert le1 < stats.batches_total  # some batch held more than 1 row
        assert m.value("hybridserve_batch_size_sum", model="linear") == 32


def test_overload_answers_503_without_hanging():
    model = LinearModel(delay_s=0.05, max_batch=1)
    with ServerThread(make_app(model, max_batch=1, max_delay_ms=0, max_queue=2)) as s:
        # each request has the client's 10 s timeout, so a hang fails it rather than the clock
        results = _post_many(s, [json_body(rows(1, seed=i)) for i in range(16)])
        codes = sorted(code for code, _ in results)
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
        overloaded = next(raw for code, raw in results if code == 503)
        assert "queue full" in json.loads(overloaded)["error"]
        m = Scrape(s.request("GET", "/metrics")[2])
        assert m.value("hybridserve_requests_total", model="linear", code="503") == codes.count(503)
        wait_until(
            lambda: s.app.state.dataplane.stats()["linear"].queue_depth == 0, 10, "an empty queue"
        )
        infer_ok(s)
