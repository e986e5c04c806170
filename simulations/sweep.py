"""Policy sweeps: a grid of (trace, policy, SLO, rate scale, scenario) cells, each one replay,
run on a local process pool or a Ray cluster, gathered as a tidy table (one row per cell).

A cell carries a trace *path* and options, never the arrays: each worker loads its own trace, so
a cluster ships a few hundred bytes per task. Every cell is deterministic given its seed, so the
pool and Ray give the same numbers (only ``sim_wall_s`` differs).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybridserve.policies import POLICIES
from simulations.processes import process_pool
from simulations.traces import Trace

SYNTHETIC = "synthetic"  # a trace name: the embedded synthetic trace (`synthetic:DAYS` sets days)
DEFAULT_SCENARIO = "default"  # the scenario column of cells on the built-in scenario

KEY_COLUMNS = ["trace", "policy", "slo_ms", "slo_target", "rate_scale", "scenario", "seed"]
COLUMNS = [
    *KEY_COLUMNS,
    "trace_name",
    "seconds",
    "requests",
    "cost_usd",
    "cost_ec2_on_demand",
    "cost_ec2_spot",
    "cost_lambda_requests",
    "cost_lambda_compute",
    "cost_lower_bound_usd",
    "cost_over_oracle",
    "slo_attainment",
    "target_met",
    "lambda_fraction",
    "instance_hours",
    "cold_starts",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "forecaster_fallbacks",
    "planner_fallbacks",
    "sim_wall_s",
    "error",
]
# the columns two runs of the same cell must agree on (everything but wall time)
RESULT_COLUMNS = [c for c in COLUMNS if c not in ("sim_wall_s",)]

Row = dict[str, Any]
OnRow = Callable[[int, Row], None]


@dataclass(frozen=True)
class TraceOptions:
    """How every trace of a sweep is read and cut (shared by all cells, unlike rate scale)."""

    fmt: str = "auto"
    timestamp_column: str = "TIMESTAMP"
    start: str = "0"
    duration: str | None = None
    days: float = 2.0  # of the embedded synthetic trace


@dataclass(frozen=True)
class Cell:
    """One replay: small and picklable, so it travels to a worker as is."""

    trace: str  # a path, or SYNTHETIC / "synthetic:DAYS"
    policy: str
    slo_ms: float | None  # None: the scenario's
    slo_target: float | None
    rate_scale: float
    scenario: str | None  # a YAML path; None: the built-in scenario
    seed: int = 0
    forecaster: str | None = None
    options: TraceOptions = TraceOptions()


def synthetic_days(spec: str, default: float) -> float | None:
    """Days of the embedded trace that `spec` names, or None when `spec` is not that name."""
    name, sep, days = spec.partition(":")
    if name != SYNTHETIC:
        return None
    if not sep:
        return default
    try:
        value = float(days)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{spec!r}: expected synthetic:DAYS with DAYS a number > 0")
    return value


def expand_grid(
    traces: Sequence[str] = (),
    policies: Sequence[str] = (),
    slo_ms: Sequence[float] = (),
    slo_targets: Sequence[float] = (),
    rate_scales: Sequence[float] = (),
    scenarios: Sequence[str] = (),
    *,
    seed: int = 0,
    forecaster: str | None = None,
    options: TraceOptions | None = None,
) -> list[Cell]:
    """Every combination, in a stable order (trace outermost, policy innermost) so that the
    table reads by group. An empty axis means its default: the synthetic trace, every policy,
    the scenario's SLO, scale 1, the built-in scenario."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; expected one of {', '.join(POLICIES)}")
    opts = options or TraceOptions()
    axes = itertools.product(
        list(dict.fromkeys(traces)) or [SYNTHETIC],
        list(dict.fromkeys(slo_ms)) or [None],
        list(dict.fromkeys(slo_targets)) or [None],
        list(dict.fromkeys(rate_scales)) or [1.0],
        list(dict.fromkeys(scenarios)) or [None],
        list(dict.fromkeys(policies)) or list(POLICIES),
    )
    return [
        Cell(t, p, ms, tgt, float(rs), sc, seed, forecaster, opts) for t, ms, tgt, rs, sc, p in axes
    ]


