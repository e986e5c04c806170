"""The KServe V2 / Open Inference Protocol codec, shared by the VM server and the Lambda handler.

Pure functions over bytes, dicts and numpy arrays: nothing here knows HTTP, ASGI or Lambda
events. A request body is JSON, or (Triton's binary tensor extension) a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian, row-major bytes of
every input that carries ``parameters.binary_data_size``, in input order. Responses mirror that:
plain JSON, or a JSON header plus binary tails for the outputs asked for as binary, with the
header length returned as the ``Inference-Header-Content-Length`` header (what
``tritonclient.http`` reads).

Every malformed request raises :class:`V2Error` with status 400 and a message that names the
tensor and what was expected; the transport turns it into ``{"error": message}``.

The codec lives in small modules, re-exported here: `predictors.v2_types` (constants, errors,
request and response types), `predictors.v2_decode` (requests), `predictors.v2_encode`
(responses), `predictors.v2_client` (the client side) and `predictors.v2_metadata`.
"""

from __future__ import annotations

from predictors.v2_client import decode_response, encode_request
from predictors.v2_decode import UNSUPPORTED_DATATYPES, decode_request
from predictors.v2_encode import encode_response, response_tensor
from predictors.v2_metadata import EXTENSIONS, error_body, model_metadata, server_metadata
from predictors.v2_types import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    PROTOCOL_VERSION,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    V2Error,
    bad_request,
)

__all__ = [
    "BINARY_CONTENT_TYPE",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "PROTOCOL_VERSION",
    "UNSUPPORTED_DATATYPES",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "Tensor",
    "V2Error",
    "bad_request",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_body",
    "model_metadata",
    "response_tensor",
    "server_metadata",
]
