"""Human-friendly durations ("1h30m", "2d", "90s") for configs and command lines.

Trace windows, forecast horizons and billing periods are all whole seconds in the simulator;
people write them with units. Parsing in one place keeps the accepted forms and the error
messages identical everywhere a duration is read.
"""

from __future__ import annotations

import math
import re

__all__ = ["ACCEPTED_FORMS", "UNIT_SECONDS", "format_duration", "parse_duration"]

#: Seconds per unit, largest first: the order a compound duration must be written in.
UNIT_SECONDS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}

#: Shown in every error so the caller learns the syntax from the message alone.
ACCEPTED_FORMS = (
    "a non-negative number of seconds (90, 90.0, '90') or amounts with units "
    "w, d, h, m, s, largest unit first ('90s', '15m', '1h30m', '2d', '1.5h')"
)

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_COMPONENT = re.compile(rf"\s*({_NUMBER})\s*([a-z])\s*")
_PLAIN_NUMBER = re.compile(rf"\s*(?:{_NUMBER})\s*")


def _invalid(field: str, value: object, why: str) -> ValueError:
    """Build the one error shape used for every rejected duration."""
    return ValueError(
        f"{field}: {value!r} is not a valid duration ({why}); expected {ACCEPTED_FORMS}"
    )


def _whole_seconds(seconds: float, field: str, value: object) -> int:
    """Turn a parsed amount into int seconds, refusing silently-rounded fractions."""
    if not math.isfinite(seconds):
        raise _invalid(field, value, "not finite")
    if seconds < 0:
        raise _invalid(field, value, "negative")
    rounded = round(seconds)
    # Tolerate float noise such as 0.1h*3600 = 359.99999999999994, not real fractions.
    if abs(seconds - rounded) > 1e-6 * max(1.0, abs(seconds)):
        raise _invalid(field, value, f"{seconds:g} s is not a whole number of seconds")
    return int(rounded)


def _parse_text(text: str, field: str) -> int:
    """Parse '90', '1h30m', '1.5h' (case-insensitive, spaces allowed between parts)."""
    lowered = text.lower()
    if not lowered.strip():
        raise _invalid(field, text, "empty")
    if lowered.lstrip().startswith("-"):
        raise _invalid(field, text, "negative")
    if _PLAIN_NUMBER.fullmatch(lowered):
        return _whole_seconds(float(lowered), field, text)
    total = 0.0
    pos = 0
    seen: list[str] = []
    units = list(UNIT_SECONDS)
    for match in _COMPONENT.finditer(lowered):
        if match.start() != pos:
            break
        pos = match.end()
        amount, unit = match.groups()
        if unit not in UNIT_SECONDS:
            raise _invalid(field, text, f"unknown unit {unit!r}")
        # Requiring w > d > h > m > s order catches typos like '1m30m' or '30m1h'.
        if seen and units.index(unit) <= units.index(seen[-1]):
            raise _invalid(field, text, f"unit {unit!r} repeated or out of order")
        seen.append(unit)
        total += float(amount) * UNIT_SECONDS[unit]
    if pos != len(lowered) or not seen:
        raise _invalid(field, text, f"cannot read {lowered[pos:].strip()!r}")
    return _whole_seconds(total, field, text)


def parse_duration(value: str | int | float, *, field: str = "duration") -> int:
    """Return ``value`` as whole seconds.

    Numbers are seconds; strings may be digits or unit amounts such as ``"1h30m"``, ``"2d"``,
    ``"1.5h"``. Fractions of a second, negatives and unknown units raise ``ValueError`` naming
    ``field`` (the config key or option being read) so the user knows what to fix.
    """
    if isinstance(value, bool):  # bool is an int subclass; True seconds is surely a mistake
        raise _invalid(field, value, "a boolean")
    if isinstance(value, int):
        return _whole_seconds(value, field, value) if value < 0 else value
    if isinstance(value, float):
        return _whole_seconds(value, field, value)
    if isinstance(value, str):
        return _parse_text(value, field)
    # numpy scalars and the like: accept anything that behaves as a real number.
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _invalid(field, value, f"type {type(value).__name__}") from None
    return _whole_seconds(number, field, value)


def format_duration(seconds: int) -> str:
    """Render seconds compactly (3660 -> '1h1m', 0 -> '0s'); ``parse_duration`` reads it back."""
    if isinstance(seconds, bool) or int(seconds) != seconds:
        raise ValueError(f"format_duration: {seconds!r} is not a whole number of seconds")
    remaining = int(seconds)
    if remaining < 0:
        raise ValueError(f"format_duration: {seconds!r} is negative")
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in UNIT_SECONDS.items():
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