def load_cell_trace(cell: Cell) -> Trace:
    """The cell's trace, cut and scaled as `hybridserve simulate` does with the same options."""
    from hybridserve.units import parse_duration
    from simulations.synthetic import synthetic_trace
    from simulations.traces import load_trace

    o = cell.options
    days = synthetic_days(cell.trace, o.days)
    if days is None:
        trace = load_trace(
            cell.trace,
            o.fmt,
            timestamp_column=o.timestamp_column,
            rate_scale=cell.rate_scale,
            start=o.start,
            duration=o.duration,
            seed=cell.seed,
        )
    else:
        trace = synthetic_trace(days=days, seed=cell.seed)
        if o.start not in ("0", "") or o.duration is not None:
            trace = trace.slice(
                parse_duration(o.start, field="start"),
                None if o.duration is None else parse_duration(o.duration, field="duration"),
            )
        if cell.rate_scale != 1.0:
            trace = trace.scaled(cell.rate_scale, cell.seed)
    if trace.requests == 0:
        raise ValueError(f"{trace.name}: the trace has no requests in the selected range")
    return trace


def _key(cell: Cell) -> Row:
    return {
        "trace": cell.trace,
        "policy": cell.policy,
        "slo_ms": cell.slo_ms,
        "slo_target": cell.slo_target,
        "rate_scale": cell.rate_scale,
        "scenario": cell.scenario or DEFAULT_SCENARIO,
        "seed": cell.seed,
    }


