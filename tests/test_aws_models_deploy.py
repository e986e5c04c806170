"""A multi-model deployment on moto (issue 14): each model's artifact under its own prefix with
a repository index, one spill function per model, instances serving the whole repository, and
teardown taking all of it away; the config's and the fit check's errors name the field."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

moto = pytest.importorskip("moto")
pytest.importorskip("torch")  # to build the artifacts

from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws.roles import INLINE_POLICY  # noqa: E402
from hybridserve.config_base import ConfigError  # noqa: E402
from hybridserve.deployment import DeploymentConfig, load_deployment  # noqa: E402
from tests.aws_lambda_helpers import BUCKET, DEP, REGION, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

MODELS = ("small", "tiny")


def _cfg(built: dict[str, Path], links: Path, **over: Any) -> DeploymentConfig:
    doc = {
        "name": DEP,
        "bucket": BUCKET,
        "models": [
            {"name": "small", "artifact": str(built["fp32"])},
            {"name": "tiny", "artifact": str(built["int8"])},
        ],
        "lambda": {"image_uri": URI, "reserved_concurrency": 4},
        "ec2": {"find_links": str(links), "drain_s": 0},
        "fleet": {"c5.large/on_demand": 1},
        **over,
    }
    return DeploymentConfig.model_validate(doc)


@pytest.fixture
def deployed(aws, built, monkeypatch):
    from hybridserve.aws.deploy import deploy

    cache, _, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    cfg = _cfg(built, links)
    return cfg, deploy(cfg, aws, log=lambda *_: None)


def _keys(c: R.Clients, prefix: str) -> list[str]:
    out = c.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in out)


def _server_unit(c: R.Clients) -> str:
    """The model server's systemd unit inside the launch template's cloud-init (whose
    instances read their own tags: a shard's models at boot)."""
    v = c.ec2.describe_launch_template_versions(
        LaunchTemplateName=f"hybridserve-{DEP}", Versions=["$Latest"]
    )["LaunchTemplateVersions"][0]
    assert v["LaunchTemplateData"]["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    doc = yaml.safe_load(base64.b64decode(v["LaunchTemplateData"]["UserData"]))
    (unit,) = [f for f in doc["write_files"] if f["path"].endswith("hybridserve-model.service")]
    return base64.b64decode(unit["content"]).decode()


def test_each_model_gets_its_prefix_its_function_and_the_instances_serve_them_all(deployed, aws):
    cfg, out = deployed
    c = aws
    art = f"{DEP}/artifact"
    keys = _keys(c, art)
    index = yaml.safe_load(
        c.s3.get_object(Bucket=BUCKET, Key=f"{art}/repository.yaml")["Body"].read()
    )
    assert index == {"models": {"small": "small", "tiny": "tiny"}}
    for m in MODELS:
        assert f"{art}/{m}/manifest.json" in keys
    # one function per model, each reading its own artifact, all tagged for teardown
    assert set(out["functions"]) == set(MODELS)
    for m in MODELS:
        fn = c.lam.get_function(FunctionName=f"hybridserve-{DEP}-spill-{m}")
        env = fn["Configuration"]["Environment"]["Variables"]
        assert env["HYBRIDSERVE_ARTIFACT"] == f"s3://{BUCKET}/{art}/{m}/"
        assert (
            c.lam.list_tags(Resource=fn["Configuration"]["FunctionArn"])["Tags"][
                "hybridserve:deployment"
            ]
            == DEP
        )
    # the shared Lambda role writes exactly the two functions' log groups
    doc = c.iam.get_role_policy(RoleName=R.lambda_role_name(DEP), PolicyName=INLINE_POLICY)
    doc = doc["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    groups = {
        r for s in doc["Statement"] if "logs:CreateLogGroup" in s["Action"] for r in s["Resource"]
    }
    assert {g.rsplit("/", 1)[-1] for g in groups} == {
        f"hybridserve-{DEP}-spill-{m}" for m in MODELS
    }
    # every instance fetches the repository and loads both models at start
    unit = _server_unit(c)
    assert "--repository /opt/hybridserve/artifact --load small --load tiny --load-tagged" in unit
    assert "--artifact" not in unit
    from hybridserve.aws.deploy import runtime_policy, status

    st = status(cfg, c)
    assert st["fleet"] == {"c5.large/on_demand": 1}
    assert {m: f["name"] for m, f in st["functions"].items()} == {
        m: f"hybridserve-{DEP}-spill-{m}" for m in MODELS
    }
    statements = {s["Sid"]: s for s in runtime_policy(cfg, c)["Statement"]}
    place = statements["PlaceModels"]  # the placement's model tags on its own instances only
    assert place["Action"] == ["ec2:CreateTags", "ec2:DeleteTags"]
    assert place["Condition"]["ForAllValues:StringLike"] == {"aws:TagKeys": ["hybridserve:model:*"]}
    invoke = statements["InvokeSpill"]
    assert sorted(r.split(":function:")[1] for r in invoke["Resource"]) == [
        f"hybridserve-{DEP}-spill-{m}:live" for m in MODELS
    ]


def test_a_second_deploy_changes_nothing_and_teardown_removes_every_model(deployed, aws):
    from hybridserve.aws.deploy import deploy

    cfg, first = deployed
    logs: list[str] = []
    again = deploy(cfg, aws, log=logs.append)
    assert any("0 artifact files uploaded" in line for line in logs), logs
    assert {m: f["version"] for m, f in again["functions"].items()} == {
        m: f["version"] for m, f in first["functions"].items()
    }
    removed = R.teardown(aws, DEP, region=REGION, wait_s=5, settle_s=0)
    assert removed["functions"] == [f"hybridserve-{DEP}-spill-{m}" for m in MODELS]
    assert aws.lam.list_functions()["Functions"] == []
    index = f"{BUCKET}/{DEP}/artifact/repository.yaml"
    assert index in removed["objects"] and removed["buckets"] == [BUCKET]
    assert aws.s3.list_buckets()["Buckets"] == []


def test_async_jobs_deploy_their_queues_and_topic_and_teardown_removes_them(
    aws, built, monkeypatch
):
    """`async_jobs.enabled`: deploy makes the jobs queue, its dead-letter queue and the topic,
    status shows their depths, the runtime policy grants exactly them, teardown removes them."""
    from hybridserve.aws.async_queue import S3Store, SqsQueue
    from hybridserve.aws.deploy import deploy, runtime_policy, status
    from hybridserve.aws.iam import least_privilege_problems
    from hybridserve.aws.shared import service_client

    cache, _, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    cfg = _cfg(built, links, fleet={}, async_jobs={"enabled": True, "max_receives": 2})
    out = deploy(cfg, aws, log=lambda *_: None)
    a = out["async"]
    sqs = service_client(aws, "sqs")
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=a["queue_url"], AttributeNames=["RedrivePolicy"])[
            "Attributes"
        ]["RedrivePolicy"]
    )
    assert (redrive["deadLetterTargetArn"], int(redrive["maxReceiveCount"])) == (a["dlq_arn"], 2)
    SqsQueue(sqs, a["queue_url"], a["dlq_url"], 2).send('{"id": "x"}')
    st = status(cfg, aws)["async"]
    assert (st["queue"]["visible"], st["dead_letter"]["visible"]) == (1, 0)
    doc = runtime_policy(cfg, aws)
    arns = {r for stmt in doc["Statement"] for r in np.atleast_1d(stmt.get("Resource", []))}
    assert {a["queue_arn"], a["dlq_arn"], a["topic_arn"]} <= arns
    assert f"arn:aws:s3:::{BUCKET}/{DEP}/async/*" in arns and not least_privilege_problems(doc)
    assert S3Store(aws.s3, BUCKET, f"{DEP}/async").uri("results/x.json") == (
        f"s3://{BUCKET}/{DEP}/async/results/x.json"
    )
    removed = R.teardown(aws, DEP, region=REGION, wait_s=5, settle_s=0)
    assert sum("async" in x for x in removed["notices"]) == 3  # two queues and the topic
    assert sqs.list_queues().get("QueueUrls", []) == []


