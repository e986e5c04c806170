"""LocalBackend: real model-server processes driven like VMs (launch delay, readiness, loss)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from hybridserve.backends.local import LocalBackend  # noqa: E402
from hybridserve.config import Pool  # noqa: E402
from predictors.artifact import load_artifact  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from tests.conftest import wait_until  # noqa: E402

POOL = Pool(
    instance_type="c5.large",
    market="on_demand",
    price_usd_s=0.085 / 3600,
    capacity_rps=100,
    latency_s=0.05,
    batch=4,
    workers=1,
    launch_delay_s=90,
)
KEY = POOL.key
READY_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


@pytest.fixture
def make(artifact, tmp_path):
    """Backends built by the test; closed afterwards, and none may leave a process alive."""
    made: list[LocalBackend] = []

    def _make(**kw) -> LocalBackend:
        kw.setdefault("launch_delay_s", 0.5)
        kw.setdefault("probe_interval_s", 0.05)
        kw.setdefault("drain_s", 0.2)
        kw.setdefault("log_dir", tmp_path / "logs")
        b = LocalBackend(kw.pop("artifact", artifact), [POOL], **kw)
        made.append(b)
        return b

    yield _make
    for b in made:
        pids = list(b.pids().values())
        b.close()
        assert not [p for p in pids if _alive(p)], "close() left model servers running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): it is dead if /proc says so
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(cond: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> None:
    wait_until(cond, timeout_s)


def call(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def ready_count(b: LocalBackend) -> int:
    return b.observe().get(KEY).ready


def test_launched_instances_become_ready_and_serve_v2(make, artifact):
    b = make()
    actions = b.converge({KEY: 2})
    assert [(a.kind, a.pool) for a in actions] == [("launch", KEY)] * 2
    st = b.observe().get(KEY)
    assert st.ready == 0 and len(st.pending_ready_in_s) == 2
    assert all(0 < s <= 0.5 + b.expected_start_s for s in st.pending_ready_in_s)
    assert b.endpoints() == []

    wait_for(lambda: len(b.endpoints()) == 2)
    eps = b.endpoints()
    assert [e.instance_id for e in eps] == [a.instance_id for a in actions]  # launch order
    assert b.observe().get(KEY).ready == 2 and b.observe().get(KEY).pending_ready_in_s == ()
    assert len(b.start_times()) == 2 and all(t > 0 for t in b.start_times())

    name = json.loads((artifact / "manifest.json").read_text())["name"]
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    want = OnnxModel(load_artifact(artifact))._session.run(None, {"x": x})[0]
    req = {
        "id": "r1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": x.ravel().tolist()}],
    }
    for e in eps:
        assert e.pool == KEY and not e.url.endswith("/")
        assert call(e.url, "GET", "/v2/health/ready")[0] == 200
        code, body = call(e.url, "POST", f"/v2/models/{name}/infer", json.dumps(req).encode())
        assert code == 200, body
        out = json.loads(body)
        assert out["model_name"] == name and out["id"] == "r1"
        y = np.array(out["outputs"][0]["data"], dtype=np.float32).reshape(
            out["outputs"][0]["shape"]
        )
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    kinds = [k for _, k, _, _ in b.events()]
    assert kinds.count("launch") == 2 and kinds.count("ready") == 2


def test_nothing_is_ready_or_started_before_the_launch_delay(make):
    b = make(launch_delay_s=1.5)
    (launch,) = b.converge({KEY: 1})
    for _ in range(2):  # right after converge, and half a second later
        st, eps, pids = b.observe().get(KEY), b.endpoints(), b.pids()
        if b.now() >= launch.time_s + 1.5:
            break  # a busy machine read them past the delay: they prove nothing then
        assert st.ready == 0 and len(st.pending_ready_in_s) == 1
        assert st.pending_ready_in_s[0] > b.expected_start_s  # boot time still to come
        assert eps == [] and pids == {}
        time.sleep(0.5)
    wait_for(lambda: len(b.endpoints()) == 1)
    ready_at = next(t for t, k, _, _ in b.events() if k == "ready")
    assert ready_at - launch.time_s >= 1.5


def test_retire_drops_the_endpoint_at_once_and_stops_the_process_after_drain(make):
    b = make(drain_s=0.5)
    b.converge({KEY: 2})
    wait_for(lambda: len(b.endpoints()) == 2)
    by_id = b.pids()
    last_ready = max((t, i) for t, k, _, i in b.events() if k == "ready")[1]

    (retire,) = b.converge({KEY: 1})
    assert retire.kind == "retire" and retire.pool == KEY
    assert retire.instance_id == last_ready  # the most recently ready goes first
    (kept,) = b.endpoints()  # at once, not after the drain
    assert kept.instance_id != retire.instance_id
    assert ready_count(b) == 1
    assert _alive(by_id[retire.instance_id])  # still draining its in-flight requests
    # SIGTERM after the 0.5 s drain: gone well before the SIGKILL that would follow 5 s later
    wait_for(lambda: not _alive(by_id[retire.instance_id]), timeout_s=4.5)
    assert b.endpoints() == [kept]
    assert _alive(by_id[kept.instance_id])
    assert call(kept.url, "GET", "/v2/health/ready")[0] == 200

    # launching instances are retired before ready ones
    (extra,) = b.converge({KEY: 2})
    (gone,) = b.converge({KEY: 1})
    assert gone.instance_id == extra.instance_id and b.endpoints() == [kept]


def test_a_killed_instance_is_lost_and_the_next_converge_replaces_it(make):
    b = make()
    b.converge({KEY: 1})
    wait_for(lambda: len(b.endpoints()) == 1)
    (ep,) = b.endpoints()
    b.kill(ep.instance_id)
    wait_for(lambda: b.endpoints() == [], timeout_s=5)
    assert b.observe().get(KEY).total == 0
    assert [(k, i) for _, k, _, i in b.events() if k == "lost"] == [("lost", ep.instance_id)]

    (launch,) = b.converge({KEY: 1})
    assert launch.kind == "launch" and launch.instance_id != ep.instance_id
    wait_for(lambda: [e.instance_id for e in b.endpoints()] == [launch.instance_id])
    with pytest.raises(KeyError, match="local-999"):
        b.kill("local-999")


@contextlib.contextmanager
def routed_load(b, artifact, clients: int = 1) -> Iterator[list[int]]:
    """`clients` threads sending inferences as the router would, round robin over
    endpoints() as it is at each request; yields the status codes (-1: refused or reset, a
    lost request) while they run, and stops them on leaving."""
    name = json.loads((artifact / "manifest.json").read_text())["name"]
    req = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    ).encode()
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        k = 0
        while not stop.is_set():
            eps = b.endpoints()
            if eps:
                e = eps[k % len(eps)]
                try:
                    codes.append(call(e.url, "POST", f"/v2/models/{name}/infer", req)[0])
                except OSError:
                    codes.append(-1)
                k += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield codes
    finally:
        stop.set()
        for t in threads:
            t.join(15)


def test_a_spot_notice_under_load_loses_no_request_and_is_replaced(make, artifact):
    """The local analogue of a spot notice: the instance leaves routing at once, what was sent
    to it finishes, its process stops after the notice, and the converge at the notice
    (Controller.on_notice) launches the replacement. A client routing on endpoints() as the
    router does sees every request answered."""
    b = make()
    b.converge({KEY: 2})
    wait_for(lambda: len(b.endpoints()) == 2)
    with routed_load(b, artifact) as codes:
        wait_for(lambda: len(codes) >= 20)
        victim = b.endpoints()[0].instance_id
        pid = b.pids()[victim]
        assert b.notice([victim], notice_s=1.0) == [victim]
        assert victim not in {e.instance_id for e in b.endpoints()}  # out of routing at once
        assert b.observe().get(KEY).total == 1  # and out of the count
        (launch,) = b.converge({KEY: 2})  # what on_notice does at the notice
        assert launch.kind == "launch"
        wait_for(lambda: launch.instance_id in {e.instance_id for e in b.endpoints()})
        wait_for(lambda: not _alive(pid), timeout_s=10)
        n = len(codes)
        wait_for(lambda: len(codes) >= n + 20)
    assert codes and set(codes) == {200}, sorted(set(codes))
    assert [k for _, k, _, i in b.events() if i == victim][-1] == "notice"
    assert b.notice([victim]) == []  # gone already


def test_a_scale_in_under_load_drains_and_loses_no_request(make, artifact):
    """Scale-in under load: the retired instance leaves routing at once, finishes what it was
    sent during its drain, then stops; a client routing on endpoints() sees every request
    answered."""
    b = make(drain_s=1.0)
    b.converge({KEY: 2})
    wait_for(lambda: len(b.endpoints()) == 2)
    with routed_load(b, artifact, clients=2) as codes:
        wait_for(lambda: len(codes) >= 20)
        pids = b.pids()
        (retire,) = b.converge({KEY: 1})
        assert retire.kind == "retire"
        wait_for(lambda: not _alive(pids[retire.instance_id]), timeout_s=10)
        n = len(codes)
        wait_for(lambda: len(codes) >= n + 20)
    assert codes and set(codes) == {200}, sorted(set(codes))


def test_a_server_that_dies_while_starting_is_lost_with_its_log(make, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    b = make(artifact=broken, launch_delay_s=0.0)
    (launch,) = b.converge({KEY: 1})
    wait_for(lambda: any(k == "lost" for _, k, _, _ in b.events()))
    assert b.endpoints() == [] and b.observe().get(KEY).total == 0
    assert (tmp_path / "logs" / f"{launch.instance_id}.log").read_text().strip()


def test_bad_targets_are_refused_and_change_nothing(make):
    b = make()
    with pytest.raises(
        KeyError, match=r"unknown pool 'm5.large/spot'; known: \['c5.large/on_demand'\]"
    ):
        b.converge({KEY: 1, "m5.large/spot": 1})
    with pytest.raises(ValueError, match="negative"):
        b.converge({KEY: -1})
    assert b.observe().pools == {} and b.events() == []


def test_close_stops_starting_and_ready_processes_and_is_idempotent(make):
    b = make(launch_delay_s=0.0)
    b.converge({KEY: 2})
    wait_for(lambda: len(b.endpoints()) == 2)
    b.converge({KEY: 3})  # one more, caught while pending or starting
    time.sleep(0.2)
    pids = list(b.pids().values())
    assert len(pids) >= 2
    b.close()
    assert not [p for p in pids if _alive(p)]
    b.close()
    assert b.endpoints() == [] and b.observe().pools == {}
    with pytest.raises(RuntimeError, match="closed"):
        b.converge({KEY: 1})
