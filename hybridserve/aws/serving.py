"""`hybridserve serve` in AWS mode: the router in front of a deployment made by `hybridserve deploy`.

The fleet is the deployment's tagged EC2 instances (`AwsBackend`; ready once the model server
answers its health check, unless `ec2.readiness: state`), spilled requests go to the
deployment's function through its alias, and the Controller is the one `controller run` builds,
fed with every router's measured arrivals (published to S3, aws/arrivals.py) instead of a
trace, and stepped only by the router that holds the deployment's lease (`LeasedLoop`). After every control step the
router's own metrics over the interval (arrival rate, spill fraction, SLO attainment, ready
instances, Lambda cold starts) and the controller's go to CloudWatch in `hybridserve/<name>`.
Publishing is actuation, so it lives here beside the loop, never in the planner.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hybridserve.arrivals import ArrivalMerger, ArrivalWindow
from hybridserve.aws import resources as R
from hybridserve.aws.arrivals import PUBLISH_EVERY_S, S3Arrivals, replica_id
from hybridserve.aws.metrics import RouterIntervals, controller_metrics, router_counters
from hybridserve.config_base import ConfigError
from hybridserve.controller import Controller
from hybridserve.deployment import DeploymentConfig
from hybridserve.fleet import Decision
from hybridserve.live import LiveLoop
from hybridserve.logs import event
from hybridserve.router_stack import RouterStack, fleet_usd_per_s, router_config
from hybridserve.serve_config import RouterOptions

log = logging.getLogger("hybridserve.aws.serving")

MANIFEST = "manifest.json"
TAKEN = "arrivals_taken"  # in the saved state: router -> the last second the holder counted


class PublishingLoop(LiveLoop):
    """The live loop, plus the interval's metrics to `publish` after each step (failed or not).

    A publish failure is logged and never stops the loop: metrics are not worth a missed
    control step."""

    def __init__(
        self,
        controller: Controller,
        router: Any,
        publish: Callable[[dict[str, float]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(controller, router.take_counts)
        self.router = router
        self.publish = publish
        self.clock = clock
        self.intervals = RouterIntervals(router_counters(router.metrics), clock())
        self.published: list[dict[str, float]] = []  # the last few, for inspection

    def step(self) -> Decision:
        d = None
        try:
            d = super().step()
            return d
        finally:
            self.publish_interval(d)

    def publish_interval(self, decision: Decision | None) -> dict[str, float]:
        """The controller's metrics (when it decided) overlaid with the router's measured ones."""
        values: dict[str, float] = {}
        if decision is not None:
            values.update(controller_metrics(decision, decision.inputs.observed_rate))
        values.update(self.intervals.take(router_counters(self.router.metrics), self.clock()))
        values["ReadyInstances"] = float(len(self.router.ups))
        try:
            self.publish(values)
        except Exception:
            log.exception("publishing CloudWatch metrics failed")
        self.published.append(values)
        del self.published[:-20]
        return values


class LeasedLoop(PublishingLoop):
    """The loop of one router among several: it always publishes the router's arrivals
    (hybridserve/aws/arrivals.py), and it steps the Controller only while it holds the
    deployment's lease (aws/lease.py), on every router's arrivals summed. On taking the lease
    it resumes from the state the last holder saved, which also says up to which second it
    had counted each router's arrivals; after every step it saves its own."""

    def __init__(
        self,
        build: Callable[[], Controller],
        router: Any,
        publish: Callable[[dict[str, float]], None],
        *,
        store: Any,
        lease: Any,
        load: Callable[[], dict[str, Any] | None],
        save: Callable[[dict[str, Any]], None],
        replica: str,
        source: str = "controller state",
    ) -> None:
        super().__init__(build(), router, publish)
        self.build, self.take_counts = build, self.arrivals
        self.store, self.lease, self.load, self.save = store, lease, load, save
        self.source = source
        self.window = ArrivalWindow(replica, max(600, 4 * self.controller.interval_s))
        self.merger = ArrivalMerger(stale_s=3 * self.publish_every_s)
        self.holding = False
        self.stats["passive_steps"] = 0

    def resume(self) -> None:
        """A fresh Controller from the saved state (if any), and the seconds it had counted."""
        self.controller = self.build()
        state = self.load()
        self.merger.taken = {}
        if state is not None:
            self.merger.taken = {str(k): int(v) for k, v in state.pop(TAKEN, {}).items()}
            self.controller.restore(state, source=self.source)

    @property
    def publish_every_s(self) -> float:
        return min(PUBLISH_EVERY_S, max(0.5, self.controller.interval_s / 4))

    def share(self) -> None:
        """This router's closed seconds out to the others (a failure waits for the next)."""
        self.window.publish(self.router.take_counts(), self.store, time.time())

    def arrivals(self) -> list[tuple[int, int]]:
        self.share()  # its own seconds up to now count in this step
        return self.merger.take(self.store.read_all(time.time()), time.time())

    def step(self) -> Decision | None:  # type: ignore[override]
        if not self.lease.hold():
            if self.holding:
                event(log, "controller.lease_lost", holder=self.lease.seen.get("holder"))
            self.holding = False
            self.stats["passive_steps"] += 1
            self.share()
            return None
        if not self.holding:  # taken over (or first start): resume where the holder was
            self.resume()
            self.holding = True
            event(log, "controller.lease_taken", step=self.controller.steps)
        d = super().step()
        self.save({**self.controller.state(), TAKEN: dict(self.merger.taken)})
        return d

    async def run(self) -> None:
        """Steps once per interval, and shares the router's arrivals more often between."""
        loop = asyncio.get_running_loop()
        next_step = loop.time() + self.controller.interval_s
        while True:
            await asyncio.sleep(max(0.0, min(self.publish_every_s, next_step - loop.time())))
            if loop.time() >= next_step:
                next_step += self.controller.interval_s
                self.start_warm_round(await asyncio.to_thread(self.safe_step))
                continue
            try:
                await asyncio.to_thread(self.share)
            except Exception:
                log.exception("publishing this router's arrivals failed; the next try is soon")


