"""How the router decides: its config, built from a scenario and the serve config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RouterConfig:
    """How the router decides; built from a scenario and the serve config (see hybridserve.serve)."""

    model_name: str
    slo_ms: float
    batch_ms: Mapping[int, float]  # an instance's profiled service ms by batch size
    max_batch: int = 8  # the model servers' max batch
    delay_ms: float = 5.0  # the model servers' batch formation delay
    max_queue: int = 64  # requests in flight per instance, at most
    margin_ms: float = 10.0  # SLO budget kept for the router, network and the client
    spill_slack_fraction: float = 0.5  # of the budget the buffer may spend waiting + serving
    spill: bool = True  # may requests go to Lambda at all (False: VM-only)
    lambda_ms: tuple[float, ...] = ()  # Lambda warm ms by batch size (index 0 unused)
    lambda_memory_gb: float = 2.0
    lambda_usd_per_gb_s: float = 0.0000166667
    lambda_usd_per_request: float = 0.0000002
    lambda_concurrency: int = 8
    max_spill_pending: int = 256
    api_key: str | None = None
    retry_after_s: int = 1
    upstream_timeout_s: float = 30.0
    max_body_bytes: int = 6 * 2**20  # Lambda's synchronous payload limit: larger cannot spill
    counts_kept_s: int = 3600
    # several models: each one's profiled service ms by batch size, and its Lambda function's
    # warm ms by batch size; a model not named here gets `batch_ms` and `lambda_ms`
    model_batch_ms: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    model_lambda_ms: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # a model served as a family: each variant's accuracy, and the variant its Lambda runs
    # (router/variants.py: a request may pin a variant or ask for a minimum accuracy)
    model_variants: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    model_lambda_variant: Mapping[str, str] = field(default_factory=dict)

    @property
    def budget_ms(self) -> float:
        return self.slo_ms - self.margin_ms

    def batch_ms_of(self, model: str) -> Mapping[int, float]:
        return self.model_batch_ms.get(model, self.batch_ms)

    def lambda_ms_of(self, model: str) -> tuple[float, ...]:
        return tuple(self.model_lambda_ms.get(model, self.lambda_ms))

    @property
    def models(self) -> tuple[str, ...]:
        """The models this config names: `model_name` first, then the profiled ones."""
        extra = sorted(set(self.model_batch_ms) | set(self.model_lambda_ms))
        return (self.model_name, *(m for m in extra if m != self.model_name))
