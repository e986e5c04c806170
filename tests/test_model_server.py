"""The V2 model server: codec, data plane, dynamic batching, and the real HTTP server checked
with tritonclient.http (a client nobody here wrote) plus raw malformed requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from predictors.batching import DynamicBatcher
from predictors.dataplane import DataPlane
from predictors.model import TensorSpec
from predictors.v2 import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    Tensor,
    V2Error,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from tests.conftest import wait_until

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)
POISON = 999.0  # a request holding this value makes predict raise


class LinearModel:
    """y = x @ W + b and its argmax; optional delay per predict; records batch sizes."""

    def __init__(self, name: str = "linear", *, delay_s: float = 0.0, max_batch: int = 16):
        self.name = name
        self.version = "1"
        self.platform = "numpy"
        self.inputs = [TensorSpec("x", "FP32", (-1, 4))]
        self.outputs = [TensorSpec("y", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))]
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.calls: list[int] = []
        self._lock = threading.Lock()
        self._busy = False

    @property
    def ready(self) -> bool:
        return True

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            assert not self._busy, "predict called concurrently"
            self._busy = True
        try:
            x = inputs["x"]
            assert x.shape[0] <= self.max_batch
            self.calls.append(int(x.shape[0]))
            if self.delay_s:
                time.sleep(self.delay_s)
            if np.any(x == POISON):
                raise RuntimeError("poisoned input")
            y = (x @ W + B).astype(np.float32)
            return {"y": y, "label": np.argmax(y, axis=1).astype(np.int64)}
        finally:
            self._busy = False


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = (x @ W + B).astype(np.float32)
    return y, np.argmax(y, axis=1)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def json_body(x: np.ndarray, **extra) -> bytes:
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        **extra,
    }
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------------------ codec


def test_decode_json_flat_and_nested_data_are_row_major():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    flat = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]
    }
    nested = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}]}
    for body in (json.dumps(flat).encode(), json.dumps(nested), nested):
        req = decode_request(body)
        (t,) = req.inputs
        assert t.name == "x" and t.datatype == "FP32" and t.shape == (2, 3)
        assert t.data.dtype == np.float32
        np.testing.assert_array_equal(t.data, x)


def test_decode_keeps_id_parameters_and_requested_outputs():
    doc = {
        "id": "r1",
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}],
        "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        "parameters": {"binary_data_output": False},
    }
    req = decode_request(doc)
    assert req.id == "r1" and req.inputs[0].data.dtype == np.int64
    assert [(o.name, o.binary_data) for o in req.outputs] == [("a", True), ("b", None)]
    assert req.binary_outputs(["a", "b"]) == {"a"}
    req.parameters["binary_data_output"] = True
    assert req.binary_outputs(["a", "b"]) == {"a", "b"}


def test_binary_request_round_trip_mixed_with_json_inputs():
    a = np.arange(8, dtype=np.float16).reshape(2, 4)
    b = np.array([[1, -2], [3, 4]], dtype=np.int32)
    body, headers = encode_request({"a": a, "b": b})
    req = decode_request(body, headers[HEADER_LENGTH])
    got = req.input_arrays()
    assert got["a"].dtype == np.float16 and got["b"].dtype == np.int32
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    # one JSON input between binary ones: tails belong to the binary inputs in input order
    header = {
        "inputs": [
            {"name": "p", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
            {"name": "q", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "r", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
        ]
    }
    h = json.dumps(header).encode()
    req = decode_request(h + bytes([7, 8, 9]) + np.float64(2.5).tobytes(), len(h))
    got = req.input_arrays()
    assert got["p"].tolist() == [7, 8, 9] and got["q"].tolist() == [True, False]
    assert got["r"].tolist() == [2.5]


def test_encode_response_json_binary_and_mixed():
    y = np.array([[1.5, 2.0], [3.0, -4.0]], dtype=np.float32)
    lab = np.array([1, 0], dtype=np.int64)
    resp = InferResponse(
        "m", [Tensor("y", "FP32", (2, 2), y), Tensor("label", "INT64", (2,), lab)], "1", "abc"
    )
    body, headers = encode_response(resp, False)
    assert HEADER_LENGTH not in headers and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "abc"
    assert doc["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [1.5, 2.0, 3.0, -4.0],
    }
    for binary in (True, {"y"}, {"label"}):
        body, headers = encode_response(resp, binary)
        n = int(headers[HEADER_LENGTH])
        head = json.loads(body[:n])
        sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
        want = {"y": 16, "label": 16}
        assert sizes == [
            want[o["name"]] if binary is True or o["name"] in binary else None
            for o in head["outputs"]
        ]
        back = decode_response(body, n)
        np.testing.assert_array_equal(back.outputs[0].data, y)
        np.testing.assert_array_equal(back.outputs[1].data, lab)


def _input(**kw) -> dict:
    t = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}
    t.update(kw)
    return {"inputs": [t]}


def _bin(datatype="FP32", shape=(1, 2), size=8, payload=b"\0" * 8, **extra):
    t = {
        "name": "x",
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": size},
        **extra,
    }
    h = json.dumps({"inputs": [t]}).encode()
    return h + payload, len(h)


BAD_REQUESTS = [
    ("bad json", b'{"inputs": [', None, "invalid JSON"),
    ("not utf-8", b"\xff\xfe{}", None, "not UTF-8"),
    ("empty body", b"", None, "empty request body"),
    ("not an object", b"[1, 2]", None, "must be a JSON object"),
    ("missing inputs", b'{"id": "a"}', None, "no 'inputs'"),
    ("empty inputs", b'{"inputs": []}', None, "non-empty list"),
    ("input not object", b'{"inputs": [3]}', None, "inputs[0] must be a JSON object"),
    ("no name", json.dumps({"inputs": [{"datatype": "FP32"}]}), None, "has no 'name'"),
    (
        "no shape",
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}),
        None,
        "input 'x' has no 'shape'",
    ),
    ("unknown datatype", json.dumps(_input(datatype="FP8")), None, "unknown datatype 'FP8'"),
    ("bytes datatype", json.dumps(_input(datatype="BYTES")), None, "BYTES is not supported"),
    ("shape not ints", json.dumps(_input(shape=[1, "2"])), None, "list of integers"),
    ("negative shape", json.dumps(_input(shape=[-1, 2])), None, "negative dimension"),
    (
        "element count",
        json.dumps(_input(shape=[2, 2])),
        None,
        "shape [2, 2] needs 4 elements, 'data' has 2",
    ),
    (
        "no data",
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}),
        None,
        "neither 'data' nor binary_data_size",
    ),
    ("string data", json.dumps(_input(data=[1.0, "two"])), None, "must hold only numbers"),
    ("null data", json.dumps(_input(data=[1.0, None])), None, "must hold only numbers"),
    ("ragged data", json.dumps(_input(data=[[1.0], [2.0, 3.0]])), None, "ragged"),
    ("fraction for int", json.dumps(_input(datatype="INT64", data=[1, 2.5])), None, "fractions"),
    ("int8 range", json.dumps(_input(datatype="INT8", data=[1, 300])), None, "outside the range"),
    ("bool for float", json.dumps(_input(data=[True, False])), None, "got booleans"),
    ("number for bool", json.dumps(_input(datatype="BOOL", data=[1, 0])), None, "true/false"),
    ("duplicate input", json.dumps({"inputs": _input()["inputs"] * 2}), None, "more than once"),
    ("bad id", json.dumps({**_input(), "id": 5}), None, "'id' must be a string"),
    ("binary without header", _bin()[0][: _bin()[1]], None, "no Inference-Header-Content-Length"),
    ("binary size mismatch", *_bin(size=4, payload=b"\0" * 4), "binary_data_size is 4 bytes but"),
    ("short binary body", *_bin(payload=b"\0" * 5), "binary data is short"),
    ("trailing bytes", *_bin(payload=b"\0" * 9), "1 bytes of binary data not claimed"),
    ("header length past body", b"{}", 10, "is 10 but the request body has 2 bytes"),
    ("header length not int", b"{}", "abc", "must be an integer"),
    (
        "bad binary_data_output",
        json.dumps({**_input(), "parameters": {"binary_data_output": 1}}),
        None,
        "binary_data_output must be true or false",
    ),
]


@pytest.mark.parametrize(
    "body,header_length,message", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_decode_rejects_malformed_requests_with_400(body, header_length, message):
    with pytest.raises(V2Error) as e:
        decode_request(body, header_length)
    assert e.value.status == 400
    assert message in e.value.message
    assert e.value.as_json() == {"error": e.value.message}


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


# ----------------------------------------------------------------------------- live server


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 on a free port, in a daemon thread."""

    def __init__(self, app):
        uvicorn = pytest.importorskip("uvicorn")
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()


