"""The Lambda side of a deployment: container-image functions, provisioned concurrency,
keep-warm, and the config fields behind them (moto, botocore's Stubber, the local emulator)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from botocore.exceptions import ClientError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from hybridserve.aws.warm import keep_warm, keep_warm_loop, keep_warm_plan  # noqa: E402
from hybridserve.config import ConfigError  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
DEP = "demo"
FN = R.function_name(DEP)
BUCKET = "hs-demo-artifacts"
REPO_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/hybridserve-demo"
URI = f"{REPO_URI}:0123456789abcdef"


def _roles(c: R.Clients) -> dict[str, str]:
    return R.ensure_roles(
        c.iam, DEP, bucket=BUCKET, prefix="demo/artifact", region=REGION, account=ACCOUNT
    )


def _args(roles: dict[str, str], **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        role_arn=roles["lambda_role_arn"],
        memory_mb=1024,
        timeout_s=30,
        ephemeral_mb=1024,
        reserved_concurrency=10,
        env={"HYBRIDSERVE_MODEL": "m"},
        package_type="Image",
        image_uri=URI,
        role_retry_delays=(),
        wait_s=4,
    )
    args.update(over)
    return args


def _zip_args(c: R.Clients, roles: dict[str, str]) -> dict[str, Any]:
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    key = "demo/lambda-1.zip"
    c.s3.put_object(Bucket=BUCKET, Key=key, Body=b"PK\x05\x06" + b"\0" * 18)
    return _args(roles, package_type="Zip", image_uri=None, bucket=BUCKET, key=key)


def _versions(c: R.Clients) -> list[str]:
    return [v["Version"] for v in c.lam.list_versions_by_function(FunctionName=FN)["Versions"]]


# --------------------------------------------------------------------------- image functions


def test_image_function_created_with_the_uri_then_idempotent_then_updated(aws):
    c = aws
    roles = _roles(c)
    first = R.ensure_function(c.lam, DEP, **_args(roles, image_command=["lambda_handlers.h.h"]))
    fn = c.lam.get_function(FunctionName=FN)
    cfg = fn["Configuration"]
    assert cfg["PackageType"] == "Image" and fn["Code"]["ImageUri"] == URI
    assert cfg.get("Runtime") is None and cfg.get("Handler") is None  # the image's own CMD
    assert cfg["ImageConfigResponse"]["ImageConfig"]["Command"] == ["lambda_handlers.h.h"]
    assert cfg["Environment"]["Variables"] == {"HYBRIDSERVE_MODEL": "m"}  # no zip key
    assert c.lam.list_tags(Resource=first["function_arn"])["Tags"][T.DEPLOYMENT] == DEP
    assert first["package_type"] == "Image"
    alias = c.lam.get_alias(FunctionName=FN, Name=R.ALIAS)
    assert alias["FunctionVersion"] == first["version"]

    before = _versions(c)
    again = R.ensure_function(c.lam, DEP, **_args(roles, image_command=["lambda_handlers.h.h"]))
    assert again == first and _versions(c) == before  # no update, no new version

    newer_uri = f"{REPO_URI}@sha256:{'ab' * 32}"
    newer = R.ensure_function(c.lam, DEP, **_args(roles, image_uri=newer_uri))
    assert int(newer["version"]) > int(first["version"])
    assert c.lam.get_function(FunctionName=FN)["Code"]["ImageUri"] == newer_uri
    assert c.lam.get_alias(FunctionName=FN, Name=R.ALIAS)["FunctionVersion"] == newer["version"]
    assert R.ensure_function(c.lam, DEP, **_args(roles, image_uri=newer_uri)) == newer


@pytest.mark.parametrize("first_type", ["Zip", "Image"])
def test_switching_package_type_is_refused_and_changes_nothing(aws, first_type):
    c = aws
    roles = _roles(c)
    zip_args, image_args = _zip_args(c, roles), _args(roles)
    first, other = (zip_args, image_args) if first_type == "Zip" else (image_args, zip_args)
    R.ensure_function(c.lam, DEP, **first)
    before = (_versions(c), c.lam.get_function(FunctionName=FN)["Code"])
    with pytest.raises(R.PackageTypeChangeError) as err:
        R.ensure_function(c.lam, DEP, **other)
    msg = str(err.value)
    assert f"exists as a {first_type} function" in msg and "lambda.package" in msg
    assert "teardown" in msg and "another name" in msg
    assert (_versions(c), c.lam.get_function(FunctionName=FN)["Code"]) == before
    assert c.lam.get_function(FunctionName=FN)["Configuration"]["PackageType"] == first_type


def test_code_arguments_are_checked():
    with pytest.raises(ValueError, match="image_uri"):
        R.ensure_function(None, DEP, **_args({"lambda_role_arn": "r"}, image_uri=None))
    with pytest.raises(ValueError, match="bucket and key"):
        R.ensure_function(None, DEP, **_args({"lambda_role_arn": "r"}, package_type="Zip"))
    with pytest.raises(ValueError, match="Zip or Image"):
        R.ensure_function(None, DEP, **_args({"lambda_role_arn": "r"}, package_type="image"))


def test_teardown_removes_an_image_function(aws):
    c = aws
    R.ensure_function(c.lam, DEP, **_args(_roles(c)))
    removed = R.teardown(c, DEP, region=REGION, wait_s=5)
    assert removed["functions"] == [FN] and c.lam.list_functions()["Functions"] == []
    assert R.teardown(c, DEP, region=REGION, wait_s=5) == {k: [] for k in R.KINDS}


def test_build_commands_and_tag_follow_the_context(tmp_path):
    ctx = tmp_path / "lambda-image"
    (ctx / "lambda_handlers").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM x\n")
    (ctx / "lambda_handlers" / "handler.py").write_text("a = 1\n")
    tag = R.context_tag(ctx)
    assert re.fullmatch(r"[0-9a-f]{16}", tag) and R.context_tag(ctx) == tag
    (ctx / "lambda_handlers" / "handler.py").write_text("a = 2\n")
    assert R.context_tag(ctx) != tag  # new code, new tag, so ensure_function sees the change
    cmds = R.image_build_commands(ctx, URI, region=REGION)
    assert cmds[2] == f"docker build --platform linux/amd64 --provenance=false -t {URI} {ctx}"
    assert cmds[3] == f"docker push {URI}"
    assert "--repository-name hybridserve-demo " in cmds[0]
    assert cmds[1].endswith(f"--password-stdin {ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")
    assert re.match(R.ECR_URI_PATTERN, URI) and R.ecr_region(URI) == REGION


# --------------------------------------------------------------------------- provisioned


class ProvisionedFake:
    """A moto Lambda client plus provisioned concurrency with AWS's rules (moto has none):
    configs on a qualifier, provisioned <= reserved concurrency, gone with the function."""

    def __init__(self, lam: Any) -> None:
        self._lam = lam
        self.configs: dict[str, int] = {}
        self.calls: list[tuple[str, Any]] = []
        self.exceptions = lam.exceptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lam, name)

    def _error(self, code: str, op: str, status: int = 404) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            op,
        )

    def _reserved(self, name: str) -> int | None:
        return self._lam.get_function_concurrency(FunctionName=name).get(
            "ReservedConcurrentExecutions"
        )

    def get_provisioned_concurrency_config(self, FunctionName: str, Qualifier: str) -> dict:
        if Qualifier not in self.configs:
            raise self._error("ProvisionedConcurrencyConfigNotFoundException", "Get")
        n = self.configs[Qualifier]
        return {"RequestedProvisionedConcurrentExecutions": n, "Status": "READY"}

    def put_provisioned_concurrency_config(
        self, FunctionName: str, Qualifier: str, ProvisionedConcurrentExecutions: int
    ) -> dict:
        self.calls.append(("put", ProvisionedConcurrentExecutions))
        reserved = self._reserved(FunctionName)
        if reserved is not None and ProvisionedConcurrentExecutions > reserved:
            raise self._error("InvalidParameterValueException", "Put", 400)
        self.configs[Qualifier] = ProvisionedConcurrentExecutions
        return {"Status": "IN_PROGRESS"}

    def delete_provisioned_concurrency_config(self, FunctionName: str, Qualifier: str) -> None:
        self.calls.append(("delete", Qualifier))
        self.configs.pop(Qualifier)

    def put_function_concurrency(self, FunctionName: str, ReservedConcurrentExecutions: int) -> Any:
        self.calls.append(("reserved", ReservedConcurrentExecutions))
        if ReservedConcurrentExecutions < sum(self.configs.values()):
            raise self._error("InvalidParameterValueException", "PutFunctionConcurrency", 400)
        return self._lam.put_function_concurrency(
            FunctionName=FunctionName, ReservedConcurrentExecutions=ReservedConcurrentExecutions
        )

    def get_paginator(self, op: str) -> Any:
        if op != "list_provisioned_concurrency_configs":
            return self._lam.get_paginator(op)
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FN}"
        page = {
            "ProvisionedConcurrencyConfigs": [{"FunctionArn": f"{arn}:{q}"} for q in self.configs]
        }

        class Pages:
            def paginate(self, **kw: Any) -> list[dict]:
                return [page]

        return Pages()

    def delete_function(self, FunctionName: str) -> Any:
        self.calls.append(("delete_function", sorted(self.configs)))
        return self._lam.delete_function(FunctionName=FunctionName)


def test_provisioned_concurrency_set_changed_removed_with_reserved_ordering(aws):
    c = aws
    roles = _roles(c)
    lam = ProvisionedFake(c.lam)
    out = R.ensure_function(lam, DEP, **_args(roles, provisioned_concurrency=4))
    assert lam.configs == {R.ALIAS: 4} and out["provisioned_concurrency"] == "4"
    lam.calls.clear()
    assert R.ensure_function(lam, DEP, **_args(roles, provisioned_concurrency=4)) == out
    assert lam.calls == []  # idempotent: nothing sent
    R.ensure_function(lam, DEP, **_args(roles, provisioned_concurrency=6))
    assert lam.configs == {R.ALIAS: 6}
    # shrinking both: provisioned must go down before reserved may
    lam.calls.clear()
    R.ensure_function(lam, DEP, **_args(roles, reserved_concurrency=3, provisioned_concurrency=2))
    assert lam.calls == [("put", 2), ("reserved", 3)] and lam.configs == {R.ALIAS: 2}
    # growing both: reserved first
    lam.calls.clear()
    R.ensure_function(lam, DEP, **_args(roles, reserved_concurrency=20, provisioned_concurrency=15))
    assert lam.calls == [("reserved", 20), ("put", 15)]
    R.ensure_function(lam, DEP, **_args(roles, reserved_concurrency=20, provisioned_concurrency=0))
    assert lam.configs == {}
    lam.calls.clear()
    R.ensure_function(lam, DEP, **_args(roles, reserved_concurrency=20))
    assert lam.calls == []  # 0 and none: nothing to delete

    R.ensure_function(lam, DEP, **_args(roles, reserved_concurrency=20, provisioned_concurrency=5))
    lam.calls.clear()
    assert R.teardown(R.Clients(c.ec2, c.s3, c.iam, lam), DEP, region=REGION, wait_s=5)[
        "functions"
    ] == [FN]
    assert lam.calls == [("delete", R.ALIAS), ("delete_function", [])]  # released first


def test_provisioned_concurrency_follows_the_botocore_model():
    """Stubber checks every request against botocore's model of the Lambda API."""
    lam = boto3.client(
        "lambda", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    q = {"FunctionName": FN, "Qualifier": R.ALIAS}
    with Stubber(lam) as stub:
        stub.add_client_error(
            "get_provisioned_concurrency_config",
            "ProvisionedConcurrencyConfigNotFoundException",
            http_status_code=404,
            expected_params=q,
        )
        stub.add_response(
            "put_provisioned_concurrency_config",
            {"RequestedProvisionedConcurrentExecutions": 3, "Status": "IN_PROGRESS"},
            {**q, "ProvisionedConcurrentExecutions": 3},
        )
        assert R.ensure_provisioned_concurrency(lam, FN, 3) is True
        stub.add_response(
            "get_provisioned_concurrency_config",
            {"RequestedProvisionedConcurrentExecutions": 3, "Status": "READY"},
            q,
        )
        assert R.ensure_provisioned_concurrency(lam, FN, 3) is False
        stub.add_response(
            "get_provisioned_concurrency_config",
            {"RequestedProvisionedConcurrentExecutions": 3, "Status": "FAILED"},
            q,
        )
        stub.add_response(
            "put_provisioned_concurrency_config", {}, {**q, "ProvisionedConcurrentExecutions": 3}
        )
        assert R.ensure_provisioned_concurrency(lam, FN, 3) is True  # a failed one is retried
        stub.add_response(
            "get_provisioned_concurrency_config",
            {"RequestedProvisionedConcurrentExecutions": 3, "Status": "READY"},
            q,
        )
        stub.add_response("delete_provisioned_concurrency_config", {}, q)
        assert R.ensure_provisioned_concurrency(lam, FN, 0) is True
        stub.add_client_error(
            "get_provisioned_concurrency_config",
            "ProvisionedConcurrencyConfigNotFoundException",
            http_status_code=404,
            expected_params=q,
        )
        assert R.ensure_provisioned_concurrency(lam, FN, 0) is False
        stub.add_client_error(
            "get_provisioned_concurrency_config", "AccessDeniedException", http_status_code=403
        )
        with pytest.raises(ClientError, match="AccessDenied"):
            R.ensure_provisioned_concurrency(lam, FN, 1)  # only "not found" means none
        stub.assert_no_pending_responses()
    with pytest.raises(ValueError, match=">= 0"):
        R.ensure_provisioned_concurrency(lam, FN, -1)


def test_provisioned_concurrency_on_moto(aws):
    c = aws
    R.ensure_function(c.lam, DEP, **_args(_roles(c)))
    try:
        c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)
    except ClientError as e:
        if "not yet implemented" in str(e).lower():
            pytest.xfail(f"moto {moto.__version__} does not implement provisioned concurrency")
        assert "NotFound" in e.response["Error"]["Code"]
    R.ensure_function(c.lam, DEP, **_args(_roles(c), provisioned_concurrency=2))
    got = c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)
    assert got["RequestedProvisionedConcurrentExecutions"] == 2
    R.ensure_function(c.lam, DEP, **_args(_roles(c), provisioned_concurrency=0))
    with pytest.raises(ClientError):
        c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)


