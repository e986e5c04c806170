"""Every IAM policy the project generates, as a real deploy leaves it on moto, through Duo's
public IAM linter (parliament, community auditors included): no findings but the few listed in
ALLOWED, each with why; and no wildcard action but the bucket's TLS-only deny."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # parliament imports pkg_resources, deprecated (pinned: dev)
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    parliament = pytest.importorskip("parliament")
moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from hybridserve.aws import iam as I  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws.balancer import router_name  # noqa: E402
from hybridserve.aws.bucket import TLS_ONLY_SID, tls_only_statement  # noqa: E402
from tests.aws_lambda_helpers import ACCOUNT, BUCKET, DEP, REGION, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

# (policy, finding, what it names) -> why it stays. Parliament lints one statement at a time,
# and its community auditors flag what a launcher of instances must be able to do.
ALLOWED: dict[tuple[str, str, tuple[str, ...]], str] = {
    # RunInstances is authorized per resource, and a condition on aws:RequestTag can only hold
    # for the resources the request tags, so AWS's own "require tags at launch" example gives
    # the instance its own statement and the image, subnet, ENI and security group another.
    # Parliament wants every required resource type in each statement; the test below checks
    # that the statements together cover them all.
    ("runtime", "RESOURCE_MISMATCH", ("ec2:RunInstances",)): "RunInstances split by tagging",
    # The controller launches instances with the instance profile, which takes iam:PassRole:
    # on the one instance role's ARN, to EC2 only (checked below).
    ("runtime", "PERMISSIONS_MANAGEMENT_ACTIONS", ("iam:passrole",)): "pass the instance role",
    # PassRole + RunInstances is how an instance gets a role at all; the role it can pass is
    # the deployment's instance role, which only reads the deployment's artifact (linted here).
    (
        "runtime",
        "PRIVILEGE_ESCALATION",
        ("CreateEC2WithExistingIP", "ec2:runinstances", "iam:passrole"),
    ): "launch with the instance role",
    # A trust policy is linted as if it were its principal's own policy (see _as_linted): it
    # grants sts:AssumeRole, which returns credentials by design, to one AWS service (checked
    # below).
    ("trust", "CREDENTIALS_EXPOSURE", ("sts:assumerole",)): "assuming the role is the point",
}


def kind(name: str) -> str:
    """The ALLOWED key of a generated policy's name: the router replicas' role is the runtime
    policy plus exact reads (aws/routers.py), so it is allowed what the runtime policy is."""
    if name.endswith(" trust"):
        return "trust"
    return "runtime" if name.startswith("runtime") or name == router_name(DEP) else name


def _list(v: Any) -> list[Any]:
    return [v] if isinstance(v, str) else list(v)


def lint(doc: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """Parliament's findings on `doc`, each as (issue, the actions or type it names)."""
    found = parliament.analyze_policy_string(
        json.dumps(doc, indent=2), include_community_auditors=True
    ).findings
    out = []
    for f in found:
        loc = f.location if isinstance(f.location, dict) else {}
        if isinstance(f.detail, list):  # RESOURCE_MISMATCH: one entry per action and type
            what = sorted({d["action"] for d in f.detail if isinstance(d, dict)})
        else:
            what = ([loc["type"]] if "type" in loc else []) + sorted(loc.get("actions", []))
        out.append((f.issue, tuple(what) or (str(f.detail),)))
    return out


def _config(tmp_path: Path) -> Path:
    """The deployment, shipping the instances' wheelhouse offline (tests/wheel_helpers.py),
    with a router fleet (its replicas' role is linted too)."""
    _, wheel, links = offline_wheelhouse()
    (tmp_path / "art").mkdir()
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(
        f"name: {DEP}\nartifact: art\nbucket: {BUCKET}\nlambda: {{image_uri: '{URI}'}}\n"
        f"fleet: {{}}\nec2: {{wheel: '{wheel}', find_links: '{links}'}}\n"
        "router: {replicas: 2}\n"
    )
    return cfg


