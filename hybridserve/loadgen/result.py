"""What one benchmark run measured: the per-request arrays reduced (vectorised) to the report,
with latency percentiles, send lag, errors by kind and a per-second timeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Above this p99 send lag (ms) the generator itself may be the bottleneck.
LAG_WARN_MS = 5.0
#: Percentiles reported for OK latencies, as (key, percentile).
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
#: The report's figures repeated per model of a mix (plus ``model`` and ``error_count``).
MODEL_KEYS = ("scheduled", "sent", "ok", "errors", "offered_rps", "achieved_rps", "latency_ms")


@dataclass
class BenchResult:
    """What one run measured; ``to_dict()`` is the JSON report.

    Counts and latencies cover the measured requests only (scheduled at or after
    ``warmup_s``); ``timeline`` covers every second, warm-up included.
    """

    url: str
    model: str
    duration_s: float
    warmup_s: float
    scheduled: int
    sent: int
    ok: int
    errors: dict[str, int]
    offered_rps: float
    achieved_rps: float
    span_s: float
    latency_ms: dict[str, float | None]
    send_lag_ms: dict[str, float | None]
    warmup_requests: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # per request, for scripts (not in the JSON): send time s, HTTP status (<= 0: no answer), ms
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    # with a model mix: per model (in the mix's order) its name and MODEL_KEYS figures; the
    # samples then add "model", each request's index into this list
    models: list[dict[str, Any]] | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def lag_warning(self) -> str | None:
        """A warning when the generator was late, else None."""
        p99 = self.send_lag_ms.get("p99")
        if p99 is None or p99 <= LAG_WARN_MS:
            return None
        return (
            f"warning: send lag p99 {p99:.1f} ms > {LAG_WARN_MS:g} ms: the load generator may be "
            "the bottleneck (too busy a machine, or too high a rate for one process)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples", None)
        if self.models is None:
            d.pop("models", None)  # the report without a mix is as it always was
        d["error_count"] = self.error_count
        return d


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 3)


def _latency_summary(lat_s: np.ndarray) -> dict[str, float | None]:
    keys = [k for k, _ in PERCENTILES] + ["max", "mean"]
    if lat_s.size == 0:
        return dict.fromkeys(keys)
    qs = np.percentile(lat_s, [q for _, q in PERCENTILES])
    out: dict[str, float | None] = {k: _ms(v) for (k, _), v in zip(PERCENTILES, qs, strict=True)}
    out["max"] = _ms(lat_s.max())
    out["mean"] = _ms(lat_s.mean())
    return out


def _timeline(
    schedule: np.ndarray, status: np.ndarray, latency: np.ndarray, sent: np.ndarray
) -> list[dict[str, Any]]:
    """Per scheduled second: sent, ok, errors, p99 of OK latencies (None without any)."""
    if schedule.size == 0:
        return []
    sec = np.floor(schedule).astype(np.int64)
    nsec = int(sec[-1]) + 1
    ok = (status >= 200) & (status < 300)
    sent_n = np.bincount(sec, weights=sent, minlength=nsec).astype(np.int64)
    ok_n = np.bincount(sec, weights=ok, minlength=nsec).astype(np.int64)
    err_n = np.bincount(sec, weights=sent & ~ok, minlength=nsec).astype(np.int64)
    ok_sec, ok_lat = sec[ok], latency[ok]
    bounds = np.searchsorted(ok_sec, np.arange(nsec + 1))  # schedule is sorted
    rows = []
    for t in range(nsec):
        lat = ok_lat[bounds[t] : bounds[t + 1]]
        p99 = _ms(np.percentile(lat, 99.0)) if lat.size else None
        rows.append(
            {
                "t": t,
                "sent": int(sent_n[t]),
                "ok": int(ok_n[t]),
                "errors": int(err_n[t]),
                "p99_ms": p99,
            }
        )
    return rows


def _figures(
    schedule: np.ndarray,
    duration_s: float,
    warmup_s: float,
    status: np.ndarray,
    latency: np.ndarray,
    lag: np.ndarray,
    done_at: np.ndarray,
    kinds: Mapping[int, str],
) -> dict[str, Any]:
    """Counts, rates, errors and percentiles of a run's measured requests (vectorised); the
    one code path for the whole run and for each model of a mix."""
    started = ~np.isnan(lag)
    measured = schedule >= warmup_s
    m_sent = started & measured
    ok = (status >= 200) & (status < 300)
    m_ok = ok & measured
    bad = m_sent & ~ok
    errors: dict[str, int] = {}
    codes, n = np.unique(status[bad], return_counts=True)
    for code, cnt in zip(codes.tolist(), n.tolist(), strict=True):
        # 0: no answer by the run's deadline, i.e. a timeout; < 0: an exception kind.
        kind = f"http_{code}" if code > 0 else kinds[code] if code < 0 else "timeout"
        errors[kind] = errors.get(kind, 0) + int(cnt)
    window = max(duration_s - warmup_s, 1e-9)
    ends = done_at[m_sent & ~np.isnan(done_at)]
    span = max(duration_s, float(ends.max()) if ends.size else 0.0) - warmup_s
    span = max(span, 1e-9)
    lag_m = lag[m_sent]
    lag_ms: dict[str, float | None] = (
        {
            "p50": _ms(np.percentile(lag_m, 50)),
            "p99": _ms(np.percentile(lag_m, 99)),
            "max": _ms(lag_m.max()),
        }
        if lag_m.size
        else {"p50": None, "p99": None, "max": None}
    )
    return {
        "scheduled": int(measured.sum()),
        "sent": int(m_sent.sum()),
        "ok": int(m_ok.sum()),
        "errors": dict(sorted(errors.items())),
        "offered_rps": round(int(measured.sum()) / window, 3),
        "achieved_rps": round(int(m_ok.sum()) / span, 3),
        "span_s": round(span, 6),
        "latency_ms": _latency_summary(latency[m_ok]),
        "send_lag_ms": lag_ms,
        "warmup_requests": int((~measured).sum()),
    }


def _per_model(
    names: Sequence[str],
    which: np.ndarray,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    duration_s: float,
    warmup_s: float,
    kinds: Mapping[int, str],
) -> list[dict[str, Any]]:
    """:func:`_figures` on each model's requests (``which`` holds the index into ``names``),
    under the report's keys for the same figures; a model drawn for no request reports 0."""
    rows = []
    for k, name in enumerate(names):
        mask = which == k
        schedule, status, latency, lag, done_at = (a[mask] for a in arrays)
        f = _figures(schedule, duration_s, warmup_s, status, latency, lag, done_at, kinds)
        row = {"model": name, **{key: f[key] for key in MODEL_KEYS}}
        row["error_count"] = sum(f["errors"].values())
        rows.append(row)
    return rows


def summarize(
    url: str,
    model: str,
    schedule: np.ndarray,
    duration_s: float,
    warmup_s: float,
    status: np.ndarray,
    latency: np.ndarray,
    lag: np.ndarray,
    done_at: np.ndarray,
    kinds: Mapping[int, str],
    mix: tuple[Sequence[str], np.ndarray] | None = None,
) -> BenchResult:
    """Reduce the per-request arrays to the report (vectorised). ``mix`` is the model names
    and each request's index into them, for the per-model breakdown of a model mix."""
    figures = _figures(schedule, duration_s, warmup_s, status, latency, lag, done_at, kinds)
    samples = {"send_s": schedule, "status": status, "latency_ms": latency * 1000.0}
    models = None
    if mix is not None:
        names, which = mix
        arrays = (schedule, status, latency, lag, done_at)
        models = _per_model(names, which, arrays, duration_s, warmup_s, kinds)
        samples["model"] = which
    return BenchResult(
        url=url,
        model=model,
        duration_s=round(float(duration_s), 6),
        warmup_s=float(warmup_s),
        **figures,
        timeline=_timeline(schedule, status, latency, ~np.isnan(lag)),
        samples=samples,
        models=models,
    )
