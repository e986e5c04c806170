"""A request's say in which variant serves it (issue 14, model-less serving).

A model served as a family answers under its own name with whichever variant the plan chose
(at or above the model's accuracy floor). A request may ask for more:

- a variant, by V2 version: ``POST /v2/models/chat/versions/fp32/infer``;
- a minimum accuracy, in its parameters: ``{"parameters": {"min_accuracy": 0.99}, ...}``
  (top-1 agreement with the family's reference, as the family file measures it).

The router then sends it only where an allowed variant is loaded: an instance holding one, or
the model's Lambda function when it runs one; otherwise it answers 409 naming what is loaded now
and each variant's accuracy (the plan decides what is loaded, by cost, for the model's floor; a
client that needs more than the floor all the time should raise the floor instead).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping


class VariantRefused(Exception):
    """The request's variant constraint cannot be met, or is malformed: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _min_accuracy(body: bytes, hl: bytes | None) -> float | None:
    """`parameters.min_accuracy` of a JSON request (or of a binary one's JSON header)."""
    head = body if hl is None else body[: int(hl)]
    if b"min_accuracy" not in head:  # the common case costs one substring scan
        return None
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        return None  # malformed: the server (or the spill) answers 400 with the reason
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or "min_accuracy" not in params:
        return None
    v = params["min_accuracy"]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
        raise VariantRefused(
            400, f"parameters.min_accuracy: expected a number in [0, 1], got {v!r}"
        )
    return float(v)


def allowed_variants(
    model: str,
    accuracy: Mapping[str, float],
    version: str | None,
    body: bytes,
    hl: bytes | None,
) -> frozenset[str] | None:
    """The variants that may serve this request (None: any, the plan's choice). `accuracy`:
    the model's variants and their accuracy; empty for a model without variants."""
    if not accuracy:
        return None
    floor = _min_accuracy(body, hl)
    if version is None and floor is None:
        return None
    names = ", ".join(f"{v} ({a:g})" for v, a in accuracy.items())
    if version is not None:
        if version not in accuracy:
            raise VariantRefused(
                404, f"model {model!r} has no variant {version!r}; variants (accuracy): {names}"
            )
        if floor is not None and accuracy[version] < floor - 1e-12:
            raise VariantRefused(
                400,
                f"variant {version!r} of model {model!r} has accuracy {accuracy[version]:g}, "
                f"below the request's min_accuracy {floor:g}",
            )
        return frozenset((version,))
    assert floor is not None
    ok = frozenset(v for v, a in accuracy.items() if a >= floor - 1e-12)
    if not ok:
        best = max(accuracy.values(), default=math.nan)
        raise VariantRefused(
            400,
            f"no variant of model {model!r} reaches min_accuracy {floor:g} (best {best:g}); "
            f"variants (accuracy): {names}",
        )
    return ok


def not_loaded(
    model: str,
    allowed: frozenset[str],
    accuracy: Mapping[str, float],
    loaded: Mapping[str, int],
    lambda_variant: str | None,
) -> str:
    """The 409's message: what the request allows, and what serves the model now."""
    where = [f"{v} on {n} instance{'s' if n != 1 else ''}" for v, n in sorted(loaded.items())]
    if lambda_variant is not None:
        where.append(f"{lambda_variant} on Lambda")
    names = ", ".join(f"{v} ({a:g})" for v, a in accuracy.items())
    return (
        f"no instance or Lambda function serves model {model!r} as "
        f"{' or '.join(sorted(allowed))} now; it is served as {', '.join(where) or 'nothing'} "
        f"(the plan chooses by cost at the model's accuracy floor); variants (accuracy): {names}"
    )
