"""A model mix for a benchmark: which model each scheduled request goes to.

``--model-mix "a=0.7,b=0.3"`` is parsed into normalised weights, and each scheduled request's
model is a seeded draw, so one seed gives one assignment (and runs can be repeated). The draw
takes a random stream of its own, derived from the seed, rather than reusing the bit stream the
send times and payload values are drawn from with the same ``--seed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

#: A V2 model name, as the model repository and the multi-model fleet spec accept it.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EXPECTED = (
    "expected NAME=WEIGHT entries separated by commas, e.g. 'a=0.7,b=0.3', NAME a V2 model name "
    "(1-64 letters, digits, '_', '.', '-', starting with a letter or digit), WEIGHT a number > 0"
)
#: Mixed into the seed so the draw has a stream of its own (schedules use ``default_rng(seed)``).
_MIX_STREAM = 0x6D6978


class MixError(ValueError):
    """A bad ``--model-mix``; the message names the entry and what was expected."""


def parse_model_mix(spec: str) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}``, weights normalised to sum to 1, in the
    order given (the order the report lists the models in)."""
    if not spec.strip():
        raise MixError(f"--model-mix is empty; {EXPECTED}")
    weights: dict[str, float] = {}
    for raw in spec.split(","):
        entry = raw.strip()
        name, sep, value = (part.strip() for part in entry.partition("="))
        where = f"--model-mix entry {entry!r}"
        if not sep:
            raise MixError(f"{where} has no '=WEIGHT'; {EXPECTED}")
        if not MODEL_NAME.fullmatch(name):
            raise MixError(f"{where}: {name!r} is not a V2 model name; {EXPECTED}")
        try:
            weight = float(value)
        except ValueError:
            raise MixError(f"{where}: weight {value!r} is not a number; {EXPECTED}") from None
        if not (math.isfinite(weight) and weight > 0):
            raise MixError(f"{where}: weight {value!r} is not > 0; {EXPECTED}")
        if name in weights:
            raise MixError(f"{where}: model {name!r} is listed twice; {EXPECTED}")
        weights[name] = weight
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def assign_models(weights: Mapping[str, float], n: int, seed: int = 0) -> np.ndarray:
    """Model index (into ``list(weights)``) of each of ``n`` requests: independent draws with
    the given probabilities (normalised here too), the same for the same seed."""
    p = np.asarray(list(weights.values()), dtype=np.float64)
    if p.size == 0 or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"model weights must be finite and > 0, got {dict(weights)}")
    if n < 0:
        raise ValueError(f"the number of requests must be >= 0, got {n}")
    rng = np.random.default_rng([seed, _MIX_STREAM])
    return rng.choice(p.size, size=n, p=p / p.sum()).astype(np.intp)


def draw_models(weights: Mapping[str, float], n: int, seed: int = 0) -> list[str]:
    """The model name of each of ``n`` requests (see :func:`assign_models`), as ``run_bench``'s
    ``models`` takes them."""
    names = list(weights)
    return [names[k] for k in assign_models(weights, n, seed).tolist()]