def deployment_metadata(cfg: DeploymentConfig, s3: Any) -> dict[str, Any]:
    """The model's V2 metadata, from the local artifact's manifest when the config's artifact
    directory is here, else from the manifest `deploy` uploaded to S3."""
    assert cfg.artifact is not None, "a one-model deployment"
    return artifact_metadata_at(Path(cfg.artifact), cfg.bucket, cfg.artifact_prefix, s3)


def artifact_metadata_at(local: Path, bucket: str, prefix: str, s3: Any) -> dict[str, Any]:
    """An artifact's V2 metadata: from `local`'s manifest when that directory is here, else
    from the manifest under `s3://bucket/prefix/` (a router without the artifact at hand)."""
    from botocore.exceptions import ClientError

    from predictors.artifact import artifact_metadata

    if (local / MANIFEST).is_file():
        return artifact_metadata(local)
    key = R.artifact_key(prefix, MANIFEST)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "error")
        raise ConfigError(
            f"artifact: no {MANIFEST} in {local} nor at s3://{bucket}/{key} ({code}); "
            "package the artifact or deploy first"
        ) from None
    with tempfile.TemporaryDirectory(prefix="hybridserve-manifest-") as d:
        (Path(d) / MANIFEST).write_bytes(body)
        return artifact_metadata(d)