# --------------------------------------------------------------------------- keep-warm


@pytest.mark.parametrize(
    ("now", "last", "every", "conc", "want"),
    [
        (100.0, None, 60.0, 3, 3),  # never invoked: warm now
        (100.0, 90.0, 60.0, 3, 0),  # invoked 10 s ago
        (150.0, 90.0, 60.0, 3, 3),  # idle exactly every_s
        (151.0, 90.0, 60.0, 1, 1),
        (100.0, 90.0, 5.0, 0, 0),  # concurrency 0: off
        (100.0, 130.0, 60.0, 3, 0),  # a last invoke in the future counts as now
    ],
)
def test_keep_warm_plan(now, last, every, conc, want):
    assert keep_warm_plan(now, last, every, conc) == want


def test_keep_warm_plan_rejects_bad_settings():
    with pytest.raises(ValueError, match="every_s"):
        keep_warm_plan(0.0, None, 0.0, 1)
    with pytest.raises(ValueError, match="every_s"):
        keep_warm_plan(0.0, None, float("nan"), 1)
    with pytest.raises(ValueError, match="concurrency"):
        keep_warm_plan(0.0, None, 1.0, -1)


class FakeInvoker:
    max_concurrency = 4

    def __init__(self) -> None:
        self.payloads: list[dict] = []

    async def invoke(self, payload: bytes) -> Any:
        from hybridserve.aws.invoke import InvokeResult

        self.payloads.append(json.loads(payload))
        return InvokeResult(b'{"warm": true}', None, 1.0, 1, None, 1)


