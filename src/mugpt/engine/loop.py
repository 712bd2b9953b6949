"""The prequential loop, compiled, built from parts (DESIGN §4, "One engine").

Each step of :func:`run_steps` goes through the parts in DESIGN order:

1. **gather** — the window rule makes one window per unfinished segment
   (:func:`mugpt.engine.window.gather_step`);
2. **predict** — one forward pass over the windows (:func:`mugpt.model.fast.forward_batch`);
3. **adjust** — per window, the mechanisms that change predictions, in the Learner's order;
4. **score** — each new byte's recorded loss, −log2 max(p, ``PROB_FLOOR``);
5. **observe** — the mechanisms that watch the losses (shift detectors);
6. **decide** — the mechanisms that may skip the update (selective backprop);
7. **update** — the lr scale of the mechanisms, the backward pass, the gradient transforms
   (clipping), one optimiser step (:func:`mugpt.model.fast.optimizer_step`);
8. **replay** — extra windows trained after the update, each with a forward, a backward
   and an optimiser step of its own (:func:`mugpt.mechanisms.replay.replay_step`).

With the network frozen (``LearnerConfig.freeze_network``, ``info[I_FROZEN]`` set by the
caller) parts 6-8 are left out: the weights never change and no backward pass runs; the
mechanisms of parts 3 and 5 still learn.

A mechanism takes part by bringing its state as arrays (a ``NamedTuple`` its module defines,
e.g. :class:`mugpt.mechanisms.grad_clip.ClipState`) and compiled kernels for the hooks it uses
(e.g. :func:`mugpt.mechanisms.grad_clip.clip_kernel`); :data:`KERNELS` names the mechanisms
the loop knows, and :class:`Mechanisms` holds one state per kind (``None`` when off) with
``order``, the active kinds in the Learner's order. So every combination of mechanisms runs
in the one compiled function, compiled once per combination. A mechanism's Python hooks stay
its readable reference; tests prove both give the same bits.

The kernel's arguments come in typed structures (:class:`ModelArrays`, :class:`OptimArrays`,
:class:`StreamArrays`, :class:`Outputs`), not in long positional lists.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from mugpt.engine.window import gather_step, window_records_end
from mugpt.mechanisms.adaptive_lr import observe_kernel, scale_kernel
from mugpt.mechanisms.cache import memory_observe, memory_window
from mugpt.mechanisms.grad_clip import clip_kernel
from mugpt.mechanisms.ngram_mix import mix_window
from mugpt.mechanisms.replay import replay_step
from mugpt.mechanisms.selective_backprop import keep_kernel
from mugpt.model.constants import JIT_INLINE, JIT_OPTIONS, OVERLOAD_INLINE, PROB_FLOOR
from mugpt.model.fast import (
    D_T,
    backward_batch,
    cast_like,
    forward_batch,
    grad_sq_norm,
    optimizer_step,
)

_JIT = JIT_OPTIONS

#: The mechanisms the compiled loop has kernels for, by kind code (their index).
KERNELS = ("grad_clip", "selective_backprop", "adaptive_lr", "ngram_mix", "cache", "knn", "replay")  # fmt: skip
K_CLIP, K_SELECT, K_ADAPT, K_MIX, K_CACHE, K_KNN, K_REPLAY = range(len(KERNELS))
#: The field of :class:`Mechanisms` that holds each mechanism's state.
FIELDS = {"grad_clip": "clip", "selective_backprop": "select", "adaptive_lr": "adapt",
          "ngram_mix": "mix", "cache": "cache", "knn": "knn", "replay": "replay"}  # fmt: skip
#: The fields whose state is bound to the model by :func:`run_steps` before each call.
BOUND = ("cache", "knn", "replay")

# counters vector of the loop (same order as engine.learner.Counters)
C_STEPS, C_UPDATES, C_SKIPPED, C_NONFINITE, C_REPLAY, C_FORWARD, C_BACKWARD = range(7)
# info vector: what the last step did, and (I_FROZEN, set by the caller, never changed by
# the loop) whether the network is frozen
I_RECORDS, I_WINDOWS, I_GRAD_NORM, I_APPLIED, I_LR_SCALE, I_WINDOW_LOSS, I_REPLAYS = range(7)
I_FROZEN = 7
N_INFO = 8


class ModelArrays(NamedTuple):
    """The model: flat weights, their offsets, the dims vector and the workspace."""

    flat: np.ndarray
    offs: np.ndarray
    dims: np.ndarray
    ws: Any


class OptimArrays(NamedTuple):
    """The optimiser: gradient, moments, hyper-parameters, its state vector [t, ...] and the
    range [lo, hi) of the flat weights the mechanisms' lr scale applies to."""

    grads: np.ndarray
    m: np.ndarray
    v: np.ndarray
    hyper: np.ndarray
    ostate: np.ndarray
    span: np.ndarray


