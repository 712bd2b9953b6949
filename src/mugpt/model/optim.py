"""Optimisers over the flat parameter buffer: SGD (with optional momentum) and Adam
(Kingma & Ba 2015) with decoupled weight decay (Loshchilov & Hutter 2019), global-norm
gradient clipping, and a guard that keeps non-finite gradients away from the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mugpt.errors import ConfigError
from mugpt.model.config import _from_dict

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings.

    Example:
        >>> OptimConfig(name="sgd", lr=0.1, momentum=0.9).name
        'sgd'
        >>> OptimConfig(lr=-1)
        Traceback (most recent call last):
        ...
        mugpt.errors.ConfigError: lr=-1 must be a positive number (try 1e-3 .. 1e-1)
    """

    name: str = "adam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    grad_clip: float = 1.0  # global L2 norm; 0 turns clipping off

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.name!r} is unknown; choose one of {OPTIMIZERS}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 10):
            raise ConfigError(f"lr={self.lr!r} must be a positive number (try 1e-3 .. 1e-1)")
        for name in ("beta1", "beta2", "momentum"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ConfigError(f"{name}={value!r} must be in [0, 1)")
        if not (isinstance(self.eps, int | float) and 0 < self.eps < 1):
            raise ConfigError(f"eps={self.eps!r} must be in (0, 1)")
        if not (isinstance(self.weight_decay, int | float) and 0 <= self.weight_decay < 1):
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be in [0, 1)")
        if not (isinstance(self.grad_clip, int | float) and self.grad_clip >= 0):
            raise ConfigError(f"grad_clip={self.grad_clip!r} must be >= 0 (0 = off)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OptimConfig:
        return _from_dict(cls, values, "optim")


@dataclass
class UpdateInfo:
    applied: bool  # False when the gradient was not finite and the step was skipped
    grad_norm: float  # global L2 norm before clipping
    clipped: bool
    lr: float


class Optimizer:
    """Applies one update per call; the state is a few flat arrays.

    Example:
        >>> import numpy as np
        >>> opt = Optimizer(OptimConfig(name="sgd", lr=0.5, grad_clip=0), n=2, dtype=np.float64)
        >>> w = np.array([1.0, 2.0])
        >>> opt.step(w, np.array([1.0, -2.0])).applied, w.tolist()
        (True, [0.5, 3.0])
        >>> opt.step(w, np.array([np.nan, 0.0])).applied, w.tolist(), opt.nonfinite_steps
        (False, [0.5, 3.0], 1)
    """

    def __init__(self, cfg: OptimConfig, n: int, dtype: Any = np.float32) -> None:
        self.cfg = cfg
        self.t = 0
        self.nonfinite_steps = 0
        self.clipped_steps = 0
        self.m = np.zeros(n, dtype=dtype)
        self.v = np.zeros(n, dtype=dtype) if cfg.name == "adam" else np.zeros(0, dtype=dtype)
        self._tmp = np.zeros(n, dtype=dtype)

    def step(
        self,
        w: np.ndarray,
        g: np.ndarray,
        lr_scale: float = 1.0,
        span: tuple[int, int] | None = None,
    ) -> UpdateInfo:
        """Updates ``w`` in place from gradient ``g`` (which may be rescaled in place).

        ``lr_scale`` multiplies the learning rate of the weights ``w[lo:hi]`` for ``span`` =
        ``(lo, hi)`` (all of them when ``span`` is None); the others step at the configured
        lr. The moments do not depend on the lr, so the other weights move exactly as they
        would with ``lr_scale`` = 1 (a boost of some layers only: see ``param_span``).

        Example:
            >>> import numpy as np
            >>> opt = Optimizer(OptimConfig(name="sgd", lr=0.5, grad_clip=0), n=3, dtype=np.float64)
            >>> w = np.zeros(3)
            >>> _ = opt.step(w, np.ones(3), lr_scale=2.0, span=(1, 2))
            >>> w.tolist()
            [-0.5, -1.0, -0.5]
        """
        cfg = self.cfg
        lr = cfg.lr * lr_scale
        lo, hi = (0, w.size) if span is None else span
        # (slice, lr) for the weights before, inside and after the span
        parts = [(slice(0, lo), cfg.lr), (slice(lo, hi), lr), (slice(hi, w.size), cfg.lr)]
        parts = [(sl, rate) for sl, rate in parts if sl.stop > sl.start]
        norm = float(np.sqrt(np.dot(g, g)))
        if not np.isfinite(norm):
            self.nonfinite_steps += 1
            return UpdateInfo(False, norm, False, lr)
        clipped = cfg.grad_clip > 0 and norm > cfg.grad_clip
        if clipped:
            g *= cfg.grad_clip / norm
            self.clipped_steps += 1
        self.t += 1
        if cfg.weight_decay:
            for sl, rate in parts:
                w[sl] *= 1.0 - rate * cfg.weight_decay
        tmp = self._tmp
        if cfg.name == "sgd":
            if cfg.momentum:
                self.m *= cfg.momentum
                self.m += g
                g = self.m
            for sl, rate in parts:
                np.multiply(g[sl], rate, out=tmp[sl])
            w -= tmp
        else:
            b1, b2 = cfg.beta1, cfg.beta2
            self.m *= b1
            np.multiply(g, 1.0 - b1, out=tmp)
            self.m += tmp
            self.v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            self.v += tmp
            # Moments below the normal range are flushed to 0: a parameter whose gradient
            # stays 0 (an embedding row of a byte not seen) would otherwise keep a subnormal
            # moment for ever (0.9 × the smallest subnormal rounds back to it), and float32
            # arithmetic on subnormals is many times slower on x86. Deterministic, and the
            # compiled optimiser applies the same rule.
            tiny = np.finfo(self.m.dtype).tiny
            self.m[np.abs(self.m) < tiny] = 0
            self.v[self.v < tiny] = 0
            # w -= step · m / (sqrt(v) + eps·sqrt(1 − b2^t)): bias corrections folded in
            np.sqrt(self.v, out=tmp)
            tmp += cfg.eps * np.sqrt(1.0 - b2**self.t)
            np.divide(self.m, tmp, out=tmp)
            for sl, rate in parts:
                tmp[sl] *= rate * np.sqrt(1.0 - b2**self.t) / (1.0 - b1**self.t)
            w -= tmp
        return UpdateInfo(True, norm, clipped, lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "nonfinite_steps": self.nonfinite_steps,
            "clipped_steps": self.clipped_steps,
            "m": self.m,
            "v": self.v,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["m"].shape != self.m.shape or state["v"].shape != self.v.shape:
            raise ConfigError("optimiser state does not match the model's parameter count")
        self.t = int(state["t"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.clipped_steps = int(state["clipped_steps"])
        self.m[...] = state["m"]
        self.v[...] = state["v"]
