"""Helpers shared by the artifact tests (tests/test_artifacts*.py); they need torch."""

from __future__ import annotations

import numpy as np
import torch


def torch_out(module, inputs: dict[str, np.ndarray], specs) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(inputs[s.name]) for s in specs)).numpy()
