"""`hybridserve serve` in AWS mode: readiness from the model server, and the whole AwsStack
against a moto server (no Lambda inference: moto needs Docker for that, so a spilled request
must fail fast and clearly instead)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from hybridserve.config_base import ConfigError
from tests.conftest import Scrape, tagged_instances, wait_until
from tests.wheel_helpers import offline_wheelhouse

POOL = "c5.large/on_demand"
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# ------------------------------------------------------------------------ readiness
moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("torch")
    from predictors.artifact import build_artifact

    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


@pytest.fixture(scope="module")
def model_server(artifact):
    """The project's V2 model server on 127.0.0.1 (what an instance runs), in a thread."""
    pytest.importorskip("uvicorn")
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel
    from predictors.server import create_app
    from tests.model_server_helpers import ServerThread

    app = create_app([OnnxModel(load_artifact(artifact))], max_batch=8, max_delay_ms=1)
    with ServerThread(app) as s:
        yield s


@pytest.fixture
def ec2(moto_url):
    """EC2 on the module's moto server (its own deployment name, "demo"), not `mock_aws()`:
    leaving that resets the state every moto server in the process shares, so it wiped the
    deployment below whenever the test order put it after `deploy`."""
    client = boto3.client("ec2", endpoint_url=moto_url, region_name="us-east-1")
    ami = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return client, ami


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_readiness_pending_until_the_model_server_answers(ec2, model_server):
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend, http_ready_probe, private_url
    from hybridserve.backends.base import Endpoint

    client, ami = ec2
    overrides: dict[str, str] = {}  # instance id -> where its model server really listens
    default = private_url(8000)
    backend = AwsBackend(
        Ec2Fleet("demo", client, ami, user_data="#cloud-config\n"),
        probe=http_ready_probe(timeout_s=2.0),
        url_of=lambda i: overrides.get(i.instance_id) or default(i),
        launch_delay_s={POOL: 90.0},
        health_ttl_s=0.0,
        refresh_s=0.05,
    )
    try:
        backend.converge({POOL: 2})
        insts = backend.fleet.observe()
        assert [i.state for i in insts] == ["running", "running"] and all(
            i.private_ip for i in insts
        )
        # running on EC2, but no model server answers on the private IPs: pending, not ready
        st = backend.observe().get(POOL)
        assert st.ready == 0 and len(st.pending_ready_in_s) == 2
        assert all(0 < eta <= 90 for eta in st.pending_ready_in_s)
        assert backend.refresh() == []

        a, b = sorted(i.instance_id for i in insts)
        overrides[a] = f"http://{model_server.url}"
        overrides[b] = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
        st = backend.observe().get(POOL)
        assert st.ready == 1 and len(st.pending_ready_in_s) == 1
        want = [Endpoint(a, POOL, f"http://{model_server.url}")]
        assert backend.refresh() == want

        # endpoints() serves the background refresh: no EC2 call nor probe on the caller
        callers: list[str] = []
        observe = backend.fleet.observe

        def spy():
            callers.append(threading.current_thread().name)
            return observe()

        backend.fleet.observe = spy
        wait_until(lambda: backend.endpoints() == want and callers, 30, "a background refresh")
        for _ in range(20):
            assert backend.endpoints() == want
        assert threading.current_thread().name not in callers
        assert backend.fleet_totals() == {POOL: 2}

        # the server stops answering: out of endpoints() within a refresh or two
        overrides[a] = f"http://127.0.0.1:{_free_port()}"
        wait_until(lambda: backend.endpoints() == [], 30, "the instance to leave endpoints()")
    finally:
        backend.close()
        backend.close()  # idempotent

    # readiness from EC2's state alone (ec2.readiness: state): both ready at their private IPs
    state = AwsBackend(Ec2Fleet("demo", client, ami), port=8000)
    try:
        assert state.observe().get(POOL).ready == 2
        assert {e.url for e in state.refresh()} == {default(i) for i in insts}
    finally:
        state.close()


def test_deployment_config_picks_the_readiness(tmp_path):
    from hybridserve.deployment import load_deployment

    p = tmp_path / "d.yaml"
    p.write_text("name: d\nartifact: a\nbucket: bkt\n")
    assert load_deployment(p).ec2.readiness == "health"
    p.write_text("name: d\nartifact: a\nbucket: bkt\nec2: {readiness: sometimes}\n")
    with pytest.raises(ConfigError, match="ec2.readiness"):
        load_deployment(p)


