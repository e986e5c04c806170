"""`hybridserve serve` of a multi-model deployment (issue 14): the router in front of the
deployment's shards, the joint plan stepped on the router's own per-model arrivals.

The same pieces as the local multi-model serve (`hybridserve.multi_stack`) on AWS's worlds:
`Ec2PlacementBackend` for the fleet (shards and their models in tags, servers taken to their
models over the V2 repository API), one spill function per model through its `live` alias, the
router built by `multi_router`, and the simulator's `MultiController` stepped by
`MultiLiveLoop`. Only the router holding the deployment's lease steps it (aws/lease.py): a
second `serve` of the deployment routes and spills, and takes over once the holder's lease
expires. Not yet here, unlike one model's AWS serve: the arrivals of several routers summed,
CloudWatch metrics and keep-warm rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hybridserve.aws import resources as R
from hybridserve.aws.arrivals import replica_id
from hybridserve.deployment import DeploymentConfig
from hybridserve.logs import event
from hybridserve.multimodel.controller import MultiDecision
from hybridserve.multimodel.live import MultiLiveLoop
from hybridserve.router_stack import RouterStack
from hybridserve.serve_config import RouterOptions

log = logging.getLogger("hybridserve.aws.serving")


@dataclass
class LeasedMultiLoop(MultiLiveLoop):
    """`MultiLiveLoop` that steps only while it holds the deployment's lease; a passive
    router's interval of arrivals is dropped (the holder plans on its own)."""

    lease: Any = None

    def safe_step(self) -> MultiDecision | None:
        try:
            held = self.lease is None or self.lease.hold()
        except Exception:  # noqa: BLE001 - S3 unreachable: act as passive, retry next step
            log.exception("the lease could not be read; passive this interval")
            held = False
        if not held:
            self.take_counts()
            self.stats["passive_steps"] = self.stats.get("passive_steps", 0) + 1
            return None
        return super().safe_step()


class MultiAwsStack(RouterStack):
    """Everything `serve` runs for a multi-model deployment: router, shards, functions, loop."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        *,
        endpoint_url: str | None = None,
        router: RouterOptions | None = None,
        clients: R.Clients | None = None,
        replica: str | None = None,
        **backend_kw: Any,
    ) -> None:
        super().__init__(router or RouterOptions())
        self.cfg = cfg
        self.endpoint_url = endpoint_url
        self.clients = clients
        self.replica = replica or replica_id()
        self.backend_kw = backend_kw  # to the fleet's AwsBackend (tests: url_of, probe)
        self.table: Any = None

    def prepare(self) -> None:
        """Check every model's function is deployed, then build the stack."""
        from hybridserve.aws.lease import Lease, lease_ttl_s
        from hybridserve.aws.models import model_variants
        from hybridserve.aws.multi_control import FORECASTER, build
        from hybridserve.aws.serving import artifact_metadata_at, check_deployed, spill_invoker
        from hybridserve.multi_router import multi_router, served_metadata
        from hybridserve.multimodel.controller import MultiController
        from hybridserve.multimodel.live import CappedPlacement

        cfg = self.cfg
        c = self.clients = self.clients or R.clients(cfg.region, endpoint_url=self.endpoint_url)
        for fn in cfg.functions.values():
            check_deployed(cfg, c, fn)
        sc, table, placement = build(cfg, c, **self.backend_kw)
        self.scenario, self.table, self.backend = sc, table, placement
        names = table.fleet.names
        lam = cfg.lambda_
        spill = lam.reserved_concurrency > 0  # 0 reserved: the functions may not run at all
        concurrency = max(1, lam.reserved_concurrency)
        variants = model_variants(cfg)
        metadata, invokers = {}, {}
        for m, name in enumerate(names):
            lv = table.choices[int(table.lambda_choice[m])].variant  # what its function runs
            v = next((x for x in variants[name] if x.variant == lv), variants[name][0])
            meta = artifact_metadata_at(v.artifact, cfg.bucket, v.prefix, c.s3)
            metadata[name] = served_metadata(table, m, meta)
            fn = cfg.functions[name]
            invokers[name] = (
                spill_invoker(cfg, fn, self.endpoint_url, concurrency) if spill else None
            )
        self.router = multi_router(
            table,
            metadata,
            invokers,
            endpoints=placement.endpoints,
            totals=placement.totals,
            scenario=sc,
            options=self.router_options,
            max_batch=cfg.ec2.max_batch,
            delay_ms=cfg.ec2.max_delay_ms,
            lambda_memory_mb=lam.memory_mb,
            lambda_concurrency=concurrency,
            spill=spill,
        )
        backend: Any = placement
        if cfg.ec2.max_instances is not None:
            backend = CappedPlacement(placement, cfg.ec2.max_instances)
        controller = MultiController(
            table,
            backend,
            interval_s=sc.control_interval_s,
            horizon_steps=sc.horizon_steps,
            forecaster=FORECASTER,
        )
        lease = Lease(c.s3, cfg, lease_ttl_s(sc.control_interval_s), holder=self.replica)
        self.loop_ = LeasedMultiLoop(controller, self.router.take_model_counts, names, lease=lease)
        self.router.metrics.controller = self.loop_.stats
        placement.backend.refresh()  # the router starts with the fleet as it is now
        event(
            log,
            "serve.prepared_models",
            deployment=cfg.name,
            region=cfg.region,
            models={n: cfg.functions[n] if spill else None for n in names},
            pools=[p.key for p in table.pools],
            interval_s=sc.control_interval_s,
        )

    def close(self) -> None:
        super().close()
        if self.loop_ is not None and self.loop_.lease is not None:
            try:
                self.loop_.lease.release()
            except Exception:  # noqa: BLE001 - the lease expires on its own
                log.exception("releasing the lease failed")
