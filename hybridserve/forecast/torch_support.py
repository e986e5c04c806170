"""torch for the LSTM forecaster, optional and imported only when needed: whether it is
installed (without importing it: that takes seconds), importing it with an error that says how
to install it, and what training uses instead of torch's own Adam and thread settings, whose
import or first call costs seconds."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

NEEDS_TORCH = "the lstm forecaster needs torch: pip install 'hybridserve[torch]'"


def import_torch():
    """torch, or a RuntimeError that says how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise RuntimeError(NEEDS_TORCH) from e
    return torch


class Adam:
    """torch's single-tensor Adam (amsgrad off, no weight decay), the one CPU tensors get, written
    out so that training does not construct a torch.optim.Optimizer: its methods are wrapped in
    torch._disable_dynamo, whose first call imports torch's compiler (measured here: 2.2 s quiet,
    3.9 s loaded, against 4.3 s for a whole 2-day replay at the corpus's speed target). Same
    operations in the same order, so the same weights bit for bit
    (tests/test_lstm.py::test_hand_adam_matches_torch_adam)."""

    def __init__(self, params: Any, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.steps = [0] * len(self.params)  # per parameter, as torch counts them
        self.exp_avg = [p.detach().new_zeros(p.shape) for p in self.params]
        self.exp_avg_sq = [p.detach().new_zeros(p.shape) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, torch: Any) -> None:
        b1, b2 = self.beta1, self.beta2
        with torch.no_grad():
            moments = zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True)
            for i, (p, m, v) in enumerate(moments):
                if p.grad is None:
                    continue
                self.steps[i] += 1
                step = float(self.steps[i])
                step_size = self.lr / (1 - b1**step)
                bias_correction2_sqrt = (1 - b2**step) ** 0.5
                g = p.grad
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
                p.addcdiv_(m, denom, value=-step_size)


def has_torch() -> bool:
    """Whether torch can be imported, without importing it (that takes seconds)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    return importlib.util.find_spec("torch") is not None


class Threads:
    """torch.set_num_threads(n) inside the block, the previous count restored afterwards."""

    def __init__(self, torch, n: int) -> None:
        self.torch = torch
        self.n = n
        self.prev = 0

    def __enter__(self) -> None:
        self.prev = self.torch.get_num_threads()
        if self.prev != self.n:
            self.torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.prev != self.n:
            self.torch.set_num_threads(self.prev)
