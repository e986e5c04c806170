"""The router with several models (issue 14, item 2): a request goes only to instances holding
its model, predicted behind every model's work queued there; a model on no instance spills to
its own Lambda function; an unknown model is a 404 naming it; per-model counts add up to the
total; an instance that answers 404 (the model was unloaded there) is retried elsewhere.

Instances are real model servers: numpy `LinearModel`s under several names for routing, and
the repository server over two copies of the mlp artifact for load and unload. Lambda is a fake
invoker that records what each function was sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from hybridserve.fleet import Endpoint
from hybridserve.router import Router, RouterConfig, completion_table
from hybridserve.router.models import Slot
from hybridserve.router.policy import drain_table
from tests.conftest import Scrape, wait_until
from tests.model_server_helpers import LinearModel, ServerThread, json_body, rows

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

LAMBDA_MS = (0.0, 20.0, 30.0, 40.0, 50.0)
POOL = "c5.large/on_demand"


class Fleet:
    """Endpoints a test can change, as a backend would."""

    def __init__(self, eps: list[Endpoint]) -> None:
        self.eps = eps

    def __call__(self) -> list[Endpoint]:
        return list(self.eps)


class FakeInvoker:
    """One model's Lambda function: answers every row of a batch and records the batches."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.batches: list[list[dict]] = []

    async def invoke(self, payload: bytes) -> SimpleNamespace:
        batch = json.loads(payload)["batch"]
        self.batches.append(batch)
        out = [{"model_name": self.model, "id": r.get("id", ""), "outputs": []} for r in batch]
        return SimpleNamespace(
            payload=json.dumps({"responses": out}).encode(),
            function_error=None,
            duration_ms=1.0,
            billed_ms=1,
            init_ms=None,
        )

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


def ep(iid: str, server: ServerThread | None, *models: str, url: str = "") -> Endpoint:
    held = frozenset(models) if models else None
    return Endpoint(iid, POOL, url or f"http://{server.url}", held)


def config(**kw) -> RouterConfig:
    base = dict(model_name="a", slo_ms=500.0, batch_ms={1: 1.0, 8: 4.0}, lambda_ms=LAMBDA_MS)
    return RouterConfig(**{**base, **kw})


def linear_server(*names: str) -> tuple[ServerThread, dict[str, LinearModel]]:
    from predictors.server import create_app

    models = {n: LinearModel(n) for n in names}
    s = ServerThread(create_app(list(models.values()), max_batch=8, max_delay_ms=1))
    return s.__enter__(), models


def infer(rs: ServerThread, model: str, version: str | None = None) -> tuple[int, dict]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, _, body = rs.request("POST", path, json_body(rows(1)))
    return status, json.loads(body)


# ---------------------------------------------------------------------------- predictions
def test_the_drain_table_is_the_completion_table_one_request_on():
    profile = {1: 10.0, 2: 18.0, 4: 32.0}
    t = completion_table(profile, max_batch=4, max_queue=12, delay_ms=2.0)
    d = drain_table(profile, max_batch=4, max_queue=12)
    assert d[0] == 0.0 and d[4] == pytest.approx(32.0) and d[5] == pytest.approx(42.0)
    assert list(t) == pytest.approx([x + 2.0 for x in d[1:]])


def test_a_shared_instance_predicts_behind_every_models_queue():
    """x holds a (10 ms a request) and b (40 ms); y holds b only. Two a-requests in flight on x
    put 20 ms ahead of any b-request there: b goes to the idle y; once y has one b in flight
    (80 ms for the next), x (20 + 40 ms) wins."""
    cfg = config(model_batch_ms={"a": {1: 10.0}, "b": {1: 40.0}}, max_batch=1, delay_ms=0.0)
    x_ep = ep("x", None, "a", "b", url="http://127.0.0.1:1")
    fleet = Fleet([x_ep, ep("y", None, "b", url="http://127.0.0.1:2")])
    router = Router(cfg, fleet)
    router.refresh()
    a, b = router.models["a"], router.models["b"]
    x, y = router.ups
    assert a.solo == [] and [s.up for s in a.shared] == [x]
    assert b.solo == [y] and [s.up for s in b.shared] == [x]
    sa = x.slots["a"]
    for _ in range(2):
        sa.enter()
        x.outstanding += 1
    assert x.busy == pytest.approx(20.0)
    assert sa.predicted_ms() == pytest.approx(30.0)  # its own queue: the third a
    assert b.pick(1000.0, cfg.max_queue) is y
    y.outstanding = 1
    c = b.pick(1000.0, cfg.max_queue)
    assert isinstance(c, Slot) and c.up is x and c.predicted_ms() == pytest.approx(60.0)
    assert b.pick(59.0, cfg.max_queue) is None  # nothing within the budget: spill
    sa.leave()
    sa.leave()
    assert x.busy == pytest.approx(0.0)