class StreamArrays(NamedTuple):
    """The bytes, their document starts, and the segments (sub-streams) that read them:
    segment s reads data[seg_pos[s]:seg_end[s]] with history hist[s, :hist_len[s]]."""

    data: np.ndarray
    starts: np.ndarray
    seg_pos: np.ndarray
    seg_end: np.ndarray
    hist: np.ndarray
    hist_len: np.ndarray


class Outputs(NamedTuple):
    """What the loop writes: each byte's loss at losses[index − base], the counters, and the
    last step's records rec (R, 3) = (window, slot, byte index), its final (adjusted) rows
    of the last window ``rows`` (T, V) and the ``info`` vector.

    ``scored`` (N, V), when not empty, receives every byte's scored row in the order the
    bytes are scored (step by step, window by window: the order a range coder codes them,
    which with one segment is stream order), at the cursor ``n_scored[0]``, which it
    advances; ``scored_at`` (N,) receives each row's byte index. The caller sizes them for
    the steps it asks for (at most B·T rows a step) and resets the cursor."""

    losses: np.ndarray
    base: int
    counters: np.ndarray
    rec: np.ndarray
    rows: np.ndarray
    info: np.ndarray
    scored: np.ndarray
    scored_at: np.ndarray
    n_scored: np.ndarray


class Mechanisms(NamedTuple):
    """The mechanisms' compiled states: ``order`` the active kinds (:data:`KERNELS`) in the
    Learner's order, one state per kind (``None`` when off), and ``rng`` the Learner's
    generator packed by :func:`mugpt.mechanisms.rng.pack`.

    An off mechanism's ``None`` reaches its kernel's call site (``_mix``, ``_keep``, ...) as an
    argument, where numba drops the call at compile time: the loop is compiled for the
    combination of mechanisms a run uses, with only their kernels (the plain loop, which
    the lab's first run needs, compiles in a fraction of the time of all seven), and each
    combination is compiled once and cached.

    The states of the fields in :data:`BOUND` depend on the model's shape and dtype (a
    memory's keys have the hidden size and the model's dtype), which a mechanism does not
    know: those mechanisms give an object with ``bind(model, opt)``, and :func:`run_steps`
    replaces it by the arrays it returns before the compiled loop runs."""

    order: np.ndarray
    clip: Any
    select: Any
    adapt: Any
    mix: Any
    cache: Any
    knn: Any
    replay: Any
    rng: np.ndarray


def no_mechanisms() -> Mechanisms:
    """The states of a loop with every mechanism off."""
    return Mechanisms(
        np.zeros(0, dtype=np.int64), None, None, None, None, None, None, None,
        np.zeros(4, dtype=np.uint64),
    )  # fmt: skip


def in_step_order(events: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The events of the mechanisms' ``compiled_done`` (one list per mechanism, each in step
    order) merged as the Python hooks emit them: by step; within a step the observations'
    events first (alarms, window after window), then the "replay" event, which closes the
    step. Stable, so events of equal rank keep the Learner's order of mechanisms."""
    merged = [e for part in events for e in part]
    merged.sort(key=lambda e: (e["step"], e["kind"] == "replay"))
    return merged


# ---------------------------------------------------------------------------- score


@njit(**_JIT)
def loss_bits_of(probs: Any, symbols: Any, out: Any) -> None:  # pragma: no cover - compiled
    """out[i] = −log2 max(probs[i, symbols[i]], PROB_FLOOR): the recorded loss of a byte."""
    for i in range(symbols.size):
        p = max(float(probs[i, symbols[i]]), PROB_FLOOR)
        out[i] = -math.log2(p)


@njit(**_JIT)
def window_loss_bits(probs: Any, targets: Any, weights: Any) -> float:  # pragma: no cover
    """Weighted mean model loss (bits) of a window: probs (n, V), targets (n,), weights (n,)."""
    num, den = _window_loss_sums(probs, targets, weights)
    return num / den


