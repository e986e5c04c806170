"""Several routers, one Controller: arrivals summed once per (replica, second), and a replica
killed under load loses no request silently (each is answered or gets a connection error) while
the others keep serving and the supervisor replaces it."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hybridserve.arrivals import ArrivalMerger, ArrivalWindow, DirArrivals, parse_document
from hybridserve.serve import load_serve_config
from tests.conftest import mlp_with_profile, wait_until


def doc(replica: str, seconds: list[tuple[int, int]], written: float) -> dict:
    w = ArrivalWindow(replica, 100)
    w.add(seconds)
    return w.document(written)


def test_each_replica_second_is_taken_once_whatever_the_reads():
    m = ArrivalMerger(stale_s=5.0)
    a = doc("a", [(10, 1), (11, 2)], 12.0)
    b = doc("b", [(10, 5)], 12.0)
    # b has closed only second 10: 11 waits for it
    assert m.take([a, b], now=12.0) == [(10, 6)]
    assert m.take([a, b], now=12.0) == []  # the same documents again: nothing twice
    b = doc("b", [(10, 5), (11, 1), (12, 4)], 13.0)
    assert m.take([a, b], now=13.0) == [(11, 3)]  # now a holds back 12
    a = doc("a", [(10, 1), (11, 2), (12, 0), (13, 7)], 14.0)
    assert m.take([b, a], now=14.0) == [(12, 4)]  # order of documents does not matter


def test_a_quiet_replica_gives_what_it_published_and_holds_no_one_back():
    m = ArrivalMerger(stale_s=3.0)
    a = doc("a", [(10, 1), (11, 1)], 12.0)
    dead = doc("dead", [(9, 4), (10, 2)], 11.0)
    assert m.take([a, dead], now=11.5) == [(9, 4), (10, 3)]
    # the dead replica wrote nothing more: after stale_s it no longer holds second 11 back
    assert m.take([a, dead], now=20.0) == [(11, 1)]
    # a replica restarted under the same name publishes new seconds only
    a = doc("a", [(10, 1), (11, 1)], 22.0)  # alive, but has closed nothing past 11
    assert m.take([a, doc("dead", [(21, 2)], 22.0)], now=22.0) == []  # 21 waits for a
    a = doc("a", [(20, 1), (21, 1)], 22.0)
    assert m.take([a, doc("dead", [(21, 2)], 22.0)], now=22.0) == [(20, 1), (21, 3)]


def test_windows_round_trip_through_a_directory_and_bad_ones_name_their_file(tmp_path):
    store = DirArrivals(tmp_path)
    store.publish(doc("r0", [(1, 2)], 3.0))
    store.publish(doc("r0", [(1, 2), (2, 5)], 4.0))  # rewritten whole, atomically
    assert store.read_all() == [{"replica": "r0", "written": 4.0, "seconds": [(1, 2), (2, 5)]}]
    (tmp_path / "arrivals-bad.json").write_text(json.dumps({"replica": "x", "seconds": 3}))
    with pytest.raises(ValueError, match="arrivals-bad.json: not an arrivals window"):
        store.read_all()
    with pytest.raises(ValueError, match="replica id"):
        parse_document(json.dumps({"replica": "../x", "written": 0, "seconds": []}), "w")


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`serve` with two router replicas on one port, one instance and the Lambda emulator."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.serve import LocalStack

    tmp = tmp_path_factory.mktemp("replicas")
    art, profile = mlp_with_profile(tmp)
    cfg = load_serve_config(
        None,
        artifact=art,
        profile=profile,
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=2,
        log_dir=tmp / "logs",
        **{
            "router.port": 0,
            "router.replicas": 2,
            "instances.initial": 1,
            "instances.launch_delay_s": 0.2,
            "instances.max_instances": 1,
            "lambda.concurrency": 2,
        },
    )
    s = LocalStack(cfg)
    s.prepare()
    s.start_background()
    # the routers say they are ready (health checks are not arrivals, so no count moves); not
    # "the initial instance is ready", which raced the controller: at zero load its first step,
    # 2 s in, retires an instance that a loaded machine has not finished starting
    wait_until(lambda: all(ready(s.url) for _ in range(8)), 60, "the routers ready")
    yield s
    s.stop_background()


def call(url: str, method: str, path: str, body: bytes | None = None) -> int | str:
    """One request on a connection of its own (so the kernel picks a replica for each):
    its HTTP status, or the kind of error it got. A timeout would be a request lost."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10.0)
    try:
        conn.request(method, path, body, {"content-type": "application/json"} if body else {})
        r = conn.getresponse()
        r.read()
        return r.status
    except TimeoutError:
        return "timeout"
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        return type(e).__name__
    finally:
        conn.close()


def post(url: str, body: bytes) -> int | str:
    return call(url, "POST", "/v2/models/mlp/infer", body)


def ready(url: str) -> bool:
    """The replica the kernel picks answers 200 on /v2/health/ready."""
    return call(url, "GET", "/v2/health/ready") == 200


def payload(stack) -> bytes:
    from hybridserve.loadgen import build_payload

    return build_payload(json.loads((stack.replicas.dir / "replica-spec.json").read_text())
                         ["metadata"], seed=0)  # fmt: skip


def published(stack) -> dict[str, int]:
    return {d["replica"]: sum(n for _, n in d["seconds"]) for d in stack.replicas.store.read_all()}