def test_an_instance_that_does_not_say_turns_shared_when_a_second_model_appears():
    """A single-model router's instances (models None) are routed as before, solo; once an
    instance holding another model appears, they hold both, and their queue so far is the
    first model's."""
    fleet = Fleet([ep("n", None, url="http://127.0.0.1:1")])
    router = Router(config(), fleet)
    router.refresh()
    a = router.models["a"]
    (n,) = router.ups
    assert a.solo == [n] and a.shared == [] and n.slots is None
    n.outstanding = 2
    fleet.eps = [*fleet.eps, ep("e", None, "b", url="http://127.0.0.1:2")]
    router.refresh()
    b = router.models["b"]
    assert n.slots is not None and n.slots["a"].q == 2
    assert n.busy == pytest.approx(a.drain[2])
    assert [s.up for s in a.shared] == [n] and [s.up for s in b.shared] == [n]
    assert [u.endpoint.instance_id for u in b.solo] == ["e"]


# ---------------------------------------------------------------------------- routing
def test_requests_go_only_to_instances_holding_their_model(started):
    sa, ma = linear_server("a")
    sb, mb = linear_server("b")
    sab, mab = linear_server("a", "b")
    for s in (sa, sb, sab):
        started(s)
    fleet = Fleet([ep("i-a", sa, "a"), ep("i-b", sb, "b"), ep("i-ab", sab, "a", "b")])
    router = Router(config(model_batch_ms={"b": {1: 2.0, 8: 8.0}}), fleet)
    rs = started(router)
    for _ in range(6):
        assert infer(rs, "a")[0] == 200
    for _ in range(5):
        status, doc = infer(rs, "b")
        assert status == 200 and doc["model_name"] == "b"
    served_a = sum(ma["a"].calls) + sum(mab["a"].calls)
    served_b = sum(mb["b"].calls) + sum(mab["b"].calls)
    assert (served_a, served_b) == (6, 5)
    assert router.metrics.retries == 0 and router.metrics.unloaded_404s == 0  # never misrouted
    m = Scrape(rs.request("GET", "/metrics")[2])
    assert m.value("hybridserve_router_model_responses_total", model="a", path="fleet") == 6
    assert m.value("hybridserve_router_model_responses_total", model="b", path="fleet") == 5
    assert m.value("hybridserve_router_model_instances", model="a") == 2
    assert m.value("hybridserve_router_responses_total", path="fleet", code="200") == 11
    # metadata comes from an instance holding the model
    status, _, body = rs.request("GET", "/v2/models/b")
    assert status == 200 and json.loads(body)["name"] == "b"


def test_a_model_on_no_instance_spills_to_its_own_function(started):
    sa, _ = linear_server("a")
    started(sa)
    inv = {"a": FakeInvoker("a"), "c": FakeInvoker("c")}
    router = Router(config(), Fleet([ep("i-a", sa, "a")]), invokers=inv)
    rs = started(router)
    for _ in range(3):
        status, doc = infer(rs, "c")
        assert status == 200 and doc["model_name"] == "c"
    assert infer(rs, "a")[0] == 200
    assert inv["c"].rows == 3 and inv["a"].rows == 0  # a cold model: at once, to its function
    m = Scrape(rs.request("GET", "/metrics")[2])
    assert m.value("hybridserve_router_model_spills_total", model="c") == 3
    assert m.value("hybridserve_router_model_spills_total", model="a") == 0
    assert m.value("hybridserve_router_model_responses_total", model="c", path="lambda") == 3
    assert m.value("hybridserve_router_spills_total") == 3
    assert rs.request("GET", "/v2/models/c/ready")[0] == 200


