"""A multi-model deployment end to end against a moto server over https, the CLI as a user runs
it in subprocesses: deploy -> status -> controller run (dry, then real) -> serve -> plan
refused -> teardown, and at the end nothing tagged for the deployment remains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moto")
pytest.importorskip("torch")  # to build the artifacts the deployment ships
boto3 = pytest.importorskip("boto3")
from hybridserve.spawn import spawn_listening  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from tests.conftest import tagged_instances  # noqa: E402
from tests.moto_tls import moto_server  # noqa: E402
from tests.test_aws_e2e import cli as e2e_cli  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

DEP = "models-e2e"


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    small = build_artifact("mlp", d, variant="fp32")
    tiny = build_artifact("mlp", d / "int8", variant="int8")
    _, wheel, links = offline_wheelhouse()
    cfg = d / "deploy.yaml"
    cfg.write_text(
        f"name: {DEP}\nbucket: hybridserve-models-e2e\n"
        f"models:\n  - {{name: small, artifact: {small}}}\n  - {{name: tiny, artifact: {tiny}}}\n"
        "fleet:\n  c5.large/on_demand: 1\n"
        f"ec2: {{wheel: '{wheel}', find_links: '{links}', drain_s: 0, readiness: state}}\n"
    )
    trace = d / "trace"
    trace.mkdir()
    np.savetxt(trace / "small.txt", np.full(60 * 20, 40), fmt="%d")  # busy
    np.savetxt(trace / "tiny.txt", np.zeros(60 * 20), fmt="%d")  # idle
    return cfg, trace


def env() -> dict[str, str]:
    """The CLI's environment, read when called: moto_server sets AWS_CA_BUNDLE while it runs."""
    return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return e2e_cli(env(), url, *args, check=check)


def live(url: str) -> list[dict]:
    ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    return tagged_instances(ec2, DEP)


def test_deploy_control_and_tear_down_several_models(moto_url, config):
    cfg, trace = (str(x) for x in config)
    cli(moto_url, "deploy", "--config", cfg)
    st = json.loads(cli(moto_url, "status", "--config", cfg, "--json").stdout)
    assert {m: f["name"] for m, f in st["functions"].items()} == {
        "small": f"hybridserve-{DEP}-spill-small",
        "tiny": f"hybridserve-{DEP}-spill-tiny",
    }
    assert st["fleet"] == {"c5.large/on_demand": 1}
    run = ["controller", "run", "--config", cfg, "--trace", trace, "--interval-s", "0"]
    dry = cli(moto_url, *run, "--steps", "2", "--dry-run")
    assert dry.stderr.count("(dry run: nothing applied)") == 2, dry.stderr[-2000:]
    assert "create" in dry.stderr and len(live(moto_url)) == 1  # decided, nothing launched
    real = cli(moto_url, *run, "--steps", "2")
    assert real.stderr.count("step: plan by") == 2, real.stderr[-2000:]
    insts = live(moto_url)
    tags = [{t["Key"]: t["Value"] for t in i["Tags"]} for i in insts]
    assert insts and all("#s" in t["hybridserve:pool"] for t in tags)  # the plan's shards only
    assert all(t.get("hybridserve:model:small") for t in tags)
    # `serve`: the router in front of the deployment answers each model's metadata
    args = [sys.executable, "-m", "hybridserve.cli", "serve", "--config", cfg, "--endpoint-url",
            moto_url, "--port", "0", "--log-level", "warning"]  # fmt: skip
    with open(Path(cfg).parent / "serve.log", "wb") as err:
        proc, url = spawn_listening(args, err, "serve", 120, env=env())
    try:
        with urllib.request.urlopen(url + "/v2/models/tiny", timeout=10) as r:
            meta = json.loads(r.read())
        assert meta["name"] == "tiny" and meta["versions"] == ["int8"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    refused = cli(moto_url, "plan", "--config", cfg, "--trace", trace, check=False)
    assert refused.returncode != 0 and "one-model deployment only" in refused.stderr
    cli(moto_url, "teardown", "--config", cfg, "--yes")
    assert live(moto_url) == []
    lam = boto3.client("lambda", endpoint_url=moto_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    assert [f for f in lam.list_functions()["Functions"] if DEP in f["FunctionName"]] == []