def test_serve_controller_and_plan_refuse_a_multi_model_deployment(deployed, aws):
    from hybridserve.aws.deploy import controller_run, plan_next
    from hybridserve.aws.serving import AwsStack

    cfg, _ = deployed
    for run in (
        lambda: controller_run(cfg, aws, lambda n: None, interval_s=1, max_steps=1),
        lambda: plan_next(cfg, aws, lambda n: None),
        lambda: AwsStack(cfg, clients=aws).prepare(),
    ):
        with pytest.raises(ConfigError, match="models: .* one-model deployment only"):
            run()


def test_an_instance_fetches_and_verifies_every_model_of_the_index(deployed, aws, tmp_path):
    from ec2_images import fetch

    cfg, _ = deployed
    uri = f"s3://{BUCKET}/{cfg.artifact_prefix}/"
    dest, cache = tmp_path / "artifact", tmp_path / "cache"
    fetch.main(["--region", REGION, "artifact", "--dest", str(dest), "--cache", str(cache), uri])
    assert (dest / "repository.yaml").is_file()
    assert len(list(cache.glob("*.onnx"))) == 2  # both models decompressed and checked
    # a damaged model of the index fails the fetch (and the server's start with it)
    key = f"{cfg.artifact_prefix}/tiny/manifest.json"
    m = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    m["model"]["sha256"] = "0" * 64
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(m).encode())
    shutil.rmtree(dest)
    argv = ["--region", REGION, "--attempts", "1", "artifact", "--dest", str(dest)]
    with pytest.raises(SystemExit, match="failed 1 times"):
        fetch.main([*argv, "--cache", str(tmp_path / "cache2"), uri])