def test_replicas_share_the_port_and_the_controller_counts_each_request_once(stack):
    body = payload(stack)
    before = sum(published(stack).values())
    codes = [post(stack.url, body) for _ in range(60)]
    assert codes == [200] * 60
    # both replicas took connections (60 fresh ones: one replica alone has odds 2**-59)
    wait_until(lambda: sum(published(stack).values()) - before == 60, 15, "arrivals published")
    assert all(n > 0 for n in published(stack).values()) and len(published(stack)) == 2
    # the control loop runs on the summed arrivals: a step after the publication sees them
    # (a step that ran before it saw none, so wait for the next, not for any)
    wait_until(
        lambda: sum(d.inputs.observed_rate for d in stack.loop_.decisions) > 0,
        15,
        "a control step that saw the requests",
    )


def test_a_replica_killed_under_load_loses_no_request_and_is_replaced(stack):
    body = payload(stack)
    per_client: list[list[tuple[float, int | str]]] = [[] for _ in range(3)]
    stop = threading.Event()

    def client(outcomes: list[tuple[float, int | str]]) -> None:
        while not stop.is_set():
            code = post(stack.url, body)
            outcomes.append((time.monotonic(), code))  # when it ended

    def done() -> int:
        return sum(len(o) for o in per_client)

    threads = [threading.Thread(target=client, args=(o,)) for o in per_client]
    for t in threads:
        t.start()
    wait_until(lambda: done() >= 40, 30, "requests before the kill")
    old = stack.replicas.pids()["r0"]
    stack.replicas.kill("r0")
    killed = time.monotonic()
    wait_until(lambda: stack.replicas.is_ready("r0") and stack.replicas.pids()["r0"] != old,
               30, "the killed replica replaced")  # fmt: skip
    replaced = time.monotonic()
    wait_until(lambda: done() >= 80, 30, "requests after the replacement")
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    outcomes = [x for o in per_client for x in o]
    assert "timeout" not in {c for _, c in outcomes}, "a request went unanswered"
    # only what the killed replica held (in flight, or in its accept queue) can fail, loudly
    # (a connection error, never an HTTP error), at the kill: each client sees at most one
    # short run of failures, then only answers
    for o in per_client:
        codes = [c for _, c in o]
        failed = [i for i, c in enumerate(codes) if c != 200]
        assert all(isinstance(codes[i], str) and o[i][0] >= killed for i in failed), o
        if failed:
            assert failed == list(range(failed[0], failed[-1] + 1)) and len(failed) <= 3, codes
    assert stack.replicas.restarts >= 1
    assert all(c == 200 for t, c in outcomes if t > replaced)


def test_the_replicas_metrics_carry_the_controllers_counters(stack):
    from prometheus_client.parser import text_string_to_metric_families

    def names() -> set[str]:
        u = urlsplit(stack.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return {f.name for f in text_string_to_metric_families(text)}

    assert "hybridserve_router_arrivals" in names()
    # the controller's process writes its counters to fleet.json; a replica takes them each s
    wait_until(lambda: "hybridserve_controller_step_failures" in names(), 10, "the counters")


def test_replica_state_is_removed_on_close(tmp_path):
    from hybridserve.replicas import ReplicaSet

    d = tmp_path / "state"
    rs = ReplicaSet(1, d, {"host": "127.0.0.1", "port": 0}, lambda: {}, owns_dir=True)
    rs.close()
    assert not Path(d).exists()


def test_s3_windows_are_read_back_and_a_router_gone_for_a_day_is_forgotten(aws, tmp_path):
    from hybridserve.aws.arrivals import S3Arrivals, arrivals_prefix
    from hybridserve.deployment import DeploymentConfig

    cfg = DeploymentConfig(name="arr", artifact=str(tmp_path), bucket="arr-bucket")
    aws.s3.create_bucket(Bucket=cfg.bucket)
    store = S3Arrivals(aws.s3, cfg)
    store.publish(doc("i-0abc", [(5, 3)], 6.0))
    store.publish(doc("i-0def", [(5, 1)], 6.0))
    now = time.time()
    assert [d["replica"] for d in store.read_all(now)] == ["i-0abc", "i-0def"]
    assert ArrivalMerger(5.0).take(store.read_all(now), now=7.0) == [(5, 4)]
    # both untouched for more than a day: deleted by the reader, without reading them
    assert store.read_all(now + 2 * 86400) == []
    listed = aws.s3.list_objects_v2(Bucket=cfg.bucket, Prefix=arrivals_prefix(cfg))
    assert listed.get("KeyCount", 0) == 0


def test_cli_serve_with_replicas_stops_them_all_on_sigterm(tmp_path):
    """`hybridserve serve` with two replicas answers, and SIGTERM stops the replicas and
    itself cleanly: no replica outlives it."""
    import os
    import signal
    import subprocess
    import sys

    from hybridserve.spawn import spawn_listening

    art, profile = mlp_with_profile(tmp_path)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        f"artifact: {art}\nprofile: {profile}\ndeployment: fixed\n"
        "instances: {initial: 1, launch_delay_s: 0}\nrouter: {port: 0, replicas: 2}\n"
        f"log_dir: {tmp_path / 'logs'}\n"
    )
    args = [sys.executable, "-m", "hybridserve.cli", "serve", "--config", str(cfg)]
    with open(tmp_path / "serve.log", "wb") as err:
        proc, url = spawn_listening(args, err, "serve", 120)
    try:
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().status == 200
        conn.close()
        kids = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "router.replica"],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
        assert len(kids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in kids:
            wait_until(lambda p=int(pid): not os.path.exists(f"/proc/{p}"), 10, "replica gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
