"""A request's say in the variant that serves a family's model (issue 14, item 4): a version
in the path pins one, `parameters.min_accuracy` asks for at least that accuracy; the router
sends it only to an instance holding an allowed variant, or to the model's Lambda function when
that runs one, else answers 409 naming what serves the model now.

Instances are real model servers (numpy `LinearModel`s whose version is the variant); Lambda is
the recording fake of tests/test_router_models.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from hybridserve.router import Router
from hybridserve.router.variants import VariantRefused, allowed_variants
from tests.model_server_helpers import json_body, rows
from tests.test_router_models import FakeInvoker, Fleet, config, ep, linear_server

pytest.importorskip("uvicorn")

ACC = {"fp32": 1.0, "int8": 0.986, "distilled": 0.858}


def body(**params) -> bytes:
    return json_body(rows(1), **({"parameters": params} if params else {}))


def test_allowed_variants_from_the_version_and_min_accuracy():
    assert allowed_variants("chat", ACC, None, body(), None) is None  # the plan's choice
    assert allowed_variants("chat", {}, "fp32", body(), None) is None  # not a family
    assert allowed_variants("chat", ACC, "int8", body(), None) == {"int8"}
    assert allowed_variants("chat", ACC, None, body(min_accuracy=0.9), None) == {"fp32", "int8"}
    assert allowed_variants("chat", ACC, None, body(min_accuracy=0.99), None) == {"fp32"}
    assert allowed_variants("chat", ACC, "fp32", body(min_accuracy=0.99), None) == {"fp32"}
    raw = body(min_accuracy=0.99)  # a binary request's JSON header says it too
    assert allowed_variants("chat", ACC, None, raw + b"\x00" * 16, str(len(raw)).encode()) == {
        "fp32"
    }
    for version, params, status, want in [
        ("fp64", {}, 404, "has no variant 'fp64'; variants (accuracy): fp32 (0.999), int8 (0.986)"),
        ("int8", {"min_accuracy": 0.99}, 400, "accuracy 0.986, below the request's"),
        (None, {"min_accuracy": 1.5}, 400, "parameters.min_accuracy: expected a number"),
        (None, {"min_accuracy": True}, 400, "parameters.min_accuracy: expected a number"),
        (None, {"min_accuracy": 1.0, "x": 1}, None, None),
    ]:
        acc = {"fp32": 0.999, "int8": 0.986} if version == "fp64" else ACC
        if status is None:
            assert allowed_variants("chat", ACC, version, body(**params), None) == {"fp32"}
            continue
        with pytest.raises(VariantRefused) as e:
            allowed_variants("chat", acc, version, body(**params), None)
        assert e.value.status == status and want in e.value.message, e.value.message
    with pytest.raises(VariantRefused, match=r"no variant of model 'chat' reaches min_accuracy"):
        allowed_variants("chat", {"int8": 0.986}, None, body(min_accuracy=0.99), None)


def _server(variant: str):
    s, models = linear_server("chat")
    models["chat"].version = variant
    return s


def test_the_router_sends_a_request_where_its_variant_is_loaded(started):
    s32, s8 = started(_server("fp32")), started(_server("int8"))
    fleet = Fleet(
        [
            replace(ep("i-32", s32, "chat"), variants=(("chat", "fp32"),)),
            replace(ep("i-8", s8, "chat"), variants=(("chat", "int8"),)),
        ]
    )
    lam = FakeInvoker("chat")
    cfg = config(
        model_name="chat",
        model_variants={"chat": {"fp32": 1.0, "int8": 0.986}},
        model_lambda_variant={"chat": "int8"},
    )
    router = Router(cfg, fleet, lam)
    rs = started(router)

    def send(version: str | None = None, **params) -> tuple[int, dict]:
        path = "/v2/models/chat" + (f"/versions/{version}" if version else "") + "/infer"
        status, _, out = rs.request("POST", path, body(**params))
        return status, json.loads(out)

    for _ in range(4):
        assert send("fp32")[1]["model_version"] == "fp32"
        assert send("int8")[1]["model_version"] == "int8"
        assert send(min_accuracy=0.99)[1]["model_version"] == "fp32"
    assert {send()[1]["model_version"] for _ in range(20)} <= {"fp32", "int8"}
    assert lam.rows == 0

    # the fp32 instance goes: int8 still serves (instance, then Lambda); fp32 is a 409
    fleet.eps = fleet.eps[1:]
    router.refresh()
    status, doc = send("fp32")
    assert status == 409, doc
    assert (
        "serves model 'chat' as fp32 now; it is served as int8 on 1 instance, int8 on Lambda"
        in (doc["error"])
    )
    assert send(min_accuracy=0.99)[0] == 409
    fleet.eps = []
    router.refresh()
    assert send("int8")[0] == 200 and send(min_accuracy=0.98)[0] == 200  # Lambda runs int8
    assert lam.rows == 2
    status, doc = send("fp64")
    assert status == 404 and "has no variant 'fp64'" in doc["error"]
    assert router.metrics.model_responses.get(("chat", "rejected", 409), 0) == 1 + 1