# --- the config and the fit check, without AWS --------------------------------------------


def test_the_config_takes_artifact_or_models_and_names_what_is_wrong(built, tmp_path):
    _, _, links = offline_wheelhouse()
    with pytest.raises(ValueError, match="give artifact .* not both"):
        _cfg(built, links, artifact=str(built["fp32"]))
    with pytest.raises(ValueError, match="not neither"):
        _cfg(built, links, models=[])
    with pytest.raises(ValueError, match="repeated: small"):
        _cfg(built, links, models=[{"name": "small", "artifact": "a"}] * 2)
    with pytest.raises(ValueError, match=r"models.0.name: .* \(68 characters\); Lambda allows 64"):
        _cfg(built, links, models=[{"name": "m" * 45, "artifact": "a"}])
    with pytest.raises(ValueError, match="router.replicas"):
        _cfg(built, links, router={"replicas": 2})
    # relative artifact paths resolve against the file, as `artifact:` does
    (tmp_path / "arts").mkdir()
    f = tmp_path / "deploy.yaml"
    f.write_text(f"name: {DEP}\nbucket: {BUCKET}\nmodels:\n  - {{name: a, artifact: arts/a}}\n")
    assert load_deployment(f).models[0].artifact == str((tmp_path / "arts" / "a").resolve())


def test_a_pool_too_small_for_every_model_is_refused_with_the_figures(built, tmp_path):
    from hybridserve.aws.models import check_fits
    from hybridserve.config import load_scenario

    big = tmp_path / "big"
    shutil.copytree(built["fp32"], big)
    m = json.loads((big / "manifest.json").read_text())
    m["footprint"] = {**(m.get("footprint") or {}), "resident_mb": 3500.0}
    (big / "manifest.json").write_text(json.dumps(m))
    _, _, links = offline_wheelhouse()
    cfg = _cfg(
        built,
        links,
        models=[
            {"name": "big", "artifact": str(big)},
            {"name": "tiny", "artifact": str(built["int8"])},
        ],
    )
    catalog = load_scenario(None).catalog
    with pytest.raises(
        ConfigError, match=r"fleet: c5.large/on_demand has 3328 MB .*big 3500.0 MB, tiny 0.[0-9] MB"
    ):
        check_fits(cfg, ["c5.large/on_demand"], catalog)
    check_fits(cfg, ["c5.xlarge/on_demand"], catalog)  # 8 GiB holds both
    with pytest.raises(ConfigError, match=r"models.0.artifact: .* \(no manifest.json\)"):
        check_fits(
            _cfg(built, links, models=[{"name": "x", "artifact": str(tmp_path)}]), [], catalog
        )


# --- the joint plan on AWS: controller run of a multi-model deployment ---------------------


