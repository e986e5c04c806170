"""The Controller's state as data, so a restarted controller resumes where it left off.

As Ray Serve's autoscaling policy hands back its state with each decision, the planners here
expose theirs (`state()` / `restore(state)`): the last solved plan and its demand, the reactive
timers, the fallback counts. The forecaster's state is its history: the interval rates seen so
far (bounded), replayed through a fresh forecaster on restore, observe then forecast as the
loop did, so its fits and conformal residuals come back as they were. The burst profile is
saved as it is. `dumps`/`loads` give JSON with numpy arrays tagged and restored exactly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

STATE_VERSION = 1
HISTORY_S = 14 * 86400  # rates kept for a restart: two weekly seasons


def planner_state(planner: Any) -> dict[str, Any]:
    """A planner's explicit state; {} for a stateless one (its memos are caches)."""
    get = getattr(planner, "state", None)
    return get() if callable(get) else {}


def restore_planner(planner: Any, state: dict[str, Any]) -> None:
    put = getattr(planner, "restore", None)
    if callable(put) and state:
        put(state)


def _encode(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype), "shape": list(x.shape)}
    if isinstance(x, dict):
        return {str(k): _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if "__ndarray__" in x:
            return np.array(x["__ndarray__"], dtype=x["dtype"]).reshape(x["shape"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def dumps(state: dict[str, Any]) -> str:
    """JSON text (floats round-trip exactly; -inf timers as -Infinity, which json reads back)."""
    return json.dumps(_encode(state), separators=(",", ":"))


def loads(text: str | bytes, source: str = "controller state") -> dict[str, Any]:
    """The state from `dumps`; ValueError naming `source` and what was wrong otherwise."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{source}: expected a controller state of version {STATE_VERSION}, got {got!r}"
        )
    return _decode(doc)


def check_compatible(state: dict[str, Any], *, interval_s: int, policy: str, source: str) -> None:
    """A state saved by another policy or interval would resume the wrong controller."""
    for key, want in (("interval_s", interval_s), ("policy", policy)):
        if state.get(key) != want:
            raise ValueError(
                f"{source}: saved with {key} {state.get(key)!r}, this controller has {want!r}; "
                "delete the state to start afresh"
            )
