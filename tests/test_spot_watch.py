"""The model server's own view of a spot notice: EC2's metadata service (IMDSv2) polled, and
readiness failed once it announces the interruption, against a real HTTP metadata double."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.imds_double import imds_server
from tests.test_router import artifact, model, request  # noqa: F401

pytest.importorskip("starlette")


ACTION_PATH = "/latest/meta-data/spot/instance-action"  # 404 until EC2 sets a notice


@pytest.fixture
def imds():
    with imds_server({ACTION_PATH: None}) as srv:
        yield srv


def test_a_spot_notice_in_the_metadata_fails_readiness_and_serving_goes_on(model, imds):  # noqa: F811
    from predictors.server import create_app
    from predictors.spot_watch import SpotWatch
    from tests.model_server_helpers import ServerThread

    watch = SpotWatch(imds.url, every_s=0.05)
    with ServerThread(create_app([model], spot_watch=watch)) as s:
        wait_until(lambda: s.request("GET", "/v2/health/ready")[0] == 200, 20, "ready")
        body = request(model, np.ones((1, 16), np.float32))
        action = {"action": "terminate", "time": "2026-12-01T23:00:00Z"}
        imds.paths[ACTION_PATH] = json.dumps(action)
        wait_until(lambda: s.request("GET", "/v2/health/ready")[0] == 503, 20, "not ready")
        assert watch.noticed == action
        assert s.request("GET", "/v2/health/live")[0] == 200  # alive, draining
        assert s.request("POST", f"/v2/models/{model.name}/infer", body)[0] == 200
        imds.paths[ACTION_PATH] = None  # a notice is not taken back
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