def test_controller_run_places_the_models_and_the_servers_load_them(deployed, aws, built, tmp_path):
    """A multi-model trace through `controller run`: the step retires the deploy's stray
    instance, creates a shard for the busy model (its instances tagged with it), leaves the
    idle one on its function; a restarted placement takes the servers to the tags."""
    import numpy as np

    from hybridserve.aws.deploy import deployment_scenario
    from hybridserve.aws.ec2_backend import http_ready_probe
    from hybridserve.aws.multi_control import build, controller_run_models
    from tests.conftest import wait_until
    from tests.multimodel_helpers import loaded, model_servers, server_for

    cfg, _ = deployed
    (stray,) = _live(aws)  # the deploy's fleet: in no shard
    root = tmp_path / "repo"
    root.mkdir()
    (root / "repository.yaml").write_text(
        f"models:\n  small: {built['fp32']}\n  tiny: {built['int8']}\n"
    )
    dt = deployment_scenario(cfg).control_interval_s
    trace = tmp_path / "trace"
    trace.mkdir()
    np.savetxt(trace / "small.txt", np.full(dt * 6, 40), fmt="%d")
    np.savetxt(trace / "tiny.txt", np.zeros(dt * 6), fmt="%d")
    with model_servers(root, 2) as urls:
        url_of = server_for(urls)
        lines: list[str] = []
        kw = {"probe": http_ready_probe(), "url_of": url_of}
        steps = controller_run_models(
            cfg, aws, str(trace), interval_s=0.2, max_steps=3, log=lines.append, **kw
        )
        assert steps == 3, lines
        assert any("create" in line for line in lines), lines
        live = _live(aws)
        assert live and stray["InstanceId"] not in {i["InstanceId"] for i in live}
        for inst in live:
            tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
            assert "#s" in tags["hybridserve:pool"]
            assert {k: v for k, v in tags.items() if k.startswith("hybridserve:model:")} == {
                "hybridserve:model:small": "fp32"
            }
        _, _, again = build(cfg, aws, **kw)
        try:
            wait_until(
                lambda: (
                    {frozenset(e.models or ()) for e in again.endpoints()} == {frozenset({"small"})}
                ),
                60,
                "the adopted shard serving small",
            )
            for iid in {e.instance_id for e in again.endpoints()}:
                assert loaded(url_of.given[iid]) == {"small": "fp32"}
        finally:
            again.close()


def _live(c: R.Clients) -> list[dict]:
    from tests.conftest import tagged_instances

    return tagged_instances(c.ec2, DEP)


def test_serve_routes_each_model_to_the_shards_that_load_it(deployed, aws, built, tmp_path):
    """`serve` of a multi-model deployment: the router's metadata is each model's, a step of
    the joint plan places the busy model on a shard, the router sends it there once loaded;
    `hybridserve rollout` starts and rolls back a release on it; a router that does not hold
    the lease plans nothing."""
    import time

    import numpy as np
    from click.testing import CliRunner

    from hybridserve.aws.ec2_backend import http_ready_probe
    from hybridserve.aws.lease import Lease
    from hybridserve.aws.multi_serving import MultiAwsStack
    from hybridserve.cli import main
    from hybridserve.serve_config import RouterOptions
    from tests.conftest import wait_until
    from tests.multimodel_helpers import model_servers, server_for
    from tests.test_local_placement import call, infer

    cfg, _ = deployed
    root = tmp_path / "repo"
    root.mkdir()
    (root / "repository.yaml").write_text(
        f"models:\n  small: {built['fp32']}\n  tiny: {built['int8']}\n"
    )
    with model_servers(root, 2) as urls:
        stack = MultiAwsStack(
            cfg,
            clients=aws,
            router=RouterOptions(port=0),
            replica="r1",
            probe=http_ready_probe(),
            url_of=server_for(urls),
        )
        try:
            stack.prepare()
            loop, stack.loop_ = stack.loop_, None  # this test steps the plan itself
            url = stack.start_background()
            code, meta = call(url, "GET", "/v2/models/tiny")
            assert code == 200 and meta["name"] == "tiny" and meta["versions"] == ["int8"]
            dt = loop.controller.interval_s
            busy = np.stack([np.full(dt, 40), np.zeros(dt)])  # small, tiny (the table's order)
            assert loop.names == ["small", "tiny"]
            loop.controller.step(busy, time.time())
            wait_until(  # as the router sees the fleet (it refreshes every 0.1 s)
                lambda: any("small" in (u.endpoint.models or ()) for u in stack.router.ups),
                60,
                "small loaded on a shard",
            )
            assert infer(url, "small") == 200
            assert all("tiny" not in (e.models or ()) for e in stack.backend.endpoints())
            # a rollout through the CLI, against this router: small's traffic shadowed to tiny
            r = CliRunner().invoke(
                main, ["rollout", "start", "--url", url, "--model", "small", "--version", "int8",
                       "--served-as", "tiny", "--shadow", "10%"],
            )  # fmt: skip
            assert r.exit_code == 0 and json.loads(r.stdout)["phase"] == "shadow", r.output
            assert infer(url, "small") == 200  # the stable version still answers
            r = CliRunner().invoke(main, ["rollout", "rollback", "--url", url, "--model", "small"])
            assert r.exit_code == 0 and json.loads(r.stdout)["phase"] == "rolled_back", r.output
            # another router holds the lease: this one's loop plans nothing
            other = Lease(aws.s3, cfg, 600.0, holder="r2")
            loop.lease.release()
            assert other.hold()
            assert loop.safe_step() is None and loop.stats["passive_steps"] == 1
            assert loop.controller.steps == 1
        finally:
            stack.stop_background()