def error_row(cell: Cell, error: BaseException | str) -> Row:
    """The row of a cell that failed: its key, the error, and nothing measured."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(_key(cell))
    if isinstance(error, BaseException):
        first = (str(error).strip().splitlines() or [""])[0]
        error = f"{type(error).__name__}: {first}".rstrip(": ")
    row["error"] = error
    return row


def run_cell(cell: Cell) -> Row:
    """Replay one cell; never raises, so one bad cell cannot stop a sweep (its row says why)."""
    try:
        return _replay(cell)
    except Exception as e:  # noqa: BLE001 - recorded in the row, by design
        return error_row(cell, e)


def _replay(cell: Cell) -> Row:
    from hybridserve.config import load_scenario
    from simulations.bounds import cost_lower_bound
    from simulations.replay import run_policy

    slo = {
        k: v for k, v in (("latency_ms", cell.slo_ms), ("target", cell.slo_target)) if v is not None
    }
    t0 = time.perf_counter()
    sc = load_scenario(cell.scenario, slo=slo or None)
    trace = load_cell_trace(cell)
    r = run_policy(
        trace, sc, cell.policy, seed=cell.seed, forecaster=cell.forecaster, keep_timeline=False
    )
    floor = cost_lower_bound(trace.counts, sc) if cell.policy == "oracle" else None
    row: Row = dict.fromkeys(COLUMNS)
    row.update(_key(cell))
    b = r.cost_breakdown
    row.update(
        slo_ms=float(sc.slo.latency_ms),
        slo_target=float(sc.slo.target),
        trace_name=trace.name,
        seconds=int(trace.seconds),
        requests=int(r.requests),
        cost_usd=float(r.cost_usd),
        cost_ec2_on_demand=float(b.get("ec2_on_demand", 0.0)),
        cost_ec2_spot=float(b.get("ec2_spot", 0.0)),
        cost_lambda_requests=float(b.get("lambda_requests", 0.0)),
        cost_lambda_compute=float(b.get("lambda_compute", 0.0)),
        cost_lower_bound_usd=floor,
        slo_attainment=float(r.slo_attainment),
        target_met=bool(r.slo_attainment >= sc.slo.target),
        lambda_fraction=float(r.lambda_fraction),
        instance_hours=float(sum(r.instance_hours.values())),
        cold_starts=int(r.cold_starts),
        latency_p50_ms=float(r.latency_p50_ms),
        latency_p95_ms=float(r.latency_p95_ms),
        latency_p99_ms=float(r.latency_p99_ms),
        forecaster_fallbacks=int(r.forecaster_fallbacks),
        planner_fallbacks=int(r.planner_fallbacks),
        sim_wall_s=time.perf_counter() - t0,  # the whole cell: trace, replay, cost floor
    )
    return row


def add_cost_over_oracle(rows: list[Row]) -> list[Row]:
    """Each row's cost over the oracle's in its group (same trace, SLO, scale, scenario, seed),
    where that oracle ran and cost something; None elsewhere."""
    group = [c for c in KEY_COLUMNS if c != "policy"]
    oracle = {
        tuple(r[c] for c in group): r["cost_usd"]
        for r in rows
        if r["policy"] == "oracle" and r["error"] is None and r["cost_usd"]
    }
    for r in rows:
        base = oracle.get(tuple(r[c] for c in group))
        ok = base and r["error"] is None and r["cost_usd"] is not None
        r["cost_over_oracle"] = r["cost_usd"] / base if ok else None
    return rows


# -- executors: each runs every cell, calls on_row(index, row) as cells finish, returns rows in
# -- cell order


def run_serial(cells: Sequence[Cell], on_row: OnRow | None = None) -> list[Row]:
    rows = []
    for i, cell in enumerate(cells):
        rows.append(run_cell(cell))
        if on_row is not None:
            on_row(i, rows[-1])
    return rows


def run_pool(
    cells: Sequence[Cell], workers: int | None = None, on_row: OnRow | None = None
) -> list[Row]:
    """A local process pool (`simulations.processes`: forked from a clean fork server)."""
    n = min(len(cells), workers or os.cpu_count() or 1)
    if n <= 1:
        return run_serial(cells, on_row)
    rows: list[Row | None] = [None] * len(cells)
    with process_pool(n) as pool:
        futs = {pool.submit(run_cell, c): i for i, c in enumerate(cells)}
        for f in as_completed(futs):
            i = futs[f]
            try:
                rows[i] = f.result()
            except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                rows[i] = error_row(cells[i], e)
            if on_row is not None:
                on_row(i, rows[i])
    return rows  # type: ignore[return-value]


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(
            "--ray (or RAY_ADDRESS) needs Ray: pip install 'hybridserve[ray]'"
        ) from e
    return ray


@contextmanager
def ray_session(address: str | None = None, **init: Any):
    """Ray, connected: to `address` (else $RAY_ADDRESS) when given, else what a plain
    `ray.init()` finds (a `ray start` cluster on this machine, or a new local instance, shut
    down after). `init` goes to `ray.init` (tests: `num_cpus=2`). A session the caller already
    opened is used as is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    kwargs.update(init)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:  # an OSError: say what to check, not a traceback
        raise RuntimeError(
            f"{e}; check RAY_ADDRESS ({address}), or unset it to run on a local Ray instance"
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def run_ray(
    cells: Sequence[Cell], on_row: OnRow | None = None, max_in_flight: int | None = None
) -> list[Row]:
    """One Ray task per cell on the session the caller opened (see `ray_session`), at most
    `max_in_flight` at once (default: all, Ray queues them); rows come back as tasks finish
    (`ray.wait`)."""
    ray = import_ray()
    task = ray.remote(num_cpus=1)(run_cell)
    queue = iter(enumerate(cells))
    limit = max_in_flight or len(cells)
    pending: dict[Any, int] = {}
    rows: list[Row | None] = [None] * len(cells)
    for i, c in itertools.islice(queue, limit):
        pending[task.remote(c)] = i
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                rows[i] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the worker or its node died
                rows[i] = error_row(cells[i], e)
            if on_row is not None:
                on_row(i, rows[i])
            for j, c in itertools.islice(queue, 1):
                pending[task.remote(c)] = j
    return rows  # type: ignore[return-value]


def run_sweep(
    cells: Sequence[Cell],
    *,
    use_ray: bool = False,
    workers: int | None = None,
    address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    on_row: OnRow | None = None,
) -> list[Row]:
    """Every cell's row, in cell order, with cost over the oracle filled in. `workers` caps the
    cells replayed at once: pool processes, or Ray tasks in flight."""
    if use_ray:
        with ray_session(address, **(ray_init or {})):
            rows = run_ray(cells, on_row, max_in_flight=workers)
    else:
        rows = run_pool(cells, workers, on_row)
    return add_cost_over_oracle(rows)


# -- the tidy table


def _plain(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null (a p99 of a run that met nothing is inf)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def rows_json(rows: Iterable[Row]) -> str:
    return json.dumps(
        {"rows": [{c: _plain(r.get(c)) for c in COLUMNS} for r in rows]}, allow_nan=False
    )


def to_frame(rows: Iterable[Row]):
    """The tidy table: one row per cell, the columns of COLUMNS in that order."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=COLUMNS)
    df["error"] = df["error"].astype("string")
    return df


def write_table(rows: Sequence[Row], csv_path: str | None, parquet_path: str | None) -> None:
    df = to_frame(rows)
    if csv_path:
        df.to_csv(csv_path, index=False)
    if parquet_path:
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "Parquet output needs pyarrow: pip install 'hybridserve[sweep]'"
            ) from e
        df.to_parquet(parquet_path, index=False)
