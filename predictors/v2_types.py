"""The V2 protocol's vocabulary: header and content-type names, `V2Error`, and the request and
response types that the decoder, the encoder and the client side share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
PROTOCOL_VERSION = "2"


class V2Error(Exception):
    """A protocol error with the HTTP status it maps to (400, 404, 500 or 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def as_json(self) -> dict[str, str]:
        return {"error": self.message}

    def __repr__(self) -> str:
        return f"V2Error({self.status}, {self.message!r})"


def bad_request(message: str) -> V2Error:
    return V2Error(400, message)


class Tensor(NamedTuple):
    """One tensor of a request or response: the array is already shaped and typed."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``; ``binary_data`` None means 'not said'."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def input_arrays(self) -> dict[str, np.ndarray]:
        return {t.name: t.data for t in self.inputs}

    def binary_outputs(self, output_names: Iterable[str]) -> set[str]:
        """Which of ``output_names`` go back as binary tails.

        Request-level ``parameters.binary_data_output`` sets the default; a requested output's
        own ``parameters.binary_data`` overrides it.
        """
        default = bool(self.parameters.get("binary_data_output", False))
        asked = {o.name: o.binary_data for o in self.outputs}
        out: set[str] = set()
        for name in output_names:
            flag = asked.get(name)
            if flag if flag is not None else default:
                out.add(name)
        return out


@dataclass
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
