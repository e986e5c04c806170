"""The router's ASGI plumbing: reading a body, writing a reply, and re-encoding a request as the
compact V2 JSON a Lambda batch event carries. No routing decision here (see app.Router)."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from typing import Any

JSON = b"application/json"
HL = b"inference-header-content-length"
SERVER_METADATA = {
    "name": "hybridserve-router",
    "version": "0.1.0",
    "extensions": ["binary_tensor_data"],
}


SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a model version in a path


class BodyTooLarge(Exception):
    """The request body is over the router's limit (answered 413, read no further)."""


class BadRequest(Exception):
    """A request the router refuses before routing it (answered 400 with the message)."""


def model_path(model: str, version: str | None) -> str:
    """The model's upstream path, built from validated parts: nothing a client sent reaches
    the instance's request line unchecked (the ASGI path is percent-decoded: %0d%0a is CR LF)."""
    if version is None:
        return f"/v2/models/{model}"
    if not SEGMENT.fullmatch(version):
        raise BadRequest(f"model version {version!r}: expected letters, digits, '.', '_', '-'")
    return f"/v2/models/{model}/versions/{version}"


def header_length(hl: bytes, body_bytes: int) -> bytes:
    """A valid Inference-Header-Content-Length: ASCII digits, at most the body's length."""
    if not (hl.isdigit() and int(hl) <= body_bytes):  # bytes.isdigit: ASCII digits only
        raise BadRequest(
            f"Inference-Header-Content-Length {hl[:32]!r}: expected a byte count of at most "
            f"the body's {body_bytes}"
        )
    return hl


def authorized(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    """`Authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant time."""
    for k, v in headers:
        if k == b"authorization" and v[:7].lower() == b"bearer ":
            return hmac.compare_digest(v[7:].strip(), key)
        if k == b"x-api-key":
            return hmac.compare_digest(v.strip(), key)
    return False


def as_json_request(body: bytes, hl: bytes | None) -> bytes:
    """The request as compact V2 JSON bytes (what the Lambda batch event carries).

    A JSON body is checked to be one object and passed on as is; a binary-extension body is
    decoded with the V2 codec and re-encoded as JSON. ValueError names what was wrong."""
    if hl is None:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"request body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError(
                f"request body must be a JSON object (V2 inference request), got {type(doc).__name__}"
            )
        return body
    from predictors.v2 import V2Error, decode_request
    from predictors.v2_bytes import BYTES, to_json

    try:
        req = decode_request(body, hl.decode())
    except V2Error as e:
        raise ValueError(e.message) from None
    out: dict[str, Any] = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "data": to_json(t.data) if t.datatype == BYTES else t.data.ravel().tolist(),
            }
            for t in req.inputs
        ]
    }
    if req.id is not None:
        out["id"] = req.id
    if req.outputs:
        out["outputs"] = [{"name": o.name} for o in req.outputs]
    return json.dumps(out, separators=(",", ":")).encode()


async def read_body(receive: Callable, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes `limit` bytes."""
    msg = await receive()
    body = msg.get("body", b"")
    n = len(body)
    if n > limit:
        raise BodyTooLarge
    if not msg.get("more_body"):
        return body
    chunks = [body]
    while msg.get("more_body"):
        msg = await receive()
        chunk = msg.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def reply(
    send: Callable, status: int, body: bytes, ctype: bytes = JSON, extra: tuple = ()
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if extra:
        for k, v in extra:
            if k == b"content-type":
                headers[0] = (k, v)
            else:
                headers.append((k, v))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def reply_json(send: Callable, status: int, doc: Any) -> None:
    await reply(send, status, json.dumps(doc).encode())