# ------------------------------------------------------------------------ AwsStack on moto
DEPLOYMENT = "serving"


@pytest.fixture(scope="module")
def moto_url():
    """Moto over https, as AWS is (the bucket's policy denies plain HTTP), from an empty
    account whatever the tests before this module left behind."""
    from tests.moto_tls import moto_server

    mp = pytest.MonkeyPatch()
    for k, v in CREDS.items():
        mp.setenv(k, v)
    with moto_server() as url:
        yield url
    mp.undo()


@pytest.fixture(scope="module")
def deployment_yaml(artifact, tmp_path_factory):
    """A deployment config: no fleet yet, EC2 state readiness (nothing listens on moto's
    private IPs), a stand-in function package, a one-type scenario."""
    d = tmp_path_factory.mktemp("deployment")
    _, wheel, links = offline_wheelhouse()  # the instances' wheelhouse, offline
    pkg = d / "spill.zip"
    with zipfile.ZipFile(pkg, "w") as z:
        z.writestr("lambda_handlers/handler.py", "def handler(event, context):\n    return {}\n")
    (d / "scenario.yaml").write_text(
        "control_interval_s: 60\ninstance_types: [c5.large]\nmarkets: [on_demand]\n"
    )
    (d / "deploy.yaml").write_text(
        f"name: {DEPLOYMENT}\nartifact: {artifact}\nbucket: hybridserve-serving-test\n"
        "scenario: scenario.yaml\n"
        f"ec2: {{readiness: state, wheel: '{wheel}', find_links: '{links}'}}\n"
        f"lambda: {{package: {pkg}, reserved_concurrency: 4, timeout_s: 5}}\n"
        # the router takes async jobs into SQS and S3; no Lambda worker (moto runs none)
        "async_jobs: {enabled: true, max_lambda: 0}\n"
    )
    return d / "deploy.yaml"


@pytest.fixture(scope="module")
def deployment(moto_url, deployment_yaml):
    """The deployment, made by the real `deploy` on the moto server, and torn down after (moto
    keeps one state per process, which other test modules' servers share)."""
    from hybridserve.aws.deploy import deploy
    from hybridserve.aws.resources import clients, teardown
    from hybridserve.deployment import load_deployment

    cfg = load_deployment(deployment_yaml)
    c = clients(cfg.region, endpoint_url=moto_url)
    deploy(cfg, c, log=lambda m: None)
    yield cfg
    teardown(c, cfg.name, region=cfg.region, buckets=(cfg.bucket,), wait_s=10, settle_s=0)
    assert _tagged(moto_url) == []


@pytest.fixture(scope="module")
def stack(deployment, moto_url):
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.aws.serving import AwsStack
    from hybridserve.serve import RouterOptions

    s = AwsStack(deployment, endpoint_url=moto_url, router=RouterOptions(port=0))
    s.prepare()
    s.start_background()
    yield s
    s.stop_background()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, timeout_s: float = 20) -> tuple[int, bytes]:
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _tagged(moto_url: str) -> list[dict]:
    ec2 = boto3.client("ec2", endpoint_url=moto_url, region_name="us-east-1")
    return tagged_instances(ec2, DEPLOYMENT)


