"""`hybridserve serve`: router + controller + backend on one machine.

Local mode (the default, no AWS): instances are `hybridserve model-server` processes started by
the LocalBackend after a launch delay, "Lambda" is the local emulator (worker processes with
real cold starts) called through the same aiobotocore invoker as AWS Lambda, and the Controller
is the simulator's, fed with the router's measured arrivals. The serving profile is measured on
this machine at start-up (cached next to the artifact), so the planner and the router predict
with the latencies this machine really has.

AWS mode (`hybridserve.aws.serving.AwsStack`) fronts a deployment made by `hybridserve deploy`.
Both modes share `RouterStack` (the router under uvicorn, the control loop beside it) and
`router_config`. Which mode a config file means is decided by `config_kind`.

The parts: `serve_config` (the config and its loader), `router_stack` (what both modes
share), `local_stack` (local mode); this module names them in one place.
"""

from __future__ import annotations

from hybridserve.local_stack import (
    LocalStack,
    cache_dir,
    ensure_artifact,
    load_profile,
    local_scenario,
    measured_profile,
    start_emulator,
)
from hybridserve.router_stack import (
    RouterStack,
    fleet_usd_per_s,
    router_config,
)
from hybridserve.serve_config import (
    API_KEY_ENV,
    DEPLOYMENT_KEYS,
    DEPLOYMENTS,
    DEPRECATED_DEPLOYMENTS,
    SERVE_KEYS,
    SHARED_KEYS,
    LocalInstances,
    LocalLambda,
    RouterOptions,
    ServeConfig,
    config_kind,
    load_serve_config,
)

__all__ = [
    "API_KEY_ENV",
    "DEPLOYMENTS",
    "DEPLOYMENT_KEYS",
    "DEPRECATED_DEPLOYMENTS",
    "LocalInstances",
    "LocalLambda",
    "LocalStack",
    "RouterOptions",
    "RouterStack",
    "SERVE_KEYS",
    "SHARED_KEYS",
    "ServeConfig",
    "cache_dir",
    "config_kind",
    "ensure_artifact",
    "fleet_usd_per_s",
    "load_profile",
    "load_serve_config",
    "local_scenario",
    "measured_profile",
    "router_config",
    "start_emulator",
]