def test_an_unknown_model_or_one_with_nowhere_to_go_is_404_naming_it(started):
    sa, _ = linear_server("a")
    started(sa)
    # d is configured (profiled) but on no instance and without a Lambda function
    cfg = config(model_batch_ms={"d": {1: 3.0}})
    router = Router(cfg, Fleet([ep("i-a", sa, "a")]), invokers={"c": FakeInvoker("c")})
    rs = started(router)
    status, doc = infer(rs, "nope")
    assert status == 404
    assert doc["error"] == "unknown model 'nope'; this router serves 'a', 'c'"
    status, doc = infer(rs, "d")
    assert status == 404
    assert "model 'd' is on no ready instance and has no Lambda function" in doc["error"]
    assert "this router serves 'a', 'c'" in doc["error"]
    assert "nope" not in router.models  # a client's name makes no state, no metric label
    assert rs.request("GET", "/v2/models/nope")[0] == 404


def test_per_model_counts_add_up_to_the_total(started):
    sa, _ = linear_server("a")
    sb, _ = linear_server("b")
    started(sa)
    started(sb)
    fleet = Fleet([ep("i-a", sa, "a"), ep("i-b", sb, "b")])
    router = Router(config(), fleet, invokers={"c": FakeInvoker("c")})
    rs = started(router)
    sent = {"a": 4, "b": 3, "c": 2}
    for name, n in sent.items():
        for _ in range(n):
            assert infer(rs, name)[0] == 200
    infer(rs, "nope")  # not a model: in neither count
    total: list[tuple[int, int]] = []
    by_model: dict[str, list[tuple[int, int]]] = {}

    def closed() -> bool:  # the router's ticker closes each second; wait for ours
        total.extend(router.take_counts())
        for name, got in router.take_model_counts().items():
            by_model.setdefault(name, []).extend(got)
        # both: a take may fall between the tick's total and its per-model appends
        want = sum(sent.values())
        got = sum(n for v in by_model.values() for _, n in v)
        return sum(n for _, n in total) >= want and got >= want

    wait_until(closed, timeout_s=10.0, what="the router closing the seconds of the requests")
    assert sum(n for _, n in total) == sum(sent.values())
    assert {m: sum(n for _, n in v) for m, v in by_model.items()} == sent
    # second by second too, over the seconds every list holds
    seconds = {s for s, _ in total}
    for s in seconds:
        want = sum(n for t, n in total if t == s)
        assert sum(n for v in by_model.values() for t, n in v if t == s) == want


# ---------------------------------------------------------------------------- unloaded: 404
def _copy_as(src: Path, dst: Path, name: str) -> None:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["name"] = name
    (dst / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def repo_server(tmp_path, mlp_fp32_artifact, started):
    """Repository model servers over two mlp copies, `m1` and `m2`, both loaded."""
    pytest.importorskip("onnxruntime")
    from predictors.repository import ModelRepository
    from predictors.server import create_app

    root = tmp_path / "repo"
    root.mkdir()
    for n in ("m1", "m2"):
        _copy_as(mlp_fp32_artifact, root / n, n)

    def make() -> ServerThread:
        repo = ModelRepository(root, memory_mb=1000, threads=1)
        s = started(create_app(repository=repo, max_batch=8, max_delay_ms=1))
        for n in ("m1", "m2"):
            assert s.request("POST", f"/v2/repository/models/{n}/load", b"{}")[0] == 200
        return s

    return make


def mlp_infer(rs: ServerThread, model: str, version: str | None = None) -> tuple[int, bytes]:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    ).encode()
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, _, out = rs.request("POST", path, body)
    return status, out


def test_an_unloaded_model_is_retried_on_another_instance_and_the_pair_dropped(
    repo_server, started
):
    s1, s2 = repo_server(), repo_server()
    fleet = Fleet([ep("i-1", s1, "m1", "m2"), ep("i-2", s2, "m1", "m2")])
    # a long refresh: the drop lasts until the test refreshes
    router = Router(config(model_name="m1", slo_ms=2000.0), fleet, refresh_s=3600.0)
    rs = started(router)
    assert s1.request("POST", "/v2/repository/models/m1/unload", b"{}")[0] == 200
    # both idle with no latency learnt yet: the tie goes to i-1, which says 404; i-2 answers
    status, body = mlp_infer(rs, "m1")
    assert status == 200, body
    assert router.metrics.retries == 1 and router.metrics.unloaded_404s == 1
    assert router.metrics.responses.get(("retry", 200)) == 1
    m1 = router.models["m1"]
    assert [s.up.endpoint.instance_id for s in m1.shared] == ["i-2"]
    assert len(router.models["m2"].shared) == 2  # only the pair is dropped
    assert mlp_infer(rs, "m1")[0] == 200 and router.metrics.retries == 1  # straight to i-2
    assert mlp_infer(rs, "m2")[0] == 200
    # a version the instance lacks is the client's 404, and drops nothing
    status, body = mlp_infer(rs, "m2", version="7")
    assert status == 404 and b"no version" in body
    assert len(router.models["m2"].shared) == 2 and router.metrics.unloaded_404s == 1
    router.refresh()  # the backend still lists the pair: it is back
    assert [s.up.endpoint.instance_id for s in m1.shared] == ["i-1", "i-2"]


