"""Spot interruptions as AWS runs them: the Spot Instance Advisor's bands, a trace of reclaims,
and the one path a notice takes in the simulator and on AWS.

Models (`spot.interruptions` of a scenario; the simulated backend draws from them):

- `advisor`: each instance type has the advisor's frequency-of-interruption band, the share of
  its spot instances AWS reclaimed over the trailing month (`hybridserve/data/spot-advisor-
  us-east-1.yaml`, a snapshot to refresh). A point in the band (`band_position`) is a monthly
  fraction f, turned into a constant per-instance hazard: an instance that runs the whole month
  (730 h) is interrupted with probability f, so rate = -ln(1 - f) / 730 per hour.
- `rate`: one hazard for every spot pool (`interruptions_per_hour`), the model before bands.
- `trace`: a CSV of reclaims (`time_s,instance_type` or `time_s,pool`): each row reclaims one
  live spot instance of that type at that second.

`correlation` (advisor and rate): AWS reclaims capacity pools, so interruptions of one pool come
together. With correlation c, a pool's instances have an independent hazard (1 - c) h, and the
pool has shocks at rate h, each reclaiming every instance of the pool with probability c: each
instance keeps the hazard h, and a shock takes a fraction c of the pool at once.

`take_notices` is the decision a notice triggers, in the simulator and in the AWS controller
loop alike: the backend takes the instances out of its fleet view, then the controller converges
to its last target at once, which launches the replacements at the notice.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from hybridserve.config_base import (
    ConfigError,
    Strict,
    format_validation_error,
    load_yaml,
    read_yaml_mapping,
)

HOURS_PER_MONTH = 730.0  # AWS's month for hourly prices (8,760 h / 12)
Band = Literal["<5%", "5-10%", "10-15%", "15-20%", ">20%"]
# monthly fraction of instances interrupted: (low, high) of each advisor band. The advisor gives
# no upper bound for ">20%"; 40% is this project's assumption (its mid point is 30%).
BANDS: dict[str, tuple[float, float]] = {
    "<5%": (0.0, 0.05),
    "5-10%": (0.05, 0.10),
    "10-15%": (0.10, 0.15),
    "15-20%": (0.15, 0.20),
    ">20%": (0.20, 0.40),
}
POSITIONS = {"low": 0.0, "mid": 0.5, "high": 1.0}
BUILTIN_ADVISOR = "spot-advisor-us-east-1.yaml"


def hourly_rate(monthly_fraction: float) -> float:
    """Per-instance hazard (interruptions per hour) under which an instance running a whole
    month (730 h) is interrupted with probability `monthly_fraction`: -ln(1 - f) / 730."""
    f = float(monthly_fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"a monthly interruption fraction is in [0, 1), got {f}")
    return -math.log1p(-f) / HOURS_PER_MONTH


def band_fraction(band: str, position: str | float = "mid") -> float:
    """The monthly fraction at `position` in an advisor band: low, mid, high, or a quantile in
    [0, 1] (0 the band's floor, 1 its ceiling; >20% tops out at the assumed 40%)."""
    lo, hi = BANDS[band]
    q = POSITIONS[position] if isinstance(position, str) else float(position)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"band_position is low, mid, high or a quantile in [0, 1], got {q}")
    return lo + q * (hi - lo)


# --- the advisor file --------------------------------------------------------------------


class AdvisorEntry(Strict):
    band: Band
    savings_percent: int | None = Field(None, ge=0, le=100)


class SpotAdvisor(Strict):
    """Frequency-of-interruption bands of one region, with the snapshot's date and source."""

    region: str
    os: str = "Linux"
    snapshot_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    source: str
    instances: dict[str, AdvisorEntry]


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: its path and what changes when it is rewritten."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def load_advisor(path: str | os.PathLike[str] | None = None) -> SpotAdvisor:
    """The advisor bands of `path` (None: the built-in us-east-1 snapshot). Errors name the file
    and the field (`instances.c5.large.band`)."""
    if path is None:
        return _builtin_advisor()
    p = Path(path)
    try:
        key = _file_key(p)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the spot advisor bands: {e.strerror}") from None
    return _load_advisor(*key)


@lru_cache(maxsize=1)
def _builtin_advisor() -> SpotAdvisor:
    text = resources.files("hybridserve.data").joinpath(BUILTIN_ADVISOR).read_text()
    return _parse_advisor(text, f"hybridserve/data/{BUILTIN_ADVISOR}")