# --- a model family in a deployment --------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_family(tmp_path_factory) -> Path:
    """The mlp in fp32 and int8, with accuracy, profiles and footprints (family build)."""
    from predictors.family import build_family

    out = tmp_path_factory.mktemp("family")
    build_family(
        "mlp", out, ("fp32", "int8"), seed=0, eval_inputs=64, profile=True,
        batch_sizes=(1, 4), repeats=2, footprint_repeats=1,
    )  # fmt: skip
    return out


def test_a_family_deploys_every_eligible_variant_and_its_function_runs_lambdas(
    aws, built, mlp_family, monkeypatch
):
    from hybridserve.aws.deploy import deploy
    from hybridserve.aws.model_table import deployment_table, lambda_variants

    cache, _, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    models = [
        {"name": "chat", "family": str(mlp_family), "accuracy_floor": 0.5},
        {"name": "small", "artifact": str(built["fp32"])},
    ]
    cfg = _cfg(built, links, models=models)
    out = deploy(cfg, aws, log=lambda *_: None)
    art = f"{DEP}/artifact"
    index = yaml.safe_load(
        aws.s3.get_object(Bucket=BUCKET, Key=f"{art}/repository.yaml")["Body"].read()
    )
    assert index == {
        "models": {"chat": {"fp32": "chat/fp32", "int8": "chat/int8"}, "small": "small"}
    }
    keys = _keys(aws, art)
    assert f"{art}/chat/fp32/manifest.json" in keys and f"{art}/chat/int8/manifest.json" in keys
    # the family's function runs the variant the plan gives Lambda, as the router expects
    table = deployment_table(cfg)
    assert [len(cs) for cs in table.model_choices] == [2, 1]
    lv = lambda_variants(cfg)["chat"]
    assert lv in ("fp32", "int8")
    fn = aws.lam.get_function(FunctionName=out["functions"]["chat"]["function_arn"])
    env = fn["Configuration"]["Environment"]["Variables"]
    assert env["HYBRIDSERVE_ARTIFACT"] == f"s3://{BUCKET}/{art}/chat/{lv}/"


def test_a_family_model_takes_a_floor_and_no_profile(built, mlp_family):
    _, _, links = offline_wheelhouse()
    bad = [
        (
            {"name": "a", "artifact": "x", "accuracy_floor": 0.9},
            "accuracy_floor: only for a family",
        ),
        ({"name": "a", "family": "x", "profile": "p.yaml"}, "a family's variants carry their own"),
        (
            {"name": "a", "artifact": "x", "family": "y"},
            "give artifact or family for 'a', not both",
        ),
    ]
    for model, want in bad:
        with pytest.raises(ValueError, match=want):
            _cfg(built, links, models=[model])
