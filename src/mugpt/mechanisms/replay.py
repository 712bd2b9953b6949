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

The control (``source = "current"``). Replay adds updates as well as revisiting the past, so
a gain from it can come from either. With ``source = "current"`` the mechanism keeps the same
schedule (``k`` extra updates every ``every`` steps, from the step at which the reservoir
would hold ``start_after`` windows) but each extra update trains on the step's own window,
the one the main update just used, and nothing is stored; no random draw is made. The
difference between the two arms is then what revisiting stored windows adds beyond the extra
updates (the comparison is in docs/results/replay-control.md).

Replay trains on bytes other than the current window, so a run with it is **not
strict-online** (``strict_online = False``); its bpb is still prequential — every byte is
scored before any update uses it — but tables mark it.

Random draws. Every draw is one double ``u = ctx.rng.random()`` of the Learner's generator,
and what a draw decides is derived from it by the compiled helpers below, which the hooks
and the compiled loop (:mod:`mugpt.engine.loop`, :func:`replay_step`) share, so both make the
same choices: a uniform index below ``n`` is ``floor(u·n)`` (:func:`uniform_index`); a slot
drawn by priority is the first ``i`` with ``c_i / c_{n−1} > u``, where ``c`` is the running
sum of the priorities in slot order (:func:`priority_cdf`, :func:`pick`). A step that replays
draws its ``k`` slots first, then (once the reservoir is full) the draw of Algorithm R.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.mechanisms.rng import next_double
from mugpt.model import OptimConfig, Optimizer
from mugpt.model.constants import BOS, JIT_INLINE, JIT_OPTIONS
from mugpt.model.fast import (
    D_T,
    backward_batch,
    cast_like,
    forward_batch,
    grad_sq_norm,
    optimizer_step,
    window_nll,
)

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
    source: Literal["buffer", "current"] = Field(
        "buffer", description="buffer: stored windows; current: the step's own window (control)"
    )


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
            j = uniform_index(rng.random(), self.seen)
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
        """``k`` slots drawn with replacement by priority: one ``rng.random()`` each, looked
        up in the running sum of the priorities (:func:`priority_cdf`, :func:`pick`)."""
        cdf = np.empty(max(self.filled, 1))
        priority_cdf(self._loss, self.filled, float(self.config.alpha), cdf)
        return np.array([pick(cdf, self.filled, rng.random()) for _ in range(k)], dtype=np.int64)

    def window(self, slot: int) -> np.ndarray:
        return self._buf[slot, : self._len[slot]].astype(np.int64)

    # ------------------------------------------------------------------ hooks

    def extra_windows(self, ctx: StepContext) -> list[np.ndarray]:
        cfg = self.config
        windows: list[np.ndarray] = []
        self._pending = []
        if cfg.source == "current":
            return self._current_windows(ctx)
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

    def _current_windows(self, ctx: StepContext) -> list[np.ndarray]:
        """The control's extra windows: ``k`` copies of the step's window when replay would be
        due (the reservoir would hold min(seen, capacity) windows), none stored."""
        cfg = self.config
        if self._width == 0:  # the reservoir stays empty; sized as the compiled loop sizes it
            self._allocate(ctx.context + 1)
        would_hold = min(self.seen, cfg.capacity)
        self.seen += 1
        if would_hold < cfg.start_after or ctx.step % cfg.every != 0:
            return []
        current = np.concatenate([ctx.inputs, ctx.targets[-1:]])
        self._pending = [-1] * cfg.k  # no slot: the losses are tallied, no priority changes
        if cfg.own_optimizer:
            self._ensure_optimizer(ctx)
        return [current.copy() for _ in range(cfg.k)]

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

    # ------------------------------------------------------------------ the compiled form

    def compiled_state(self, context: int) -> ReplayBinding:
        """This mechanism for the compiled loop (:func:`replay_step`): its reservoir and
        counters, a workspace for the extra windows and its own optimiser's moments, which
        depend on the model, so :func:`mugpt.engine.loop.run_steps` binds them to it
        (:meth:`ReplayBinding.bind`)."""
        return ReplayBinding(self)

    def compiled_done(self, state: ReplayBinding) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns its "replay" events, one per
        step that replayed, stamped with the step and position as the Learner stamps them."""
        return state.done()

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


# ---------------------------------------------------------------------------- shared helpers

_LN2 = float(np.log(2.0))
#: "replay" events the compiled loop can hold before it hands them over (one per step).
EVENT_ROWS = 4096


@njit(**JIT_OPTIONS)
def uniform_index(u: float, n: int) -> int:  # pragma: no cover - compiled
    """floor(u·n) for a draw u in [0, 1): a uniform index below n."""
    return min(int(u * n), n - 1)


@njit(**JIT_OPTIONS)
def priority_weight(loss: float, alpha: float) -> float:  # pragma: no cover - compiled
    """A stored window's sampling weight, max(loss, LOSS_FLOOR)^alpha."""
    return max(loss, LOSS_FLOOR) ** alpha