@lru_cache(maxsize=8)
def _load_advisor(path: str, _mtime_ns: int, _size: int) -> SpotAdvisor:
    data = read_yaml_mapping(path, "spot advisor")
    return _validate_advisor(data, path)


def _parse_advisor(text: str, source: str) -> SpotAdvisor:
    data = load_yaml(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping of spot advisor fields")
    return _validate_advisor(data, source)


def _validate_advisor(data: dict[str, Any], source: str) -> SpotAdvisor:
    try:
        return SpotAdvisor.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


# --- interruption traces -----------------------------------------------------------------


@dataclass(frozen=True)
class Reclaim:
    """One row of an interruption trace: at `time_s`, one live spot instance of
    `instance_type` is reclaimed (`line`: where the row is, for messages)."""

    time_s: float
    instance_type: str
    line: int


TRACE_COLUMNS = ("time_s", "instance_type", "pool")


def load_interruption_trace(path: str | os.PathLike[str]) -> tuple[Reclaim, ...]:
    """The reclaims of a CSV trace, in time order (rows of one second keep their order).

    Columns: `time_s` (seconds from the trace's start) and `instance_type` (`c5.large`) or
    `pool` (`c5.large/spot`); lines starting with `#` and blank lines are skipped. Errors name
    the file and the line."""
    p = Path(path)
    try:
        key = _file_key(p)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the interruption trace: {e.strerror}") from None
    return _load_trace(*key)


@lru_cache(maxsize=8)
def _load_trace(path: str, _mtime_ns: int, _size: int) -> tuple[Reclaim, ...]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the interruption trace: {e}") from None
    rows = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise ConfigError(
            f"{path}: empty interruption trace: expected a header time_s,instance_type"
        )
    head_n, head = rows[0]
    header = [c.strip().lower() for c in next(csv.reader(io.StringIO(head)))]
    what = [c for c in ("instance_type", "pool") if c in header]
    unknown = [c for c in header if c not in TRACE_COLUMNS]
    if "time_s" not in header or len(what) != 1 or unknown or len(set(header)) != len(header):
        raise ConfigError(
            f"{path}:{head_n}: header {head.strip()!r}: expected the columns time_s and one of "
            f"instance_type, pool (e.g. time_s,instance_type)"
        )
    it, ic = header.index("time_s"), header.index(what[0])
    out = []
    for n, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader(io.StringIO(line)))]
        if len(cells) != len(header):
            raise ConfigError(
                f"{path}:{n}: {len(cells)} columns, expected {len(header)} ({','.join(header)})"
            )
        try:
            t = float(cells[it])
        except ValueError:
            raise ConfigError(f"{path}:{n}: time_s {cells[it]!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise ConfigError(f"{path}:{n}: time_s {cells[it]} must be finite and >= 0")
        name = cells[ic]
        if what[0] == "pool":
            typ, _, market = name.partition("/")
            if market != "spot":
                raise ConfigError(
                    f"{path}:{n}: pool {name!r}: only spot pools are interrupted "
                    f"(expected TYPE/spot, e.g. c5.large/spot)"
                )
            name = typ
        if not name:
            raise ConfigError(f"{path}:{n}: empty {what[0]}")
        out.append(Reclaim(t, name, n))
    return tuple(sorted(out, key=lambda r: r.time_s))


# --- the notice ----------------------------------------------------------------------------


def take_notices(
    instance_ids: Iterable[str],
    notice: Callable[[list[str]], list[str]],
    on_notice: Callable[[], Any] | None,
) -> tuple[list[str], list]:
    """What a spot interruption notice does, in the simulator and on AWS alike.

    `notice` is the backend's (`SimulatedBackend.notice`, `AwsBackend.notice`): of the instances
    named, those still live in its fleet leave the fleet's view at once (their requests finish,
    no new ones come) and are returned. Then, if any did, `on_notice` (`Controller.on_notice`)
    converges to the last target right away, which launches their replacements at the notice
    rather than at the next step. Returns (the instances taken, the actions of the converge);
    a notice for no instance of this fleet (another deployment's, or one already taken) does
    nothing."""
    ours = notice(list(instance_ids))
    if not ours or on_notice is None:
        return list(ours), []
    return list(ours), list(on_notice() or [])