@njit(**_JIT)
def batch_loss_bits(
    probs: Any, targets: Any, weights: Any, n_win: int
) -> float:  # pragma: no cover
    """The same over the first ``n_win`` windows (B, n, V), summed window after window."""
    num = 0.0
    den = 0.0
    for b in range(n_win):
        nb, db = _window_loss_sums(probs[b], targets[b], weights[b], num, den)
        num, den = nb, db
    return num / den


@njit(**_JIT)
def _window_loss_sums(
    probs: Any, targets: Any, weights: Any, num: float = 0.0, den: float = 0.0
) -> tuple[float, float]:  # pragma: no cover - compiled
    for t in range(targets.size):
        w = float(weights[t])
        if w != 0:
            num += w * -math.log2(max(float(probs[t, targets[t]]), PROB_FLOOR))
            den += w
    return num, den


@njit(**JIT_INLINE)
def _keep_rows(out: Any, rows: Any, first: int, k: int) -> None:  # pragma: no cover
    """Rows rows[:k] of bytes first … first + k − 1 go to ``out.scored`` at its cursor."""
    if out.scored.shape[0] > 0:
        at = out.n_scored[0]
        for j in range(k):
            out.scored_at[at + j] = first + j
            for y in range(rows.shape[1]):
                out.scored[at + j, y] = rows[j, y]
        out.n_scored[0] = at + k


# ---------------------------------------------------------------------------- update


@njit(**_JIT)
def backward_windows(
    model: Any, opt: Any, counters: Any, n_win: int, total_w: float
) -> float:  # pragma: no cover - compiled
    """Normalises the windows' loss weights to sum to 1, runs the backward pass into the
    zeroed gradient and returns the gradient's global L2 norm."""
    ws = model.ws
    t_len = model.dims[D_T]
    for b in range(n_win):
        for t in range(t_len):
            ws.wts[b, t] = cast_like(ws.wts, float(ws.wts[b, t]) / total_w)
    grads = opt.grads
    for i in range(grads.size):
        grads[i] = 0
    backward_batch(model.flat, model.offs, model.dims, ws, grads, n_win)
    counters[C_BACKWARD] += 1
    return math.sqrt(grad_sq_norm(grads, ws.lanes))


@njit(**_JIT)
def _update(
    model: Any, opt: Any, out: Any, mechs: Any, n_win: int, total_w: float
) -> None:  # pragma: no cover - compiled
    """Parts 6-7: decide, then (unless declined) scale, backward, transform, optimiser step;
    nothing while the network is frozen."""
    counters, info = out.counters, out.info
    if info[I_FROZEN] != 0:
        info[I_GRAD_NORM] = np.nan
        info[I_APPLIED] = 0
        info[I_LR_SCALE] = 0.0
        return
    for j in range(mechs.order.size):  # decide (the first mechanism that declines decides)
        if mechs.order[j] == K_SELECT and not _keep(mechs.select, info[I_WINDOW_LOSS], mechs.rng):
            counters[C_SKIPPED] += 1
            info[I_GRAD_NORM] = np.nan
            info[I_APPLIED] = 0
            info[I_LR_SCALE] = 0.0
            return
    scale = 1.0
    for j in range(mechs.order.size):
        if mechs.order[j] == K_ADAPT:
            scale *= _scale(mechs.adapt)
    norm = backward_windows(model, opt, counters, n_win, total_w)
    changed = False
    for j in range(mechs.order.size):  # every transform sees the norm before any clipping
        if mechs.order[j] == K_CLIP:
            changed = _clip(mechs.clip, opt.grads, norm) or changed
    if changed:
        norm = math.sqrt(grad_sq_norm(opt.grads, model.ws.lanes))
    lo, hi = opt.span[0], opt.span[1]
    applied = optimizer_step(model.flat, opt.grads, opt.m, opt.v, opt.hyper, opt.ostate, scale, norm, lo, hi)  # fmt: skip
    if applied:
        counters[C_UPDATES] += 1
    else:
        counters[C_NONFINITE] += 1
    info[I_GRAD_NORM] = norm
    info[I_APPLIED] = applied
    info[I_LR_SCALE] = scale


