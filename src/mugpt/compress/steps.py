"""The decoder's steps, compiled: each step's bytes decoded and learnt in one call.

A step of the compiled loop (:func:`mugpt.engine.loop.compiled_steps`) gathers its window,
runs one forward pass, mixes, scores and updates. The decoder cannot run that forward pass
first, since the window holds the bytes it is about to decode; :func:`decode_steps` takes
the loop's place (``Learner.advance(..., steps=...)``) and makes the same step in another
order, with the same kernels, so every bit of the state comes out as the encoder's:

1. **gather** — :func:`mugpt.engine.window.gather_step`, with the step's bytes still at the
   placeholder 0;
2. for each new byte j, in order: the **forward** pass of its position alone (with one new
   byte, k = 1, the window's inputs are all known: one full forward pass instead)
   (:func:`mugpt.model.incremental.forward_positions`: the keys and values of the earlier
   positions are kept, so the finished window is the full forward pass bit for bit), the
   **mixer**'s row (:func:`mugpt.mechanisms.ngram_mix.mix_row`), the range decoder
   (:mod:`mugpt.compress.range`) on its quantised row, then the byte written where the
   window, its targets, the history and the stream hold it, and the mixer **learns** it —
   exactly :func:`mugpt.mechanisms.ngram_mix.mix_window`'s order (row j, then byte j);
3. the window's remaining (padding) positions, then **score**, the window loss and the
   **update** (:func:`mugpt.engine.loop._update`: decide, scale, backward, clip, optimiser).

It runs the mechanisms that have no part between the forward pass and the update other
than the mixer: ``ngram_mix``, ``grad_clip`` and ``selective_backprop``
(:data:`DECODABLE`); the coder's other decoders handle the rest.

The checks of the Python decoder happen here too, and end the call with an error code
(:data:`ERRORS`): a code value no symbol covers, more coded bits than the payload holds
(``payload_bit_budget``, or past its last word), and more prequential bits than the header
recorded (``recorded_loss_limit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from mugpt.compress.range import (
    BATCH_BYTES,
    N_SYMBOLS,
    decode_symbol,
    new_decoder,
    quantise,
    symbol_bits,
)
from mugpt.compress.range import D_PAST as _D_PAST
from mugpt.engine.loop import (
    C_FORWARD,
    C_STEPS,
    I_RECORDS,
    I_REPLAYS,
    I_WINDOW_LOSS,
    I_WINDOWS,
    _keep_rows,
    batch_loss_bits,
)
from mugpt.engine.loop import _update as update_part
from mugpt.engine.window import gather_step, window_records_end
from mugpt.mechanisms.ngram_mix import _learn, mix_row
from mugpt.model.constants import JIT_INLINE, JIT_OPTIONS, OVERLOAD_INLINE, PROB_FLOOR
from mugpt.model.fast import D_T, forward_batch
from mugpt.model.incremental import forward_positions, prepare_head

#: The active mechanisms :func:`decode_steps` runs (the mixer is the only one that adjusts).
DECODABLE = frozenset({"ngram_mix", "grad_clip", "selective_backprop"})

# nums: running figures and limits
N_BITS, N_EXHAUSTED, N_LOST, N_BUDGET, N_LOST_LIMIT, N_AFTER_END, N_BYTES = range(7)
# flags: error code and the byte count it names
F_ERROR, F_AT = range(2)
E_NONE, E_INVALID, E_USED_UP, E_LOST = range(4)
ERRORS = {E_INVALID: "invalid", E_USED_UP: "used up", E_LOST: "recorded bits"}


class DecodeState(NamedTuple):
    """The range decoder and the checks of :func:`decode_steps`, with its scratch."""

    payload: np.ndarray  # uint8
    coder: np.ndarray  # range decoder state (mugpt.compress.range)
    freq: np.ndarray  # (257,) quantised frequencies of the current row
    slots: np.ndarray  # (T,) the step's new positions
    targets: np.ndarray  # (T,) the step's bytes as decoded
    symbols: np.ndarray  # (T,) gather_step's scratch
    keys_t: np.ndarray  # the incremental forward's transposed keys (key_scratch)
    nums: np.ndarray  # float64, N_*
    flags: np.ndarray  # int64, F_*


def _mix(mix: Any, rows: Any, inputs: Any, slots: Any, j: int) -> None:
    """Row j becomes the mixer's row, if there is a mixer (``mix``: its state, or None)."""
    if mix is not None:
        mix_row(mix, rows, inputs, slots, j)


