"""The V2 codec of the model server: JSON and binary requests decoded, responses encoded, and
every malformed request refused with a 400 that says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictors.v2 import (
    HEADER_LENGTH,
    InferResponse,
    Tensor,
    V2Error,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    response_tensor,
)
from tests.model_server_helpers import binary_body

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
    ("bf16 datatype", json.dumps(_input(datatype="BF16")), None, "BF16 is not supported"),
    ("bytes not strings", json.dumps(_input(datatype="BYTES")), None, "BYTES needs strings"),
    (
        "bytes element count",
        json.dumps(_input(datatype="BYTES", shape=[3], data=["a", "b"])),
        None,
        "shape [3] needs 3 elements, 'data' has 2",
    ),
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
    (
        "binary without header",
        binary_body()[0][: binary_body()[1]],
        None,
        "no Inference-Header-Content-Length",
    ),
    (
        "binary size mismatch",
        *binary_body(size=4, payload=b"\0" * 4),
        "binary_data_size is 4 bytes but",
    ),
    ("short binary body", *binary_body(payload=b"\0" * 5), "binary data is short"),
    ("trailing bytes", *binary_body(payload=b"\0" * 9), "1 bytes of binary data not claimed"),
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


# --------------------------------------------------------------------------- BYTES


def test_bytes_round_trip_json_and_binary_as_tritonclient_sends_them():
    """BYTES (text in, labels out): JSON strings, and binary length-prefixed elements exactly
    as tritonclient.http serializes them; strings and non-UTF-8 bytes both come back."""
    httpclient = pytest.importorskip("tritonclient.http")
    text = np.array([["héllo", "a"], ["", "zz"]], dtype=object)
    raw = np.array([b"\x00\xff", b"ok"], dtype=object)
    for binary in (False, True):
        inp = httpclient.InferInput("text", [2, 2], "BYTES")
        inp.set_data_from_numpy(text, binary_data=binary)
        body, n = httpclient.InferenceServerClient.generate_request_body([inp])
        req = decode_request(body, n)
        (t,) = req.inputs
        assert t.datatype == "BYTES" and t.shape == (2, 2)
        assert t.data.tolist() == [[s.encode() for s in row] for row in text.tolist()]
    body, headers = encode_request({"raw": raw, "text": text}, binary_inputs=True)
    back = decode_request(body, headers.get(HEADER_LENGTH))
    assert back.inputs[0].data.tolist() == [b"\x00\xff", b"ok"]
    resp = InferResponse("m", [response_tensor("label", np.array(["cat", "dög"]))])
    for binary in (False, True):
        out, h = encode_response(resp, binary)
        got = decode_response(out, h.get(HEADER_LENGTH)).outputs[0]
        assert got.datatype == "BYTES" and got.data.tolist() == [b"cat", "dög".encode()]
    # a JSON response can only carry text: bytes that are not UTF-8 are replaced there
    out, _ = encode_response(InferResponse("m", [response_tensor("b", raw)]))
    assert json.loads(out)["outputs"][0]["data"] == ["\x00\ufffd", "ok"]


@pytest.mark.parametrize(
    "tail, size, message",
    [
        (b"\x05\x00\x00\x00ab", 6, "element 0 claims 5 bytes, 2 remain"),
        (b"\x01\x00\x00\x00a", 5, "ends after 1 of 2 elements"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00bX", 11, "take 10"),
        (b"\x01\x00", 9, "binary data is short"),
    ],
)
def test_malformed_binary_bytes_are_400_naming_the_input(tail, size, message):
    head = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2],
                        "parameters": {"binary_data_size": size}}]}  # fmt: skip
    header = json.dumps(head).encode()
    with pytest.raises(V2Error) as e:
        decode_request(header + tail, len(header))
    assert e.value.status == 400 and "input 't'" in e.value.message
    assert message in e.value.message, e.value.message


class _Upper:
    """A model taking text and answering it upper-cased, with its length (BYTES in and out)."""

    name, version, max_batch, ready = "upper", "1", 8, True

    def __init__(self) -> None:
        from predictors.model import TensorSpec

        self.inputs = [TensorSpec("text", "BYTES", (-1,))]
        self.outputs = [TensorSpec("upper", "BYTES", (-1,)), TensorSpec("n", "INT64", (-1,))]
        self.batches: list[int] = []

    def predict(self, inputs):
        text = inputs["text"]
        self.batches.append(len(text))
        up = np.array([t.upper() for t in text], dtype=object)
        return {"upper": up, "n": np.array([len(t) for t in text], dtype=np.int64)}


def test_the_data_plane_batches_bytes_requests_together():
    import asyncio

    from predictors.dataplane import DataPlane

    model = _Upper()
    plane = DataPlane([model], max_delay_ms=20)

    def request(*words: str) -> bytes:
        body, headers = encode_request({"text": np.array(words, dtype=object)})
        return body, headers[HEADER_LENGTH]

    async def main():
        calls = [plane.infer_bytes("upper", *request(*w)) for w in (["ab", "c"], ["déf"])]
        return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    got = [decode_response(body, h.get(HEADER_LENGTH)).outputs for body, h in outs]
    assert [o[0].data.tolist() for o in got] == [
        [b"AB", b"C"],
        ["DéF".encode()],
    ]  # ASCII upper-cased
    assert [o[1].data.tolist() for o in got] == [[2, 1], [4]]  # bytes, not characters
    assert model.batches == [3]  # one predict for both requests
    sync = plane.infer_sync("upper", decode_request(*request("x")))
    assert sync.outputs[0].data.tolist() == [b"X"]


def test_the_router_reencodes_a_binary_bytes_request_as_json_for_lambda():
    from hybridserve.router.asgi import as_json_request

    body, h = encode_request({"text": np.array(["héllo", b"\xff"], dtype=object)})
    doc = json.loads(as_json_request(body, h[HEADER_LENGTH].encode()))
    want = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", "\ufffd"]}
    assert doc["inputs"] == [want]