def _app(model, **kw):
    pytest.importorskip("starlette")
    from predictors.server import create_app

    return create_app([model], **kw)


@pytest.fixture(scope="module")
def server():
    model = LinearModel(max_batch=16)
    with ServerThread(_app(model, max_batch=8, max_delay_ms=2)) as s:
        s.model = model
        yield s


@pytest.fixture
def client(server):
    httpclient = pytest.importorskip("tritonclient.http")
    c = httpclient.InferenceServerClient(url=server.url, network_timeout=10.0)
    yield c
    c.close()


def test_tritonclient_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "1")
    assert not client.is_model_ready("missing")
    meta = client.get_server_metadata()
    assert meta["name"] == "hybridserve" and "binary_tensor_data" in meta["extensions"]
    mm = client.get_model_metadata("linear")
    assert mm == client.get_model_metadata("linear", model_version="1")
    assert mm["name"] == "linear" and mm["versions"] == ["1"] and mm["platform"] == "numpy"
    assert mm["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in mm["outputs"]] == ["y", "label"]


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [None, False, True, "mixed"])
def test_tritonclient_infer_json_and_binary(client, binary_in, binary_out):
    import tritonclient.http as httpclient

    x = rows(3, seed=7)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    if binary_out is None:
        outputs = None  # the client asks for binary_data_output on every output
    elif binary_out == "mixed":
        outputs = [
            httpclient.InferRequestedOutput("y", binary_data=True),
            httpclient.InferRequestedOutput("label", binary_data=False),
        ]
    else:
        outputs = [
            httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("y", "label")
        ]
    res = client.infer("linear", [inp], outputs=outputs, request_id="req-1")
    y, lab = expected(x)
    assert res.as_numpy("y").dtype == np.float32 and res.as_numpy("label").dtype == np.int64
    np.testing.assert_allclose(res.as_numpy("y"), y, rtol=1e-6)
    np.testing.assert_array_equal(res.as_numpy("label"), lab)
    r = res.get_response()
    assert r["model_name"] == "linear" and r["model_version"] == "1" and r["id"] == "req-1"
    binary = {o["name"] for o in r["outputs"] if "binary_data_size" in o.get("parameters", {})}
    want = {None: {"y", "label"}, False: set(), True: {"y", "label"}, "mixed": {"y"}}[binary_out]
    assert binary == want


