"""Provisioned concurrency on the function's alias: set, changed, removed, ordered against
reserved concurrency, and checked against botocore's model of the API (moto, Stubber)."""

from __future__ import annotations

from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from botocore.exceptions import ClientError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from hybridserve.aws import resources as R  # noqa: E402
from tests.aws_lambda_helpers import ACCOUNT, DEP, FN, REGION, demo_roles, function_args  # noqa: E402


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
    roles = demo_roles(c)
    lam = ProvisionedFake(c.lam)
    out = R.ensure_function(lam, DEP, **function_args(roles, provisioned_concurrency=4))
    assert lam.configs == {R.ALIAS: 4} and out["provisioned_concurrency"] == "4"
    lam.calls.clear()
    assert R.ensure_function(lam, DEP, **function_args(roles, provisioned_concurrency=4)) == out
    assert lam.calls == []  # idempotent: nothing sent
    R.ensure_function(lam, DEP, **function_args(roles, provisioned_concurrency=6))
    assert lam.configs == {R.ALIAS: 6}
    # shrinking both: provisioned must go down before reserved may
    lam.calls.clear()
    R.ensure_function(
        lam, DEP, **function_args(roles, reserved_concurrency=3, provisioned_concurrency=2)
    )
    assert lam.calls == [("put", 2), ("reserved", 3)] and lam.configs == {R.ALIAS: 2}
    # growing both: reserved first
    lam.calls.clear()
    R.ensure_function(
        lam, DEP, **function_args(roles, reserved_concurrency=20, provisioned_concurrency=15)
    )
    assert lam.calls == [("reserved", 20), ("put", 15)]
    R.ensure_function(
        lam, DEP, **function_args(roles, reserved_concurrency=20, provisioned_concurrency=0)
    )
    assert lam.configs == {}
    lam.calls.clear()
    R.ensure_function(lam, DEP, **function_args(roles, reserved_concurrency=20))
    assert lam.calls == []  # 0 and none: nothing to delete

    R.ensure_function(
        lam, DEP, **function_args(roles, reserved_concurrency=20, provisioned_concurrency=5)
    )
    lam.calls.clear()
    assert R.teardown(R.Clients(c.ec2, c.s3, c.iam, lam), DEP, region=REGION, wait_s=5, settle_s=0)[
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
    R.ensure_function(c.lam, DEP, **function_args(demo_roles(c)))
    try:
        c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)
    except ClientError as e:
        if "not yet implemented" in str(e).lower():
            pytest.xfail(f"moto {moto.__version__} does not implement provisioned concurrency")
        assert "NotFound" in e.response["Error"]["Code"]
    R.ensure_function(c.lam, DEP, **function_args(demo_roles(c), provisioned_concurrency=2))
    got = c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)
    assert got["RequestedProvisionedConcurrentExecutions"] == 2
    R.ensure_function(c.lam, DEP, **function_args(demo_roles(c), provisioned_concurrency=0))
    with pytest.raises(ClientError):
        c.lam.get_provisioned_concurrency_config(FunctionName=FN, Qualifier=R.ALIAS)
