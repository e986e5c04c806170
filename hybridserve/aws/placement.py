"""The multi-model controller's placement backend on EC2 (issue 14): shards of a deployment's
instances, each loading the models its shard should hold, as the plan says.

It executes the `PlacementAction`s that `reconcile_placement` decides with the meaning the
simulator and the local processes give them. What it knows lives in AWS, so a restarted
controller adopts the placement it finds:
- a shard is the instances whose pool tag is ``<type>/<market>#s<id>``: to `AwsBackend` and
  the reconciler it is a pool (launch tokens, health grace, drain, spot notices, rolls);
- what a shard should hold is a tag per model on each of its instances
  (``hybridserve:model:<name>`` = variant), written on load and removed on unload, and carried
  by the shard's new launches;
- what a server holds is its own repository index: `ModelCalls` takes each ready server toward
  its shard's models after every refresh of the fleet (unloads first, failures retried), and
  the router is given a model on an instance only once its load answered.

An instance of the deployment that is in no shard (one `scale` launched) is retired by the
first step that applies: the plan owns the fleet.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from urllib.parse import urlsplit

from hybridserve.aws import tags as T
from hybridserve.aws.ec2 import Ec2Instance
from hybridserve.aws.ec2_backend import AwsBackend
from hybridserve.backends.model_calls import CallFailure, ModelCalls, ModelEvent, Target
from hybridserve.fleet import Endpoint
from hybridserve.multimodel.packing import Shard
from hybridserve.multimodel.placement import PlacementAction
from hybridserve.multimodel.table import ModelTable

KINDS = ("create", "launch", "retire", "load", "unload")


def shard_key(pool_key: str, sid: int) -> str:
    return f"{pool_key}#s{sid}"


def parse_shard(key: str) -> tuple[str, int] | None:
    """(pool key, shard id) of a shard's pool tag; None for any other pool."""
    base, sep, sid = key.rpartition("#s")
    return (base, int(sid)) if sep and sid.isdigit() else None