def test_aws_stack_serves_converges_and_publishes(stack, moto_url, model_server):
    from hybridserve.aws.ec2_backend import http_ready_probe
    from hybridserve.loadgen.payload import build_payload

    assert _get(stack.url + "/v2/health/ready")[0] == 200  # Lambda can take requests
    status, body = _get(stack.url + "/v2/models/mlp")
    assert status == 200 and json.loads(body)["name"] == "mlp"  # from the local manifest
    infer = stack.url + "/v2/models/mlp/infer"
    payload = build_payload(stack.router.metadata, seed=0)

    # no instance yet: the request spills to the function, which moto cannot run (no Docker):
    # a clear 502/503, never a hang (the client's timeout fails the test if it hangs)
    status, body = _post(infer, payload, timeout_s=60)
    assert status in (502, 503) and "spill" in json.loads(body)["error"]
    status, text = _get(stack.url + "/metrics")
    assert status == 200 and Scrape(text).value("hybridserve_router_spills_total") == 1

    # one control step on the router's counts: 300 req/s over the interval asks for instances
    assert _tagged(moto_url) == []
    now = int(time.time())
    stack.router.counts.extend((now - 60 + i, 300) for i in range(60))
    d = stack.loop_.step()
    want = {k: n for k, n in d.plan.target.items() if n}
    assert sum(want.values()) > 0 and [a.kind for a in d.actions] == ["launch"] * sum(want.values())
    insts = _tagged(moto_url)
    assert len(insts) == sum(want.values())
    assert {i["InstanceType"] for i in insts} == {"c5.large"}

    # the router's interval metrics reached CloudWatch, next to the controller's
    cw = boto3.client("cloudwatch", endpoint_url=moto_url, region_name="us-east-1")
    namespace = f"hybridserve/{DEPLOYMENT}"
    names = {m["MetricName"] for m in cw.list_metrics(Namespace=namespace)["Metrics"]}
    assert {
        "ArrivalRate",
        "SpillFraction",
        "SloAttainment",
        "ReadyInstances",
        "LambdaColdStarts",
        "FleetSize",
        "PlannedCapacityRate",
    } <= names
    end = time.time() + 60
    got = cw.get_metric_data(
        MetricDataQueries=[
            {
                "Id": m.lower(),
                "MetricStat": {
                    "Metric": {"Namespace": namespace, "MetricName": m},
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
            for m in ("SpillFraction", "SloAttainment")
        ],
        StartTime=end - 600,
        EndTime=end,
    )["MetricDataResults"]
    values = {r["Id"]: r["Values"] for r in got}
    assert values == {"spillfraction": [1.0], "sloattainment": [0.0]}

    # with EC2-state readiness the router sees the new instances at their private addresses
    wait_until(lambda: len(stack.backend.endpoints()) == len(insts), 30, "the router's endpoints")
    # point them at a real model server (what each would run) with health readiness: the
    # router now answers from the fleet
    stack.backend.url_of = lambda i: f"http://{model_server.url}"
    stack.backend.probe = http_ready_probe(timeout_s=2.0)
    wait_until(
        lambda: {u.endpoint.url for u in stack.router.ups} == {f"http://{model_server.url}"},
        30,
        "the router to take the fleet",
    )
    status, body = _post(infer, payload)
    assert status == 200 and json.loads(body)["model_name"] == "mlp"
    assert stack.router.metrics.responses.get(("fleet", 200)) == 1


def test_async_jobs_go_through_the_aws_router_into_sqs_and_s3(stack, moto_url):
    """`hybridserve async` against an AWS-mode router: the job's input and record land under
    the deployment's async prefix, its message in the deployed queue, and status follows it."""
    from click.testing import CliRunner

    from hybridserve.cli import main

    req = json.dumps({"inputs": [], "parameters": {"job_id": "aws-1"}}).encode()
    code, body = _post(f"{stack.url}/v2/models/mlp/async-infer", req)
    doc = json.loads(body)
    assert code == 202 and doc["output_uri"] == (
        f"s3://hybridserve-serving-test/{DEPLOYMENT}/async/results/aws-1.json"
    )
    r = CliRunner().invoke(main, ["async", "status", "--url", stack.url, "aws-1"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "pending", r.output
    r = CliRunner().invoke(main, ["async", "status", "--url", stack.url, "nope"])
    assert r.exit_code == 2 and "HTTP 404: unknown job id 'nope'" in r.output
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="hybridserve-serving-test",
                                                  Prefix=f"{DEPLOYMENT}/async/")["Contents"]}  # fmt: skip
    assert keys == {f"{DEPLOYMENT}/async/inputs/aws-1.json", f"{DEPLOYMENT}/async/jobs/aws-1.json"}
    assert stack.async_.front.queue.depth()[0] == 1
    assert stack.async_.runtime.last.lambda_workers == 0  # max_lambda 0: nothing runs it here


def test_serve_refuses_a_deployment_that_is_not_deployed(deployment, moto_url):
    from hybridserve.aws.serving import AwsStack

    s = AwsStack(deployment.model_copy(update={"name": "absent"}), endpoint_url=moto_url)
    try:
        with pytest.raises(ConfigError, match="'absent' is not deployed.*hybridserve deploy"):
            s.prepare()
    finally:
        s.close()


def test_cli_serve_runs_a_deployment_config_in_aws_mode(
    deployment, deployment_yaml, moto_url, tmp_path
):
    import os
    import signal
    import sys

    from hybridserve.spawn import spawn_listening

    args = [sys.executable, "-m", "hybridserve.cli", "serve", "--config", str(deployment_yaml),
            "--endpoint-url", moto_url, "--port", "0", "--log-level", "warning"]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        try:
            proc, url = spawn_listening(args, err, "serve", 120, env={**os.environ, **CREDS})
        except RuntimeError as e:
            pytest.fail(f"{e}: {log.read_text()[-2000:]}")
    try:
        status, body = _get(url + "/v2/models/mlp")
        assert status == 200 and json.loads(body)["name"] == "mlp"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metadata_comes_from_s3_when_the_artifact_is_not_here(deployment, moto_url):
    from hybridserve.aws.serving import deployment_metadata

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    elsewhere = deployment.model_copy(update={"artifact": "/nonexistent/mlp-fp32"})
    assert deployment_metadata(elsewhere, s3) == deployment_metadata(deployment, s3)
    assert deployment_metadata(elsewhere, s3)["name"] == "mlp"
    nowhere = elsewhere.model_copy(update={"prefix": "never-uploaded"})
    with pytest.raises(ConfigError, match=r"artifact: no manifest.json .* s3://"):
        deployment_metadata(nowhere, s3)


def test_serve_runs_keep_warm_only_when_the_deployment_asks(tmp_path):
    pytest.importorskip("botocore")
    from types import SimpleNamespace

    from hybridserve.aws.serving import AwsStack
    from hybridserve.deployment import load_deployment

    p = tmp_path / "d.yaml"
    p.write_text("name: d\nartifact: a\nbucket: bkt\n")
    for extra, want in (("", 0), ("lambda: {keep_warm: {every_s: 60, concurrency: 2}}\n", 1)):
        p.write_text("name: d\nartifact: a\nbucket: bkt\n" + extra)
        stack = AwsStack(load_deployment(p))
        stack.router = SimpleNamespace(invoker=object())  # spill on, as after prepare()
        tasks = stack.background()
        assert len(tasks) == want
        for t in tasks:
            t.close()


def test_two_routers_one_controller_on_everyones_arrivals_and_a_takeover(deployment, moto_url):
    """Two routers of one deployment: both publish their arrivals to S3, only the lease holder
    steps, on the sum; when it goes, the other takes over from the state it saved."""
    from hybridserve.aws.arrivals import arrivals_prefix
    from hybridserve.aws.lease import lease_key
    from hybridserve.aws.serving import AwsStack
    from hybridserve.serve import RouterOptions

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.delete_object(Bucket=deployment.bucket, Key=lease_key(deployment))  # a free lease
    a, b = (
        AwsStack(deployment, endpoint_url=moto_url, router=RouterOptions(port=0), replica=r)
        for r in ("router-a", "router-b")
    )
    try:
        a.prepare()
        b.prepare()
        for s in (a, b):  # CloudWatch is another test's subject: keep its namespace as it was
            s.loop_.publish = lambda values: None
        now = int(time.time())
        # low rates: Lambda serves them, so no step here launches an instance
        a.router.counts.extend((now - 60 + i, 2) for i in range(60))
        b.router.counts.extend((now - 60 + i, 1) for i in range(60))
        b.loop_.share()  # as its loop does every few seconds
        d = a.loop_.step()
        assert d is not None and a.loop_.holding
        assert all(x.kind != "launch" for x in d.actions)
        assert b.loop_.step() is None and b.loop_.stats["passive_steps"] == 1
        # a stepped on both routers' arrivals (2 + 1 req/s), each second once; the interval
        # may end a few seconds past the ones given, which then count zero, and the module's
        # other router (the `stack` fixture, still sharing) may add its last few requests:
        # counting a router twice would give 4 or more
        assert 2.5 < d.inputs.observed_rate <= 3.2
        keys = s3.list_objects_v2(Bucket=deployment.bucket, Prefix=arrivals_prefix(deployment))
        assert sorted(o["Key"].rsplit("/", 1)[1] for o in keys["Contents"]) >= [
            "router-a.json",
            "router-b.json",
        ]
        steps = a.loop_.controller.steps
        a.loop_.lease.release()  # a stops (or its lease expires): b takes over
        later = int(time.time()) + 1
        b.router.counts.extend((later + i, 10) for i in range(5))
        d = b.loop_.step()
        assert d is not None and b.loop_.holding
        assert b.loop_.controller.steps == steps + 1  # resumed from a's saved state
    finally:
        for s in (a, b):
            if s.loop_ is not None and s.loop_.holding:
                s.loop_.lease.release()
            s.close()