def test_tritonclient_only_requested_outputs_and_versioned_infer(client):
    import tritonclient.http as httpclient

    x = rows(2)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(
        "linear", [inp], model_version="1", outputs=[httpclient.InferRequestedOutput("label")]
    )
    assert res.as_numpy("y") is None
    np.testing.assert_array_equal(res.as_numpy("label"), expected(x)[1])


def test_tritonclient_sees_v2_errors(client):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("linear", [inp])
    assert e.value.status() == "400" and "expected shape [-1, 4], got [1, 3]" in e.value.message()


def _infer_ok(server: ServerThread) -> None:
    x = rows(2, seed=3)
    status, _, body = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 200, body
    doc = json.loads(body)
    got = np.array(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected(x)[0], rtol=1e-6)


def _bin_body(datatype="FP32", shape=(1, 4), size=16, payload=b"\0" * 16):
    t = {
        "name": "x",
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": size},
    }
    h = json.dumps({"inputs": [t]}).encode()
    return h + payload, {HEADER_LENGTH: str(len(h))}


MALFORMED_HTTP = [
    ("bad json", "/v2/models/linear/infer", b"{not json", {}, 400, "invalid JSON"),
    ("unknown model", "/v2/models/nope/infer", json_body(rows(1)), {}, 404, "'nope' not found"),
    (
        "unknown version",
        "/v2/models/linear/versions/9/infer",
        json_body(rows(1)),
        {},
        404,
        "no version '9'",
    ),
    (
        "unknown input",
        "/v2/models/linear/infer",
        json_body(rows(1)).replace(b'"name": "x"', b'"name": "q"'),
        {},
        400,
        "unknown input 'q'",
    ),
    (
        "wrong datatype",
        "/v2/models/linear/infer",
        json_body(rows(1)).replace(b'"FP32"', b'"FP64"'),
        {},
        400,
        "expected datatype FP32, got FP64",
    ),
    (
        "wrong shape",
        "/v2/models/linear/infer",
        json_body(rows(1).reshape(2, 2)),
        {},
        400,
        "expected shape [-1, 4], got [2, 2]",
    ),
    (
        "short binary body",
        "/v2/models/linear/infer",
        *_bin_body(payload=b"\0" * 10),
        400,
        "binary data is short",
    ),
    (
        "bad header length",
        "/v2/models/linear/infer",
        json_body(rows(1)),
        {HEADER_LENGTH: "-3"},
        400,
        "Inference-Header-Content-Length is -3",
    ),
    (
        "unknown output",
        "/v2/models/linear/infer",
        json_body(rows(1), outputs=[{"name": "zz"}]),
        {},
        400,
        "unknown output 'zz'",
    ),
    (
        "bad gzip",
        "/v2/models/linear/infer",
        b"xx",
        {"Content-Encoding": "gzip"},
        400,
        "not valid gzip",
    ),
]


