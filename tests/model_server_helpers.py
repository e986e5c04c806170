"""What the model-server tests share (tests/test_model_server_*.py): a numpy linear model that
records its batch sizes, its expected outputs, random rows, V2 JSON and binary bodies, and the real
HTTP server in a thread with the module-scoped `server` fixture (import `server_fixture`)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

from predictors.model import TensorSpec

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


def binary_body(datatype="FP32", shape=(1, 2), size=8, payload=b"\0" * 8, **extra):
    """A one-input request `x` with binary data: the body and its JSON header's length."""
    t = {
        "name": "x",
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": size},
        **extra,
    }
    h = json.dumps({"inputs": [t]}).encode()
    return h + payload, len(h)


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


def make_app(model, **kw):
    pytest.importorskip("starlette")
    from predictors.server import create_app

    return create_app([model], **kw)


@pytest.fixture(scope="module", name="server")
def server_fixture():
    """One live server per test module, over a LinearModel(max_batch=16) that batches up to 8."""
    model = LinearModel(max_batch=16)
    with ServerThread(make_app(model, max_batch=8, max_delay_ms=2)) as s:
        s.model = model
        yield s


def infer_ok(server: ServerThread) -> None:
    x = rows(2, seed=3)
    status, _, body = server.request("POST", "/v2/models/linear/infer", json_body(x))
    assert status == 200, body
    doc = json.loads(body)
    got = np.array(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected(x)[0], rtol=1e-6)
