"""The model server's metrics: requests by model and status, latency, batch sizes and queues,
and with a model repository the models loaded, their resident MB and their load times.

The request path adds to plain ints (`observe`); the families are built from them and from the
data plane's batcher stats when `/metrics` is scraped (see predictors.prometheus).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from predictors.dataplane import DataPlane
from predictors.prometheus import Exposition, Histogram, counter, gauge, histogram

if TYPE_CHECKING:
    from predictors.repository import ModelRepository

UNKNOWN_MODEL = "_unknown"  # the label for requests naming no model served (a bounded set)


class ServerMetrics:
    """Request counts by (model, code) and a latency histogram per model (event loop only)."""

    def __init__(self, dataplane: DataPlane, repository: ModelRepository | None = None) -> None:
        self.dataplane = dataplane
        self.repository = repository
        self.models = set(dataplane.models)
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.exposition = Exposition(self.families)

    def observe(self, model: str, code: int, seconds: float) -> None:
        if model not in self.models:
            # models come and go with a repository: a name it holds is a label (a bounded set)
            known = model in self.dataplane.models or (
                self.repository is not None and model in self.repository.entries
            )
            if not known:
                model = UNKNOWN_MODEL
            else:
                self.models.add(model)
        self.requests[(model, code)] = self.requests.get((model, code), 0) + 1
        h = self.latency.get(model)
        if h is None:
            h = self.latency[model] = Histogram()
        h.observe(seconds)

    def render(self) -> bytes:
        return self.exposition.render()

    def families(self) -> Iterator[Metric]:
        yield counter(
            "hybridserve_requests",
            "Inference requests by model and HTTP status.",
            [((m, str(c)), n) for (m, c), n in sorted(self.requests.items())],
            labels=("model", "code"),
        )
        yield histogram(
            "hybridserve_request_duration_seconds",
            "Inference request latency in the server.",
            [((m,), h.cumulative(), h.sum) for m, h in sorted(self.latency.items())],
            labels=("model",),
        )
        stats = sorted(self.dataplane.stats().items())
        yield histogram(
            "hybridserve_batch_size",
            "Rows per model predict call (dynamic batching).",
            [((m,), s.batch_histogram(), s.rows_total) for m, s in stats],
            labels=("model",),
        )
        yield gauge(
            "hybridserve_queue_depth",
            "Requests waiting in the model's batch queue.",
            [((m,), s.queue_depth) for m, s in stats],
            labels=("model",),
        )
        yield counter(
            "hybridserve_queue_rejected",
            "Requests refused because the queue was full.",
            [((m,), s.rejected_total) for m, s in stats],
            labels=("model",),
        )
        yield counter(
            "hybridserve_predict_seconds",
            "Time spent in model predict calls.",
            [((m,), s.predict_seconds_total) for m, s in stats],
            labels=("model",),
        )
        yield gauge(
            "hybridserve_models_loaded", "Models this server serves now.", [((), len(stats))]
        )
        repo = self.repository
        if repo is None:
            return
        yield gauge(
            "hybridserve_model_resident_mb",
            "Resident MB a loaded model counts against the memory budget.",
            [((m,), x.resident_mb) for m, x in sorted(repo.loaded.items())],
            labels=("model",),
        )
        yield gauge(
            "hybridserve_memory_budget_mb",
            "The memory budget the loaded models share.",
            [((), repo.memory_mb)],
        )
        yield histogram(
            "hybridserve_model_load_seconds",
            "Model load time: verification, decompression, session, first predict.",
            [((m,), h.cumulative(), h.sum) for m, h in sorted(repo.load_seconds.items())],
            labels=("model",),
        )
        yield counter(
            "hybridserve_model_loads",
            "Load requests by model and result (loaded, refused, failed).",
            [((m, r), n) for (m, r), n in sorted(repo.load_results.items())],
            labels=("model", "result"),
        )
