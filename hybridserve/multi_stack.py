"""Local `hybridserve serve` with several models (a serve config's `models:`): one fleet of
model-server processes that load and evict models as the joint plan says, one Lambda function
per model, one router that routes by model, and the simulator's `MultiController` fed with the
router's per-model arrivals.

- The planner is the simulator's (`MultiController`, joint mode for `deployment: hybrid`,
  `lambda-only` for that deployment), on the table of this machine's profiles.
- Instances are `LocalPlacementBackend` processes serving the deployment's repository index
  (`repository.yaml`, written into the log directory or a temporary one): each model under its
  served name, each variant loadable.
- Lambda: one emulator process per model, running the variant the plan's Lambda choice names
  (`ModelTable.lambda_choice`: the cheapest per request among the eligible; fixed for the run).
  One function per model rather than one holding several artifacts: a function's cold start
  loads what it holds, its memory is sized for its model, and its concurrency is the model's
  own, so a burst of one model cannot throttle another's spill.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hybridserve.config_base import ConfigError
from hybridserve.local_stack import emulator_invoker, start_emulator, stop_emulators
from hybridserve.logs import event
from hybridserve.multi_router import multi_router, served_metadata
from hybridserve.router_stack import RouterStack
from hybridserve.serve_config import ServeConfig

log = logging.getLogger("hybridserve.serve")

MODES = {"hybrid": "joint", "lambda-only": "lambda-only"}


class MultiLocalStack(RouterStack):
    """Everything a multi-model local `serve` runs, as one object: build, start, serve, stop."""

    def __init__(self, cfg: ServeConfig) -> None:
        super().__init__(cfg.router)
        self.cfg = cfg
        self.served: Any = None  # hybridserve.multi_fleet.ServedFleet
        self.table: Any = None
        self.emulators: list[subprocess.Popen] = []
        self._tmp: Path | None = None

    def prepare(self) -> None:
        """Fleet, table, repository index, backend, emulators, router and control loop."""
        from hybridserve.backends.local_placement import LocalPlacementBackend
        from hybridserve.multi_fleet import served_fleet
        from hybridserve.multimodel.controller import MultiController
        from hybridserve.multimodel.live import CappedPlacement, MultiLiveLoop
        from hybridserve.multimodel.table import build_table
        from predictors.artifact import artifact_metadata

        cfg = self.cfg
        mode = MODES.get(cfg.deployment)
        if mode is None:
            raise ConfigError(
                f"deployment: {cfg.deployment!r} with several models; choose one of "
                f"{', '.join(MODES)}"
            )
        if cfg.router.replicas > 1:
            raise ConfigError("router.replicas: one router process serves several models")
        log_dir = cfg.log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            repo = log_dir / "repository"
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix="hybridserve-repository-"))
            repo = self._tmp
        sf = self.served = served_fleet(cfg)
        sc = self.scenario = sf.scenario
        table = self.table = build_table(sc, sf.fleet)
        sf.write_index(repo)
        it, lam = cfg.instances, cfg.lambda_
        self.backend = LocalPlacementBackend(
            table,
            repo,
            launch_delay_s=it.launch_delay_s,
            drain_s=it.drain_s,
            max_batch=it.max_batch,
            max_delay_ms=it.max_delay_ms,
            threads=it.threads,
            max_queue=max(cfg.router.max_queue, it.max_batch),
            memory_mb=float(table.pool_mem_mb.min()),
            log_dir=log_dir,
        )
        names = sf.fleet.names
        invokers: dict[str, Any] = {}
        metadata: dict[str, dict] = {}
        for m, name in enumerate(names):
            choice = table.choices[int(table.lambda_choice[m])]
            art = sf.artifacts[name][choice.variant]
            metadata[name] = served_metadata(table, m, artifact_metadata(art))
            fn = f"{lam.function_name}-{name}"
            proc, url = start_emulator(cfg, art, log_dir, fn)
            self.emulators.append(proc)
            invokers[name] = emulator_invoker(cfg, url, fn)
        self.router = multi_router(
            table,
            metadata,
            invokers,
            endpoints=self.backend.endpoints,
            totals=self.backend.totals,
            scenario=sc,
            options=cfg.router,
            max_batch=it.max_batch,
            delay_ms=it.max_delay_ms,
            lambda_memory_mb=lam.memory_mb,
            lambda_concurrency=lam.concurrency,
            lambda_max_batch=lam.max_batch,
        )
        controller = MultiController(
            table,
            CappedPlacement(self.backend, it.max_instances),
            interval_s=cfg.control_interval_s,
            horizon_steps=cfg.horizon_steps,
            mode=mode,  # type: ignore[arg-type]
            forecaster=cfg.forecaster or "linear",
        )
        self.loop_ = MultiLiveLoop(controller, self.router.take_model_counts, names)
        self.router.metrics.controller = self.loop_.stats
        event(
            log,
            "serve.prepared_models",
            models={
                n: {
                    "variants": list(sf.artifacts[n]),
                    "lambda": table.choices[int(table.lambda_choice[m])].variant,
                }
                for m, n in enumerate(names)
            },
            deployment=cfg.deployment,
            pools=[p.key for p in table.pools],
            repository=str(repo),
        )

    def close(self) -> None:
        super().close()
        stop_emulators(self.emulators)
        self.emulators = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
