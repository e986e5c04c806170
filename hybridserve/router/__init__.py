"""The live data plane: per-request routing between the fleet and Lambda (see `app.Router`).

The names load on first use (PEP 562): the simulator imports `router.buffer` and
`router.policy`, pure numpy, and must not pull in the server's extras (prometheus_client,
starlette) that `app` needs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridserve.router.app import Router, RouterConfig
    from hybridserve.router.buffer import BatchParams, SpillBuffer, batch_params
    from hybridserve.router.policy import SPILL, choose, completion_table

_WHERE = {
    "Router": "app",
    "RouterConfig": "app",
    "BatchParams": "buffer",
    "SpillBuffer": "buffer",
    "batch_params": "buffer",
    "SPILL": "policy",
    "choose": "policy",
    "completion_table": "policy",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
