"""EC2 fleet of one deployment: launch template, launch, observe and terminate, all by tags.

Level-triggered: `AwsBackend.converge` observes the tagged instances, asks the pure reconciler
every backend shares (`hybridserve.reconcile`) for actions and executes them. Idempotent by construction: the launch template is looked up by
name before it is created, `run_instances` carries a client token derived from the deployment,
pool and observed fleet (a retried call cannot launch twice), and everything is found again by
tags, so a restarted controller adopts the fleet it finds. Throttling and eventual consistency
are retried by botocore's adaptive mode with backoff and jitter.

Readiness: EC2's `running` says the VM booted, not that the model is loaded. With a probe (the
deployment default, `ec2.readiness: health`), an instance is ready only once its model server
answers `GET /v2/health/ready` with 200; until then it is pending. Probes run concurrently with
a short timeout and their results are cached for about a second. `endpoints()` (the router's
view, read every 100 ms on its event loop) never does I/O itself: a background thread refreshes
the snapshot it returns.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.fleet import Action, Endpoint, FleetView, PoolState
from hybridserve.logs import event
from hybridserve.reconcile import Observed, reconcile

log = logging.getLogger("hybridserve.aws.ec2")

SPOT_FALLBACK_ERRORS = {
    "InsufficientInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientCapacity",
}


LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class Ec2Instance:
    """An instance found by its tags, and the address the router reaches it on."""

    instance_id: str
    pool: str  # "type/market"
    state: str  # pending | running | stopping | stopped | shutting-down | terminated
    launch_time: float  # epoch seconds
    interrupted: bool = False  # a spot interruption notice or a failed health check: replace it
    private_ip: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES and not self.interrupted

    def observed(self) -> Observed | None:
        """What the reconciler sees (None once shutting down or terminated: gone already)."""
        if self.state not in (*LIVE_STATES, "stopping", "stopped"):
            return None
        dead = self.state in ("stopping", "stopped") or self.interrupted
        return Observed(
            self.instance_id, self.pool, self.state == "pending", self.launch_time, dead
        )


@dataclass
class Ec2Fleet:
    deployment: str
    client: Any
    image_id: str
    user_data: str = ""
    security_group_ids: tuple[str, ...] = ()
    instance_profile_arn: str | None = None
    subnet_id: str | None = None
    fallbacks: list[str] = field(default_factory=list)  # spot launches that went on-demand

    @property
    def template_name(self) -> str:
        return T.launch_template_name(self.deployment)

    def ensure_launch_template(self) -> str:
        """The deployment's launch template id, created once (found by name afterwards)."""
        try:
            found = self.client.describe_launch_templates(LaunchTemplateNames=[self.template_name])
            return found["LaunchTemplates"][0]["LaunchTemplateId"]
        except self.client.exceptions.ClientError as e:
            if "NotFound" not in e.response["Error"]["Code"]:
                raise
        data: dict[str, Any] = {
            "ImageId": self.image_id,
            "UserData": base64.b64encode(self.user_data.encode()).decode(),
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE)),
                }
            ],
            "MetadataOptions": {"HttpTokens": "required"},  # IMDSv2 only
        }
        if self.security_group_ids:
            data["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile_arn:
            data["IamInstanceProfile"] = {"Arn": self.instance_profile_arn}
        resp = self.client.create_launch_template(
            LaunchTemplateName=self.template_name,
            LaunchTemplateData=data,
            TagSpecifications=[
                {
                    "ResourceType": "launch-template",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_TEMPLATE)),
                }
            ],
        )
        return resp["LaunchTemplate"]["LaunchTemplateId"]

    def observe(self) -> list[Ec2Instance]:
        """Every instance tagged for this deployment that is not gone."""
        out = []
        pages = self.client.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{T.DEPLOYMENT}", "Values": [self.deployment]},
                {"Name": f"tag:{T.ROLE}", "Values": [T.ROLE_INSTANCE]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )
        for page in pages:
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    tags = T.as_dict(inst.get("Tags"))
                    reason = (inst.get("StateReason") or {}).get("Code", "")
                    out.append(
                        Ec2Instance(
                            instance_id=inst["InstanceId"],
                            pool=tags.get(T.POOL, f"{inst['InstanceType']}/on_demand"),
                            state=inst["State"]["Name"],
                            launch_time=inst["LaunchTime"].timestamp(),
                            interrupted=tags.get("hybridserve:interrupted") == "true"
                            or reason.startswith("Server.SpotInstance"),
                            private_ip=inst.get("PrivateIpAddress"),
                        )
                    )
        return out

    def launch(self, pool: str, count: int, token: str) -> list[str]:
        """Launch `count` instances of `pool` (type/market); spot falls back to on-demand."""
        itype, _, market = pool.partition("/")
        template = self.ensure_launch_template()
        args: dict[str, Any] = {
            "LaunchTemplate": {"LaunchTemplateId": template},
            "InstanceType": itype,
            "MinCount": count,
            "MaxCount": count,
            "ClientToken": token,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE, pool=pool)),
                }
            ],
        }
        if self.subnet_id:
            args["SubnetId"] = self.subnet_id
        if market == "spot":
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        try:
            resp = self.client.run_instances(**args)
        except self.client.exceptions.ClientError as e:
            if market != "spot" or e.response["Error"]["Code"] not in SPOT_FALLBACK_ERRORS:
                raise
            self.fallbacks.append(pool)
            od = f"{itype}/on_demand"
            args.pop("InstanceMarketOptions")
            args["ClientToken"] = token + "-od"
            args["TagSpecifications"][0]["Tags"] = T.tag_list(
                T.tags_for(self.deployment, T.ROLE_INSTANCE, pool=od)
            )
            resp = self.client.run_instances(**args)
        return [i["InstanceId"] for i in resp["Instances"]]

    def terminate(self, instance_ids: list[str]) -> None:
        if instance_ids:
            self.client.terminate_instances(InstanceIds=list(instance_ids))


