"""`hybridserve bench`: open-loop load against a V2 endpoint; latency, errors, achieved rate.

Thin wrapper over :mod:`hybridserve.loadgen`: reads options, builds the schedule and the
payload (one per model of a --model-mix, each request's model a seeded draw), runs, prints. Bad usage is a one-line error (exit 2); HTTP errors are results (exit 0).
"""

from __future__ import annotations

import json
import math
from typing import Any

import click
from click.core import ParameterSource

from hybridserve.cli.common import UserError, trace_options, user_errors

DEFAULT_QPS_DURATION_S = 10.0


@click.command()
@click.option("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000.")
@click.option("--qps", type=float, default=None, help="Poisson arrivals at this mean rate.")
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    help="Replay this trace's per-second counts instead of --qps.",
)
@trace_options
@click.option("--model", default="distilbert", show_default=True, help="Model to infer on.")
@click.option(
    "--model-mix",
    default=None,
    metavar="NAME=WEIGHT,...",
    help="Spread requests over models, e.g. 'a=0.7,b=0.3' (weights normalised; each request's "
    "model a draw seeded by --seed); instead of --model. Reports each model's figures too.",
)
@click.option(
    "--payload",
    "payload_path",
    type=click.Path(dir_okay=False),
    help="V2 JSON request body sent as is, to every model of a mix too (default: built from "
    "each model's metadata).",
)
@click.option(
    "--api-key",
    envvar="HYBRIDSERVE_API_KEY",
    default=None,
    help="Sent as 'Authorization: Bearer KEY' (env HYBRIDSERVE_API_KEY).",
)
@click.option("--timeout-s", type=float, default=30.0, show_default=True, help="Per request.")
@click.option(
    "--connections", type=int, default=256, show_default=True, help="Keep-alive connection pool."
)
@click.option(
    "--warmup",
    "warmup_s",
    type=float,
    default=0.0,
    show_default=True,
    help="Requests scheduled in the first S seconds are sent but not counted.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def bench(**kw: Any) -> None:
    """Send open-loop load (Poisson --qps, or a --trace replay) to a V2 model endpoint.

    Requests leave at their scheduled times however many are outstanding. --duration is
    seconds (or 90s, 5m, ...): the length of a --qps run (default 10 s) or a cap on a replay.
    """
    model_given = click.get_current_context().get_parameter_source("model")
    with user_errors():
        _bench(**kw, model_given=model_given is not ParameterSource.DEFAULT)


def _seconds(value: str, option: str) -> float:
    """A positive duration: plain (fractional) seconds or unit amounts such as '5m'."""
    from hybridserve.units import parse_duration

    try:
        seconds = float(value)
    except ValueError:
        seconds = float(parse_duration(value, field=option))
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"{option} must be > 0, got {value!r}")
    return seconds


def _schedule(
    qps: float | None,
    trace_path: str | None,
    duration: str | None,
    seed: int,
    trace_kw: dict[str, Any],
) -> tuple[Any, float]:
    """Send times and the run's nominal length, from --qps or --trace."""
    from hybridserve.loadgen import poisson_schedule, trace_schedule

    if (qps is None) == (trace_path is None):
        raise UserError("give exactly one of --qps or --trace")
    duration_s = None if duration is None else _seconds(duration, "--duration")
    if qps is not None:
        if not (math.isfinite(qps) and qps > 0):
            raise UserError(f"--qps must be > 0, got {qps:g}")
        duration_s = duration_s or DEFAULT_QPS_DURATION_S
        return poisson_schedule(qps, duration_s, seed), duration_s
    from simulations.traces import load_trace

    trace = load_trace(
        trace_path,
        trace_kw["trace_format"],
        timestamp_column=trace_kw["timestamp_column"],
        rate_scale=trace_kw["rate_scale"],
        start=trace_kw["start"],
        duration=None if duration_s is None else math.ceil(duration_s),
        seed=seed,
    )
    length = float(trace.seconds) if duration_s is None else min(duration_s, trace.seconds)
    schedule = trace_schedule(trace.counts, seed, length)
    if schedule.size == 0:
        raise UserError(f"{trace_path}: the trace has no requests in the selected range")
    return schedule, length


