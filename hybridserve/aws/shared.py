"""What every AWS resource module shares: clients with adaptive retries, resource names,
tag roles, and the ClientError codes that mean \"missing\"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.deployment import spill_function_name

ROLE_BUCKET = "artifact-bucket"
ROLE_ARTIFACT = "artifact"
ROLE_CONTROLLER_STATE = "controller-state"
ROLE_LAMBDA_ROLE = "lambda-role"
ROLE_INSTANCE_ROLE = "instance-role"
ROLE_INSTANCE_PROFILE = "instance-profile"
ROLE_SECURITY_GROUP = "security-group"

CREATED_BY = "hybridserve:created-by"
ADOPTED_BY = "hybridserve:adopted-by"  # key suffix `:<deployment>`, on buckets adopted, not made
INLINE_POLICY = "hybridserve-inline"
ALIAS = "live"
RUNTIME = "python3.11"
HANDLER = "lambda_handlers.handler.handler"
CODE_KEY_ENV = "HYBRIDSERVE_CODE_KEY"

KINDS = (
    "instances",
    "launch_templates",
    "functions",
    "security_groups",
    "instance_profiles",
    "roles",
    "objects",
    "buckets",
    "notices",
    "auto_scaling_groups",  # the router fleet (aws/routers.py), with the next three
    "listeners",
    "load_balancers",
    "target_groups",
)


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def http_status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_missing(e: ClientError) -> bool:
    code = error_code(e)
    return (
        "NotFound" in code
        or code in {"NoSuchEntity", "NoSuchBucket", "NoSuchKey", "404", "NoSuchTagSet"}
        or http_status(e) == 404
    )


def lambda_role_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-lambda"


def instance_role_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-instance"


def profile_name(deployment: str) -> str:
    return f"hybridserve-{deployment}"


def security_group_name(deployment: str) -> str:
    return f"hybridserve-{deployment}"


function_name = spill_function_name


template_name = T.launch_template_name


@dataclass
class Clients:
    ec2: Any
    s3: Any
    iam: Any
    lam: Any


def client_config(region: str) -> Any:
    """botocore's adaptive retries with backoff and jitter (throttling, eventual consistency)."""
    from botocore.config import Config

    return Config(region_name=region, retries={"mode": "adaptive", "max_attempts": 10})


def clients(region: str, endpoint_url: str | None = None, session: Any = None) -> Clients:
    """boto3 clients of every service a deployment uses, with adaptive retries."""
    import boto3

    cfg = client_config(region)
    src = session or boto3

    def make(name: str) -> Any:
        return src.client(name, endpoint_url=endpoint_url, config=cfg)

    return Clients(ec2=make("ec2"), s3=make("s3"), iam=make("iam"), lam=make("lambda"))


def as_clients(session_or_clients: Any, region: str) -> Clients:
    if isinstance(session_or_clients, Clients):
        return session_or_clients
    if all(hasattr(session_or_clients, k) for k in ("ec2", "s3", "iam", "lam")):
        c = session_or_clients
        return Clients(ec2=c.ec2, s3=c.s3, iam=c.iam, lam=c.lam)
    return clients(region, session=session_or_clients)  # a boto3.Session (or None)


def read_object(s3: Any, bucket: str, key: str) -> bytes | None:
    """An object's bytes, or None when it (or its bucket) does not exist."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if is_missing(e):
            return None
        raise


def retry_while_propagating(
    fn: Callable[[], Any], delays: Sequence[float], propagating: Callable[[ClientError], bool]
) -> Any:
    """`fn()`, again after each of `delays` while it fails with an error `propagating` says
    is IAM's change still spreading (a just-created role or instance profile refused for
    seconds); any other error, or the last, is raised."""
    for delay in (*delays, None):
        try:
            return fn()
        except ClientError as e:
            if delay is None or not propagating(e):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def account_id(c: Clients) -> str:
    """The account of the credentials in use."""
    return service_client(c, "sts").get_caller_identity()["Account"]


def deployment_vpc(ec2: Any, vpc_id: str | None) -> str:
    """`ec2.vpc_id` when given, else the account's default VPC in the region."""
    if vpc_id:
        return vpc_id
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        from hybridserve.config_base import ConfigError

        raise ConfigError("ec2.vpc_id: the account has no default VPC; give one")
    return vpcs[0]["VpcId"]


def until(done: Callable[[], bool], wait_s: float) -> bool:
    """Poll `done()` (every 5 s, or every second under a 30 s budget) until it holds: False
    when `wait_s` passed first."""
    deadline = time.monotonic() + wait_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(5 if wait_s >= 30 else 1)
    return True


def service_client(c: Clients, service: str) -> Any:
    """Another service's client on the same region, endpoint and retry policy as `c`."""
    import boto3

    url = c.ec2.meta.endpoint_url
    region = c.ec2.meta.region_name
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=None if "amazonaws.com" in url else url,
        config=client_config(region),
    )
