"""Open-loop HTTP load generator for V2 inference endpoints (what `hybridserve bench` runs).

One module per job: `schedules` (send times), `payload` (the server's URL, headers, metadata
and the request body), `mix` (a model mix: which model each request goes to), `run` (the
open-loop run itself) and `result` (what a run measured).
The public names are importable from here, as they were before the split.
"""

from hybridserve.loadgen.mix import MixError, assign_models, draw_models, parse_model_mix
from hybridserve.loadgen.payload import (
    BenchError,
    build_payload,
    fetch_metadata,
    infer_url,
    load_payload,
    normalize_url,
    request_headers,
)
from hybridserve.loadgen.result import LAG_WARN_MS, BenchResult
from hybridserve.loadgen.run import bench_sync, run_bench
from hybridserve.loadgen.schedules import poisson_schedule, trace_schedule

__all__ = [
    "LAG_WARN_MS",
    "BenchError",
    "BenchResult",
    "MixError",
    "assign_models",
    "bench_sync",
    "build_payload",
    "draw_models",
    "fetch_metadata",
    "infer_url",
    "load_payload",
    "normalize_url",
    "parse_model_mix",
    "poisson_schedule",
    "request_headers",
    "run_bench",
    "trace_schedule",
]
