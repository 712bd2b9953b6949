"""The window rule, written once: where a step ends, and where a run may stop.

A step begins at byte ``pos`` and takes up to ``k`` bytes. A BOS goes before every byte that
starts a document and before the very first byte a history sees. A step holds at most
``context`` symbols, BOS included, so a step that would hold more is shortened, one byte at a
time, but never below one byte. Every path that splits a stream into steps (the Learner's
per-step and batched loops, the compiled loop, the range coder) follows this rule, so the
same bytes give the same steps, whichever path reads them.

A run that is told to stop after ``cap`` bytes stops at the last step boundary at or before
``cap`` (unless ``cap`` is the stream's end, or less than one step is left): its next call, or
a run resumed from its checkpoint, then makes exactly the steps an uninterrupted run makes.

Example:
    >>> import numpy as np
    >>> starts = np.zeros(11, dtype=bool)
    >>> step_end(starts, 0, 10, 4, 32, True)  # 4 bytes (+ the first BOS) fit
    4
    >>> step_end(starts, 0, 10, 4, 4, True)  # BOS + 4 bytes > context 4: shortened to 3
    3
    >>> whole_steps_end(starts, 0, 7, 10, 4, 32, True)  # stop at byte 4, not in mid-step
    4
    >>> whole_steps_end(starts, 0, 10, 10, 4, 32, True)  # the stream's end is always a stop
    10
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from mugpt.model.constants import BOS, JIT_INLINE, JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _step_end(
    starts: Any, pos: int, end: int, k: int, context: int, first: bool
) -> int:  # pragma: no cover - compiled
    stop = min(pos + k, end)
    while stop - pos > 1:
        n_bos = 0
        for i in range(pos, stop):
            if starts[i] or (first and i == pos):
                n_bos += 1
        if (stop - pos) + n_bos <= context:
            break
        stop -= 1
    return stop


@njit(**JIT_OPTIONS)
def _whole_steps_end(
    starts: Any, pos: int, cap: int, end: int, k: int, context: int, first: bool
) -> int:  # pragma: no cover - compiled
    if cap >= end:
        return end
    if 2 * k <= context:  # no step can be shortened: boundaries are pos + j·k
        stop = pos + ((cap - pos) // k) * k
        return stop if stop > pos else cap
    p = pos
    while p < cap:
        e = _step_end(starts, p, end, k, context, first)
        if e > cap:
            break
        p = e
        first = False
    return p if p > pos else cap


@njit(**JIT_OPTIONS)
def _history_append(
    hist: Any, hist_len: int, symbols: Any, n: int, keep: int
) -> int:  # pragma: no cover - compiled
    if hist_len + n > hist.size:
        start = max(0, hist_len - keep)
        m = hist_len - start
        for i in range(m):
            hist[i] = hist[start + i]
        hist_len = m
    for i in range(n):
        hist[hist_len + i] = symbols[i]
    return hist_len + n


@njit(**JIT_OPTIONS)
def gather_step(
    ws: Any,
    data: Any,
    starts: Any,
    seg_pos: Any,
    seg_end: Any,
    hist: Any,
    hist_len: Any,
    update_every: int,
    new_only: bool,
    rec: Any,
    symbols: Any,
    t_len: int,
) -> tuple[int, int, float]:  # pragma: no cover - compiled
    """The window rule for one step of the compiled loop: each unfinished segment s (bytes
    data[seg_pos[s]:seg_end[s]], history hist[s, :hist_len[s]]) takes its next step
    (:func:`step_end`), appends its symbols (:func:`history_append`) and becomes one window
    of ``ws`` (idx, tgt and unnormalised loss weights wts, padded to ``t_len``); then it
    advances. rec[r] = (window, slot, byte index) of each new byte, in segment order.
    Returns (windows, records, total weight)."""
    keep = t_len + 1
    n_win = 0
    n_rec = 0
    total_w = 0.0
    for sgi in range(seg_pos.size):
        pos, end = seg_pos[sgi], seg_end[sgi]
        if pos >= end:
            continue
        first = hist_len[sgi] == 0
        stop = _step_end(starts, pos, end, update_every, t_len, first)
        n_sym = 0
        for i in range(pos, stop):
            if starts[i] or (first and i == pos):
                symbols[n_sym] = BOS
                n_sym += 1
            symbols[n_sym] = data[i]
            n_sym += 1
        h = hist[sgi]
        hl = _history_append(h, hist_len[sgi], symbols, n_sym, keep)
        hist_len[sgi] = hl
        n_in = min(hl, keep) - 1  # window inputs
        w0 = hl - n_in - 1
        idx, tgt, wts = ws.idx[n_win], ws.tgt[n_win], ws.wts[n_win]
        for t in range(t_len):
            if t < n_in:
                idx[t] = h[w0 + t]
                tgt[t] = h[w0 + t + 1]
                wts[t] = 0 if (new_only or tgt[t] == BOS) else 1
            else:
                idx[t] = 0
                tgt[t] = 0
                wts[t] = 0
        # the new bytes are the last n_sym targets that are not BOS
        g = pos
        for t in range(max(0, n_in - n_sym), n_in):
            if tgt[t] != BOS:
                rec[n_rec, 0] = n_win
                rec[n_rec, 1] = t
                rec[n_rec, 2] = g
                n_rec += 1
                g += 1
                if new_only:
                    wts[t] = 1
        for t in range(n_in):
            total_w += float(wts[t])
        seg_pos[sgi] = stop
        n_win += 1
    return n_win, n_rec, total_w


@njit(**JIT_INLINE)
def window_records_end(rec: Any, n_rec: int, r0: int, w: int) -> int:  # pragma: no cover
    """The end r1 of window w's records rec[r0:r1] (:func:`gather_step` writes them window
    by window; r0 is where window w's begin)."""
    r1 = r0
    while r1 < n_rec and rec[r1, 0] == w:
        r1 += 1
    return r1


