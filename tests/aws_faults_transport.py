"""Moto made to see the transport a request came over, as S3 does: the `aws:SecureTransport`
condition key of bucket policies.

On AWS every request carries `aws:SecureTransport`: `true` when it came over TLS, `false` over
plain HTTP. A bucket policy statement applies only when all its conditions hold, so AWS's
TLS-only pattern (`Deny s3:*` to `*` under `{"Bool": {"aws:SecureTransport": "false"}}`) denies
plain-HTTP requests and leaves TLS ones to the rest of the policy.

Moto evaluates bucket policies on object requests (`FakeBucket.get_permission`), but it has
no `Bool` operator: it ignores the condition, and the deny hits every request. Handing it the
value would not do: it passes no request values in, and a statement whose condition it
evaluates and finds false comes out `DENIED`, Allow or Deny, instead of not applying. So this
layer decides the transport condition before moto's evaluation: a statement whose
`aws:SecureTransport` condition does not hold for the request is dropped, one whose condition
holds keeps its other conditions for moto. The request's transport is its scheme as moto
received it: `https` for in-process `mock_aws` on boto's default endpoint or for a moto server
behind TLS (tests/moto_tls.py), `http` for a plain-HTTP endpoint.

A denied object request gets S3's `AccessDenied` error (HEAD, which has no body, a bare 403);
moto answers a bucket-policy denial with an empty 403, which boto reads as error code `403`.

Only what moto already checks is modelled: bucket-level requests (ListObjects, HeadBucket,
GetBucketPolicy...) are not checked against the bucket policy by moto, and stay unchecked here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

SECURE_TRANSPORT = "aws:securetransport"  # condition keys are case-insensitive
BOOL_OPERATORS = ("Bool", "BoolIfExists")  # the key is always present: the two agree

# whether the S3 request being served came over TLS (None: no S3 request in this context)
_secure: ContextVar[bool | None] = ContextVar("secure_transport", default=None)


def resolve_transport(statement: dict[str, Any], secure: bool) -> dict[str, Any] | None:
    """The statement with its `aws:SecureTransport` condition decided for a request over TLS
    (`secure`) or not: None when the condition does not hold (the statement does not apply),
    else the statement without that key (its other conditions left for moto)."""
    kept: dict[str, Any] = {}
    for op, keys in (statement.get("Condition") or {}).items():
        rest = {}
        for key, value in keys.items():
            if op in BOOL_OPERATORS and key.lower() == SECURE_TRANSPORT:
                values = value if isinstance(value, list) else [value]
                if str(secure).lower() not in {str(v).lower() for v in values}:
                    return None
            else:
                rest[key] = value
        if rest:
            kept[op] = rest
    out = {k: v for k, v in statement.items() if k != "Condition"}
    return {**out, "Condition": kept} if kept else out


def scheme(request: Any) -> str:
    """The scheme a request came over: werkzeug's request (a moto server) has it, botocore's
    prepared request (in-process `mock_aws`) has only its URL."""
    return getattr(request, "scheme", None) or urlsplit(request.url).scheme


@contextlib.contextmanager
def faithful_transport() -> Iterator[None]:
    """Patch moto's S3: each request records its scheme, bucket policies see it, and a denied
    object request gets `AccessDenied`."""
    from moto.iam.access_control import IAMPolicy
    from moto.s3.exceptions import S3AccessDeniedError
    from moto.s3.models import FakeBucket
    from moto.s3.responses import S3Response

    setup_class, get_permission = S3Response.setup_class, FakeBucket.get_permission
    key_response = S3Response._key_response

    def setup_with_scheme(self: Any, request: Any, *args: Any, **kw: Any) -> None:
        _secure.set(scheme(request) == "https")  # every S3 request passes here first
        setup_class(self, request, *args, **kw)

    def permission_over_transport(self: Any, action: str, resource: str) -> Any:
        secure = _secure.get()
        if self.policy is None or secure is None:
            return get_permission(self, action, resource)
        doc = json.loads(self.policy)
        statements = doc.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else statements
        resolved = (resolve_transport(st, secure) for st in statements)
        applied = [st for st in resolved if st is not None]
        return IAMPolicy(json.dumps({**doc, "Statement": applied})).is_action_permitted(
            action, resource
        )

    def key_response_access_denied(self: Any, request: Any, full_url: str) -> Any:
        out = key_response(self, request, full_url)
        if out == (403, {}, "") and request.method != "HEAD":
            raise S3AccessDeniedError()  # S3's error body, as AWS sends it
        return out

    S3Response.setup_class = setup_with_scheme
    FakeBucket.get_permission = permission_over_transport
    S3Response._key_response = key_response_access_denied
    try:
        yield
    finally:
        S3Response.setup_class, FakeBucket.get_permission = setup_class, get_permission
        S3Response._key_response = key_response