def _mix_learn(mix: Any, targets: Any, inputs: Any, slots: Any, j: int) -> None:
    """The mixer, if there is one, learns byte j."""
    if mix is not None:
        _learn(mix, targets, inputs, slots, j)


def _mix_count(mix: Any, k: int) -> None:
    """The mixer, if there is one, counts k more mixed bytes."""
    if mix is not None:
        mix.mixed[0] += k


# Compiled, the three are chosen by the type of ``mix`` and inlined into decode_steps: a
# compiled function that takes the mixer's named tuple and calls on takes and drops a
# reference to every one of its arrays, on every byte.
_INLINE = OVERLOAD_INLINE


def _when_mixer(python: Any, kernel: Any) -> None:
    """Compiled, ``python(mix, a, b, c, j)`` becomes ``kernel(mix, a, b, c, j)`` inlined, or
    nothing at all when ``mix`` is None."""

    @overload(python, **_INLINE)
    def choose(mix: Any, a: Any, b: Any, c: Any, j: Any) -> Any:  # pragma: no cover
        def call(mix: Any, a: Any, b: Any, c: Any, j: Any) -> Any:
            kernel(mix, a, b, c, j)

        def nothing(mix: Any, a: Any, b: Any, c: Any, j: Any) -> Any:
            return None

        return nothing if isinstance(mix, types.NoneType) else call


_when_mixer(_mix, mix_row)
_when_mixer(_mix_learn, _learn)


@overload(_mix_count, **_INLINE)
def _mix_count_impl(mix: Any, k: Any) -> Any:  # pragma: no cover - compiled
    def counts(mix: Any, k: Any) -> Any:
        mix.mixed[0] += k

    def nothing(mix: Any, k: Any) -> Any:
        return None

    return nothing if isinstance(mix, types.NoneType) else counts


@njit(**JIT_INLINE)
def _decode_byte(dec: Any, row: Any, index: int, decoded: int) -> int:  # pragma: no cover
    """Byte ``index`` of the stream, the one after ``decoded`` bytes decoded, decoded under
    ``row``, with the payload checks; -1 on an error (F_AT: the byte, or the bytes decoded)."""
    quantise(row, dec.freq)
    s = decode_symbol(dec.coder, dec.payload, dec.freq)
    nums, flags = dec.nums, dec.flags
    if s < 0:
        flags[F_ERROR] = E_INVALID
        flags[F_AT] = index
        return -1
    nums[N_BITS] += symbol_bits(dec.freq, s)
    if math.isnan(nums[N_EXHAUSTED]) and dec.coder[_D_PAST] != 0:
        nums[N_EXHAUSTED] = nums[N_BITS]
    if nums[N_BITS] > nums[N_BUDGET] or nums[N_BITS] - nums[N_EXHAUSTED] > nums[N_AFTER_END]:
        flags[F_ERROR] = E_USED_UP
        flags[F_AT] = decoded + 1
        return -1
    return s


