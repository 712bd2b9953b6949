"""Experience replay from a reservoir of past windows, sampled by priority.

The buffer is a uniform sample of every window seen so far, kept with Vitter's Algorithm R
(J. S. Vitter, "Random Sampling with a Reservoir", ACM TOMS 11(1), 1985): the t-th window
offered replaces a random slot with probability ``capacity / t``. A reservoir as the memory
of a continual learner follows Chaudhry et al. (2019), "On Tiny Episodic Memories in
Continual Learning" (arXiv:1902.10486) and Rolnick et al. (2019), "Experience Replay for
Continual Learning" (NeurIPS). Windows are drawn with probability ∝ ``loss^alpha``, the
proportional prioritisation of Schaul, Quan, Antonoglou & Silver (2016), "Prioritized
Experience Replay" (ICLR); ``alpha = 0`` samples uniformly.

The buffer holds the symbols themselves (the window the Learner trained on: up to
``context + 1`` symbols, BOS included), so the stream need not be kept. A window's priority
is its loss when it was stored, refreshed with the loss measured each time it is replayed.

Replay trains on bytes other than the current window, so a run with it is **not
strict-online** (``strict_online = False``); its bpb is still prequential — every byte is
scored before any update uses it — but tables mark it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model import Optimizer

LOSS_FLOOR = 1e-3
"""Smallest loss (bits) used as a priority, so a solved window keeps a small chance."""


class ReplayConfig(MechanismConfig):
    """Settings of :class:`Replay`.

    Example:
        >>> ReplayConfig().capacity, ReplayConfig().k, ReplayConfig().every
        (1024, 1, 4)
    """

    capacity: int = Field(1024, ge=1, le=1_000_000, description="windows kept in the reservoir")
    k: int = Field(1, ge=1, le=64, description="replay updates each time replay runs")
    every: int = Field(4, ge=1, le=1_000_000, description="replay runs every this many steps")
    alpha: float = Field(0.5, ge=0.0, le=10.0, description="priority ∝ loss^alpha (0: uniform)")
    start_after: int = Field(64, ge=1, le=1_000_000, description="replay once this many stored")
    own_optimizer: bool = Field(False, description="a separate optimiser state for replay")


@register
class Replay(Mechanism):
    """Stores windows in a reservoir and trains on ``k`` of them every ``every`` steps.

    Example:
        >>> r = Replay(capacity=2)
        >>> for t in range(1, 6):
        ...     _ = r.offer(np.array([256, 97, 98]), loss_bits=float(t), rng=np.random.default_rng(t))
        >>> r.counters()["stored"], r.counters()["windows_seen"]
        (2, 5)
    """

    name = "replay"
    strict_online = False
    Config = ReplayConfig
    config: ReplayConfig

    def __init__(self, config: ReplayConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._width = 0  # context + 1, known at the first window
        self._buf = np.zeros((0, 0), dtype=np.int16)  # (capacity, context + 1) symbols
        self._len = np.zeros(0, dtype=np.int32)  # (capacity,) symbols in each window
        self._loss = np.zeros(0, dtype=np.float64)  # (capacity,) priority loss in bits
        self.filled = 0
        self.seen = 0  # windows offered so far (t of Algorithm R)
        self.replays = 0
        self.replay_bits_sum = 0.0
        self.replay_bits_n = 0
        self._pending: list[int] = []  # slots returned by the last extra_windows call
        self._opt: Optimizer | None = None
        self._opt_state: dict[str, Any] | None = None  # loaded before the optimiser exists

    # ------------------------------------------------------------------ the reservoir

    def _allocate(self, width: int) -> None:
        cap = self.config.capacity
        self._width = width
        self._buf = np.zeros((cap, width), dtype=np.int16)
        self._len = np.zeros(cap, dtype=np.int32)
        self._loss = np.zeros(cap, dtype=np.float64)

    def offer(
        self, window: np.ndarray, loss_bits: float, rng: np.random.Generator, width: int = 0
    ) -> int:
        """Algorithm R: stores ``window`` in a free slot, or in a random slot with probability
        capacity / t, where t counts the windows offered so far. Returns the slot or -1.

        ``width`` (symbols per slot, context + 1) sizes the buffer on first use."""
        n = int(window.size)
        if self._width == 0:
            self._allocate(max(width, n))
        assert n <= self._width, f"window of {n} symbols exceeds the buffer width {self._width}"
        self.seen += 1
        cap = self._buf.shape[0]
        if self.filled < cap:
            slot = self.filled
            self.filled += 1
        else:
            j = int(rng.integers(0, self.seen))
            if j >= cap:
                return -1
            slot = j
        self._buf[slot, :n] = window
        self._len[slot] = n
        self._loss[slot] = loss_bits
        return slot

    def priorities(self) -> np.ndarray:
        """Sampling probabilities of the stored windows, ∝ max(loss, floor)^alpha."""
        loss = np.maximum(self._loss[: self.filled], LOSS_FLOOR)
        weights = loss**self.config.alpha
        return weights / weights.sum()

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` slots drawn with replacement by priority."""
        return rng.choice(self.filled, size=k, replace=True, p=self.priorities())

    def window(self, slot: int) -> np.ndarray:
        return self._buf[slot, : self._len[slot]].astype(np.int64)

    # ------------------------------------------------------------------ hooks

    def extra_windows(self, ctx: StepContext) -> list[np.ndarray]:
        cfg = self.config
        windows: list[np.ndarray] = []
        self._pending = []
        if self.filled >= cfg.start_after and ctx.step % cfg.every == 0:
            slots = self.sample(ctx.rng, cfg.k)
            self._pending = [int(s) for s in slots]
            windows = [self.window(s) for s in self._pending]
        current = np.concatenate([ctx.inputs, ctx.targets[-1:]])
        loss = ctx.window_loss_bits if ctx.window_loss_bits is not None else 8.0
        slot = self.offer(current, loss, ctx.rng, width=ctx.context + 1)
        # a slot just overwritten no longer holds the window whose loss will come back
        self._pending = [-1 if s == slot else s for s in self._pending]
        if windows and cfg.own_optimizer:
            self._ensure_optimizer(ctx)
        return windows

    def replayed(self, ctx: StepContext, losses_bits: list[float]) -> None:
        for slot, bits in zip(self._pending, losses_bits):
            if np.isfinite(bits):
                self.replay_bits_sum += bits
                self.replay_bits_n += 1
                if slot >= 0:
                    self._loss[slot] = bits
        self.replays += len(losses_bits)
        self._pending = []

    def extra_optimizer(self) -> Optimizer | None:
        return self._opt if self.config.own_optimizer else None

    def _ensure_optimizer(self, ctx: StepContext) -> None:
        main = ctx.optimizer
        assert main is not None, "the Learner passes its optimiser in the step context"
        if self._opt is None:
            self._opt = Optimizer(main.cfg, main.m.size, main.m.dtype)
            if self._opt_state is not None:
                self._opt.load_state_dict(self._opt_state)
                self._opt_state = None
        self._opt.cfg = main.cfg  # follow the main learning rate (set_lr)

    # ------------------------------------------------------------------ settings and state

    def on_configure(self) -> None:
        cap = self.config.capacity
        if self._width and cap != self._buf.shape[0]:
            keep = min(self.filled, cap)  # the first slots: still a uniform sample when shrinking
            buf, lens, loss = self._buf[:keep].copy(), self._len[:keep].copy(), self._loss[:keep].copy()  # fmt: skip
            self._allocate(self._width)
            self._buf[:keep], self._len[:keep], self._loss[:keep] = buf, lens, loss
            self.filled = keep
            self._pending = []

    def counters(self) -> dict[str, Any]:
        stored = self._loss[: self.filled]
        return {
            "windows_seen": self.seen,
            "stored": self.filled,
            "replays": self.replays,
            "mean_stored_loss_bits": float(stored.mean()) if stored.size else None,
            "mean_replay_loss_bits": (
                self.replay_bits_sum / self.replay_bits_n if self.replay_bits_n else None
            ),
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "width": self._width,
            "buf": self._buf.copy(),
            "len": self._len.copy(),
            "loss": self._loss.copy(),
            "filled": self.filled,
            "seen": self.seen,
            "replays": self.replays,
            "replay_bits_sum": self.replay_bits_sum,
            "replay_bits_n": self.replay_bits_n,
        }
        if self._opt is not None:
            state["optimizer"] = self._opt.state_dict()
        elif self._opt_state is not None:
            state["optimizer"] = self._opt_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._width = int(state["width"])
        self._buf = np.asarray(state["buf"], dtype=np.int16).copy()
        self._len = np.asarray(state["len"], dtype=np.int32).copy()
        self._loss = np.asarray(state["loss"], dtype=np.float64).copy()
        self.filled = int(state["filled"])
        self.seen = int(state["seen"])
        self.replays = int(state["replays"])
        self.replay_bits_sum = float(state["replay_bits_sum"])
        self.replay_bits_n = int(state["replay_bits_n"])
        self._opt = None
        self._opt_state = state.get("optimizer")
        self._pending = []
        self.on_configure()