# ---------------------------------------------------------------------------- call sites
# Each takes one mechanism's state as an argument: numba removes the ``if state is not None``
# branch when the state is None (the mechanism is off), so its kernel is not compiled in.


@njit(**_JIT)
def _keep(select: Any, loss: float, rng: Any) -> bool:  # pragma: no cover - compiled
    if select is not None:
        return keep_kernel(select, loss, rng)
    return True


@njit(**_JIT)
def _scale(adapt: Any) -> float:  # pragma: no cover - compiled
    if adapt is not None:
        return scale_kernel(adapt)
    return 1.0


@njit(**_JIT)
def _clip(clip: Any, grads: Any, norm: float) -> bool:  # pragma: no cover - compiled
    if clip is not None:
        return clip_kernel(clip, grads, norm)
    return False


@njit(**_JIT)
def _observe(
    adapt: Any, losses: Any, first: int, k: int, step: int, pos: int, new_bytes: Any
) -> None:  # pragma: no cover
    if adapt is not None:
        observe_kernel(adapt, losses, first, k, step, pos, new_bytes)


@njit(**_JIT)
def _alarms_full(adapt: Any, room: int) -> bool:  # pragma: no cover - compiled
    """The detector's alarm rows could overflow in one more step."""
    if adapt is not None:
        return adapt.n_alarms[0] + room > adapt.alarms.shape[0]
    return False


@njit(**_JIT)
def _mix(
    mix: Any, rows: Any, idx: Any, slots: Any, targets: Any, k: int
) -> None:  # pragma: no cover
    if mix is not None:
        mix_window(mix, rows, idx, slots, targets, k)


@njit(**_JIT)
def _memory(
    mem: Any, rows: Any, hidden: Any, slots: Any, targets: Any, k: int
) -> None:  # pragma: no cover
    if mem is not None:
        memory_window(mem, rows, hidden, slots, targets, k)


@njit(**_JIT)
def _store(mem: Any, hidden: Any, slots: Any, targets: Any, k: int) -> None:  # pragma: no cover
    if mem is not None:
        memory_observe(mem, hidden, slots, targets, k)


@njit(**_JIT)
def _replays_full(replay: Any) -> bool:  # pragma: no cover - compiled
    """The replay events buffer is full."""
    if replay is not None:
        return replay.n_events[0] >= replay.events.shape[0]
    return False


def _replay(
    replay: Any,
    model: Any,
    opt: Any,
    rng: Any,
    counters: Any,
    step: int,
    window: int,
    n_in: int,
    first: int,
    window_loss: float,
) -> int:  # pragma: no cover - compiled
    """The replay part of a step; returns the extra windows trained, counts their passes."""
    if replay is None:
        return 0
    made = replay_step(replay, model, opt, rng, step, window, n_in, first, window_loss)
    tally = replay.tally
    counters[C_FORWARD] += tally[0]
    counters[C_BACKWARD] += tally[1]
    counters[C_REPLAY] += tally[2]
    counters[C_NONFINITE] += tally[3]
    for i in range(tally.size):
        tally[i] = 0
    return made


@overload(_replay, **OVERLOAD_INLINE)
def _replay_inlined(
    replay: Any,
    model: Any,
    opt: Any,
    rng: Any,
    counters: Any,
    step: int,
    window: int,
    n_in: int,
    first: int,
    window_loss: float,
) -> Any:  # pragma: no cover - compiled
    """Compiled, :func:`_replay` is chosen by the type of ``replay`` and inlined into the
    step loop, so a step does not take and drop a reference to every array of the model,
    optimiser and replay tuples (it cost replay ~15 us a step even when nothing was due)."""
    if isinstance(replay, types.NoneType):

        def nothing(
            replay: Any,
            model: Any,
            opt: Any,
            rng: Any,
            counters: Any,
            step: int,
            window: int,
            n_in: int,
            first: int,
            window_loss: float,
        ) -> int:
            return 0

        return nothing
    return _replay


# ---------------------------------------------------------------------------- the loop


def run_steps(
    model: ModelArrays,
    opt: OptimArrays,
    stream: StreamArrays,
    out: Outputs,
    mechs: Mechanisms,
    update_every: int,
    new_only: bool,
    max_steps: int,
) -> int:
    """:func:`compiled_steps` after binding the states of :data:`BOUND` to the model."""
    bound = {f: getattr(mechs, f).bind(model, opt) for f in BOUND if getattr(mechs, f) is not None}
    return int(compiled_steps(model, opt, stream, out, mechs._replace(**bound), update_every, new_only, max_steps))  # fmt: skip