def step_end(starts: np.ndarray, pos: int, end: int, k: int, context: int, first: bool) -> int:
    """End (exclusive) of the step that begins at byte ``pos``.

    ``starts[i]`` marks that a document starts at byte i; ``first`` that the history is
    empty (the step's first byte gets a BOS); ``end`` bounds the step (the stream's end, or a
    sub-stream's). The step takes ``min(k, end - pos)`` bytes, shortened while its bytes and
    their BOS symbols exceed ``context``, never below one byte.

    Example:
        >>> import numpy as np
        >>> starts = np.array([0, 1, 1, 1, 0, 0], dtype=bool)  # three documents start
        >>> step_end(starts, 0, 6, 6, 8, True)  # 6 bytes + 4 BOS > 8: 4 bytes + 4 BOS fit
        4
    """
    return int(_step_end(starts, int(pos), int(end), int(k), int(context), bool(first)))


def whole_steps_end(
    starts: np.ndarray, pos: int, cap: int, end: int, k: int, context: int, first: bool
) -> int:
    """Where a run from ``pos`` told to stop at ``cap`` stops: the last step boundary at or
    before ``cap``; ``end`` (the stream's end) when ``cap`` reaches it; ``cap`` itself when
    less than one step is left before it (the only case that splits a step).

    Example:
        >>> import numpy as np
        >>> whole_steps_end(np.zeros(20_001, dtype=bool), 0, 10_001, 20_000, 4, 32, True)
        10000
    """
    return int(
        _whole_steps_end(starts, int(pos), int(cap), int(end), int(k), int(context), bool(first))
    )


def step_symbols(new_bytes: np.ndarray, doc_start: np.ndarray, first: bool) -> np.ndarray:
    """The symbols a step appends to its history: each byte, with a BOS before every byte
    that starts a document (``doc_start``) and before the first byte of an empty history.

    Example:
        >>> import numpy as np
        >>> step_symbols(np.array([104, 105]), np.array([False, False]), True).tolist()
        [256, 104, 105]
        >>> step_symbols(np.array([104, 105]), np.array([False, True]), False).tolist()
        [104, 256, 105]
    """
    flags = np.asarray(doc_start, dtype=bool)
    if first:
        flags = flags.copy()
        flags[0] = True
    symbols = np.asarray(new_bytes).astype(np.int64)
    return np.insert(symbols, np.nonzero(flags)[0], BOS) if flags.any() else symbols


def history_append(hist: np.ndarray, hist_len: int, symbols: np.ndarray, context: int) -> int:
    """Appends ``symbols`` to the history ``hist[:hist_len]`` in place and returns its new
    length. When the buffer is full it first slides, keeping the last ``context + 1`` symbols
    (all a window can see) at the front. The compiled loop's :func:`gather_step` uses the
    same kernel.

    Example:
        >>> import numpy as np
        >>> hist = np.zeros(6, dtype=np.int64)
        >>> n = history_append(hist, 0, np.array([1, 2, 3, 4]), 2)
        >>> n = history_append(hist, n, np.array([5, 6, 7]), 2)  # full: keep 3, then append
        >>> hist[:n].tolist()
        [2, 3, 4, 5, 6, 7]
    """
    symbols = np.ascontiguousarray(symbols, dtype=np.int64)
    return int(_history_append(hist, int(hist_len), symbols, symbols.size, context + 1))