@njit(**JIT_OPTIONS)
def weights_cdf(weights: Any, n: int, out: Any) -> None:  # pragma: no cover - compiled
    """out[:n] = the running sum of weights[:n], in slot order, divided by its last element
    (so out[n − 1] == 1)."""
    total = 0.0
    for i in range(n):
        total += weights[i]
        out[i] = total
    for i in range(n):
        out[i] /= total


@njit(**JIT_OPTIONS)
def priority_cdf(loss: Any, n: int, alpha: float, out: Any) -> None:  # pragma: no cover
    """:func:`weights_cdf` of the weights :func:`priority_weight` of loss[:n]. (The compiled
    loop keeps the weights and refreshes the one of a slot whose loss changes: the same
    values.)"""
    priority_weights(loss, n, alpha, out)
    weights_cdf(out, n, out)


@njit(**JIT_OPTIONS)
def priority_weights(loss: Any, n: int, alpha: float, out: Any) -> None:  # pragma: no cover
    """out[:n] = :func:`priority_weight` of loss[:n]."""
    for i in range(n):
        out[i] = priority_weight(loss[i], alpha)


@njit(**JIT_OPTIONS)
def pick(cdf: Any, n: int, u: float) -> int:  # pragma: no cover - compiled
    """The first i < n with cdf[i] > u (a binary search; cdf non-decreasing, cdf[n−1] = 1)."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------------- compiled form


class ReplayState(NamedTuple):
    """:class:`Replay` as the compiled loop holds it. ``cfg`` = [k, every, alpha,
    start_after, own_optimizer, source (0 buffer, 1 current)]; the reservoir's own arrays ``buf``, ``lens``, ``loss``
    (changed in place); ``counts`` = [filled, seen, replays, replay_bits_n], ``bits`` =
    [replay_bits_sum]; ``ws`` a one-window workspace for the extra windows; the own
    optimiser's moments ``m``, ``v``, its state ``ostate`` = [t, nonfinite, clipped] and
    ``used[0]`` (it made a step); ``events`` rows of [step, position, count],
    ``n_events[0]`` of them filled; scratch: ``cdf``, ``picked``, ``losses`` and ``cur``
    (the step's window); ``tally`` = [forward, backward, updates, nonfinite] of the extra
    windows, which the loop adds to its counters; ``prio`` the slots' weights
    (:func:`priority_weight`)."""

    cfg: np.ndarray
    buf: np.ndarray
    lens: np.ndarray
    loss: np.ndarray
    counts: np.ndarray
    bits: np.ndarray
    ws: Any
    m: np.ndarray
    v: np.ndarray
    ostate: np.ndarray
    used: np.ndarray
    events: np.ndarray
    n_events: np.ndarray
    cdf: np.ndarray
    picked: np.ndarray
    losses: np.ndarray
    cur: np.ndarray
    tally: np.ndarray
    prio: np.ndarray


def _optim_config(hyper: np.ndarray) -> OptimConfig:
    """The optimiser settings the vector of ``mugpt.model.fast.optimizer_hyper`` holds."""
    lr, b1, b2, eps, wd, mom, clip, adam = (float(x) for x in hyper[:8])
    return OptimConfig(name="adam" if adam else "sgd", lr=lr, beta1=b1, beta2=b2, eps=eps,
                       weight_decay=wd, momentum=mom, grad_clip=clip)  # fmt: skip


class ReplayBinding:
    """What :meth:`Replay.compiled_state` returns. The extra windows need a workspace of the
    model's shape and the own optimiser moments of its size and dtype, which only the loop
    knows: :func:`mugpt.engine.loop.run_steps` calls :meth:`bind` with the model and the
    optimiser before it runs, and :meth:`Replay.compiled_done` calls :meth:`done` after."""

    def __init__(self, mech: Replay) -> None:
        self.mech = mech
        self.bound: ReplayState | None = None
        self._ws: Any = None
        self._hyper = np.zeros(8)

    def _workspace(self, model: Any) -> Any:
        from mugpt.model import ModelConfig
        from mugpt.model.fast import make_workspace

        if self._ws is None or self._ws.probs.shape[1:] != model.ws.probs.shape[1:] or self._ws.probs.dtype != model.ws.probs.dtype:  # fmt: skip
            d = [int(x) for x in model.dims[:6]]
            cfg = ModelConfig(n_layers=d[0], d_model=d[1], n_heads=d[2], d_ff=d[3], context=d[4],
                              vocab_size=d[5], dtype=str(model.ws.probs.dtype))  # fmt: skip
            self._ws = make_workspace(cfg, 1)
        return self._ws

    def bind(self, model: Any, opt: Any) -> ReplayState:
        """The :class:`ReplayState` of the mechanism for ``model`` and the main optimiser
        ``opt`` (``loop.ModelArrays``, ``loop.OptimArrays``)."""
        mech, cfg = self.mech, self.mech.config
        width = int(model.dims[D_T]) + 1
        if mech._width == 0:
            mech._allocate(width)
        m, v = np.zeros(0, dtype=opt.m.dtype), np.zeros(0, dtype=opt.v.dtype)
        ostate = np.zeros(3, dtype=np.int64)
        if cfg.own_optimizer:
            if mech._opt is not None:
                own = mech._opt
                m, v = own.m, own.v
                ostate[:] = [own.t, own.nonfinite_steps, own.clipped_steps]
            elif mech._opt_state is not None:  # loaded before the optimiser existed
                saved = mech._opt_state
                m = np.array(saved["m"], dtype=opt.m.dtype)
                v = np.array(saved["v"], dtype=opt.v.dtype)
                ostate[:] = [saved["t"], saved["nonfinite_steps"], saved["clipped_steps"]]
            else:
                m, v = np.zeros_like(opt.m), np.zeros_like(opt.v)
        self._hyper = np.array(opt.hyper, dtype=np.float64)
        k, cap = cfg.k, mech._buf.shape[0]
        self.bound = ReplayState(
            np.array([k, cfg.every, cfg.alpha, cfg.start_after, float(cfg.own_optimizer),
                      float(cfg.source == "current")]),
            mech._buf, mech._len, mech._loss,
            np.array([mech.filled, mech.seen, mech.replays, mech.replay_bits_n], dtype=np.int64),
            np.array([mech.replay_bits_sum]), self._workspace(model), m, v, ostate,
            np.zeros(1, dtype=np.int64), np.zeros((EVENT_ROWS, 3), dtype=np.int64),
            np.zeros(1, dtype=np.int64), np.zeros(max(cap, 1)), np.zeros(k, dtype=np.int64),
            np.zeros(k), np.zeros(mech._width, dtype=np.int64), np.zeros(4, dtype=np.int64),
            np.zeros(cap),
        )  # fmt: skip
        priority_weights(mech._loss, mech.filled, float(cfg.alpha), self.bound.prio)
        return self.bound

    def done(self) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns the "replay" events."""
        st, mech = self.bound, self.mech
        if st is None:
            return []
        mech.filled, mech.seen, mech.replays, mech.replay_bits_n = (int(x) for x in st.counts)
        mech.replay_bits_sum = float(st.bits[0])
        mech._pending = []
        if st.used[0]:  # the own optimiser made steps: it exists from now on
            if mech._opt is None:
                mech._opt = Optimizer(_optim_config(self._hyper), st.m.size, st.m.dtype)
                mech._opt.m, mech._opt.v = st.m, st.v
                mech._opt_state = None
            mech._opt.cfg = _optim_config(self._hyper)  # follows the main one, as the hook does
            mech._opt.t, mech._opt.nonfinite_steps, mech._opt.clipped_steps = (int(x) for x in st.ostate)  # fmt: skip
            st.used[0] = 0
        events = [
            {"pos": int(pos), "step": int(step), "kind": "replay", "count": int(count)}
            for step, pos, count in st.events[: int(st.n_events[0])].tolist()
        ]
        st.n_events[0] = 0
        return events


@njit(**JIT_OPTIONS)
def _train_window(st: Any, model: Any, opt: Any, sym: Any, n_sym: int) -> float:  # pragma: no cover
    """``Learner._train_extra`` on the window sym[:n_sym] (a stored one or the step's own):
    forward and backward on the replay workspace, one step of the shared or own optimiser.
    Returns the window's mean loss (bits) before the step, NaN when it has no byte to learn;
    counts the passes and the update in ``st.tally`` = [forward, backward, updates,
    nonfinite]."""
    ws = st.ws
    n = n_sym - 1
    t_len = model.dims[D_T]
    total = 0.0
    for t in range(t_len):
        if t < n:
            ws.idx[0, t] = sym[t]
            ws.tgt[0, t] = sym[t + 1]
            if sym[t + 1] != BOS:
                total += 1.0
        else:
            ws.idx[0, t] = 0
            ws.tgt[0, t] = 0
    if total == 0:
        return np.nan
    forward_batch(model.flat, model.offs, model.dims, ws, 1)
    st.tally[0] += 1
    for t in range(t_len):
        w = 1.0 if t < n and ws.tgt[0, t] != BOS else 0.0
        ws.wts[0, t] = cast_like(ws.wts, w / total) if t < n else cast_like(ws.wts, 0.0)
    grads = opt.grads
    for i in range(grads.size):
        grads[i] = 0
    backward_batch(model.flat, model.offs, model.dims, ws, grads, 1)
    st.tally[1] += 1
    nats = window_nll(ws, 1)
    norm = math.sqrt(grad_sq_norm(grads, ws.lanes))
    if st.cfg[4] != 0.0:
        applied = optimizer_step(
            model.flat, grads, st.m, st.v, opt.hyper, st.ostate, 1.0, norm, 0, 0
        )
        st.used[0] = 1
    else:
        applied = optimizer_step(model.flat, grads, opt.m, opt.v, opt.hyper, opt.ostate, 1.0, norm, 0, 0)  # fmt: skip
    if applied > 0:
        st.tally[2] += 1
    else:
        st.tally[3] += 1
    return nats / _LN2


@njit(**JIT_OPTIONS)
def _offer(st: Any, n: int, loss_bits: float, rng: Any) -> int:  # pragma: no cover - compiled
    """:meth:`Replay.offer` of the window st.cur[:n] (Algorithm R, the draw from ``rng``)."""
    counts = st.counts
    counts[1] += 1
    cap = st.buf.shape[0]
    if counts[0] < cap:
        slot = counts[0]
        counts[0] += 1
    else:
        j = uniform_index(next_double(rng), counts[1])
        if j >= cap:
            return -1
        slot = j
    for t in range(n):
        st.buf[slot, t] = st.cur[t]
    st.lens[slot] = n
    st.loss[slot] = loss_bits
    st.prio[slot] = priority_weight(loss_bits, st.cfg[2])
    return slot


@njit(**JIT_INLINE)
def replay_step(
    st: Any,
    model: Any,
    opt: Any,
    rng: Any,
    step: int,
    window: int,
    n_in: int,
    pos: int,
    window_loss: float,
) -> int:  # pragma: no cover - compiled
    """Part 8 of a step, the hooks ``extra_windows``, the Learner's extra updates and
    ``replayed`` in one: when due, draws k slots by priority and trains on each stored window;
    offers the step's window (inputs ``model.ws.idx[window, :n_in]`` and its last target)
    with loss ``window_loss``; refreshes the replayed windows' priorities; records the event
    [step, pos, count]. Returns how many windows it trained on."""
    cfg, counts = st.cfg, st.counts
    ws = model.ws
    for t in range(n_in):
        st.cur[t] = ws.idx[window, t]
    st.cur[n_in] = ws.tgt[window, n_in - 1]
    k = int(cfg[0])
    if cfg[5] != 0.0:  # the control: the step's own window, nothing stored, no draw
        would_hold = min(counts[1], st.buf.shape[0])
        counts[1] += 1
        if would_hold < cfg[3] or step % int(cfg[1]) != 0:
            return 0
        for r in range(k):
            st.losses[r] = _train_window(st, model, opt, st.cur, n_in + 1)
            if math.isfinite(st.losses[r]):
                st.bits[0] += st.losses[r]
                counts[3] += 1
        counts[2] += k
        row = st.events[st.n_events[0]]
        row[0], row[1], row[2] = step, pos, k
        st.n_events[0] += 1
        return k
    due = counts[0] >= cfg[3] and step % int(cfg[1]) == 0
    if due:
        n = counts[0]
        weights_cdf(st.prio, n, st.cdf)
        for r in range(k):
            st.picked[r] = pick(st.cdf, n, next_double(rng))
        for r in range(k):  # the windows as stored before this step's offer
            slot_r = st.picked[r]
            st.losses[r] = _train_window(st, model, opt, st.buf[slot_r], st.lens[slot_r])
    slot = _offer(st, n_in + 1, window_loss, rng)
    if not due:
        return 0
    for r in range(k):
        bits = st.losses[r]
        if math.isfinite(bits):
            st.bits[0] += bits
            counts[3] += 1
            if st.picked[r] != slot:  # a slot just overwritten holds another window now
                st.loss[st.picked[r]] = bits
                st.prio[st.picked[r]] = priority_weight(bits, cfg[2])
    counts[2] += k
    row = st.events[st.n_events[0]]
    row[0], row[1], row[2] = step, pos, k
    st.n_events[0] += 1
    return k
