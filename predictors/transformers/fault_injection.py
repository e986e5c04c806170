"""Transformers that pass tensors through unchanged but misbehave on purpose: a bad version to
rehearse a rollback with (`hybridserve package --transformer fault` or `--transformer slow`),
and what the rollout tests and benchmark release as a bad canary.

- `FailSome`: a share of requests (`FAIL_SHARE`, drawn at random) fail in postprocess: 500s.
- `SlowDown`: every request takes `DELAY_S` longer (a latency regression).
"""

from __future__ import annotations

import random
import time

import numpy as np

from predictors.model import TensorSpec
from predictors.transformer import Transformer

FAIL_SHARE = 0.2
DELAY_S = 0.05


class PassThrough(Transformer):
    """The model's own tensors in and out."""

    def __init__(self, model_inputs: list[TensorSpec], model_outputs: list[TensorSpec]) -> None:
        super().__init__(model_inputs, model_outputs)
        self.inputs = list(model_inputs)
        self.outputs = list(model_outputs)

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs


class FailSome(PassThrough):
    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if random.random() < FAIL_SHARE:
            raise RuntimeError(f"injected fault ({FAIL_SHARE:.0%} of requests fail)")
        return outputs


class SlowDown(PassThrough):
    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(DELAY_S)
        return outputs