def test_an_unloaded_model_with_no_other_instance_is_retried_on_its_function(repo_server, started):
    s1 = repo_server()
    inv = FakeInvoker("m1")
    fleet = Fleet([ep("i-1", s1, "m1", "m2")])
    router = Router(config(model_name="m1", slo_ms=2000.0), fleet, inv, refresh_s=3600.0)
    rs = started(router)
    assert s1.request("POST", "/v2/repository/models/m1/unload", b"{}")[0] == 200
    status, body = mlp_infer(rs, "m1")
    assert status == 200, body
    assert inv.rows == 1 and router.metrics.responses.get(("retry", 200)) == 1
    status, _ = mlp_infer(rs, "m1")  # i-1 is out for m1 now: a cold model, straight to Lambda
    assert status == 200 and inv.rows == 2 and router.metrics.retries == 1
    assert mlp_infer(rs, "m2")[0] == 200  # m2 still goes to i-1


def test_an_invoker_factory_is_asked_once_per_model_the_router_learns_of(started):
    asked: list[str] = []
    made: dict[str, FakeInvoker] = {}

    def factory(name: str) -> FakeInvoker | None:
        asked.append(name)
        if name == "z":
            return None
        made[name] = FakeInvoker(name)
        return made[name]

    fleet = Fleet([])
    router = Router(config(), fleet, invokers=factory)
    rs = started(router)
    sb, _ = linear_server("b")
    started(sb)
    fleet.eps = [ep("i-b", sb, "b", "z")]
    wait_until(lambda: "b" in router.models, what="the router learning of b")
    assert infer(rs, "b")[0] == 200 and made["b"].rows == 0  # on its instance
    fleet.eps = []
    wait_until(lambda: not router.models["b"].shared and not router.models["b"].solo)
    assert infer(rs, "b")[0] == 200 and made["b"].rows == 1  # gone cold: its function
    assert infer(rs, "z")[0] == 404  # no function and no instance
    assert sorted(asked) == ["a", "b", "z"]


def test_a_lazily_made_invoker_starts_on_first_use_and_a_failed_start_is_tried_again(started):
    class Flaky(FakeInvoker):
        starts = 0

        async def start(self) -> None:
            Flaky.starts += 1
            if Flaky.starts == 1:
                raise RuntimeError("no credentials yet")

    made: dict[str, Flaky] = {}
    sa, _ = linear_server("a")
    started(sa)
    fleet = Fleet([ep("i-a", sa, "a")])
    router = Router(
        config(), fleet, invokers=lambda n: made.setdefault(n, Flaky(n)) if n == "b" else None
    )
    rs = started(router)
    fleet.eps = [*fleet.eps, ep("i-b", sa, "b")]  # b is learnt of (that server lacks it)
    wait_until(lambda: "b" in router.models, what="the router learning of b")
    fleet.eps = fleet.eps[:1]
    wait_until(lambda: not router.models["b"].shared and not router.models["b"].solo)
    status, doc = infer(rs, "b")  # its function's first start fails: this request with it
    assert status == 502 and "no credentials yet" in doc["error"]
    assert infer(rs, "b")[0] == 200 and Flaky.starts == 2 and made["b"].rows == 1


def test_single_model_routers_route_solo_as_before(started):
    """The existing router tests cover the behaviour; this pins the path: no slot, no busy."""
    sa, _ = linear_server("a")
    started(sa)
    router = Router(config(), Fleet([Endpoint("i-1", POOL, f"http://{sa.url}")]))
    rs = started(router)
    assert infer(rs, "a")[0] == 200
    a = router.models["a"]
    assert list(router.models) == ["a"] and a.shared == [] and a.solo == router.ups
    assert router.ups[0].slots is None and router.ups[0].busy == 0.0