class Ec2PlacementBackend:
    """`PlacementBackend` over the deployment's EC2 instances, through `backend` (whose fleet
    launches the deployment's template: instances serving the repository index). Model calls
    reach the servers at `backend.url_of(instance)`. Thread-safe: the controller applies from
    its thread while the router reads `endpoints()`."""

    def __init__(
        self,
        table: ModelTable,
        backend: AwsBackend,
        *,
        call_timeout_s: float = 60.0,
        retry_s: float = 0.5,
        retry_max_s: float = 15.0,
        run_id: str | None = None,
    ) -> None:
        self.table = table
        self.backend = backend
        self.run_id = run_id or uuid.uuid4().hex  # with the step's time: each launch's intent
        self._keys = {p.key: j for j, p in enumerate(table.pools)}
        self._lock = threading.Lock()
        self._want: dict[str, dict[str, str]] = {}  # shard key -> name -> variant
        self._why: dict[str, dict[str, str]] = {}  # shard key -> name -> why taken off
        self._next_sid = 0
        self._loads = 0
        self._evictions = 0
        self._endpoints: tuple[Endpoint, ...] = ()
        self.calls = ModelCalls(
            clock=backend.now,
            on_change=self._refresh_endpoints,
            call_timeout_s=call_timeout_s,
            retry_s=retry_s,
            retry_max_s=retry_max_s,
        )
        backend.fleet.launch_tags = self._launch_tags
        backend.on_refresh = self._refreshed
        for p in table.pools:  # a shard's launches take its pool's delay and health grace
            backend.launch_delay_s.setdefault(p.key, p.launch_delay_s)

    # --- the PlacementBackend protocol ----------------------------------------------------

    def observe(self) -> tuple[Shard, ...]:
        """Each shard with a live instance: its pool, the members it should hold (as this
        process set them, else as its instances' tags say) and its live instances."""
        self.backend.start()  # the refresher drives the model calls
        return self._shards(self._live())[0]

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        """Execute the actions, unloads first: model tags at once, launches and retirements
        through the backend's converge (one decision: its launch tokens repeat on a retry).
        Every action is checked before anything changes (ValueError or KeyError)."""
        live = self._live()
        with self._lock:
            shards, keys = self._shards_locked(live)
            target = {keys[sh.sid]: sh.replicas for sh in shards}
            for a in actions:
                self._check_locked(a, keys)
            for a in sorted(actions, key=lambda a: a.kind != "unload"):  # free memory first
                if a.kind == "create":
                    key = shard_key(self.table.pools[a.pool].key, self._next_sid)
                    self._next_sid += 1
                    self._want[key] = self._names(dict(a.members))
                    self._why[key] = {}
                    self._loads += len(a.members)
                    self.backend.launch_delay_s[key] = self.table.pools[a.pool].launch_delay_s
                    target[key] = a.count
                    continue
                key = keys[a.sid]
                name = self.table.fleet.models[a.model].name if a.model >= 0 else ""
                if a.kind == "launch":
                    target[key] += a.count
                elif a.kind == "retire":
                    target[key] = max(0, target[key] - a.count)
                elif a.kind == "unload":
                    if self._want[key].pop(name, None) is not None:
                        self._why[key][name] = a.reason
                        self._evictions += a.reason == "evict"
                else:  # load
                    self._want[key][name] = self.table.choices[a.choice].variant
                    self._why[key].pop(name, None)
                    self._loads += 1
            for key in [k for k in self._want if k not in target]:
                del self._want[key]  # no live instance and no launch: the shard is gone
                self._why.pop(key, None)
            wants = {k: dict(v) for k, v in self._want.items()}
        self._sync_tags(live, wants)
        self.backend.converge(target, intent=f"{self.run_id}:{now:.3f}")
        self._refresh_endpoints()

    # --- serving and accounting -----------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """Ready instances of shards, priced by their table pool, each with the models
        confirmed loaded there in the variant its shard wants (no I/O)."""
        self.backend.start()
        with self._lock:
            return list(self._endpoints)

    def totals(self) -> dict[str, int]:
        """Table pool key -> live instances of shards (what the fleet's cost rate counts)."""
        out: dict[str, int] = {}
        for key, n in self.backend.fleet_totals().items():
            parsed = parse_shard(key)
            if parsed is not None:
                out[parsed[0]] = out.get(parsed[0], 0) + n
        return out

    @property
    def loads(self) -> int:
        with self._lock:
            return self._loads

    @property
    def evictions(self) -> int:
        with self._lock:
            return self._evictions

    def failed(self) -> dict[str, int]:
        return self.calls.failed()

    def failures(self) -> list[CallFailure]:
        return self.calls.failures()

    def model_events(self) -> list[ModelEvent]:
        return self.calls.events()

    def now(self) -> float:
        return self.backend.now()

    def close(self) -> None:
        """Stop the background work (instances keep running: they are the deployment's)."""
        self.backend.close()
        self.calls.close()

    # --- internals ------------------------------------------------------------------------

    def _live(self) -> list[Ec2Instance]:
        return [i for i in self.backend.instances() if i.live]

    def _shards(self, live: list[Ec2Instance]) -> tuple[tuple[Shard, ...], dict[int, str]]:
        with self._lock:
            return self._shards_locked(live)

    def _shards_locked(self, live: list[Ec2Instance]) -> tuple[tuple[Shard, ...], dict[int, str]]:
        """The shards of `live` (sid -> key too); a shard seen for the first time (adopted)
        takes its members from its newest instance's tags."""
        groups: dict[str, list[Ec2Instance]] = {}
        for inst in live:
            parsed = parse_shard(inst.pool)
            if parsed is not None and parsed[0] in self._keys:
                groups.setdefault(inst.pool, []).append(inst)
                self._next_sid = max(self._next_sid, parsed[1] + 1)
        shards, keys = [], {}
        for key, insts in groups.items():
            base, sid = parse_shard(key)  # type: ignore[misc]  # grouped by it above
            if key not in self._want:  # adopted: its models and its pool's launch delay
                newest = max(insts, key=lambda i: (i.launch_time, i.instance_id))
                # a model or variant the table lacks (no longer deployed) is dropped: its tag
                # goes at the next apply and the servers unload it
                self._want[key] = self._names(dict(self._members(dict(newest.models))))
                self._why[key] = {}
                delay = self.table.pools[self._keys[base]].launch_delay_s
                self.backend.launch_delay_s.setdefault(key, delay)
            members = self._members(self._want[key])
            shards.append(Shard(self._keys[base], members, len(insts), sid))
            keys[sid] = key
        return tuple(sorted(shards, key=lambda sh: sh.sid)), keys

    def _members(self, want: dict[str, str]) -> tuple[tuple[int, int], ...]:
        """(model, choice) of the wanted names the table knows (others are unloaded)."""
        t = self.table
        index = {m.name: j for j, m in enumerate(t.fleet.models)}
        out = []
        for name, variant in want.items():
            m = index.get(name)
            cs = (
                [c for c in t.model_choices[m] if t.choices[c].variant == variant]
                if m is not None
                else []
            )
            if cs:
                out.append((m, cs[0]))
        return tuple(sorted(out))

    def _names(self, members: dict[int, int]) -> dict[str, str]:
        t = self.table
        return {t.fleet.models[m].name: t.choices[c].variant for m, c in sorted(members.items())}

    def _check_locked(self, a: PlacementAction, keys: dict[int, str]) -> None:
        t = self.table
        if a.kind not in KINDS:
            raise ValueError(f"unknown placement action {a.kind!r}")
        if a.kind == "create":
            if not 0 <= a.pool < len(t.pools):
                raise ValueError(f"create: no pool {a.pool} in the table")
            pairs = list(a.members)
        elif a.sid not in keys:
            raise KeyError(f"{a.kind}: no running shard {a.sid}")
        else:
            pairs = [(a.model, a.choice)] if a.kind == "load" else []
        if a.kind in ("create", "launch", "retire") and a.count < 0:
            raise ValueError(f"{a.kind}: negative count {a.count}")
        if a.kind == "unload" and not 0 <= a.model < t.n_models:
            raise ValueError(f"unload: no model {a.model}")
        for m, c in pairs:
            if not 0 <= m < t.n_models or c not in t.model_choices[m]:
                raise ValueError(f"{a.kind}: model {m} cannot take choice {c}")

    def _launch_tags(self, pool: str) -> dict[str, str]:
        with self._lock:
            want = dict(self._want.get(pool, {}))
        return {f"{T.MODEL_PREFIX}{n}": v for n, v in want.items()}

    def _sync_tags(self, live: list[Ec2Instance], wants: dict[str, dict[str, str]]) -> None:
        """Each live shard instance's model tags made what its shard wants (idempotent:
        describe lags, so a tag just written may be written again)."""
        client = self.backend.fleet.client
        for inst in live:
            want = wants.get(inst.pool)
            if want is None:
                continue
            have = dict(inst.models)
            put = [
                {"Key": f"{T.MODEL_PREFIX}{n}", "Value": v}
                for n, v in want.items()
                if have.get(n) != v
            ]
            drop = [{"Key": f"{T.MODEL_PREFIX}{n}"} for n in have if n not in want]
            if put:
                client.create_tags(Resources=[inst.instance_id], Tags=put)
            if drop:
                client.delete_tags(Resources=[inst.instance_id], Tags=drop)

    def _refreshed(self, eps: list[Endpoint]) -> None:
        """After each fleet refresh: calls toward each ready server's models, new endpoints.
        A shard not known yet (a restarted controller's, before its first step) is adopted
        from its instances' tags first."""
        with self._lock:
            unknown = any(
                e.pool not in self._want and (parse_shard(e.pool) or ("", 0))[0] in self._keys
                for e in eps
            )
        if unknown:
            self._shards(self._live())
        with self._lock:
            wants = {k: dict(v) for k, v in self._want.items()}
            whys = {k: dict(v) for k, v in self._why.items()}
        targets = []
        for e in eps:
            if e.pool in wants:
                u = urlsplit(e.url)
                if u.hostname and u.port:
                    targets.append(
                        Target(
                            e.instance_id, e.pool, u.hostname, u.port, wants[e.pool], whys[e.pool]
                        )
                    )
        self.calls.start(targets, alive={e.instance_id for e in eps})
        self._refresh_endpoints(eps)

    def _refresh_endpoints(self, eps: list[Endpoint] | None = None) -> None:
        if eps is None:
            eps = self.backend.endpoints()
        with self._lock:
            out = []
            for e in eps:
                want = self._want.get(e.pool)
                parsed = parse_shard(e.pool)
                if want is None or parsed is None:
                    continue
                held = self.calls.serving(e.instance_id, want)
                out.append(
                    replace(
                        e,
                        pool=parsed[0],
                        models=frozenset(held),
                        variants=tuple(sorted(held.items())),
                    )
                )
            self._endpoints = tuple(out)
