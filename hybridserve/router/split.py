"""Splitting a model's traffic between its versions by weight (issue 15: canary and
blue/green), sticky per request key.

A request that carries a key (a user or session id) lands in a fixed bucket in [0, 1) from a
keyed hash of it, the same in every router process and run; versions own consecutive slices of
[0, 1), the canary's first. A key therefore keeps its version while the weights stay, and as
the canary's weight grows (5% -> 25% -> 100%) the keys it had stay with it: no user flips back
and forth during a rollout. A request without a key draws its bucket at random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

SALT = b"hybridserve-split-v1"


def bucket(key: str) -> float:
    """The key's fixed place in [0, 1)."""
    h = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=SALT).digest()
    return int.from_bytes(h, "big") / 2.0**64


def choose(
    weights: Sequence[tuple[str, float]], key: str | None, rng: random.Random | None = None
) -> str:
    """The version for one request: `weights` are (version, weight) with the canary first,
    weights >= 0 and not all zero (normalised here)."""
    if not weights:
        raise ValueError("no versions to choose among")
    total = sum(w for _, w in weights)
    if any(w < 0 for _, w in weights) or total <= 0:
        raise ValueError(f"weights must be >= 0 and not all zero, got {list(weights)}")
    x = bucket(key) if key is not None else (rng or random).random()
    edge = 0.0
    for version, w in weights:
        edge += w / total
        if x < edge:
            return version
    return weights[-1][0]  # x at the very top (rounding): the last version
