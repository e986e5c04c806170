"""The router of a multi-model `serve`, locally and on AWS: one router routing by model, each
model with its profile (the service times of the variant its Lambda function runs), its own
spill invoker, its V2 metadata and the variants a request may pin or ask for by accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from hybridserve.router_stack import fleet_usd_per_s, lambda_ms_table, router_config
from hybridserve.serve_config import RouterOptions


def multi_router(
    table: Any,
    metadata: Mapping[str, dict],
    invokers: Mapping[str, Any],
    *,
    endpoints: Callable[[], list],
    totals: Callable[[], Mapping[str, int]],
    scenario: Any,
    options: RouterOptions,
    max_batch: int,
    delay_ms: float,
    lambda_memory_mb: int,
    lambda_concurrency: int,
    lambda_max_batch: int = 8,
    spill: bool = True,
    **router_kw: Any,
) -> Any:
    """The Router over `table`'s models (`hybridserve.multimodel.table.ModelTable`): `metadata`
    and `invokers` by model name (an invoker may be None: that model does not spill); the
    fleet's cost rate from `totals` at `scenario`'s prices."""
    from hybridserve.router import Router

    names = table.fleet.names
    batch_ms: dict[str, dict[int, float]] = {}
    lambda_ms: dict[str, tuple[float, ...]] = {}
    for m, name in enumerate(names):
        choice = table.choices[int(table.lambda_choice[m])]
        batch_ms[name] = dict(choice.scenario.model.reference.batch_ms)
        lambda_ms[name] = lambda_ms_table(choice.scenario, lambda_max_batch)
    first = table.choices[int(table.lambda_choice[0])]
    rc = router_config(
        first.scenario,
        names[0],
        spill=spill,
        options=options,
        max_batch=max_batch,
        delay_ms=delay_ms,
        lambda_memory_mb=lambda_memory_mb,
        lambda_concurrency=lambda_concurrency,
        lambda_max_batch=lambda_max_batch,
    )
    # a request may pin any variant at the model's floor, or ask for a higher accuracy
    variants = {
        n: {table.choices[c].variant: table.choices[c].accuracy for c in table.model_choices[m]}
        for m, n in enumerate(names)
    }
    lambda_variant = {
        n: table.choices[int(table.lambda_choice[m])].variant for m, n in enumerate(names)
    }
    rc = dataclasses.replace(
        rc,
        model_batch_ms=batch_ms,
        model_lambda_ms=lambda_ms,
        model_variants=variants,
        model_lambda_variant=lambda_variant,
    )
    router = Router(
        rc,
        endpoints,
        invokers.get(names[0]),
        invokers={n: invokers[n] for n in names[1:] if invokers.get(n) is not None},
        metadata=metadata[names[0]],
        fleet_usd_per_s=fleet_usd_per_s(totals, scenario),
        **router_kw,
    )
    for name in names[1:]:
        router.models[name].metadata = metadata[name]
    return router


def served_metadata(table: Any, m: int, meta: dict) -> dict:
    """Model `m`'s V2 metadata: its artifact's, under its served name, listing the variants a
    request may pin."""
    name = table.fleet.names[m]
    eligible = [table.choices[c].variant for c in table.model_choices[m]]
    return {**meta, "name": name, "versions": eligible}