@pytest.mark.parametrize(
    "path,body,headers,status,message",
    [c[1:] for c in MALFORMED_HTTP],
    ids=[c[0] for c in MALFORMED_HTTP],
)
def test_malformed_http_requests_get_v2_errors_and_the_server_keeps_serving(
    server, path, body, headers, status, message
):
    got, hdrs, raw = server.request("POST", path, body, headers)
    assert got == status, raw
    doc = json.loads(raw)
    assert set(doc) == {"error"} and message in doc["error"], doc
    _infer_ok(server)


def test_unknown_routes_and_methods_answer_v2_error_json(server):
    for method, path, status in [
        ("GET", "/v2/nothing", 404),
        ("GET", "/v2/models/linear/infer", 405),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/nope/ready", 404),
    ]:
        got, _, raw = server.request(method, path)
        assert got == status and "error" in json.loads(raw), (path, raw)
    _infer_ok(server)


def test_gzip_request_body_is_accepted(server):
    import gzip

    x = rows(1)
    status, _, raw = server.request(
        "POST", "/v2/models/linear/infer", gzip.compress(json_body(x)), {"Content-Encoding": "gzip"}
    )
    assert status == 200
    np.testing.assert_allclose(
        json.loads(raw)["outputs"][0]["data"], expected(x)[0].ravel(), rtol=1e-6
    )


def test_large_request_is_split_into_max_batch_chunks(server):
    x = rows(21, seed=11)
    before = len(server.model.calls)
    status, _, raw = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 200
    y = np.array(json.loads(raw)["outputs"][0]["data"], np.float32).reshape(21, 3)
    np.testing.assert_allclose(y, expected(x)[0], rtol=1e-6)
    assert max(server.model.calls[before:]) <= 8


def test_metrics_exposes_requests_latency_batches_and_queue(server):
    _infer_ok(server)
    # its own 404, not one an earlier test left on the shared server (order must not matter)
    assert server.request("POST", "/v2/models/nope/infer", json_body(rows(1)))[0] == 404
    status, headers, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        'hybridserve_requests_total{model="linear",code="200"}',
        'hybridserve_requests_total{model="_unknown",code="404"}',
        'hybridserve_request_duration_seconds_bucket{model="linear",le="+Inf"}',
        'hybridserve_request_duration_seconds_sum{model="linear"}',
        'hybridserve_request_duration_seconds_count{model="linear"}',
        'hybridserve_batch_size_bucket{model="linear",le="8"}',
        'hybridserve_queue_depth{model="linear"} 0',
        "# TYPE hybridserve_request_duration_seconds histogram",
    ):
        assert name in text, name
    # every sample line parses as "name{labels} value"
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def _post_many(server: ServerThread, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    def one(body):
        s, _, raw = server.request("POST", "/v2/models/linear/infer", body)
        return s, raw

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies, timeout=30))


