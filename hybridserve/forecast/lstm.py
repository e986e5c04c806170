"""An LSTM load forecaster in the style of MArk: multi-step forecasts of interval mean rates.

The network reads the last `lookback` interval rates, each with the time of day (sin/cos of the
step index modulo `season_steps`, counted from the first observation), and a direct multi-step
head predicts all `max_horizon` future steps at once from the last hidden state. Rates are scaled
per input window: divided by the window's mean rate (+1e-6) and passed through log1p, so a level
shift or a capture gap of zeros does not push the inputs out of the range the network was
trained on. The head predicts the scaled future relative to the last scaled input (a persistence
skip), so an undertrained network starts out close to last value.

Training runs inside `observe` once `min_history` steps are seen (and again every `refit_every`
steps if set), on sliding windows over the observed history, bounded in wall-clock time by
`max_fit_s`. Until then the forecast is the last value. An interval that `PointForecaster` flags
as a capture gap (`in_gap`) enters the history as the model's own one-step forecast once trained,
as the statistical models treat it. Quantiles come from the conformal
residuals that `PointForecaster` keeps.

torch is an optional dependency (`pip install 'hybridserve[torch]'`): this module imports without
it, and only constructing the forecaster needs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridserve.forecast.base import PointForecaster
from hybridserve.forecast.torch_support import NEEDS_TORCH, Adam, Threads, has_torch, import_torch

_FORMAT = "hybridserve-lstm"
_VERSION = 1
_EPS = 1e-6  # added to the window mean before dividing by it

# constructor arguments that fix the shape of the network: a loaded file decides these
_ARCH = ("max_horizon", "lookback", "hidden", "layers", "season_steps")


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


class LSTMForecaster(PointForecaster):
    """MArk-style LSTM forecaster of interval mean rates with conformal quantiles.

    Attributes for reporting: `fits` (training runs so far), `fit_seconds` (their total wall
    time), `last_fit` (epochs, samples, final loss and seconds of the latest run, or None).

    Determinism: given the seed and the data, forecasts are identical as long as each training
    run finishes its `epochs` within `max_fit_s` (a run cut short by the clock depends on the
    machine's speed).

    Training time: the clock is checked after every mini-batch, so a run lasts at most
    `max_fit_s` plus one batch. Keep `threads=1` on a shared or busy host: torch's OpenMP pool
    spins at its barriers, and with more threads than free cores one batch can take seconds.
    """

    name = "lstm"

    def __init__(
        self,
        max_horizon: int = 60,
        window: int = 1440,
        lookback: int = 120,
        hidden: int = 32,
        layers: int = 1,
        season_steps: int = 1440,
        min_history: int = 2880,
        refit_every: int = 0,
        max_fit_s: float = 10.0,
        epochs: int = 30,
        seed: int = 0,
        threads: int = 1,
        max_samples: int = 4000,
        batch_size: int = 64,
        lr: float = 3e-3,
        max_history: int | None = None,
        quantiles: bool = True,
    ) -> None:
        max_horizon = _check_int("max_horizon", max_horizon, 1)
        window = _check_int("window", window, 1)
        lookback = _check_int("lookback", lookback, 2)
        hidden = _check_int("hidden", hidden, 1)
        layers = _check_int("layers", layers, 1)
        season_steps = _check_int("season_steps", season_steps, 1)
        min_history = _check_int("min_history", min_history, lookback + max_horizon)
        refit_every = _check_int("refit_every", refit_every, 0)
        epochs = _check_int("epochs", epochs, 1)
        seed = _check_int("seed", seed, 0)
        threads = _check_int("threads", threads, 1)
        max_samples = _check_int("max_samples", max_samples, 1)
        batch_size = _check_int("batch_size", batch_size, 1)
        if not (isinstance(max_fit_s, (int, float)) and max_fit_s > 0):
            raise ValueError(f"max_fit_s must be > 0 seconds, got {max_fit_s!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if max_history is None:
            max_history = max(14 * season_steps, min_history)  # 14 days at the default season
        max_history = _check_int("max_history", max_history, min_history)
        if not has_torch():
            raise RuntimeError(NEEDS_TORCH)

        super().__init__(max_horizon=max_horizon, window=window, quantiles=quantiles)
        self.config: dict[str, Any] = {
            "max_horizon": max_horizon,
            "window": window,
            "lookback": lookback,
            "hidden": hidden,
            "layers": layers,
            "season_steps": season_steps,
            "min_history": min_history,
            "refit_every": refit_every,
            "max_fit_s": float(max_fit_s),
            "epochs": epochs,
            "seed": seed,
            "threads": threads,
            "max_samples": max_samples,
            "batch_size": batch_size,
            "lr": float(lr),
            "max_history": max_history,
            "quantiles": bool(quantiles),
        }
        self.max_horizon = max_horizon
        self.lookback = lookback
        self.season = season_steps
        self.min_history = min_history
        self.refit_every = refit_every
        self.max_fit_s = float(max_fit_s)
        self.epochs = epochs
        self.seed = seed
        self.threads = threads
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.lr = float(lr)
        self.max_history = max_history

        # history of interval rates: a buffer twice the cap, compacted when full (O(1) amortised)
        self._buf = np.zeros(2 * max_history)
        self._len = 0
        self.n = 0  # steps observed; step i has time-of-day phase i % season_steps

        # time-of-day table long enough that any window of `lookback` steps is one slice
        phase = np.arange(season_steps + lookback) % season_steps
        ang = 2 * np.pi * phase / season_steps
        self._sin = np.sin(ang).astype(np.float32)
        self._cos = np.cos(ang).astype(np.float32)

        # the network is built on first use: until the first fit (two days of history by
        # default) the model forecasts the last value, and importing torch costs seconds
        self._built: tuple[Any, Any, Any] | None = None  # (torch, net, input tensor)
        self._xbuf = np.zeros((1, lookback, 3), dtype=np.float32)

        self.fitted = False
        self.fits = 0
        self.fit_seconds = 0.0
        self.last_fit: dict[str, Any] | None = None
        self._fit_at = -1  # step count at the latest fit
        self._cache_n = -1  # step of the cached point forecast
        self._cache = np.zeros(max_horizon)

    def _build(self) -> tuple[Any, Any, Any]:
        """torch, the network (seeded: the same whenever it is built) and the input tensor."""
        if self._built is None:
            torch = import_torch()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = torch.nn.ModuleDict(
                    {
                        "lstm": torch.nn.LSTM(
                            3, self.config["hidden"], num_layers=self.config["layers"],
                            batch_first=True,
                        ),
                        "head": torch.nn.Linear(self.config["hidden"], self.max_horizon),
                    }
                )  # fmt: skip
            net.eval()
            x = torch.from_numpy(self._xbuf)  # shares memory: filled in place every step
            self._built = (torch, net, x)
        return self._built

    @property
    def _torch(self) -> Any:
        return self._build()[0]

    @property
    def _net(self) -> Any:
        return self._build()[1]

    @property
    def _x(self) -> Any:
        return self._build()[2]

    # ---------------------------------------------------------------- history

    def _history(self) -> np.ndarray:
        return self._buf[: self._len]

    def _push(self, rate: float) -> None:
        if self._len == len(self._buf):
            keep = self.max_history
            self._buf[:keep] = self._buf[self._len - keep : self._len]
            self._len = keep
        self._buf[self._len] = rate
        self._len += 1
        self.n += 1

    def _update(self, rate: float) -> None:
        if getattr(self, "in_gap", False) and self.fitted and self._len >= self.lookback:
            rate = float(self._point(1)[0])  # a capture gap is missing data: keep the forecast
        self._push(rate)
        if self.n < self.min_history:
            return
        if not self.fitted or (self.refit_every and self.n - self._fit_at >= self.refit_every):
            self.fit()

    # ---------------------------------------------------------------- network

    def _forward(self, x):
        out, _ = self._net["lstm"](x)
        return self._net["head"](out[:, -1]) + x[:, -1:, 0]  # scaled future, persistence skip

    def _windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Training inputs (N, lookback, 3) and scaled targets (N, max_horizon), float32."""
        hist = self._history()
        lb, h = self.lookback, self.max_horizon
        total = len(hist) - lb - h + 1
        if total <= self.max_samples:
            idx = np.arange(total)
        else:  # evenly spaced, the newest window always included
            idx = np.unique(np.linspace(0, total - 1, self.max_samples).round().astype(np.int64))
        w = np.lib.stride_tricks.sliding_window_view(hist, lb + h)[idx]  # (N, lb + h)
        scale = w[:, :lb].mean(axis=1, keepdims=True) + _EPS
        z = np.log1p(w / scale).astype(np.float32)
        start = self.n - len(hist)  # absolute step of hist[0]
        phase = (start + idx) % self.season
        cols = phase[:, None] + np.arange(lb)[None, :]
        x = np.stack([z[:, :lb], self._sin[cols], self._cos[cols]], axis=-1)
        return np.ascontiguousarray(x), np.ascontiguousarray(z[:, lb:])

    def fit(self) -> None:
        """Train on the history so far (warm start from the current weights)."""
        torch = self._torch
        if self._len < self.lookback + self.max_horizon:
            raise ValueError(
                f"fit needs at least lookback + max_horizon = "
                f"{self.lookback + self.max_horizon} steps of history, have {self._len}"
            )
        t0 = time.perf_counter()
        deadline = t0 + self.max_fit_s
        x_np, y_np = self._windows()
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        n = len(x_np)
        epochs_done, loss_v, stop = 0, float("nan"), False
        rng = np.random.default_rng([self.seed, self.fits])
        with Threads(torch, self.threads), torch.random.fork_rng(devices=[]):
            # seeded, one thread, CPU: the LSTM's kernels are deterministic as they are
            # (torch.use_deterministic_algorithms would import torch's compiler: 2.6 s)
            try:
                torch.manual_seed(self.seed + self.fits)
                opt = Adam(self._net.parameters(), lr=self.lr)
                loss_fn = torch.nn.HuberLoss(delta=1.0)
                self._net.train()
                for _ in range(self.epochs):
                    perm = rng.permutation(n)
                    total, seen = 0.0, 0
                    for b in range(0, n, self.batch_size):
                        bi = torch.from_numpy(perm[b : b + self.batch_size])
                        opt.zero_grad()
                        loss = loss_fn(self._forward(x[bi]), y[bi])
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(self._net.parameters(), 1.0)
                        opt.step(torch)
                        total += loss.item() * len(bi)
                        seen += len(bi)
                        if time.perf_counter() > deadline:
                            stop = True
                            break
                    loss_v = total / max(seen, 1)
                    epochs_done += 1
                    if stop:
                        break
            finally:
                self._net.eval()
        secs = time.perf_counter() - t0
        self.fitted = True
        self.fits += 1
        self.fit_seconds += secs
        self._fit_at = self.n
        self._cache_n = -1
        self.last_fit = {
            "epochs": epochs_done,
            "samples": n,
            "loss": loss_v,
            "seconds": secs,
            "cut_short": stop,
        }

    def _predict(self) -> np.ndarray:
        """Point forecast of the next `max_horizon` steps from the last `lookback` rates."""
        torch = self._torch
        lb = self.lookback
        w = self._buf[self._len - lb : self._len]
        scale = w.mean() + _EPS
        xb = self._xbuf[0]
        np.log1p(w / scale, out=xb[:, 0], casting="same_kind")
        p = (self.n - lb) % self.season
        xb[:, 1] = self._sin[p : p + lb]
        xb[:, 2] = self._cos[p : p + lb]
        with Threads(torch, self.threads), torch.inference_mode():
            z = self._forward(self._x)[0].numpy().astype(np.float64)
        out = np.expm1(z) * scale
        np.maximum(out, 0.0, out=out)
        out[~np.isfinite(out)] = self.last  # an overflowed step falls back to persistence
        return out

    def _point(self, horizon: int) -> np.ndarray:
        if not self.fitted or self._len < self.lookback:
            return np.full(horizon, self.last)
        if self._cache_n != self.n:
            self._cache = self._predict()
            self._cache_n = self.n
        return self._cache[:horizon].copy()

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """One file (torch.save of a dict): config, weights, scaling, history and step count."""
        torch = self._torch
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "config": dict(self.config),
            "scaling": {"kind": "window-mean-log1p", "eps": _EPS, "skip": "last-input"},
            "state_dict": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
            "history": torch.from_numpy(self._history().copy()),
            "n": int(self.n),
            "last": float(self.last),
            "fitted": bool(self.fitted),
            "fits": int(self.fits),
            "fit_seconds": float(self.fit_seconds),
            "fit_at": int(self._fit_at),
        }
        torch.save(payload, str(path))

    @classmethod
    def load(cls, path: str | Path, *, history: bool = True, **overrides) -> LSTMForecaster:
        """A forecaster from `save`; `overrides` replace non-architecture constructor arguments.

        With `history=True` (default) the saved history and step counter come back, so the
        loaded model forecasts at once and its clock continues where the saved one stopped.
        With `history=False` it starts empty (time of day counted from its first observation)
        and forecasts the last value until `lookback` steps are seen.
        """
        torch = import_torch()
        try:
            d = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # missing, truncated, not a torch file, ...
            raise ValueError(f"cannot load an lstm forecaster from {path}: {e}") from e
        try:
            if not isinstance(d, dict) or d.get("format") != _FORMAT:
                raise ValueError("not a saved lstm forecaster")
            if d.get("version") != _VERSION:
                raise ValueError(f"unsupported version {d.get('version')!r}")
            config = dict(d["config"])
            state = d["state_dict"]
            hist = np.asarray(d["history"].numpy(), dtype=float)
            n, last, fitted = int(d["n"]), float(d["last"]), bool(d["fitted"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"cannot load an lstm forecaster from {path}: {e}") from e
        for k, v in overrides.items():
            if k in _ARCH and v != config.get(k):
                raise ValueError(
                    f"{k}={v!r} conflicts with the saved network ({k}={config.get(k)!r}) in {path}"
                )
        config.update(overrides)
        self = cls(**config)
        try:
            self._net.load_state_dict(state)
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"cannot load an lstm forecaster from {path}: {e}") from e
        self._net.eval()
        self.fitted = fitted
        self.fits = int(d.get("fits", 0))
        self.fit_seconds = float(d.get("fit_seconds", 0.0))
        if history:
            hist = hist[-self.max_history :]
            self._buf[: len(hist)] = hist
            self._len = len(hist)
            self.n = n
            self.last = last
            self._fit_at = int(d.get("fit_at", n))
        else:
            self._fit_at = 0
        return self