def _token(deployment: str, pool: str, observed: list[Ec2Instance], count: int) -> str:
    """Same fleet, same decision, same token: a retry of this launch cannot launch twice."""
    ids = ",".join(sorted(i.instance_id for i in observed if i.pool == pool))
    return hashlib.sha256(f"{deployment}|{pool}|{count}|{ids}".encode()).hexdigest()[:48]


def http_ready_probe(timeout_s: float = 0.5) -> Callable[[str], bool]:
    """Readiness from a model server: `GET <base url>/v2/health/ready` answers 200.

    Proxies from the environment are bypassed: the router reaches instances directly on their
    private addresses, and a proxy's own answer must not pass for the server's."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe(base_url: str) -> bool:
        try:
            with opener.open(f"{base_url}/v2/health/ready", timeout=timeout_s) as r:
                return r.status == 200
        except (OSError, http.client.HTTPException, ValueError):  # HTTPError is an OSError
            return False

    return probe


def private_url(port: int) -> Callable[[Ec2Instance], str | None]:
    """The model server's base URL on the instance's private address (None without one)."""

    def url_of(inst: Ec2Instance) -> str | None:
        ip = getattr(inst, "private_ip", None)
        return f"http://{ip}:{port}" if ip else None

    return url_of


class AwsBackend:
    """The Backend protocol on EC2: observe by tags, converge through the reconciler.

    `probe` (e.g. `http_ready_probe()`) makes readiness the model server's: a running instance
    is ready only when `probe(url_of(instance))` is true; None keeps EC2's `running` state as
    readiness. `url_of` maps an instance to its server's base URL (default: its private IP and
    `port`); tests point it at a local server. Probe results are cached for `health_ttl_s`.
    """

    def __init__(
        self,
        fleet: Ec2Fleet,
        *,
        launch_delay_s: Mapping[str, float] | None = None,
        probe: Callable[[str], bool] | None = None,
        port: int = 8000,
        url_of: Callable[[Ec2Instance], str | None] | None = None,
        health_ttl_s: float = 1.0,
        refresh_s: float = 1.0,
        max_probes: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if health_ttl_s < 0 or refresh_s <= 0 or max_probes < 1:
            raise ValueError(
                f"health_ttl_s must be >= 0, refresh_s > 0 and max_probes >= 1 "
                f"(got {health_ttl_s}, {refresh_s}, {max_probes})"
            )
        self.fleet = fleet
        self.launch_delay_s = dict(launch_delay_s or {})
        self.probe = probe
        self.url_of = url_of or private_url(port)
        self.health_ttl_s = health_ttl_s
        self.refresh_s = refresh_s
        self.max_probes = max_probes
        self.clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, tuple[str, bool, float]] = {}  # id -> (url, ok, when; monotonic)
        self._endpoints: tuple[Endpoint, ...] = ()  # the last refresh's, served without I/O
        self._totals: dict[str, int] = {}  # the last refresh's live instances per pool
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False

    def now(self) -> float:
        return self.clock()

    # --- readiness ------------------------------------------------------------------------

    def ready_ids(self, instances: list[Ec2Instance]) -> set[str]:
        """Ids of the instances that are ready: running, and (with a probe) answering health.

        Stale results (older than `health_ttl_s`, or for another URL) are probed again,
        concurrently; the call takes at most about one probe timeout."""
        running = [i for i in instances if i.live and i.state == "running"]
        if self.probe is None:
            return {i.instance_id for i in running}
        now = time.monotonic()
        urls = {i.instance_id: self.url_of(i) for i in running}
        with self._lock:
            cached = dict(self._health)
        due = [
            (iid, url)
            for iid, url in urls.items()
            if url
            and (
                iid not in cached
                or cached[iid][0] != url
                or now - cached[iid][2] > self.health_ttl_s
            )
        ]
        results = self._probe_all([url for _, url in due]) if due else []
        done = time.monotonic()
        with self._lock:
            for (iid, url), ok in zip(due, results, strict=True):
                was = self._health.get(iid)
                self._health[iid] = (url, ok, done)
                if was is None or was[1] != ok:
                    event(log, "aws.instance_health", instance=iid, url=url, ready=ok)
            for iid in set(self._health) - set(urls):  # gone, or no longer running
                del self._health[iid]
            cached = dict(self._health)
        return {iid for iid, url in urls.items() if url and iid in cached and cached[iid][1]}

    def _probe_all(self, urls: list[str]) -> list[bool]:
        """Probe concurrently on a small pool (inline once closed or for a single URL)."""
        probe = self.probe
        assert probe is not None
        with self._lock:
            if self._executor is None and not self._closed and len(urls) > 1:
                self._executor = ThreadPoolExecutor(
                    self.max_probes, thread_name_prefix="hybridserve-probe"
                )
            pool = self._executor
        if pool is None:
            return [probe(u) for u in urls]
        try:
            return list(pool.map(probe, urls))
        except (RuntimeError, CancelledError):  # closed meanwhile
            return [probe(u) for u in urls]

    # --- the Backend protocol -------------------------------------------------------------

    def observe(self) -> FleetView:
        """Ready instances, and pending ones (booting, or running but not yet health-ready)
        with the seconds left of their pool's launch delay (0 when overdue)."""
        now = self.now()
        instances = self.fleet.observe()
        ready = self.ready_ids(instances)
        pools: dict[str, PoolState] = {}
        for inst in instances:
            if not inst.live:
                continue
            st = pools.get(inst.pool, PoolState())
            if inst.instance_id in ready:
                pools[inst.pool] = PoolState(st.ready + 1, st.pending_ready_in_s)
            else:
                eta = max(0.0, inst.launch_time + self.launch_delay_s.get(inst.pool, 90.0) - now)
                pools[inst.pool] = PoolState(st.ready, (*st.pending_ready_in_s, eta))
        return FleetView(pools)

    def plan_actions(self, target: Mapping[str, int]) -> tuple[list[Ec2Instance], list[Action]]:
        """The instances found and the actions `reconcile` takes them to `target` with."""
        found = self.fleet.observe()
        seen = [o for o in (i.observed() for i in found) if o is not None]
        return found, reconcile(target, seen, self.now())

    def converge(self, target: Mapping[str, int], *, dry_run: bool = False) -> list[Action]:
        """Execute the plan: one terminate call for every retirement, one launch call (with
        its idempotency token) per pool; returns the actions with the ids EC2 gave."""
        found, actions = self.plan_actions(target)
        retire = [a for a in actions if a.kind == "retire"]
        launches: dict[str, list[Action]] = {}
        for a in actions:
            if a.kind == "launch":
                launches.setdefault(a.pool, []).append(a)
        if retire and not dry_run:
            self.fleet.terminate([a.instance_id for a in retire])
        done = list(retire)
        for pool, todo in launches.items():
            if dry_run:
                done += [replace(a, instance_id="(dry-run)") for a in todo]
                continue
            token = _token(self.fleet.deployment, pool, found, len(todo))
            ids = self.fleet.launch(pool, len(todo), token)
            done += [replace(a, instance_id=i) for a, i in zip(todo, ids, strict=False)]
        if done and not dry_run:
            self._wake.set()  # the router sees retirements within one refresh, not a TTL later
        return done

    # --- serving --------------------------------------------------------------------------

    def refresh(self) -> list[Endpoint]:
        """Observe and probe now (I/O), and store the ready endpoints for `endpoints()`."""
        instances = self.fleet.observe()
        ready = self.ready_ids(instances)
        eps = []
        totals: dict[str, int] = {}
        for inst in sorted(instances, key=lambda i: (i.launch_time, i.instance_id)):
            if inst.live:
                totals[inst.pool] = totals.get(inst.pool, 0) + 1
            url = self.url_of(inst)
            if inst.instance_id in ready and url:
                eps.append(Endpoint(inst.instance_id, inst.pool, url))
        with self._lock:
            self._endpoints, self._totals = tuple(eps), totals
        return eps

    def endpoints(self) -> list[Endpoint]:
        """Ready instances from the last background refresh (no I/O on the caller's thread);
        the first call starts the refresher thread."""
        self.start()
        with self._lock:
            return list(self._endpoints)

    def fleet_totals(self) -> dict[str, int]:
        """Live (pending or running) instances per pool as of the last refresh (no I/O): what
        is being billed, for the router's cost gauge."""
        self.start()
        with self._lock:
            return dict(self._totals)

    def start(self) -> None:
        """Start the background refresher (idempotent; no-op once closed)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="hybridserve-aws-endpoints", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # an API hiccup must not stop refreshing
                log.exception("refreshing EC2 endpoints failed")
            self._wake.wait(self.refresh_s)
            self._wake.clear()

    def close(self) -> None:
        """Stop the refresher and the probe threads; idempotent. Instances are left running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, executor = self._thread, self._executor
            self._executor = None
        self._stop.set()
        if thread is not None:
            self._wake.set()
            if thread is not threading.current_thread():
                thread.join(10)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
