"""The router's rollout API, what `hybridserve rollout` calls (behind the router's API key):

- ``GET /rollouts``: every model's rollout status;
- ``GET /rollouts/{model}``: one;
- ``POST /rollouts/{model}`` with a `RolloutSpec` (JSON, `model` implied): start one;
- ``POST /rollouts/{model}/promote`` and ``.../rollback``.

Errors: 400 naming the field of a bad spec, 404 for a model or rollout the router does not
know, 409 when the action does not fit the rollout's phase.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from hybridserve.config_base import format_validation_error
from hybridserve.release import RolloutSpec
from hybridserve.router.asgi import BodyTooLarge, read_body, reply_json

if TYPE_CHECKING:
    from hybridserve.router.app import Router

SPEC_BYTES = 64 * 1024


async def rollout_route(
    router: Router, parts: list[str], method: str, receive: Callable, send: Callable
) -> None:
    """`parts`: the path's segments, the first being "rollouts"."""
    ro = router.rollouts
    now = time.monotonic()
    try:
        if parts == ["rollouts"] and method == "GET":
            await reply_json(send, 200, {m: r.status(now) for m, r in ro.by_model.items()})
        elif len(parts) == 2 and method == "GET":
            await reply_json(send, 200, ro.get(parts[1]).status(now))
        elif len(parts) == 2 and method == "POST":
            body = await read_body(receive, SPEC_BYTES)
            spec = _spec(parts[1], body)
            await reply_json(send, 201, ro.start(spec, now).status(now))
        elif len(parts) == 3 and method == "POST" and parts[2] in ("promote", "rollback"):
            act = ro.promote if parts[2] == "promote" else ro.rollback
            await reply_json(send, 200, act(parts[1], now).status(now))
        else:
            await reply_json(send, 404, {"error": f"no route for {method} /{'/'.join(parts)}"})
    except _BadSpec as e:
        await reply_json(send, 400, {"error": str(e)})
    except BodyTooLarge:
        await reply_json(send, 413, {"error": f"rollout spec over {SPEC_BYTES} bytes"})
    except LookupError as e:
        await reply_json(send, 404, {"error": str(e).strip("'\"")})
    except ValueError as e:
        await reply_json(send, 409, {"error": str(e)})


class _BadSpec(Exception):
    pass


def _spec(model: str, body: bytes) -> RolloutSpec:
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise _BadSpec(f"rollout spec: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _BadSpec("rollout spec: expected a JSON object")
    if doc.setdefault("model", model) != model:
        raise _BadSpec(f"rollout spec: field model: {doc['model']!r} is not the path's {model!r}")
    try:
        return RolloutSpec.model_validate(doc)
    except ValidationError as e:
        raise _BadSpec(format_validation_error(e, "rollout spec")) from None
