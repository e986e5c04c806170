"""LocalPlacementBackend: shards of real model-server processes loading and evicting models as
the multi-model plan says (the simulator's actions, with their meaning, on processes)."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from hybridserve.backends.local_placement import LocalPlacementBackend  # noqa: E402
from hybridserve.fleet import Endpoint  # noqa: E402
from hybridserve.multimodel.packing import Shard  # noqa: E402
from hybridserve.multimodel.placement import PlacementAction as A  # noqa: E402
from hybridserve.multimodel.table import ModelTable  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.multimodel_helpers import placement_repository, placement_table  # noqa: E402

ALPHA, BETA = 0, 1  # model indices
FP32, INT8 = 0, 1  # choice indices (the family's variants, in its order)
READY_S = 30.0  # generous: a server's start is ~1 s here, more on a busy machine


@pytest.fixture(scope="module")
def table() -> ModelTable:
    return placement_table()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlp_fp32_artifact) -> Path:
    return placement_repository(tmp_path_factory.mktemp("placement"), mlp_fp32_artifact)


@pytest.fixture
def make(table, repo, tmp_path):
    """Backends built by the test; closed afterwards, and none may leave a process alive."""
    made: list[LocalPlacementBackend] = []

    def _make(**kw) -> LocalPlacementBackend:
        kw.setdefault("launch_delay_s", 0.0)
        kw.setdefault("probe_interval_s", 0.05)
        kw.setdefault("drain_s", 0.2)
        kw.setdefault("memory_mb", 1000.0)
        kw.setdefault("log_dir", tmp_path / "logs")
        b = LocalPlacementBackend(table, repo, **kw)
        made.append(b)
        return b

    yield _make
    for b in made:
        pids = list(b.pids().values())
        b.close()
        b.close()  # idempotent
        assert not [p for p in pids if _alive(p)], "close() left model servers running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def call(url: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        return r.status, json.loads(text) if text else {}
    finally:
        conn.close()


def infer(url: str, name: str) -> int:
    """Status of a one-row inference of `name`, built from the model's V2 metadata (404 when
    the instance does not serve it)."""
    code, meta = call(url, "GET", f"/v2/models/{name}")
    if code != 200:
        return code
    inputs = [
        {
            "name": i["name"],
            "datatype": i["datatype"],
            "shape": [1 if d == -1 else d for d in i["shape"]],
            "data": [0.5] * _count(i["shape"]),
        }
        for i in meta["inputs"]
    ]
    return call(url, "POST", f"/v2/models/{name}/infer", {"inputs": inputs})[0]


def _count(shape: list[int]) -> int:
    """Elements of a one-row tensor of `shape` (dynamic dims taken as 1)."""
    n = 1
    for d in shape:
        n *= 1 if d == -1 else d
    return n


def versions(url: str, name: str) -> list[str]:
    code, meta = call(url, "GET", f"/v2/models/{name}")
    return meta.get("versions", []) if code == 200 else []


def only(b: LocalPlacementBackend) -> Endpoint:
    (ep,) = b.endpoints()
    return ep


def models_of(b: LocalPlacementBackend) -> list[frozenset[str] | None]:
    return [e.models for e in b.endpoints()]


def test_a_shard_loads_evicts_and_changes_variant_on_its_running_instance(make):
    b = make()
    b.apply([A("create", -1, 0, 1, members=((ALPHA, FP32),))], 0.0)
    assert b.observe() == (Shard(0, ((ALPHA, FP32),), 1, 0),)  # launching counts at once
    assert b.endpoints() == []
    wait_until(lambda: models_of(b) == [{"alpha"}], READY_S, "alpha served on the new shard")
    ep = only(b)
    assert ep.pool == "c5.large/on_demand"  # priced by the table's pool, not the shard
    assert infer(ep.url, "alpha") == 200 and infer(ep.url, "beta") == 404
    assert versions(ep.url, "alpha") == ["fp32"]

    # load beta on the running shard: listed once the server answered the load
    b.apply([A("load", 0, 0, model=BETA, choice=FP32, reason="plan")], 1.0)
    assert b.observe() == (Shard(0, ((ALPHA, FP32), (BETA, FP32)), 1, 0),)
    wait_until(lambda: models_of(b) == [{"alpha", "beta"}], READY_S, "beta loaded")
    assert infer(ep.url, "beta") == 200

    # evict alpha: out of routing at once, then unloaded from the server
    b.apply([A("unload", 0, 0, model=ALPHA, choice=FP32, reason="evict")], 2.0)
    assert models_of(b) == [{"beta"}] and b.evictions == 1
    assert b.observe() == (Shard(0, ((BETA, FP32),), 1, 0),)
    wait_until(
        lambda: any(e.kind == "evict" and e.model == "alpha" for e in b.events()),
        READY_S,
        "alpha evicted from the server",
    )
    assert infer(ep.url, "alpha") == 404 and infer(ep.url, "beta") == 200

    # variant change: unload fp32, then load int8 (the plan's two actions)
    b.apply(
        [
            A("load", 0, 0, model=BETA, choice=INT8, reason="plan"),
            A("unload", 0, 0, model=BETA, choice=FP32, reason="variant"),
        ],
        3.0,
    )
    assert b.observe() == (Shard(0, ((BETA, INT8),), 1, 0),)
    assert models_of(b) == [frozenset()]  # the fp32 beta is no longer what the plan wants
    wait_until(lambda: models_of(b) == [{"beta"}], READY_S, "beta reloaded as int8")
    assert versions(ep.url, "beta") == ["int8"] and infer(ep.url, "beta") == 200
    beta = [(e.kind, e.detail) for e in b.events() if e.model == "beta"]
    assert beta == [("load", "fp32"), ("unload", "fp32"), ("load", "int8")]
    assert (b.loads, b.evictions) == (3, 1)  # as the simulator counts: create 1, loads 2
    assert b.failed() == {"load": 0, "unload": 0, "index": 0}


def test_replicas_boot_with_the_shards_current_models_retire_newest_and_are_lost(make):
    b = make()
    b.apply([A("create", -1, 0, 1, members=((ALPHA, FP32),))], 0.0)
    wait_until(lambda: models_of(b) == [{"alpha"}], READY_S, "the first replica")
    first = only(b).instance_id
    # beta joins the shard and a second replica launches in the same step: the new one
    # boots with both (--load), the running one loads beta
    b.apply(
        [
            A("load", 0, 0, model=BETA, choice=INT8, reason="plan"),
            A("launch", 0, 0, 1),
        ],
        1.0,
    )
    assert b.observe() == (Shard(0, ((ALPHA, FP32), (BETA, INT8)), 2, 0),)
    assert b.totals() == {"c5.large/on_demand": 2}
    both = {"alpha", "beta"}
    wait_until(lambda: models_of(b) == [both, both], READY_S, "two replicas with both models")
    second = next(e.instance_id for e in b.endpoints() if e.instance_id != first)
    boot = {(e.model, e.detail) for e in b.events() if e.instance == second and e.kind == "load"}
    assert boot == {("alpha", "boot"), ("beta", "boot")}
    url2 = next(e.url for e in b.endpoints() if e.instance_id == second)
    assert versions(url2, "beta") == ["int8"] and infer(url2, "beta") == 200

    # retire one: the newest ready goes, out of routing at once
    b.apply([A("retire", 0, 0, 1)], 2.0)
    assert b.observe() == (Shard(0, ((ALPHA, FP32), (BETA, INT8)), 1, 0),)
    assert only(b).instance_id == first
    assert [e.instance for e in b.events() if e.kind == "retire"] == [second]

    # the last process dies: the shard is gone, and the controller would create it again
    b.kill(first)
    wait_until(lambda: b.observe() == (), READY_S, "the dead shard to leave observe")
    assert b.endpoints() == [] and b.totals() == {}
    assert [e.instance for e in b.events() if e.kind == "lost"] == [first]
    b.apply([], 3.0)  # forgets the dead shard; a new one gets a new id
    b.apply([A("create", -1, 0, 1, members=((BETA, INT8),))], 4.0)
    assert b.observe() == (Shard(0, ((BETA, INT8),), 1, 1),)


def test_a_refused_load_is_counted_and_retried_and_never_routed(make):
    # a 100 MB budget: alpha (60 MB) boots, beta (60 MB) does not fit beside it
    b = make(memory_mb=100.0, retry_s=0.1, retry_max_s=0.2)
    b.apply([A("create", -1, 0, 1, members=((ALPHA, FP32),))], 0.0)
    wait_until(lambda: models_of(b) == [{"alpha"}], READY_S, "alpha served")
    b.apply([A("load", 0, 0, model=BETA, choice=FP32, reason="plan")], 1.0)  # does not raise
    routed_beta: list[object] = []

    def refused_twice() -> bool:
        routed_beta.extend(m for m in models_of(b) if m is None or "beta" in m)
        return b.failed()["load"] >= 2

    wait_until(refused_twice, READY_S, "the refused load to be retried")
    assert routed_beta == [] and models_of(b) == [{"alpha"}]
    f = b.failures()[0]
    assert (f.call, f.model, f.status) == ("load", "beta", 409)
    assert "memory budget" in f.message
    assert any(e.kind == "load-failed" and e.model == "beta" for e in b.events())
    # the plan makes room: the retried load then succeeds
    b.apply([A("unload", 0, 0, model=ALPHA, choice=FP32, reason="evict")], 2.0)
    wait_until(lambda: models_of(b) == [{"beta"}], READY_S, "beta loaded once alpha left")
    assert infer(only(b).url, "beta") == 200


def test_bad_actions_and_repositories_are_refused_before_anything_changes(make, table, repo):
    b = make()
    with pytest.raises(KeyError, match="no running shard 7"):
        b.apply([A("create", -1, 0, 1, members=((ALPHA, FP32),)), A("launch", 7, 0, 1)], 0.0)
    with pytest.raises(ValueError, match="cannot take choice"):
        b.apply([A("create", -1, 0, 1, members=((ALPHA, 5),))], 0.0)
    assert b.observe() == () and b.pids() == {}
    bad = repo.parent / "bad"
    bad.mkdir()
    (bad / "repository.yaml").write_text("models:\n  alpha: {fp32: ../arts/fp32}\n")
    with pytest.raises(ValueError, match=r"lacks alpha:int8, beta:fp32, beta:int8"):
        LocalPlacementBackend(table, bad)