def _models(
    url: str,
    model: str,
    weights: dict[str, float] | None,
    body: bytes | None,
    headers: dict[str, str],
    n: int,
    seed: int,
) -> dict[str, Any]:
    """bench_sync's model arguments: one model and its body, or a mix's per-request models
    (a seeded draw) and each model's body (its own metadata's, unless --payload gave one)."""
    from hybridserve import loadgen

    def built(name: str) -> bytes:
        return loadgen.build_payload(loadgen.fetch_metadata(url, name, headers), seed)

    if weights is None:
        return {"body": built(model) if body is None else body, "model": model}
    bodies = {name: built(name) if body is None else body for name in weights}
    return {"body": b"", "models": loadgen.draw_models(weights, n, seed), "bodies": bodies}


def _bench(
    url: str,
    qps: float | None,
    trace_path: str | None,
    trace_format: str,
    timestamp_column: str,
    rate_scale: float,
    start: str,
    duration: str | None,
    model: str,
    model_mix: str | None,
    model_given: bool,
    payload_path: str | None,
    api_key: str | None,
    timeout_s: float,
    connections: int,
    warmup_s: float,
    seed: int,
    as_json: bool,
) -> None:
    from hybridserve import loadgen

    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UserError(f"--timeout-s must be > 0, got {timeout_s:g}")
    if connections < 1:
        raise UserError(f"--connections must be >= 1, got {connections}")
    weights = None
    if model_mix is not None:
        if model_given:
            raise UserError(f"give --model {model!r} or --model-mix {model_mix!r}, not both")
        weights = loadgen.parse_model_mix(model_mix)  # named before any other work
    trace_kw = {
        "trace_format": trace_format,
        "timestamp_column": timestamp_column,
        "rate_scale": rate_scale,
        "start": start,
    }
    schedule, duration_s = _schedule(qps, trace_path, duration, seed, trace_kw)
    if not (math.isfinite(warmup_s) and 0 <= warmup_s < duration_s):
        raise UserError(f"--warmup must be >= 0 and shorter than the run ({duration_s:g} s)")
    headers = loadgen.request_headers(api_key)
    body = loadgen.load_payload(payload_path) if payload_path else None
    routing = _models(url, model, weights, body, headers, len(schedule), seed)
    result = loadgen.bench_sync(
        url,
        schedule,
        **routing,
        headers=headers,
        timeout_s=timeout_s,
        connections=connections,
        warmup_s=warmup_s,
        duration_s=duration_s,
    )
    if result.lag_warning:
        click.echo(result.lag_warning, err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(format_result(result))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def format_result(r: Any) -> str:
    """A short human summary of a BenchResult (the timeline is only in --json)."""
    what = f"model {r.model}" if r.models is None else f"models {r.model.replace(',', ', ')}"
    lines = [
        f"bench {r.url} {what}: {r.sent:,} sent over {r.duration_s - r.warmup_s:g} s"
        + (f" (after {r.warmup_s:g} s warm-up)" if r.warmup_s else ""),
        f"rate     offered {r.offered_rps:,.1f}/s  achieved {r.achieved_rps:,.1f}/s  "
        f"ok {r.ok:,}  errors {r.error_count:,}",
    ]
    keys = list(r.latency_ms)
    lines.append("latency  " + "  ".join(f"{k} {_fmt(r.latency_ms[k])}" for k in keys) + "  ms")
    lines.append(
        f"send lag p50 {_fmt(r.send_lag_ms['p50'])}  p99 {_fmt(r.send_lag_ms['p99'])}  "
        f"max {_fmt(r.send_lag_ms['max'])}  ms"
    )
    if r.errors:
        lines.append("errors   " + ", ".join(f"{k} {v:,}" for k, v in r.errors.items()))
    lines.extend(_model_lines(r))
    return "\n".join(lines)


def _model_lines(r: Any) -> list[str]:
    """One line per model of a mix: its share of the requests, counts and p50/p99."""
    if not r.models:
        return []
    width = max(len(m["model"]) for m in r.models)
    out = []
    for m in r.models:
        share = m["scheduled"] / r.scheduled if r.scheduled else 0.0
        lat = m["latency_ms"]
        out.append(
            f"model {m['model']:<{width}}  {share:6.1%}  sent {m['sent']:,}  ok {m['ok']:,}  "
            f"errors {m['error_count']:,}  p50 {_fmt(lat['p50'])}  p99 {_fmt(lat['p99'])}  ms"
        )
    return out