class AwsStack(RouterStack):
    """Everything AWS-mode `hybridserve serve` runs: the router, the deployment's fleet and
    function, and the control loop. AWS credentials come from the standard chain only."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        *,
        endpoint_url: str | None = None,
        router: RouterOptions | None = None,
        clients: R.Clients | None = None,
        replica: str | None = None,
    ) -> None:
        super().__init__(router or RouterOptions())
        self.cfg = cfg
        self.replica = replica or replica_id()  # its name among the deployment's routers
        self.endpoint_url = endpoint_url
        self.clients = clients
        self.cloudwatch: Any = None

    def prepare(self) -> None:
        """Check the deployment exists, then build backend, invoker, router and loop."""
        from hybridserve.aws.deploy import (
            build_controller,
            deployment_scenario,
            fleet_backend,
            launch_delays,
            one_model,
            service_client,
        )
        from hybridserve.aws.metrics import publish
        from hybridserve.router import Router

        cfg = self.cfg
        one_model(cfg, "serve")
        c = self.clients = self.clients or R.clients(cfg.region, endpoint_url=self.endpoint_url)
        function = R.function_name(cfg.name)
        self._check_deployed(c, function)
        sc = self.scenario = deployment_scenario(cfg)
        metadata = deployment_metadata(cfg, c.s3)
        name = metadata["name"]
        lam = cfg.lambda_
        spill = lam.reserved_concurrency > 0  # 0 reserved: the function may not run at all
        concurrency = max(1, lam.reserved_concurrency)
        self.backend = fleet_backend(cfg, c, launch_delay_s=launch_delays(sc))
        invoker = None
        if spill:
            invoker = spill_invoker(cfg, function, self.endpoint_url, concurrency)
        rc = router_config(
            sc,
            name,
            spill=spill,
            options=self.router_options,
            max_batch=cfg.ec2.max_batch,
            delay_ms=cfg.ec2.max_delay_ms,
            lambda_memory_mb=lam.memory_mb,
            lambda_concurrency=concurrency,
        )
        self.router = Router(
            rc,
            self.backend.endpoints,
            invoker,
            metadata=metadata,
            fleet_usd_per_s=fleet_usd_per_s(self.backend.fleet_totals, sc),
            cost_meter=self._cost_meter(sc),
        )
        if cfg.async_jobs.enabled:  # the router takes async jobs; Lambda workers run them
            from hybridserve.aws.async_serving import aws_async

            n = max(1, cfg.async_jobs.max_lambda)
            factory = functools.partial(spill_invoker, cfg, function, self.endpoint_url, n)
            self.async_ = aws_async(cfg, c, sc, name, factory)
            self.router.jobs = self.async_.front
        cw = self.cloudwatch = service_client(c, "cloudwatch")
        from hybridserve.aws.lease import Lease, lease_ttl_s
        from hybridserve.aws.state import load_state, save_state, state_url

        self.loop_ = LeasedLoop(
            lambda: build_controller(sc, self.backend),
            self.router,
            lambda values: publish(cw, cfg.name, values),
            store=S3Arrivals(c.s3, cfg),
            lease=Lease(c.s3, cfg, lease_ttl_s(sc.control_interval_s), holder=self.replica),
            load=lambda: load_state(c.s3, cfg),
            save=lambda state: save_state(c.s3, cfg, state),
            replica=self.replica,
            source=state_url(cfg),
        )
        self.router.metrics.controller = self.loop_.stats
        if spill:  # the controller's keep-warm rounds, through an invoker of their own
            from hybridserve.aws.warm import warm_round

            self.loop_.warm = functools.partial(
                warm_round,
                hold_ms=sc.lambda_.keep_warm.hold_ms,
                function_name=function,
                qualifier=R.ALIAS,
                region=cfg.region,
                endpoint_url=self.endpoint_url,
                timeout_s=lam.timeout_s + 5,
            )
        eps = self.backend.refresh()  # the router starts with the fleet as it is now
        event(
            log,
            "serve.prepared",
            model=name,
            deployment=cfg.name,
            region=cfg.region,
            function=f"{function}:{R.ALIAS}" if spill else None,
            readiness=cfg.ec2.readiness,
            ready_instances=len(eps),
            pools=[p.key for p in sc.pools],
            interval_s=sc.control_interval_s,
        )

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The control loop, plus keep-warm invokes when `lambda.keep_warm` asks for them."""
        tasks = super().background()
        kw = self.cfg.lambda_.keep_warm
        if kw is not None and self.router is not None and self.router.invoker is not None:
            tasks.append(self._keep_warm(kw.every_s, kw.concurrency))
        return tasks

    async def _keep_warm(self, every_s: float, concurrency: int) -> None:
        from hybridserve.aws.invoke import LambdaInvoker
        from hybridserve.aws.warm import keep_warm_loop

        inv = LambdaInvoker(
            R.function_name(self.cfg.name),
            qualifier=R.ALIAS,
            region=self.cfg.region,
            endpoint_url=self.endpoint_url,
            max_concurrency=concurrency,
            timeout_s=self.cfg.lambda_.timeout_s + 5,
        )
        async with inv:
            await keep_warm_loop(
                inv,
                every_s=every_s,
                concurrency=concurrency,
                stop=asyncio.Event(),  # runs until the serve task cancels it
                on_report=lambda r: event(log, "lambda.keep_warm", **asdict(r)),
            )

    def _cost_meter(self, sc: Any) -> Any:
        """Cost by cause for the router's metrics. The fleet's instance lives are not known
        here (EC2 reports launch times, not when a server became ready or was billed to), so
        launch overhead and minimum bill stay 0, and spill is not told apart as launch lag."""
        from hybridserve.attribution import LiveCostMeter

        offset = time.time() - self.backend.now()

        def forecasts() -> list[tuple[float, float]]:
            made = self.loop_.decisions[-4:] if self.loop_ is not None else []
            return [(d.time_s + offset, float(d.inputs.forecast.mean[0])) for d in made]

        pools = {p.key: (p.price_usd_s, p.capacity_rps) for p in sc.pools}
        return LiveCostMeter(pools, sc.control_interval_s, forecasts=forecasts)

    def _check_deployed(self, c: R.Clients, function: str) -> None:
        check_deployed(self.cfg, c, function)


def spill_invoker(
    cfg: DeploymentConfig, function: str, endpoint_url: str | None, concurrency: int
) -> Any:
    """The router's invoker of a spill function's `live` alias; a spill waits out throttles
    (keep-warm pings hold the function's concurrency) for up to the function's timeout."""
    from hybridserve.aws.invoke import LambdaInvoker

    return LambdaInvoker(
        function,
        qualifier=R.ALIAS,
        region=cfg.region,
        endpoint_url=endpoint_url,
        max_concurrency=concurrency,
        timeout_s=cfg.lambda_.timeout_s + 5,
        throttle_wait_s=cfg.lambda_.timeout_s,
    )


def check_deployed(cfg: DeploymentConfig, c: R.Clients, function: str) -> None:
    """A clear error, not a traceback mid-start, when `deploy` has not run (here)."""
    try:
        c.lam.get_alias(FunctionName=function, Name=R.ALIAS)
    except c.lam.exceptions.ResourceNotFoundException:
        raise ConfigError(
            f"deployment {cfg.name!r} is not deployed in {cfg.region}: "
            f"no function {function} with alias {R.ALIAS}; run `hybridserve deploy` first"
        ) from None