def test_concurrent_requests_are_batched():
    model = LinearModel(delay_s=0.02, max_batch=8)
    with ServerThread(_app(model, max_batch=8, max_delay_ms=5)) as s:
        xs = [rows(1, seed=i) for i in range(32)]
        results = _post_many(s, [json_body(x) for x in xs])
        for x, (status, raw) in zip(xs, results, strict=True):
            assert status == 200, raw
            y = np.array(json.loads(raw)["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(y, expected(x)[0].ravel(), rtol=1e-6)
        stats = s.app.state.dataplane.stats()["linear"]
        assert stats.rows_total == 32 and max(stats.batch_sizes) > 1, stats
        assert max(model.calls) <= 8 and stats.batches_total < 32
        _, _, raw = s.request("GET", "/metrics")
        le1 = next(
            line
            for line in raw.decode().splitlines()
            if line.startswith('hybridserve_batch_size_bucket{model="linear",le="1"}')
        )
        assert int(le1.split()[-1]) < stats.batches_total  # some batch held more than 1 row


def test_overload_answers_503_without_hanging():
    model = LinearModel(delay_s=0.05, max_batch=1)
    with ServerThread(_app(model, max_batch=1, max_delay_ms=0, max_queue=2)) as s:
        # each request has the client's 10 s timeout, so a hang fails it rather than the clock
        results = _post_many(s, [json_body(rows(1, seed=i)) for i in range(16)])
        codes = sorted(code for code, _ in results)
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
        overloaded = next(raw for code, raw in results if code == 503)
        assert "queue full" in json.loads(overloaded)["error"]
        _, _, raw = s.request("GET", "/metrics")
        assert f'hybridserve_requests_total{{model="linear",code="503"}} {codes.count(503)}' in (
            raw.decode()
        )
        wait_until(
            lambda: s.app.state.dataplane.stats()["linear"].queue_depth == 0, 10, "an empty queue"
        )
        _infer_ok(s)


def test_predict_exception_fails_only_that_request(server):
    x = rows(1)
    x[0, 0] = POISON
    status, _, raw = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 500 and "poisoned input" in json.loads(raw)["error"]
    _infer_ok(server)


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


# ------------------------------------------------------------------------------------ CLI


def test_cli_model_server_wires_the_artifact_into_the_server(monkeypatch, tmp_path):
    import sys
    import types

    from click.testing import CliRunner

    pytest.importorskip("starlette")
    import predictors.server
    from hybridserve.cli.model_server import model_server

    seen = {}

    class FakeOnnx(LinearModel):
        def __init__(self, artifact, *, intra_op_num_threads=None):
            super().__init__(name=artifact["name"])
            seen["threads"] = intra_op_num_threads

    monkeypatch.setitem(
        sys.modules,
        "predictors.artifact",
        types.SimpleNamespace(load_artifact=lambda p: {"name": "distil", "path": p}),
    )
    monkeypatch.setitem(
        sys.modules, "predictors.onnx_model", types.SimpleNamespace(OnnxModel=FakeOnnx)
    )
    monkeypatch.setattr(
        predictors.server, "serve", lambda models, **kw: seen.update(models=models, **kw)
    )
    args = ["--artifact", str(tmp_path), "--port", "8123", "--max-batch", "4", "--threads", "3"]
    r = CliRunner().invoke(model_server, args)
    assert r.exit_code == 0, r.output
    assert [m.name for m in seen["models"]] == ["distil"] and seen["threads"] == 3
    assert (seen["port"], seen["max_batch"], seen["max_delay_ms"]) == (8123, 4, 5.0)


def test_cli_model_server_without_the_artifact_modules_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from click.testing import CliRunner

    from hybridserve.cli.model_server import model_server

    monkeypatch.setitem(sys.modules, "predictors.onnx_model", None)
    r = CliRunner().invoke(model_server, ["--artifact", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: model-server cannot load artifacts here" in r.output
    r = CliRunner().invoke(model_server, ["--artifact", str(tmp_path), "--max-batch", "0"])
    assert r.exit_code == 2 and "--max-batch" in r.output
