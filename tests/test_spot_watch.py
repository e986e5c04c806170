"""The model server's own view of a spot notice: EC2's metadata service (IMDSv2) polled, and
readiness failed once it announces the interruption, against a real HTTP metadata double."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.test_router import artifact, model, request  # noqa: F401

pytest.importorskip("starlette")


class Imds(http.server.BaseHTTPRequestHandler):
    """IMDSv2 as EC2 serves it: a PUT for a session token, then GETs that carry it (401
    without); spot/instance-action is 404 until the server's `action` is set."""

    def do_PUT(self):  # noqa: N802
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._reply(200 if ok else 400, b"tok-1")

    def do_GET(self):  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "tok-1":
            return self._reply(401, b"")
        action = self.server.action  # type: ignore[attr-defined]
        if self.path != "/latest/meta-data/spot/instance-action" or action is None:
            return self._reply(404, b"")
        self._reply(200, json.dumps(action).encode())

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def imds():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Imds)
    srv.action = None
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def test_a_spot_notice_in_the_metadata_fails_readiness_and_serving_goes_on(model, imds):  # noqa: F811
    from predictors.server import create_app
    from predictors.spot_watch import SpotWatch
    from tests.model_server_helpers import ServerThread

    watch = SpotWatch(f"http://127.0.0.1:{imds.server_address[1]}", every_s=0.05)
    with ServerThread(create_app([model], spot_watch=watch)) as s:
        wait_until(lambda: s.request("GET", "/v2/health/ready")[0] == 200, 20, "ready")
        body = request(model, np.ones((1, 16), np.float32))
        imds.action = {"action": "terminate", "time": "2026-12-01T23:00:00Z"}
        wait_until(lambda: s.request("GET", "/v2/health/ready")[0] == 503, 20, "not ready")
        assert watch.noticed == imds.action
        assert s.request("GET", "/v2/health/live")[0] == 200  # alive, draining
        assert s.request("POST", f"/v2/models/{model.name}/infer", body)[0] == 200
        imds.action = None  # a notice is not taken back
        assert s.request("GET", "/v2/health/ready")[0] == 503


def test_a_metadata_outage_never_marks_the_instance_interrupted():
    from predictors.spot_watch import SpotWatch

    watch = SpotWatch("http://127.0.0.1:9", every_s=0.01, timeout_s=0.2)  # nothing listens
    with pytest.raises(OSError):
        watch.poll()
    watch.start()
    threading.Event().wait(0.2)
    watch.stop()
    assert watch.noticed is None