@njit(**JIT_OPTIONS)
def decode_steps(
    model: Any,
    opt: Any,
    stream: Any,
    out: Any,
    mechs: Any,
    update_every: int,
    new_only: bool,
    max_steps: int,
    dec: Any,
) -> int:  # pragma: no cover - compiled
    """Up to ``max_steps`` steps decoded from ``dec``'s payload into stream.data and learnt;
    returns how many were made (0 once finished or after an error). A step reads one window
    per unfinished segment (``batch_streams`` B ≥ 1), decoded window after window, byte
    after byte: the order in which the loop scores them and the encoder codes them. A step
    in which an error arises is still completed (its later bytes stay 0), so the Learner's
    records stay whole; the caller then reads ``dec.flags``."""
    ws = model.ws
    t_len = model.dims[D_T]
    rows, rec, counters, info = out.rows, out.rec, out.counters, out.info
    slots, targets = dec.slots, dec.targets
    nums, flags = dec.nums, dec.flags
    # the tuples' members taken once: each read of a named tuple of arrays in the byte loop
    # would take and drop a reference to every one of them
    flat, offs, dims, keys_t, mix = model.flat, model.offs, model.dims, dec.keys_t, mechs.mix
    seg_end = stream.seg_end
    steps = 0
    while steps < max_steps and flags[F_ERROR] == 0:
        n_win, n_rec, total_w = gather_step(
            ws, stream.data, stream.starts, stream.seg_pos, stream.seg_end, stream.hist,
            stream.hist_len, update_every, new_only, rec, dec.symbols, t_len,
        )  # fmt: skip
        if n_win == 0:
            break
        # one new byte per window (k = 1): every input of the windows is known already (the
        # bytes are only targets), so one full forward pass computes them, as the loop's does
        known = n_rec == n_win
        if known:
            forward_batch(flat, offs, dims, ws, n_win)
        else:
            prepare_head(flat, offs, dims, ws)
        failed = False
        lost = 0.0
        r0 = 0
        seg = 0
        for w in range(n_win):
            r1 = window_records_end(rec, n_rec, r0, w)
            k = r1 - r0
            first = rec[r0, 2]
            while seg_end[seg] <= first:  # the window's segment (windows in segment order)
                seg += 1
            hist = stream.hist[seg]
            hl = stream.hist_len[seg]
            n_in = min(hl, t_len + 1) - 1
            done = t_len if known else 0
            idx, tgt = ws.idx[w], ws.tgt[w]
            for j in range(k):
                slot = rec[r0 + j, 1]
                slots[j] = slot
                forward_positions(flat, offs, dims, ws, keys_t, w, done, slot + 1)
                done = max(done, slot + 1)
                for y in range(rows.shape[1]):
                    rows[j, y] = ws.probs[w, slot, y]
                _mix(mix, rows, idx, slots, j)
                symbol = 0
                if not failed:
                    s = _decode_byte(dec, rows[j], first + j, int(nums[N_BYTES]) + r0 + j)
                    if s < 0:
                        failed = True
                    else:
                        symbol = s
                stream.data[first + j] = symbol
                targets[j] = symbol
                tgt[slot] = symbol
                if slot + 1 < n_in:
                    idx[slot + 1] = symbol
                hist[hl - k + j] = symbol
                _mix_learn(mix, targets, idx, slots, j)
            forward_positions(flat, offs, dims, ws, keys_t, w, done, t_len)
            _mix_count(mix, k)
            for j in range(k):  # score
                p = max(rows[j, targets[j]], PROB_FLOOR)
                loss = -math.log2(p)
                out.losses[first + j - out.base] = loss
                lost += loss
            _keep_rows(out, rows, first, k)
            r0 = r1
        counters[C_FORWARD] += 1
        info[I_WINDOW_LOSS] = batch_loss_bits(ws.probs, ws.tgt, ws.wts, n_win)
        update_part(model, opt, out, mechs, n_win, total_w)
        info[I_REPLAYS] = 0
        counters[C_STEPS] += 1
        steps += 1
        info[I_RECORDS] = n_rec
        info[I_WINDOWS] = n_win
        nums[N_LOST] += lost
        nums[N_BYTES] += n_rec
        if flags[F_ERROR] == 0 and nums[N_LOST] > nums[N_LOST_LIMIT]:
            flags[F_ERROR] = E_LOST
            flags[F_AT] = int(nums[N_BYTES])
    return steps


#: ``tick(bytes done, coded bits so far)``: progress, after each call of the compiled loop.
Tick = Callable[[int, float], None]