def _cli_policy(cfg: Path) -> dict[str, Any]:
    """What `hybridserve iam-policy --config FILE` prints (on moto, in this process)."""
    from click.testing import CliRunner

    from hybridserve.cli import main

    r = CliRunner().invoke(main, ["iam-policy", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Each policy a deploy makes, read back from moto; the runtime one as the CLI prints it,
    before the deploy (any launch template) and after (the deployment's). One deploy for the
    module: the tests only read."""
    from hybridserve.aws.deploy import deploy
    from hybridserve.deployment import load_deployment

    path = _config(tmp_path_factory.mktemp("lint"))
    with pytest.MonkeyPatch.context() as mp, moto.mock_aws():
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(k, "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("HYBRIDSERVE_CACHE_DIR", str(offline_wheelhouse()[0]))
        c = R.clients(REGION)
        docs = {"runtime (not deployed)": _cli_policy(path)}
        deploy(load_deployment(path), c, log=lambda *_: None)
        docs["runtime"] = _cli_policy(path)
        for role in (R.lambda_role_name(DEP), R.instance_role_name(DEP), router_name(DEP)):
            inline = c.iam.get_role_policy(RoleName=role, PolicyName=R.INLINE_POLICY)
            docs[role] = R.policy_doc(inline["PolicyDocument"])
            got = c.iam.get_role(RoleName=role)["Role"]
            docs[f"{role} trust"] = R.policy_doc(got["AssumeRolePolicyDocument"])
        docs["bucket"] = json.loads(c.s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    return docs


def _as_linted(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A trust policy names no Resource (IAM refuses one there): what it governs is assuming
    the role it is on, so it is linted with that role's ARN as its resource."""
    if not name.endswith(" trust"):
        return doc
    assert all("Resource" not in st for st in doc["Statement"])
    arn = f"arn:aws:iam::{ACCOUNT}:role/{name.removesuffix(' trust')}"
    return {**doc, "Statement": [{**st, "Resource": arn} for st in doc["Statement"]]}


def test_every_generated_policy_is_lint_clean(generated):
    assert len(generated) == 9
    unexpected = {
        name: [f for f in lint(_as_linted(name, doc)) if (kind(name), *f) not in ALLOWED]
        for name, doc in generated.items()
    }
    assert unexpected == {name: [] for name in generated}


def test_no_wildcard_action_but_the_tls_only_deny(generated):
    for name, doc in generated.items():
        for st in doc["Statement"]:
            if name == "bucket" and st.get("Sid") == TLS_ONLY_SID:
                assert st == tls_only_statement(BUCKET)  # a Deny: the one wildcard allowed
                continue
            wild = [a for a in _list(st.get("Action", [])) if "*" in a]
            assert wild == [], f"{name}: {st.get('Sid')} has wildcard actions {wild}"
        if name != "bucket" and not name.endswith(" trust"):
            assert I.least_privilege_problems(doc) == [], name


def test_runinstances_statements_together_cover_every_required_resource(generated):
    """The compensation for ALLOWED's RESOURCE_MISMATCH: merged into one statement, the
    runtime policy's RunInstances resources leave parliament nothing to miss."""
    for name in ("runtime", "runtime (not deployed)", router_name(DEP)):
        launch = [
            st for st in generated[name]["Statement"] if "ec2:RunInstances" in _list(st["Action"])
        ]
        assert len(launch) == 2 and all(st["Effect"] == "Allow" for st in launch)
        merged = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ec2:RunInstances",
                    "Resource": sorted({r for st in launch for r in st["Resource"]}),
                }
            ],
        }
        assert [f for f in lint(merged) if f[0] == "RESOURCE_MISMATCH"] == [], name
        tagged = [st for st in launch if "Condition" in st]
        assert len(tagged) == 1 and tagged[0]["Resource"] == [
            f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"
        ]


def test_the_role_the_runtime_may_pass_is_the_instance_role_to_ec2(generated):
    """The compensation for ALLOWED's PassRole findings: one role, one service."""
    for name in ("runtime", router_name(DEP)):
        passes = [
            st for st in generated[name]["Statement"] if "iam:PassRole" in _list(st["Action"])
        ]
        assert passes == [
            {
                "Sid": "PassInstanceRole",
                "Effect": "Allow",
                "Action": ["iam:PassRole"],
                "Resource": [f"arn:aws:iam::{ACCOUNT}:role/{R.instance_role_name(DEP)}"],
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            }
        ]


def test_the_router_role_is_the_runtime_policy_and_its_boot_files(generated):
    """The replicas run `serve` with the controller in it: the runtime policy `iam-policy`
    prints, statement for statement, and exact reads of the files they boot from."""
    doc = generated[router_name(DEP)]
    assert doc["Statement"][:-1] == generated["runtime"]["Statement"]
    boot = doc["Statement"][-1]
    assert (boot["Sid"], boot["Action"]) == ("RouterBoot", ["s3:GetObject"])
    assert all("*" not in r for r in boot["Resource"])
    assert f"arn:aws:s3:::{BUCKET}/{DEP}/router/deployment.yaml" in boot["Resource"]


def test_trust_policies_let_one_service_assume_the_role(generated):
    """The compensation for ALLOWED's CREDENTIALS_EXPOSURE: the Lambda and EC2 services, one
    per role, and no one else."""
    assert generated[f"{R.lambda_role_name(DEP)} trust"] == I.trust_policy("lambda")
    assert generated[f"{R.instance_role_name(DEP)} trust"] == I.trust_policy("ec2")
    assert generated[f"{router_name(DEP)} trust"] == I.trust_policy("ec2")
    assert I.trust_policy("lambda")["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]


def test_the_lint_catches_what_it_is_here_for():
    """The harness reports what parliament finds: an unknown action, a resource of the wrong
    type, a statement without Resource."""
    bad = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b"},
            {"Effect": "Allow", "Action": "sts:AssumeRole"},
        ],
    }
    issues = {issue for issue, _ in lint(bad)}
    assert {"UNKNOWN_ACTION", "RESOURCE_MISMATCH", "MALFORMED"} <= issues