def test_keep_warm_loop_pings_when_idle_and_stops():
    inv = FakeInvoker()
    clock = [0.0]
    reports = []

    async def run() -> int:
        stop = asyncio.Event()

        async def advance() -> None:
            for _ in range(40):
                await asyncio.sleep(0.002)
                clock[0] += 1.0
            stop.set()

        mover = asyncio.ensure_future(advance())
        n = await keep_warm_loop(
            inv, every_s=10.0, concurrency=2, stop=stop, on_report=reports.append,
            clock=lambda: clock[0], tick_s=0.001,
        )  # fmt: skip
        await mover
        return n

    rounds = asyncio.run(run())
    assert 4 <= rounds <= 5  # at t=0, then every 10 s of the 40
    assert len(inv.payloads) == 2 * rounds and all(r.warm == 2 for r in reports)
    assert inv.payloads[0] == {"warmup": True, "hold_ms": 75.0}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("aiobotocore")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")  # to build the artifact
    from predictors.artifact import build_artifact

    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


def test_keep_warm_starts_n_environments_on_the_emulator(artifact):
    from hybridserve.aws.invoke import LambdaInvoker
    from hybridserve.lambda_emulator.server import LambdaEmulator

    async def run(url: str, emu: LambdaEmulator) -> tuple:
        async with LambdaInvoker(
            "hybridserve-spill", endpoint_url=url, local_credentials=True, max_concurrency=3
        ) as inv:
            first = await keep_warm(inv, 3)
            envs_after_first = emu.stats()["environments"]
            second = await keep_warm(inv, 3)
            with pytest.raises(ValueError, match="max_concurrency"):
                await keep_warm(inv, 4)
            return first, envs_after_first, second

    with LambdaEmulator(artifact, concurrency=4) as emu:
        first, envs_after_first, second = asyncio.run(run(emu.url, emu))
        stats = emu.stats()
    assert first.errors == () and first.sent == first.warm == 3 and first.cold_starts == 3
    assert envs_after_first == 3
    assert second.errors == () and second.warm == 3 and second.cold_starts == 0
    assert stats["environments"] == 3 and stats["cold_starts"] == 3 and stats["errors"] == 0


