"""End to end against a moto server on 127.0.0.1 over https: the CLI as a user runs it, in
subprocesses.

deploy -> status -> scale -> controller run killed with SIGKILL -> rerun -> teardown, and at
the end nothing tagged for the deployment remains and nothing was ever duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("moto")
pytest.importorskip("torch")  # to build the artifact the deployment ships
boto3 = pytest.importorskip("boto3")
from hybridserve.spawn import lines_within  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from tests.conftest import tagged_instances  # noqa: E402
from tests.moto_tls import moto_server  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

DEPLOYMENT = "e2e"


@pytest.fixture(scope="module")
def moto_url():
    """Moto over https, as AWS is (the bucket's policy denies plain HTTP), from an empty
    account whatever the tests before this module left behind."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def env(moto_url):
    """The CLI's environment: test credentials, and the moto server's CA (AWS_CA_BUNDLE)."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    art = build_artifact("mlp", d, variant="fp32")
    cfg = d / "deploy.yaml"
    _, wheel, links = offline_wheelhouse()  # the instances' wheelhouse, offline
    cfg.write_text(
        f"name: {DEPLOYMENT}\nartifact: {art}\nbucket: hybridserve-e2e-bucket\n"
        "fleet:\n  c5.large/on_demand: 1\n"
        f"ec2: {{wheel: '{wheel}', find_links: '{links}', drain_s: 1}}\n"
    )
    np.savetxt(d / "trace.txt", np.random.default_rng(0).poisson(150, 60 * 400)[None, :], fmt="%d")
    return cfg


def cli(env, url, *args, check=True):
    p = subprocess.run(
        [sys.executable, "-m", "hybridserve.cli", *args, "--endpoint-url", url],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def live_instances(url):
    ec2 = boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return tagged_instances(ec2, DEPLOYMENT), ec2


def test_deploy_scale_crash_rerun_teardown(moto_url, env, config, aws_faults):
    c = str(config)
    cli(env, moto_url, "deploy", "--config", c)
    cli(env, moto_url, "deploy", "--config", c)  # idempotent: a second deploy changes nothing
    policy = json.loads(cli(env, moto_url, "iam-policy", "--config", c).stdout)
    res = {r for s in policy["Statement"] for r in s["Resource"]}
    template = [r for r in res if ":launch-template/" in r]
    assert len(template) == 1 and template[0].split("/")[-1].startswith("lt-")  # found, not *
    assert "arn:aws:s3:::hybridserve-e2e-bucket/e2e/controller-state.json" in res
    st = json.loads(cli(env, moto_url, "status", "--config", c, "--json").stdout)
    assert (
        st["fleet"] == {"c5.large/on_demand": 1}
        and st["function"]["name"] == "hybridserve-e2e-spill"
    )

    cli(
        env,
        moto_url,
        "scale",
        "--config",
        c,
        "--instances",
        "c5.large=2",
        "--instances",
        "c5.xlarge=1",
    )
    insts, ec2 = live_instances(moto_url)
    assert sorted(i["InstanceType"] for i in insts) == ["c5.large", "c5.large", "c5.xlarge"]

    # the controller is killed with SIGKILL while it runs, then started again
    trace = str(config.parent / "trace.txt")
    args = [sys.executable, "-m", "hybridserve.cli", "controller", "run", "--config", c,
            "--endpoint-url", moto_url, "--trace", trace, "--interval-s", "0.2"]  # fmt: skip
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in lines_within(proc.stderr, 120):  # a silent controller cannot block past 120 s
        if line.startswith("step"):
            lines.append(line)
            if len(lines) == 2:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert lines, "the controller never completed a step"
    rerun = cli(
        env,
        moto_url,
        "controller",
        "run",
        "--config",
        c,
        "--trace",
        trace,
        "--interval-s",
        "0",
        "--steps",
        "3",
    )
    # the rerun resumed from the state the killed one saved with the deployment, at the trace
    # interval after the last step it applied
    resumed = [line for line in rerun.stderr.splitlines() if line.startswith("resumed from")]
    state_url = "s3://hybridserve-e2e-bucket/e2e/controller-state.json"
    assert len(resumed) == 1 and resumed[0].startswith(f"resumed from {state_url} after step ")
    saved = int(resumed[0].rsplit(" ", 1)[1])
    assert saved >= len(lines)  # saved before each step's log line
    rerun_steps = [line for line in rerun.stderr.splitlines() if line.startswith("step")]
    assert [int(line.split()[1].rstrip(":")) for line in rerun_steps] == [
        saved + 1,
        saved + 2,
        saved + 3,
    ]
    last = rerun_steps[-1]
    insts, _ = live_instances(moto_url)
    st = json.loads(cli(env, moto_url, "status", "--config", c, "--json").stdout)
    assert sum(st["fleet"].values()) == len(insts)
    # the control loop published its metrics in the deployment's namespace
    cw = boto3.client(
        "cloudwatch",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="hybridserve/e2e")["Metrics"]}
    assert {"ArrivalRate", "FleetSize", "PlannedCapacityRate", "ExpectedSpillRate"} <= names
    # no duplicates: the fleet is exactly what the last step asked for
    target = eval(
        last.split("target ", 1)[1].split(" actions")[0]
    )  # a dict literal from our own log
    assert {k: v for k, v in target.items() if v} == st["fleet"]

    # `plan` prints the next decision and changes nothing; the next real step takes it
    before = sorted(i["InstanceId"] for i in live_instances(moto_url)[0])
    p = json.loads(cli(env, moto_url, "plan", "--config", c, "--trace", trace, "--json").stdout)
    assert p["step"] == saved + 4 and p["resumed"] and p["valid"]
    assert p["fleet"] == st["fleet"] and len(p["forecast_rps"]) > 0
    assert sorted(i["InstanceId"] for i in live_instances(moto_url)[0]) == before
    again = json.loads(cli(env, moto_url, "plan", "--config", c, "--trace", trace, "--json").stdout)
    assert again == {**p, "time_s": again["time_s"]}  # nothing was saved: the same decision
    nxt = cli(env, moto_url, "controller", "run", "--config", c, "--trace", trace,
              "--interval-s", "0", "--steps", "1")  # fmt: skip
    step = [line for line in nxt.stderr.splitlines() if line.startswith("step")]
    assert len(step) == 1 and step[0].startswith(f"step {p['step']}: target {p['target']} ")

    # two controllers: the second stays passive while the first holds the lease, then takes
    # over (from the state the first saved) once the first is killed and its lease expires
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    for line in lines_within(first.stderr, 120):
        if line.startswith("step"):
            break
    second = subprocess.Popen(
        [*args[:-2], "--interval-s", "0", "--steps", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen, out = [], lines_within(second.stderr, 120)  # one reader for the whole run
    for line in out:
        seen.append(line)
        if line.startswith("passive: the lease is held by"):
            break
    assert seen and seen[-1].startswith("passive"), seen
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    rest = list(out)  # the same reader, on to the end of the second's run
    assert second.wait(timeout=60) == 0, rest
    took = [line for line in rest if line.startswith(("resumed", "step"))]
    assert len(took) == 2, rest
    assert took[0].startswith("resumed from") and took[1].startswith("step ")
    assert int(took[1].split()[1].rstrip(":")) == int(took[0].rsplit(" ", 1)[1]) + 1

    # a spot notice reaches the running controller in seconds (EventBridge -> the deployment's
    # queue): the instance is tagged interrupted and its replacement launches at the notice,
    # long before the next step (30 s) and EC2's two minutes
    runner = subprocess.Popen([*args[:-2], "--interval-s", "30"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out = lines_within(runner.stderr, 120)
    for line in out:
        if line.startswith("step"):
            break
    insts, ec2 = live_instances(moto_url)
    before = {i["InstanceId"] for i in insts}
    victim = sorted(before)[0]
    aws_faults.interrupt(victim, notice_s=600)
    noticed = []
    for line in out:  # the same reader, bounded by its 120 s
        if line.startswith("spot notice for"):
            noticed.append(line)
            break
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    assert noticed and victim in noticed[0], noticed
    after = {i["InstanceId"]: i for i in live_instances(moto_url)[0]}
    assert set(after) - before, "no replacement was launched at the notice"
    if victim in after:  # still draining (1 s), or gone already
        tags = {t["Key"]: t["Value"] for t in after[victim]["Tags"]}
        assert tags["hybridserve:interrupted"] == "true"

    # a dry run decides every step and changes nothing, even where its decision differs
    cli(env, moto_url, "scale", "--config", c, "--instances", "c5.large=4")
    before = sorted(i["InstanceId"] for i in live_instances(moto_url)[0])
    dry = cli(env, moto_url, "controller", "run", "--config", c, "--trace", trace,
              "--interval-s", "0", "--steps", "2", "--dry-run")  # fmt: skip
    steps = [line for line in dry.stderr.splitlines() if line.startswith("step")]
    assert len(steps) == 2 and all("dry run, valid: True" in line for line in steps)
    decided = eval(steps[-1].split("target ", 1)[1].split(" (dry run")[0])  # our own log
    assert decided.get("c5.large/on_demand", 0) != 4  # it would have changed the fleet
    assert sorted(i["InstanceId"] for i in live_instances(moto_url)[0]) == before

    out = json.loads(cli(env, moto_url, "teardown", "--config", c, "--yes").stdout)
    assert out["functions"] == ["hybridserve-e2e-spill"] and out["buckets"] == [
        "hybridserve-e2e-bucket"
    ]
    assert sorted(out["notices"]) == [
        "queue/hybridserve-e2e-spot-notices",
        "rule/hybridserve-e2e-spot",
    ]
    insts, _ = live_instances(moto_url)
    assert insts == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    sgs = ec2.describe_security_groups(
        Filters=[{"Name": "tag:hybridserve:deployment", "Values": [DEPLOYMENT]}]
    )
    assert sgs["SecurityGroups"] == []
    kw = {
        "endpoint_url": moto_url,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    assert [
        r
        for r in boto3.client("iam", **kw).list_roles()["Roles"]
        if r["RoleName"].startswith("hybridserve-e2e")
    ] == []
    assert "hybridserve-e2e-bucket" not in [
        b["Name"] for b in boto3.client("s3", **kw).list_buckets()["Buckets"]
    ]
    assert boto3.client("lambda", **kw).list_functions()["Functions"] == []
    again = json.loads(cli(env, moto_url, "teardown", "--config", c, "--yes").stdout)
    assert all(v == [] for v in again.values())


def test_bad_config_names_the_field(moto_url, env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad_Name\nartifact: x\nbucket: b-ucket\nlambda: {memory_mb: 99999}\n")
    p = cli(env, moto_url, "status", "--config", str(bad), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "bad.yaml" in p.stderr and "field name" in p.stderr and "lambda.memory_mb" in p.stderr