@njit(**_JIT)
def compiled_steps(
    model: Any,
    opt: Any,
    stream: Any,
    out: Any,
    mechs: Any,
    update_every: int,
    new_only: bool,
    max_steps: int,
) -> int:  # pragma: no cover - compiled
    """Runs up to ``max_steps`` prequential steps over the segments of ``stream`` and returns
    how many it made (0 when every segment is finished). Every step each unfinished segment
    takes ``update_every`` bytes (fewer where document starts would overflow the context);
    all their windows go through one forward pass, then the parts of the module docstring.
    It stops early, between steps, when a mechanism's event buffer could fill in one more
    step; the caller drains it and calls again."""
    ws = model.ws
    t_len = model.dims[D_T]
    symbols = np.empty(t_len, dtype=np.int64)
    slots = np.empty(t_len, dtype=np.int64)
    targets = np.empty(t_len, dtype=np.int64)
    rows, rec, counters, info = out.rows, out.rec, out.counters, out.info
    room = stream.seg_pos.size * t_len  # the most bytes (and so events) one step can add
    steps = 0
    while steps < max_steps:
        if _alarms_full(mechs.adapt, room) or _replays_full(mechs.replay):
            break
        step = counters[C_STEPS]
        n_win, n_rec, total_w = gather_step(
            ws, stream.data, stream.starts, stream.seg_pos, stream.seg_end, stream.hist,
            stream.hist_len, update_every, new_only, rec, symbols, t_len,
        )  # fmt: skip
        if n_win == 0:
            break
        forward_batch(model.flat, model.offs, model.dims, ws, n_win)
        counters[C_FORWARD] += 1
        r0 = 0
        last_first = 0  # the first byte of the last window (its events' position)
        for w in range(n_win):
            r1 = window_records_end(rec, n_rec, r0, w)
            k = r1 - r0
            first = rec[r0, 2]
            last_first = first
            for j in range(k):  # the model's rows of the window's new bytes
                slots[j] = rec[r0 + j, 1]
                targets[j] = stream.data[rec[r0 + j, 2]]
                for y in range(rows.shape[1]):
                    rows[j, y] = ws.probs[w, slots[j], y]
            for j in range(mechs.order.size):  # adjust
                kind = mechs.order[j]
                if kind == K_MIX:
                    _mix(mechs.mix, rows, ws.idx[w], slots, targets, k)
                elif kind == K_CACHE:
                    _memory(mechs.cache, rows, ws.hidden[w], slots, targets, k)
                elif kind == K_KNN:
                    _memory(mechs.knn, rows, ws.hidden[w], slots, targets, k)
            for j in range(k):  # score
                p = max(rows[j, targets[j]], PROB_FLOOR)
                out.losses[first + j - out.base] = -math.log2(p)
            _keep_rows(out, rows, first, k)
            for j in range(mechs.order.size):  # observe
                kind = mechs.order[j]
                if kind == K_ADAPT:
                    _observe(mechs.adapt, out.losses, first - out.base, k, step, first, targets)
                elif kind == K_CACHE:
                    _store(mechs.cache, ws.hidden[w], slots, targets, k)
                elif kind == K_KNN:
                    _store(mechs.knn, ws.hidden[w], slots, targets, k)
            r0 = r1
        info[I_WINDOW_LOSS] = batch_loss_bits(ws.probs, ws.tgt, ws.wts, n_win)
        _update(model, opt, out, mechs, n_win, total_w)
        info[I_REPLAYS] = 0
        for j in range(mechs.order.size):  # replay: extra windows after the update
            if mechs.order[j] == K_REPLAY and info[I_FROZEN] == 0:
                n_in = rec[n_rec - 1, 1] + 1  # the last window's inputs (its newest byte last)
                info[I_REPLAYS] += _replay(
                    mechs.replay, model, opt, mechs.rng, counters, step, n_win - 1, n_in,
                    last_first, info[I_WINDOW_LOSS],
                )  # fmt: skip
        counters[C_STEPS] += 1
        steps += 1
        info[I_RECORDS] = n_rec
        info[I_WINDOWS] = n_win
    return steps
