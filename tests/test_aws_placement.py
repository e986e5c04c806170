"""Ec2PlacementBackend on moto: the multi-model plan's actions on a deployment's EC2 instances,
shards and their models in tags, with real model-server processes standing in for the
instances' servers (AwsBackend's `url_of` points each instance at one), so loads, evictions
and the router's view are the servers' own answers."""

from __future__ import annotations

import pytest

pytest.importorskip("moto")
pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")

from hybridserve.aws import tags as T  # noqa: E402
from hybridserve.aws.ec2 import Ec2Fleet  # noqa: E402
from hybridserve.aws.ec2_backend import AwsBackend, http_ready_probe  # noqa: E402
from hybridserve.aws.placement import Ec2PlacementBackend  # noqa: E402
from hybridserve.multimodel.packing import Shard  # noqa: E402
from hybridserve.multimodel.placement import PlacementAction as A  # noqa: E402
from tests.conftest import tagged_instances, wait_until  # noqa: E402
from tests.multimodel_helpers import (  # noqa: E402
    loaded,
    model_servers,
    placement_repository,
    placement_table,
    server_for,
)
from tests.test_local_placement import call  # noqa: E402

DEP = "place"
ALPHA, BETA = 0, 1
FP32, INT8 = 0, 1
SETTLE_S = 60.0  # generous: a load is ~1 s here, more on a busy machine


@pytest.fixture(scope="module")
def table():
    return placement_table()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, mlp_fp32_artifact):
    """Two model servers over the repository, nothing loaded: the instances' servers."""
    root = placement_repository(tmp_path_factory.mktemp("ec2-placement"), mlp_fp32_artifact)
    with model_servers(root, 2) as urls:
        yield urls


@pytest.fixture
def make(aws, table, servers):
    """Placement backends on one moto fleet; each instance is given the next free server."""
    ami = aws.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    url_of = server_for(servers)
    made: list[Ec2PlacementBackend] = []

    def _make() -> Ec2PlacementBackend:
        fleet = Ec2Fleet(DEP, aws.ec2, ami, user_data="#cloud-config\n")
        be = AwsBackend(fleet, probe=http_ready_probe(), url_of=url_of, refresh_s=0.05, drain_s=0)
        b = Ec2PlacementBackend(table, be, retry_s=0.2, retry_max_s=1.0)
        made.append(b)
        return b

    yield _make, url_of.given
    for b in made:
        b.close()
    for u in servers:  # leave the servers empty for the next test
        for name in loaded(u):
            call(u, "POST", f"/v2/repository/models/{name}/unload", {})


def _instances(aws) -> list[dict]:
    return tagged_instances(aws.ec2, DEP)


def _models(inst: dict) -> dict[str, str]:
    n = len(T.MODEL_PREFIX)
    return {t["Key"][n:]: t["Value"] for t in inst["Tags"] if t["Key"].startswith(T.MODEL_PREFIX)}


def _served(b: Ec2PlacementBackend) -> dict[str, frozenset[str]]:
    return {e.instance_id: e.models or frozenset() for e in b.endpoints()}