def test_keep_warm_reports_a_failing_function_without_raising():
    pytest.importorskip("aiobotocore")
    from hybridserve.aws.invoke import LambdaInvoker
    from hybridserve.lambda_emulator.server import LambdaEmulator

    async def run(url: str) -> Any:
        async with LambdaInvoker(
            "hybridserve-spill", endpoint_url=url, local_credentials=True
        ) as inv:
            return await keep_warm(inv, 2)

    with LambdaEmulator(None, handler="tests.lambda_test_handlers:fail") as emu:
        report = asyncio.run(run(emu.url))
    assert report.sent == 2 and report.warm == 0 and len(report.errors) == 2
    assert all(e.startswith("function error Unhandled") for e in report.errors)


# --------------------------------------------------------------------------- config


def _load(tmp_path: Path, lam: str) -> Any:
    from hybridserve.deployment import load_deployment

    (tmp_path / "art").mkdir(exist_ok=True)
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(f"name: {DEP}\nartifact: art\nbucket: {BUCKET}\nlambda: {lam}\nfleet: {{}}\n")
    return load_deployment(cfg)


@pytest.mark.parametrize(
    ("lam", "field", "words"),
    [
        ("{package: zip, image_uri: '" + URI + "'}", "lambda.image_uri", "package is 'zip'"),
        ("{image_uri: 'docker.io/me/model:1'}", "lambda.image_uri", "pattern"),
        ("{package: wheel}", "lambda.package", "zip, image, auto"),
        (
            "{reserved_concurrency: 5, provisioned_concurrency: 6}",
            "lambda.provisioned_concurrency",
            "reserved",
        ),
        ("{keep_warm: {every_s: 0}}", "lambda.keep_warm.every_s", "greater than 0"),
        (
            "{reserved_concurrency: 2, keep_warm: {every_s: 60, concurrency: 3}}",
            "lambda.keep_warm",
            "throttled",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path, lam, field, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, lam)
    msg = str(err.value)
    assert f"field {field}:" in msg and words in msg and "deploy.yaml" in msg


def test_config_package_modes_and_prebuilt_zip(tmp_path):
    for mode in ("zip", "image", "auto"):
        lam = _load(tmp_path, f"{{package: {mode}}}").lambda_
        assert lam.package == mode and lam.prebuilt_zip is None
    assert _load(tmp_path, "{}").lambda_.package == "auto"
    lam = _load(tmp_path, "{package: build/fn.zip, provisioned_concurrency: 2}").lambda_
    assert lam.prebuilt_zip == (tmp_path / "build" / "fn.zip").resolve()
    assert lam.provisioned_concurrency == 2 and lam.keep_warm is None
    warm = _load(tmp_path, "{image_uri: '" + URI + "', keep_warm: {every_s: 300, concurrency: 4}}")
    assert warm.lambda_.keep_warm.every_s == 300 and warm.lambda_.keep_warm.concurrency == 4


def test_image_without_uri_prints_the_build_and_push_commands(aws, tmp_path):
    pytest.importorskip("onnxruntime")
    from hybridserve.aws.deploy import deploy

    cfg = _load(tmp_path, "{package: image}")
    with pytest.raises(ConfigError) as err:
        deploy(cfg, aws, log=lambda *_: None)
    msg = str(err.value)
    assert msg.startswith("lambda.image_uri: required") and "lambda.package is image" in msg
    ctx = Path(re.search(r"context written to (\S+):\n", msg).group(1))
    assert (ctx / "Dockerfile").exists() and (ctx / "lambda_handlers" / "handler.py").exists()
    uri = f"{REPO_URI}:{R.context_tag(ctx)}"
    assert f"  docker build --platform linux/amd64 --provenance=false -t {uri} {ctx}\n" in msg
    assert f"  docker push {uri}\n" in msg
    assert f"set `lambda.image_uri: {uri}`" in msg
    assert aws.lam.list_functions()["Functions"] == []  # nothing half-made


def test_deploy_with_an_image_uri_in_another_region_names_the_field(aws, tmp_path):
    from hybridserve.aws.deploy import deploy

    other = URI.replace(REGION, "eu-west-1")
    cfg = _load(tmp_path, "{image_uri: '" + other + "'}")
    with pytest.raises(ConfigError, match=r"^lambda.image_uri: the image is in eu-west-1"):
        deploy(cfg, aws, log=lambda *_: None)


def test_deploy_with_an_image_uri_makes_an_image_function(aws, tmp_path):
    from hybridserve.aws.deploy import deploy

    cfg = _load(tmp_path, "{image_uri: '" + URI + "', reserved_concurrency: 7}")
    plan = deploy(cfg, aws, dry_run=True, log=lambda *_: None)["plan"]
    assert any(URI in line and "provisioned concurrency 0" in line for line in plan)
    out = deploy(cfg, aws, log=lambda *_: None)
    assert out["function"]["package_type"] == "Image"
    fn = aws.lam.get_function(FunctionName=FN)
    assert fn["Configuration"]["PackageType"] == "Image" and fn["Code"]["ImageUri"] == URI
    again = deploy(cfg, aws, log=lambda *_: None)
    assert again["function"] == out["function"]
