"""The Backend protocol on EC2 (`AwsBackend`): observe the deployment's fleet by its tags,
converge it through the reconciler, and serve the router its ready endpoints.

Level-triggered: `AwsBackend.converge` observes the tagged instances, asks the pure reconciler
every backend shares (`hybridserve.reconcile`) for actions and executes them on the EC2 fleet
(`ec2.Ec2Fleet`), one launch call per pool with an idempotency token.

Readiness: EC2's `running` says the VM booted, not that the model is loaded. With a probe (the
deployment default, `ec2.readiness: health`), an instance is ready only once its model server
answers `GET /v2/health/ready` with 200; until then it is pending. Probes run concurrently with
a short timeout and their results are cached for about a second. `endpoints()` (the router's
view, read every 100 ms on its event loop) never does I/O itself: a background thread refreshes
the snapshot it returns.

Replacement: an instance not ready within its grace (`HEALTH_GRACE_FACTOR` times its pool's
launch delay) is unhealthy; a spot instance with an interruption notice is interrupted; one
launched from an older launch template is outdated (rolled with a surge, `hybridserve.rollout`).
Each is retired and its share launched again, counted in `replaced` and logged. Retiring drains
(`hybridserve.aws.drain`): out of routing first, terminated once the router's requests finished.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import replace

from botocore.exceptions import BotoCoreError, ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.drain import DRAIN_S, Drain
from hybridserve.aws.ec2 import LIVE_STATES, Ec2Fleet, Ec2Instance
from hybridserve.fleet import Action, Endpoint, FleetView, PoolState
from hybridserve.logs import event
from hybridserve.reconcile import reconcile
from hybridserve.rollout import Member, roll

LAUNCH_BACKOFF_S = 30.0  # after a pool's first failed launch; doubles per failure in a row
LAUNCH_BACKOFF_MAX_S = 600.0
# an instance that is not health-ready within this many launch delays of its launch is replaced
# (2x: a boot that takes twice as long as the pool's measured launch delay is not booting)
HEALTH_GRACE_FACTOR = 2.0
log = logging.getLogger("hybridserve.aws.ec2")  # the name it had before the split


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
        max_instances: int | None = None,
        drain_s: float = DRAIN_S,
        on_refresh: Callable[[list[Endpoint]], None] | None = None,
    ) -> None:
        if health_ttl_s < 0 or refresh_s <= 0 or max_probes < 1 or drain_s < 0:
            raise ValueError(
                f"health_ttl_s and drain_s must be >= 0, refresh_s > 0 and max_probes >= 1 "
                f"(got {health_ttl_s}, {drain_s}, {refresh_s}, {max_probes})"
            )
        self.fleet = fleet
        self.launch_delay_s = dict(launch_delay_s or {})
        self.probe = probe
        self.url_of = url_of or private_url(port)
        self.health_ttl_s = health_ttl_s
        self.refresh_s = refresh_s
        self.max_probes = max_probes
        self.clock = clock
        self.max_instances = max_instances  # the fleet cap, enforced again at reconcile
        # called with the ready endpoints after each refresh, off the lock (the placement
        # backend takes its servers toward their models from there)
        self.on_refresh = on_refresh
        self.drain = Drain(fleet, drain_s, self.now)
        self.replaced: dict[str, int] = {}  # reason (unhealthy, interrupted, outdated) -> count
        self._condemned: set[str] = set()  # ids already counted in `replaced`
        self.noticed: set[str] = set()  # instances with a spot notice taken in by this process
        self._lock = threading.Lock()
        self._health: dict[str, tuple[str, bool, float]] = {}  # id -> (url, ok, when; monotonic)
        self._endpoints: tuple[Endpoint, ...] = ()  # the last refresh's, served without I/O
        self._totals: dict[str, int] = {}  # the last refresh's live instances per pool
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        # per pool: launch calls failed in a row, and when (monotonic) the next may be made
        self.launch_failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}

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
        instances = self._observe()
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

    def instances(self) -> list[Ec2Instance]:
        """The deployment's tagged instances (I/O), spot notices taken in marked interrupted."""
        return self._observe()

    def _observe(self) -> list[Ec2Instance]:
        """The tagged instances, with the notices this process has taken in marked interrupted
        even before a describe shows their tag (tags are eventually consistent)."""
        found = self.fleet.observe()
        with self._lock:
            noticed = set(self.noticed)
        return [replace(i, interrupted=True) if i.instance_id in noticed else i for i in found]

    def notice(self, instance_ids: list[str]) -> list[str]:
        """A spot interruption notice for some instances: those of this fleet still live are
        tagged interrupted (every router drains them on its next refresh) and left out from
        now on; returns them. `Controller.on_notice` then launches their replacements."""
        live = {i.instance_id for i in self.fleet.observe() if i.live}
        ours = sorted(set(instance_ids) & live)
        if ours:
            with self._lock:
                self.noticed.update(ours)
            self.fleet.mark(ours, T.INTERRUPTED, "true")
            for iid in ours:
                event(log, "aws.spot_notice", instance=iid)
            self._wake.set()
        return ours

    def grace_s(self, pool: str) -> float:
        return HEALTH_GRACE_FACTOR * self.launch_delay_s.get(pool, 90.0)

    def plan_actions(
        self, target: Mapping[str, int], *, count: bool = False
    ) -> tuple[list[Ec2Instance], list[Action]]:
        """The instances found and the actions `reconcile` takes them to `target` with.

        Besides EC2's own states, an instance is retired (and its share launched again) when
        it is interrupted, draining, unhealthy past its grace, or outdated once the roll has
        ready replacements for it. With `count` (a converge that acts) each replacement is
        counted and logged."""
        found = self._observe()
        now = self.now()
        live = [i for i in found if i.live]
        ready = self.ready_ids(found) if self.probe is not None else None
        unhealthy = {
            i.instance_id
            for i in live
            if ready is not None
            and i.instance_id not in ready
            and now - i.launch_time > self.grace_s(i.pool)
        }
        current = self.fleet.launch_digest()
        members = [
            Member(
                i.instance_id,
                i.pool,
                i.template == current,
                i.state == "running" if ready is None else i.instance_id in ready,
            )
            for i in live
            if i.instance_id not in unhealthy
        ]
        room = None if self.max_instances is None else self.max_instances - len(live)
        target, outdated = roll(target, members, room=room)
        if count:
            for i in live:
                if i.instance_id in unhealthy:
                    self._count(i, "unhealthy")
                elif i.instance_id in outdated:
                    self._count(i, "outdated")
            for i in found:
                if i.interrupted and i.state in LIVE_STATES:
                    self._count(i, "interrupted")
        condemned = unhealthy | outdated
        seen = [o for o in (i.observed(i.instance_id in condemned) for i in found) if o is not None]
        return found, reconcile(target, seen, now, max_instances=self.max_instances)

    def _count(self, inst: Ec2Instance, why: str) -> None:
        """Count and log a replacement once per instance (plan_actions runs on every step)."""
        if inst.instance_id in self._condemned:
            return
        self._condemned.add(inst.instance_id)
        self.replaced[why] = self.replaced.get(why, 0) + 1
        event(log, "aws.instance_replaced", instance=inst.instance_id, pool=inst.pool, reason=why)

    def launch_token(self, pool: str, observed: list[Ec2Instance], count: int, intent: str) -> str:
        """The ClientToken of one launch: the same intent (a decision, retried) on the same
        fleet gets the same token, so a retry cannot launch twice; any other decision gets
        another. EC2 keeps a token for 24 h and answers it with the old reservation even when
        its instances are gone, so a token from the fleet alone would make 1 -> 0 -> 1 launch
        nothing."""
        ids = ",".join(sorted(i.instance_id for i in observed if i.pool == pool))
        key = f"{self.fleet.deployment}|{intent}|{pool}|{count}|{ids}"
        return hashlib.sha256(key.encode()).hexdigest()[:48]

    def converge(
        self, target: Mapping[str, int], *, dry_run: bool = False, intent: str | None = None
    ) -> list[Action]:
        """Execute the plan: one terminate call for every retirement, one launch call (with
        its idempotency token) per pool; returns the actions with the ids EC2 gave. `intent`
        names the decision (the Controller's: its run and step); without one, this call is a
        decision of its own (`scale`, `deploy`)."""
        intent = intent if intent is not None else uuid.uuid4().hex
        found, actions = self.plan_actions(target, count=not dry_run)
        retire = [a for a in actions if a.kind == "retire"]
        launches: dict[str, list[Action]] = {}
        for a in actions:
            if a.kind == "launch":
                launches.setdefault(a.pool, []).append(a)
        if retire and not dry_run:
            self.drain.retire(found, {a.instance_id for a in retire}, self._may_serve)
        done = list(retire)
        for pool, todo in launches.items():
            if dry_run:
                done += [replace(a, instance_id="(dry-run)") for a in todo]
                continue
            if time.monotonic() < self.retry_at.get(pool, 0.0):
                continue  # backing off after a failure: the next decision asks again
            token = self.launch_token(pool, found, len(todo), intent)
            try:
                ids = self.fleet.launch(pool, len(todo), token)
            except (ClientError, BotoCoreError) as e:  # this pool only: the others go on
                self._launch_failed(pool, e)
                continue
            self.launch_failures.pop(pool, None)
            self.retry_at.pop(pool, None)
            done += [replace(a, instance_id=i) for a, i in zip(todo, ids, strict=False)]
        if done and not dry_run:
            self._wake.set()  # the router sees retirements within one refresh, not a TTL later
        return done

    def _may_serve(self, inst: Ec2Instance) -> bool:
        """Whether the router may be sending it requests: health-ready when last probed (or,
        without a probe, running); an interrupted one served until its notice."""
        if self.probe is None or inst.interrupted:
            return True
        with self._lock:
            seen = self._health.get(inst.instance_id)
        return seen is not None and seen[1]

    def _launch_failed(self, pool: str, e: Exception) -> None:
        n = self.launch_failures[pool] = self.launch_failures.get(pool, 0) + 1
        wait = min(LAUNCH_BACKOFF_MAX_S, LAUNCH_BACKOFF_S * 2 ** (n - 1))
        self.retry_at[pool] = time.monotonic() + wait
        code = e.response["Error"]["Code"] if isinstance(e, ClientError) else type(e).__name__
        log.warning("launch in %s failed (%s, %d in a row); next try in %g s", pool, code, n, wait)

    # --- serving --------------------------------------------------------------------------

    def refresh(self) -> list[Endpoint]:
        """Observe and probe now (I/O), and store the ready endpoints for `endpoints()`."""
        instances = self._observe()
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
        if self.on_refresh is not None:
            self.on_refresh(eps)
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
        self.drain.close()
        self._stop.set()
        if thread is not None:
            self._wake.set()
            if thread is not threading.current_thread():
                thread.join(10)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
