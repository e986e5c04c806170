"""The model server's V2 protocol over HTTP, checked with tritonclient.http (a client nobody
here wrote) plus raw malformed requests: health, metadata, JSON and binary inference, V2 errors
for every bad request and route, gzip bodies, a failing predict, and the /metrics exposition."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictors.v2 import HEADER_LENGTH
from tests.conftest import Scrape
from tests.model_server_helpers import (  # server_fixture: the module's `server` fixture
    POISON,
    binary_body,
    expected,
    infer_ok,
    json_body,
    rows,
    server_fixture,  # noqa: F401
)


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


def _bin_body(datatype="FP32", shape=(1, 4), size=16, payload=b"\0" * 16):
    body, n = binary_body(datatype, shape, size, payload)
    return body, {HEADER_LENGTH: str(n)}


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
    infer_ok(server)


def test_unknown_routes_and_methods_answer_v2_error_json(server):
    for method, path, status in [
        ("GET", "/v2/nothing", 404),
        ("GET", "/v2/models/linear/infer", 405),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/nope/ready", 404),
    ]:
        got, _, raw = server.request(method, path)
        assert got == status and "error" in json.loads(raw), (path, raw)
    infer_ok(server)


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


def test_metrics_exposes_requests_latency_batches_and_queue(server):
    infer_ok(server)
    # its own 404, not one an earlier test left on the shared server (order must not matter)
    assert server.request("POST", "/v2/models/nope/infer", json_body(rows(1)))[0] == 404
    status, headers, raw = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    m = Scrape(raw)  # prometheus_client's parser: a malformed line raises
    ok = m.value("hybridserve_requests_total", model="linear", code="200")
    assert ok >= 1 and m.value("hybridserve_requests_total", model="_unknown", code="404") >= 1
    n = m.value("hybridserve_request_duration_seconds_count", model="linear")
    assert m.value("hybridserve_request_duration_seconds_bucket", model="linear", le="+Inf") == n
    assert n >= ok and m.value("hybridserve_request_duration_seconds_sum", model="linear") > 0
    assert m.value("hybridserve_batch_size_bucket", model="linear", le="8.0") >= 1
    assert m.value("hybridserve_queue_depth", model="linear") == 0
    assert m.type("hybridserve_request_duration_seconds") == "histogram"
    assert m.type("hybridserve_requests") == "counter"


def test_predict_exception_fails_only_that_request(server):
    x = rows(1)
    x[0, 0] = POISON
    status, _, raw = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 500 and "poisoned input" in json.loads(raw)["error"]
    infer_ok(server)