def test_a_shard_launches_loads_evicts_and_retires_as_the_plan_says(make, aws, table):
    mk, given = make
    b = mk()
    pool = table.pools[0].key
    # a stray instance of the deployment (one `scale` made) is the plan's to retire
    b.backend.converge({pool: 1})
    (stray,) = [i["InstanceId"] for i in _instances(aws)]
    b.apply([A("create", -1, 0, 1, members=((ALPHA, FP32),))], now=1.0)
    insts = _instances(aws)
    (inst,) = [i for i in insts if i["InstanceId"] != stray]
    assert stray not in {i["InstanceId"] for i in insts}
    iid = inst["InstanceId"]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[T.POOL] == f"{pool}#s0" and _models(inst) == {"alpha": "fp32"}
    assert b.observe() == (Shard(0, ((ALPHA, FP32),), 1, 0),)
    # the server is taken to its shard's models, and the router sees alpha once it answered
    wait_until(lambda: _served(b).get(iid) == {"alpha"}, SETTLE_S, "alpha served")
    url = given[iid]
    assert loaded(url) == {"alpha": "fp32"}
    (ep,) = b.endpoints()
    assert ep.pool == pool and ep.variants == (("alpha", "fp32"),)
    assert b.totals() == {pool: 1}

    b.apply([A("load", 0, 0, model=BETA, choice=INT8)], now=2.0)
    assert _models(_instances(aws)[0]) == {"alpha": "fp32", "beta": "int8"}
    wait_until(lambda: _served(b).get(iid) == {"alpha", "beta"}, SETTLE_S, "beta loaded")

    b.apply([A("unload", 0, 0, model=ALPHA, choice=FP32, reason="evict")], now=3.0)
    # out of routing at once, before the server unloads (the instance itself may be out for
    # a moment too, should a health probe time out on a busy machine)
    assert "alpha" not in _served(b).get(iid, frozenset())
    wait_until(lambda: loaded(url) == {"beta": "int8"}, SETTLE_S, "alpha evicted")
    assert _models(_instances(aws)[0]) == {"beta": "int8"}
    assert (b.loads, b.evictions) == (2, 1)
    # the event is recorded once the unload call's answer is read, just after the server has
    # unloaded: waited for, not raced
    wait_until(
        lambda: ("evict", "alpha") in [(e.kind, e.model) for e in b.model_events()],
        SETTLE_S,
        "the eviction recorded",
    )
    kinds = [(e.kind, e.model) for e in b.model_events()]
    assert ("load", "alpha") in kinds and ("load", "beta") in kinds and ("evict", "alpha") in kinds

    b.apply([A("retire", 0, 0, 1, reason="dropped")], now=4.0)
    assert _instances(aws) == [] and b.observe() == ()
    wait_until(lambda: b.endpoints() == [], SETTLE_S, "the retired instance out of routing")


def test_a_restarted_controller_adopts_the_shards_from_their_tags(make, aws, table):
    mk, _ = make
    first = mk()
    first.apply([A("create", -1, 0, 1, members=((ALPHA, INT8), (BETA, FP32)))], now=1.0)
    first.close()
    (iid,) = [i["InstanceId"] for i in _instances(aws)]
    ghost = {"Key": f"{T.MODEL_PREFIX}ghost", "Value": "fp32"}  # a model no longer deployed
    aws.ec2.create_tags(Resources=[iid], Tags=[ghost])
    again = mk()  # a new process: nothing but what AWS holds
    assert again.observe() == (Shard(0, ((ALPHA, INT8), (BETA, FP32)), 1, 0),)
    wait_until(lambda: _served(again).get(iid) == {"alpha", "beta"}, SETTLE_S, "adopted, served")
    # its next shard takes the next id, and launches carry the shard's models
    again.apply([A("create", -1, 0, 1, members=((BETA, INT8),))], now=2.0)
    shards = again.observe()
    assert [(sh.sid, sh.members) for sh in shards] == [
        (0, ((ALPHA, INT8), (BETA, FP32))),
        (1, ((BETA, INT8),)),
    ]
    again.apply([A("launch", 1, 0, 1)], now=3.0)
    tagged = [_models(i) for i in _instances(aws) if i["InstanceId"] != iid]
    assert tagged == [{"beta": "int8"}, {"beta": "int8"}]
    (first_inst,) = [i for i in _instances(aws) if i["InstanceId"] == iid]
    assert _models(first_inst) == {"alpha": "int8", "beta": "fp32"}  # the ghost's tag is gone


def test_a_bad_action_changes_nothing(make, aws):
    mk, _ = make
    b = mk()
    with pytest.raises(KeyError, match="no running shard 7"):
        b.apply(
            [A("create", -1, 0, 1, members=((ALPHA, FP32),)), A("load", 7, 0, model=0, choice=0)],
            1.0,
        )
    with pytest.raises(ValueError, match="cannot take choice 9"):
        b.apply([A("create", -1, 0, 1, members=((ALPHA, 9),))], 1.0)
    assert _instances(aws) == [] and b.observe() == ()


def test_shard_keys_parse_back():
    from hybridserve.aws.placement import parse_shard, shard_key

    assert parse_shard(shard_key("c5.large/spot", 12)) == ("c5.large/spot", 12)
    assert parse_shard("c5.large/on_demand") is None and parse_shard("c5.large/x#sx") is None