def steps_for(n_bytes: int, stream: Any, model: Any, update_every: int) -> int:
    """The most steps whose bytes surely fit in ``n_bytes`` (at least one): a step reads at
    most min(k, T) bytes of each of the stream's segments."""
    per_step = stream.seg_pos.size * min(update_every, int(model.dims[D_T]))
    return max(1, n_bytes // per_step)


class StepEncoder:
    """The ``steps`` of ``Learner.advance`` that code the bytes they learn: the compiled loop
    (:func:`mugpt.engine.loop.run_steps`) writes each byte's scored row into this object's
    buffer, in the order it scores them (step by step, window by window), and after each
    call the rows go to the range ``encoder`` in that order, which :func:`decode_steps`
    decodes in. ``bits`` is the coded bits so far, ``done`` the bytes coded.

    Example:
        >>> import numpy as np
        >>> from mugpt.compress.range import Encoder
        >>> from mugpt.engine import Learner, LearnerConfig
        >>> learner = Learner(learner_cfg=LearnerConfig(update_every=4, batch_streams=2))
        >>> data = np.frombuffer(b"abcdefgh" * 4, dtype=np.uint8)
        >>> steps = StepEncoder(Encoder(), learner.model)
        >>> learner.advance(data, np.zeros(data.size + 1, dtype=bool), data.size, steps=steps)
        >>> steps.done, steps.at[:12].tolist()  # byte indices in coding order, 4 a window
        (32, [0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7])
        >>> abs(steps.bits - float(learner.losses.sum())) < 1  # quantised vs exact rows
        True
    """

    def __init__(self, encoder: Any, model: Any, tick: Tick | None = None) -> None:
        rows = max(BATCH_BYTES, model.cfg.context)
        self.encoder, self.tick = encoder, tick
        self.rows = np.zeros((rows, model.cfg.vocab_size))
        self.at = np.zeros(rows, dtype=np.int64)
        self.n = np.zeros(1, dtype=np.int64)
        self.bits = 0.0
        self.done = 0

    def __call__(self, model: Any, opt: Any, stream: Any, out: Any, mechs: Any,
                 update_every: int, new_only: bool, max_steps: int) -> int:  # fmt: skip
        from mugpt.engine.loop import run_steps

        max_steps = min(max_steps, steps_for(self.rows.shape[0], stream, model, update_every))
        self.n[0] = 0
        mine = out._replace(scored=self.rows, scored_at=self.at, n_scored=self.n)
        made = run_steps(model, opt, stream, mine, mechs, update_every, new_only, max_steps)
        n = int(self.n[0])
        self.bits += self.encoder.encode(self.rows[:n], stream.data[self.at[:n]])
        self.done += n
        if self.tick is not None:
            self.tick(self.done, self.bits)
        return made


class StepDecoder:
    """The ``steps`` of ``Learner.advance`` that decode ``payload`` while they learn, the
    bytes in the order :class:`StepEncoder` codes them.

    ``budget``, ``lost_limit`` and ``after_end`` are the limits of
    :func:`mugpt.compress.coder.decode`; after each ``advance`` :attr:`error` is
    ``(code, bytes)`` or None, :attr:`bits` the coded bits so far and :attr:`lost` the
    decoded bytes' prequential bits."""

    def __init__(self, payload: bytes, model: Any, budget: float, lost_limit: float,
                 after_end: float, tick: Tick | None = None) -> None:  # fmt: skip
        from mugpt.model.incremental import key_scratch

        self.tick = tick
        context = model.cfg.context
        data = np.frombuffer(payload, dtype=np.uint8)
        nums = np.zeros(7)
        nums[N_EXHAUSTED] = np.nan
        nums[N_BUDGET], nums[N_LOST_LIMIT], nums[N_AFTER_END] = budget, lost_limit, after_end
        self.state = DecodeState(
            payload=data,
            coder=new_decoder(data),
            freq=np.zeros(N_SYMBOLS + 1, dtype=np.int64),
            slots=np.zeros(context, dtype=np.int64),
            targets=np.zeros(context, dtype=np.int64),
            symbols=np.zeros(context + 1, dtype=np.int64),
            keys_t=key_scratch(model),
            nums=nums,
            flags=np.zeros(2, dtype=np.int64),
        )

    def __call__(self, model: Any, opt: Any, stream: Any, out: Any, mechs: Any,
                 update_every: int, new_only: bool, max_steps: int) -> int:  # fmt: skip
        max_steps = min(max_steps, steps_for(BATCH_BYTES, stream, model, update_every))
        made = int(decode_steps(model, opt, stream, out, mechs, update_every, new_only, max_steps, self.state))  # fmt: skip
        if self.tick is not None:
            self.tick(self.decoded, self.bits)
        return made

    @property
    def decoded(self) -> int:
        """Bytes decoded so far."""
        return int(self.state.nums[N_BYTES])

    @property
    def error(self) -> tuple[int, int] | None:
        code, at = (int(x) for x in self.state.flags)
        return None if code == E_NONE else (code, at)

    @property
    def bits(self) -> float:
        return float(self.state.nums[N_BITS])

    @property
    def lost(self) -> float:
        return float(self.state.nums[N_LOST])
