"""The numbers the multi-model planner works on, derived once from the scenario and the fleet.

Per variant (a family's way to serve) and pool: instance-seconds per request at the pool's
operating point (the single-model `serving_pools` on that variant's profile), its batch service
time, and per variant its resident memory, load time and Lambda price per request. Pools are the
union over variants; a variant too slow for the SLO on a pool has infinite cost there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hybridserve.config import (
    ConfigError,
    Pool,
    Scenario,
    lambda_usd_per_request,
)
from hybridserve.multimodel.spec import ModelFleet


def scenario_for(sc: Scenario, variant_profile) -> Scenario:
    """The single-model scenario of one variant: same SLO, catalog, Lambda; its profile."""
    data = sc.model_dump(by_alias=True)
    data["model"] = variant_profile.model_dump(by_alias=True)
    return Scenario.model_validate(data)


@dataclass(frozen=True)
class Choice:
    """One variant of one family, as the planner and the data plane see it."""

    family: str
    variant: str
    accuracy: float
    memory_mb: float
    load_s: float
    lambda_usd: float  # warm price of one request on Lambda
    scenario: Scenario  # the single-model scenario of this variant (the Lambda plane's)


@dataclass(frozen=True)
class ModelTable:
    """`s[c, p]`: instance-seconds per request of choice c on pool p (inf: cannot serve within
    the SLO there); `lat[c, p]` its batch service time; per model the choices it may take."""

    fleet: ModelFleet
    pools: list[Pool]
    choices: list[Choice]
    s: np.ndarray
    lat: np.ndarray
    pool_mem_mb: np.ndarray  # per pool: memory for models (instance memory less the overhead)
    model_choices: list[list[int]]  # per model: indices into `choices` it may use

    @property
    def n_models(self) -> int:
        return len(self.model_choices)

    @cached_property
    def price(self) -> np.ndarray:
        return np.array([p.price_usd_s for p in self.pools])

    @cached_property
    def mem(self) -> np.ndarray:
        return np.array([c.memory_mb for c in self.choices])

    @cached_property
    def lambda_usd(self) -> np.ndarray:
        return np.array([c.lambda_usd for c in self.choices])

    @cached_property
    def lambda_choice(self) -> np.ndarray:
        """Per model, the choice its Lambda function runs: the cheapest per request of those it
        may use (one function per model, fixed for the run: changing it would be a new
        function and new cold starts)."""
        return np.array(
            [min(cs, key=lambda c: self.choices[c].lambda_usd) for cs in self.model_choices]
        )


def undominated(pools: list[Pool], s: np.ndarray, lat: np.ndarray, mem: np.ndarray) -> list[int]:
    """Indices of the pools no other pool beats or ties on every count: price, launch delay,
    memory, and each variant's speed and batch time. Exact for the packer, which sees a pool only
    through these (c6i.large ties c5.large here; c7i.large costs more for the same); it halves
    the pools of the default catalog and the packer's time with them."""
    price = np.array([p.price_usd_s for p in pools])
    delay = np.array([p.launch_delay_s for p in pools])
    keep = []
    for a in range(len(pools)):
        beaten = False
        for b in range(len(pools)):
            if a == b:
                continue
            ge = (
                price[b] <= price[a]
                and delay[b] <= delay[a]
                and mem[b] >= mem[a]
                and bool(np.all(s[:, b] <= s[:, a]))
                and bool(np.all(lat[:, b] <= lat[:, a]))
            )
            strict = (
                price[b] < price[a]
                or delay[b] < delay[a]
                or mem[b] > mem[a]
                or bool(np.any(s[:, b] < s[:, a]))
                or bool(np.any(lat[:, b] < lat[:, a]))
            )
            if ge and (strict or b < a):
                beaten = True
                break
        if not beaten:
            keep.append(a)
    return keep


def build_table(sc: Scenario, fleet: ModelFleet, *, pools: list[str] | None = None) -> ModelTable:
    """The table for `fleet` under `sc`; `pools` restricts it to these pool keys (fixed
    hardware, for a baseline)."""
    choices: list[Choice] = []
    index: dict[tuple[str, str], int] = {}
    per_choice: list[dict[str, Pool]] = []
    for fname, fam in fleet.families.items():
        for vname, v in fam.variants.items():
            try:
                vsc = scenario_for(sc, v.profile)
            except ValueError as e:  # pydantic's ValidationError is a ValueError
                raise ConfigError(
                    f"families.{fname}.variants.{vname}: cannot serve within the SLO on any "
                    f"instance type of the scenario ({str(e).splitlines()[-1].strip()})"
                ) from None
            vpools = {p.key: p for p in vsc.pools}
            index[(fname, vname)] = len(choices)
            choices.append(
                Choice(
                    family=fname,
                    variant=vname,
                    accuracy=v.accuracy,
                    memory_mb=v.memory_mb,
                    load_s=v.load_s,
                    lambda_usd=lambda_usd_per_request(vsc),
                    scenario=vsc,
                )
            )
            per_choice.append(vpools)
    keys: list[str] = []
    by_key: dict[str, Pool] = {}
    for vp in per_choice:
        for k, p in vp.items():
            if k not in by_key:
                keys.append(k)
                by_key[k] = p
    if pools is not None:
        unknown = [k for k in pools if k not in by_key]
        if unknown:
            raise ConfigError(f"pools: {unknown} serve no variant within the SLO; eligible: {keys}")
        keys = [k for k in keys if k in pools]
    s = np.full((len(choices), len(keys)), np.inf)
    lat = np.full((len(choices), len(keys)), np.inf)
    for c, vp in enumerate(per_choice):
        for j, k in enumerate(keys):
            if k in vp:
                s[c, j] = 1.0 / vp[k].capacity_rps
                lat[c, j] = vp[k].latency_s
    mem = np.array(
        [
            sc.catalog.instances[by_key[k].instance_type].memory_gib * 1024.0
            - fleet.instance_overhead_mb
            for k in keys
        ]
    )
    if pools is None:
        keep = undominated([by_key[k] for k in keys], s, lat, mem)
        keys, s, lat, mem = [keys[j] for j in keep], s[:, keep], lat[:, keep], mem[keep]
    model_choices = [[index[(m.family, v)] for v in fleet.eligible(m)] for m in fleet.models]
    return ModelTable(
        fleet=fleet,
        pools=[by_key[k] for k in keys],
        choices=choices,
        s=s,
        lat=lat,
        pool_mem_mb=mem,
        model_choices=model_choices,
    )
