"""The live data plane: per-request routing between the fleet and Lambda (see `app.Router`)."""

from hybridserve.router.app import Router, RouterConfig
from hybridserve.router.buffer import BatchParams, SpillBuffer, batch_params
from hybridserve.router.policy import SPILL, choose, completion_table

__all__ = [
    "SPILL",
    "BatchParams",
    "Router",
    "RouterConfig",
    "SpillBuffer",
    "batch_params",
    "choose",
    "completion_table",
]
